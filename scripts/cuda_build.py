"""Whether `make setup` builds phide's CUDA kernels: prints PHIDE_BUILD_CUDA's value (1 or 0) on
stdout and why on stderr. Yes when nvcc (CUDA_HOME/CUDA_PATH, PATH, /usr/local/cuda: the lookup
torch.utils.cpp_extension makes) has the major version of the CUDA torch was built for (CUDA's
minor-version compatibility: nvcc 13.x builds for a torch built with 13.0), unless the user set
PHIDE_BUILD_CUDA. Without the build, every verify on a GPU runs the acceptance walk's torch twin
(correct, and no host sync, but more launches). No GPU is needed to build."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys


def find_nvcc() -> str | None:
    home = os.environ.get("CUDA_HOME") or os.environ.get("CUDA_PATH")
    if home:
        path = os.path.join(home, "bin", "nvcc")
        return path if os.path.exists(path) else None
    return shutil.which("nvcc") or ("/usr/local/cuda/bin/nvcc" if os.path.exists("/usr/local/cuda/bin/nvcc") else None)


def nvcc_version(nvcc: str) -> str | None:
    try:
        out = subprocess.run([nvcc, "--version"], capture_output=True, text=True, timeout=60, check=False).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    m = re.search(r"release (\d+\.\d+)", out)
    return m.group(1) if m else None


def decide(torch_cuda: str | None, nvcc: str | None, version: str | None) -> tuple[bool, str]:
    if torch_cuda is None:
        return False, "torch is a CPU-only build: no CUDA kernels"
    if nvcc is None:
        return False, f"no nvcc found (CUDA_HOME, PATH, /usr/local/cuda): the CUDA kernels need CUDA {torch_cuda.split('.')[0]}.x"
    if version is None:
        return False, f"{nvcc} --version names no release"
    if version.split(".")[0] != torch_cuda.split(".")[0]:
        return False, (f"nvcc {version} is not CUDA {torch_cuda.split('.')[0]}.x (torch's CUDA {torch_cuda}): "
                       "no CUDA kernels; point CUDA_HOME at a matching toolkit")
    return True, f"nvcc {version} matches torch's CUDA {torch_cuda} (major version): building the CUDA kernels"


def main() -> int:
    user = os.environ.get("PHIDE_BUILD_CUDA", "").strip()
    if user:
        print("1" if user.lower() in ("1", "true", "yes", "on") else "0")
        print(f"phide setup: PHIDE_BUILD_CUDA={user} (set by you)", file=sys.stderr)
        return 0
    import torch

    nvcc = find_nvcc()
    build, why = decide(torch.version.cuda, nvcc, nvcc_version(nvcc) if nvcc else None)
    print("1" if build else "0")
    print(f"phide setup: {why}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())

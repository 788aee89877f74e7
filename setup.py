"""Build script for phide. Metadata lives in pyproject.toml; what gets compiled is decided in
one place, get_extensions().

Install (torch must already be installed; see pyproject.toml):

    pip install --no-build-isolation -e .

Switches (environment variables):
    PHIDE_SKIP_EXT=1     build no extension: pure-python install, every op runs its torch twin
    PHIDE_BUILD_CUDA=1   add the CUDA kernels (csrc/**/*.cu) to phide._C; never probed here (`make setup`
                         decides with scripts/cuda_build.py: nvcc of torch's CUDA major version)
    PHIDE_CUDA_ARCHS     with PHIDE_BUILD_CUDA=1: "80;90a" by default ("+PTX" suffix adds PTX)
    PHIDE_DEBUG=1        -O0 -g (nvcc: -O0 -g -lineinfo)
    MAX_JOBS             parallel compile jobs (default: capped by cores and free memory)
    NVCC_THREADS         nvcc --threads (default 1)
"""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path

from setuptools import find_packages, setup

ROOT = Path(__file__).resolve().parent
BUILD_INFO = ROOT / "phide" / "_build_info.py"
DEFAULT_CUDA_ARCHS = "80;90a"


def _flag(name: str) -> bool:
    return os.environ.get(name, "").strip().lower() in ("1", "true", "yes", "on")


def _log(msg: str) -> None:
    # stderr: pip shows it with -v, and always when the build fails.
    print(f"phide setup.py: {msg}", file=sys.stderr, flush=True)


def _sources(pattern: str) -> list[str]:
    # setuptools wants paths relative to setup.py; sorted for reproducible builds.
    return sorted(str(p.relative_to(ROOT)) for p in ROOT.glob(pattern))


def _cuda_archs() -> list[str]:
    raw = os.environ.get("PHIDE_CUDA_ARCHS", "").strip() or DEFAULT_CUDA_ARCHS
    archs = [a.strip().replace(".", "") for a in raw.replace(",", ";").split(";") if a.strip()]
    if not archs:
        raise SystemExit(f"phide setup.py: PHIDE_CUDA_ARCHS={raw!r} names no architecture")
    return archs


def _gencode_flags(archs: list[str]) -> list[str]:
    flags = []
    for arch in archs:
        sm = arch.removesuffix("+PTX")
        flags.append(f"-gencode=arch=compute_{sm},code=sm_{sm}")
        if arch.endswith("+PTX"):
            flags.append(f"-gencode=arch=compute_{sm},code=compute_{sm}")
    return flags


def _cap_max_jobs(with_cuda: bool) -> int:
    """MAX_JOBS from cores and available memory unless the user set it (nvcc + ATen headers
    take ~2-4 GB per process; unbounded ninja parallelism is how big builds run out of RAM)."""
    if os.environ.get("MAX_JOBS", "").isdigit():
        return int(os.environ["MAX_JOBS"])
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    mem_gb = 8.0
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    mem_gb = int(line.split()[1]) / 2**20
                    break
    except OSError:
        pass
    per_job_gb = 4.0 if with_cuda else 2.0
    jobs = max(1, min(cpus or 1, int(mem_gb // per_job_gb), 16))
    os.environ["MAX_JOBS"] = str(jobs)
    return jobs


def _ensure_ninja_on_path() -> None:
    # `pip install` from a venv does not put the venv's bin/ on PATH; torch looks for `ninja` there
    # and otherwise falls back to a slow serial build.
    if shutil.which("ninja"):
        return
    candidates = [Path(sys.executable).parent]
    try:
        import ninja  # the PyPI wrapper ships the binary

        candidates.insert(0, Path(ninja.BIN_DIR))
    except (ImportError, AttributeError):
        pass
    for d in candidates:
        if (d / "ninja").exists():
            os.environ["PATH"] = f"{d}{os.pathsep}{os.environ.get('PATH', '')}"
            return


def _set_cuda_home() -> None:
    """CUDA_HOME from the real nvcc location when unset: torch guesses dirname(dirname(which nvcc)),
    which is wrong when nvcc on PATH is a wrapper script (e.g. /usr/local/bin/nvcc)."""
    if os.environ.get("CUDA_HOME") or os.environ.get("CUDA_PATH"):
        return
    candidates = []
    nvcc = shutil.which("nvcc")
    if nvcc:
        candidates.append(Path(os.path.realpath(nvcc)).parent.parent)
    candidates.append(Path("/usr/local/cuda"))
    for home in candidates:
        if (home / "include" / "cuda_runtime.h").exists():
            os.environ["CUDA_HOME"] = str(home)
            return
    raise SystemExit("phide setup.py: PHIDE_BUILD_CUDA=1 but no CUDA toolkit found; set CUDA_HOME")


def _write_build_info(**fields) -> None:
    lines = ['"""Written by setup.py at build time (gitignored): what phide._C was built with."""', ""]
    lines += [f"{k.upper()} = {v!r}" for k, v in fields.items()]
    text = "\n".join(lines) + "\n"
    if not BUILD_INFO.exists() or BUILD_INFO.read_text() != text:
        BUILD_INFO.write_text(text)


def get_extensions() -> list:
    """Everything about what is compiled: [] or [phide._C] (C++ CPU ops, plus CUDA on request)."""
    if _flag("PHIDE_SKIP_EXT"):
        _log("PHIDE_SKIP_EXT=1: building no extension (pure-python install; torch twins only)")
        stale = sorted(p.name for p in (ROOT / "phide").glob("_C.*"))
        if stale:
            _log(f"warning: phide/{stale[0]} from an earlier build is still there and will be "
                 "loaded; delete it (make clean) or run with PHIDE_DISABLE_EXT=1")
        _write_build_info(extension="none", torch_version=None, with_cuda=False, cuda_archs=[],
                          debug=False)
        return []

    with_cuda = _flag("PHIDE_BUILD_CUDA")
    debug = _flag("PHIDE_DEBUG")
    archs = _cuda_archs() if with_cuda else []
    if with_cuda:
        _set_cuda_home()  # before torch.utils.cpp_extension reads it at import
    try:
        import torch
        from torch.utils.cpp_extension import CppExtension, CUDAExtension
    except ImportError as exc:
        raise SystemExit(
            f"phide setup.py: torch is required to build phide._C ({exc}).\n"
            "  Install torch first, then: pip install --no-build-isolation -e .\n"
            "  (or PHIDE_SKIP_EXT=1 for a pure-python install)"
        ) from exc

    sources = _sources("csrc/*.cpp")
    cxx = ["-O0", "-g"] if debug else ["-O3"]
    cxx += ["-ffp-contract=off"]  # no FMA contraction: bit-identical to the twins (torch picks -std)
    # at::parallel_for is inline OpenMP: without -fopenmp our loops silently run on one thread.
    # The .so then needs libgomp.so.1, which resolves to the copy torch has already loaded.
    openmp = [] if sys.platform == "darwin" else ["-fopenmp"]
    cxx += openmp
    defines = ["-DPHIDE_DEBUG"] if debug else []
    if with_cuda:
        sources += _sources("csrc/**/*.cu")
        defines += ["-DPHIDE_WITH_CUDA"]
        nvcc = ["-O0", "-g", "-lineinfo"] if debug else ["-O3"]
        nvcc += ["--fmad=false", f"--threads={os.environ.get('NVCC_THREADS', '1')}"]
        nvcc += _gencode_flags(archs) + defines  # explicit -gencode: torch won't probe for a GPU
        # For build_info() in bindings.cpp (g++ only: nvcc would split the -D value at commas).
        cxx += [f"-DPHIDE_CUDA_ARCHS={','.join(archs)}"]
    jobs = _cap_max_jobs(with_cuda)
    _ensure_ninja_on_path()

    kind = "CUDA + C++" if with_cuda else "C++ (CPU only)"
    why = (f"PHIDE_BUILD_CUDA=1, archs {';'.join(archs)}" if with_cuda
           else "PHIDE_BUILD_CUDA not set; set PHIDE_BUILD_CUDA=1 to add the CUDA kernels")
    _log(f"building phide._C: {kind} ({why}); torch {torch.__version__}, "
         f"{len(sources)} sources, MAX_JOBS={jobs}{', debug' if debug else ''}")
    _write_build_info(extension="cuda" if with_cuda else "cpu", torch_version=torch.__version__,
                      with_cuda=with_cuda, cuda_archs=archs, debug=debug)

    include_dirs = [str(ROOT / "csrc")]
    if with_cuda:
        ext = CUDAExtension("phide._C", sources, include_dirs=include_dirs,
                            extra_compile_args={"cxx": cxx + defines, "nvcc": nvcc},
                            extra_link_args=openmp)
    else:
        ext = CppExtension("phide._C", sources, include_dirs=include_dirs,
                           extra_compile_args={"cxx": cxx + defines}, extra_link_args=openmp)
    return [ext]


def _cmdclass(ext_modules: list) -> dict:
    if not ext_modules:
        return {}
    from torch.utils.cpp_extension import BuildExtension  # torch present: get_extensions used it

    return {"build_ext": BuildExtension}


# Packages: phide and everything under it (the Triton kernels live in phide/triton_kernels/, so
# the checkout imports exactly as an install does, editable or not).
PACKAGES = find_packages(where=str(ROOT), include=["phide", "phide.*"])

ext_modules = get_extensions()
setup(
    packages=PACKAGES,
    # The bundled trained toy pair (checkpoints, tokenizer, head, adapter): `phide demo` runs on it.
    package_data={"phide.toy": ["bundled/*/*"]},
    ext_modules=ext_modules,
    cmdclass=_cmdclass(ext_modules),
)

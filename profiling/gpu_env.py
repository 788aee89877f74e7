"""What profiling/gpu_check.sh can run on this machine, decided before it runs anything.

    python profiling/gpu_env.py                      # the report (exit 2: torch sees no GPU)
    python profiling/gpu_env.py --plan-file PLAN     # and the plan, for gpu_check.sh

The facts (`gather`): the GPU and its compute capability (torch), the NVIDIA driver version
(nvidia-smi, else /proc/driver/nvidia/version) and the CUDA version it supports (libcuda's
cuDriverGetVersion), the CUDA version torch was built for (torch.version.cuda), the nvcc that
torch.utils.cpp_extension would build with and its version, whether nsys is installed.
The decisions (`plan_check`, a pure function of the facts, tested in tests/test_gpu_env.py):

  * the driver must support torch's CUDA: a driver of the same CUDA major runs every minor of it
    (CUDA minor-version compatibility), so CUDA 13.x needs >= 580, 12.x >= 525, 11.x >= 450;
  * the CUDA extension (PHIDE_BUILD_CUDA=1) is built only with that driver, an nvcc whose
    major.minor is torch's CUDA major.minor and a GPU of compute capability >= 8.0 (the
    extension targets 80;90a; another architecture >= 8.0 outside those is added to the list);
  * without the extension only the steps that need it are skipped (tests/test_ext.py's GPU
    tests; profiling/bench_tree_accept.py then times the torch twin alone): the Triton tests,
    the other microbenchmarks, the planner and the lane sweep still run.

The plan file has one line per step, tab-separated: key, run|skip, needs (ext or -), title,
reason; and a line `archs<TAB>PHIDE_CUDA_ARCHS value`. PHIDE_GPU_FACTS (JSON of `Facts`'
fields) replaces what `gather` finds: tests drive gpu_check.sh's decisions with it.
"""

from __future__ import annotations

import argparse
import ctypes
import json
import os
import re
import shutil
import subprocess
import sys
import warnings
from dataclasses import dataclass, field

DEFAULT_CUDA_ARCHS = "80;90a"  # setup.py's default for PHIDE_BUILD_CUDA=1
MIN_COMPUTE_CAPABILITY = (8, 0)
# Minimum Linux driver per CUDA major (minor-version compatibility: any toolkit of the major runs
# on it, without PTX JIT of newer PTX); from NVIDIA's CUDA compatibility guide.
MIN_DRIVER_FOR_CUDA_MAJOR = {11: (450, 80, 2), 12: (525, 60, 13), 13: (580, 0, 0)}


@dataclass(frozen=True)
class Facts:
    """What the machine has. None: unknown / absent."""

    torch_version: str = ""
    torch_cuda: str | None = None            # torch.version.cuda, e.g. "13.0"; None: CPU build
    gpu_name: str | None = None              # None: torch sees no CUDA device
    compute_capability: tuple[int, int] | None = None
    sm_count: int | None = None
    driver_version: str | None = None        # e.g. "580.65.06"
    driver_source: str = ""                  # where driver_version came from
    driver_cuda: str | None = None           # CUDA version the driver supports, e.g. "13.0"
    nvcc_path: str | None = None
    nvcc_version: str | None = None          # e.g. "13.0"; None: no nvcc found
    nsys: bool = False
    notes: tuple[str, ...] = ()              # e.g. torch's warning about an old driver


@dataclass(frozen=True)
class Check:
    name: str
    ok: bool | None  # None: could not tell (not blocking)
    message: str


@dataclass(frozen=True)
class Step:
    key: str
    title: str
    run: bool
    reason: str = ""
    needs_ext: bool = False  # skipped too when the CUDA extension's build fails at run time


@dataclass
class Plan:
    checks: list[Check]
    steps: list[Step]
    build_cuda: bool
    cuda_archs: str
    notes: list[str] = field(default_factory=list)

    def step(self, key: str) -> Step:
        return next(s for s in self.steps if s.key == key)


def parse_version(text: str | None) -> tuple[int, ...] | None:
    """'580.65.06' -> (580, 65, 6); 'release 13.0, V13.0.88' -> (13, 0); None when no number."""
    if not text:
        return None
    m = re.search(r"\d+(?:\.\d+)*", text)
    return tuple(int(p) for p in m.group(0).split(".")) if m else None


def _major_minor(text: str | None) -> tuple[int, int] | None:
    v = parse_version(text)
    if v is None:
        return None
    return (v[0], v[1] if len(v) > 1 else 0)


def _fmt(v: tuple[int, ...]) -> str:
    return ".".join(str(p) for p in v)


def check_driver(driver_version: str | None, torch_cuda: str | None,
                 driver_cuda: str | None = None) -> Check:
    """Does the driver run code built for torch's CUDA? (minor-version compatibility)."""
    cuda = _major_minor(torch_cuda)
    if cuda is None:
        return Check("driver", False, "torch is a CPU-only build (torch.version.cuda is None)")
    need = MIN_DRIVER_FOR_CUDA_MAJOR.get(cuda[0])
    have = parse_version(driver_version)
    supported = _major_minor(driver_cuda)
    if have is not None and need is not None:
        if have >= need:
            return Check("driver", True, f"driver {driver_version} supports CUDA {torch_cuda} "
                         f"(torch's; needs >= {need[0]})")
        if supported is not None and supported[0] >= cuda[0]:  # a forward-compatibility libcuda
            return Check("driver", True, f"driver {driver_version} < {need[0]}, but its libcuda "
                         f"supports CUDA {_fmt(supported)} (CUDA forward compatibility)")
        return Check("driver", False, f"driver {driver_version} is too old for CUDA {torch_cuda} "
                     f"(torch's): CUDA {cuda[0]}.x needs a driver >= {_fmt(need)}")
    # No driver number (or a CUDA major newer than the table): the CUDA version libcuda reports.
    if supported is not None:
        if supported[0] >= cuda[0]:
            return Check("driver", True, f"driver supports CUDA {_fmt(supported)} >= CUDA "
                         f"{cuda[0]}.x (torch's {torch_cuda})")
        return Check("driver", False, f"driver supports CUDA {_fmt(supported)} only; torch was "
                     f"built for CUDA {torch_cuda}")
    what = f"driver {driver_version}" if driver_version else "driver version unknown"
    return Check("driver", None, f"{what}: cannot tell whether it supports CUDA {torch_cuda}")


def check_nvcc(nvcc_version: str | None, torch_cuda: str | None) -> Check:
    """The extension is built with nvcc against torch's CUDA headers: the same major version
    (CUDA's minor-version compatibility; scripts/cuda_build.py decides `make setup`'s build alike)."""
    if nvcc_version is None:
        return Check("nvcc", False, "nvcc not found (CUDA_HOME, PATH, /usr/local/cuda)")
    have, want = _major_minor(nvcc_version), _major_minor(torch_cuda)
    if want is None:
        return Check("nvcc", False, f"nvcc {nvcc_version}, but torch is a CPU-only build")
    if have[0] == want[0]:
        return Check("nvcc", True, f"nvcc {nvcc_version} matches torch's CUDA {torch_cuda} (major version)")
    return Check("nvcc", False, f"nvcc {nvcc_version} does not match torch's CUDA {torch_cuda} "
                 f"(needs CUDA {want[0]}.x: install it or point CUDA_HOME at it)")


def check_compute_capability(cc: tuple[int, int] | None) -> Check:
    if cc is None:
        return Check("compute capability", None, "no GPU: compute capability unknown")
    text = f"{cc[0]}.{cc[1]}"
    if tuple(cc) >= MIN_COMPUTE_CAPABILITY:
        return Check("compute capability", True,
                     f"compute capability {text} >= 8.0 (the CUDA extension targets {DEFAULT_CUDA_ARCHS})")
    return Check("compute capability", False,
                 f"compute capability {text} < 8.0: the CUDA extension targets {DEFAULT_CUDA_ARCHS}")


def cuda_archs_for(cc: tuple[int, int] | None, requested: str | None = None) -> str:
    """PHIDE_CUDA_ARCHS for the build: the user's, else the default plus the device's own
    architecture when no default cubin runs on it (sm_80 runs on 8.x, sm_90a on 9.0 only)."""
    if requested:
        return requested
    if cc is None or cc[0] == 8 or tuple(cc) == (9, 0):
        return DEFAULT_CUDA_ARCHS
    return f"{DEFAULT_CUDA_ARCHS};{cc[0]}{cc[1]}"


# (key, title, needs the CUDA extension); gpu_check.sh maps each key to its commands.
STEPS = [
    ("build_cuda", "1. build the CUDA extension", False),
    ("test_ext", "2. CUDA extension tests on the device (tests/test_ext.py -m gpu)", True),
    ("test_gpu", "2. kernel tests on the device (pytest -m gpu)", False),
    ("test_triton", "2. Triton kernels compiled for the device", False),
    ("test_triton_interp", "2. Triton kernels interpreted, and every launch precompiled (test_triton_kernels.py, test_precompile_coverage.py)", False),
    ("bench_tree_accept", "3. microbenchmark: tree acceptance (torch twin vs cpp)", False),
    ("bench_verify", "3. microbenchmark: verification kernels", False),
    ("bench_attention_mha", "3. microbenchmark: tree-verify attention (Vicuna-7B MHA)", False),
    ("bench_attention_gqa", "3. microbenchmark: tree-verify attention (GQA)", False),
    ("bench_topk", "3. microbenchmark: draft tree step top-k", False),
    ("bench_step", "3. the target's step per tree-size bucket vs the roofline (a 7B-shaped LLaMA, profiling/bench_step.py)", False),
    ("plan", "4. planner projection for the real pair (phide plan)", False),
    ("nsys", "5. Nsight Systems trace", False),
    ("sweep_lanes", "6. lane-overlap sweep (draft on 8/16/24/32 SMs of a green-context split)", False),
    ("identity_bf16", "7. greedy answers identical to target-only in bf16 (profiling/identity.py)", False),
    ("distill_gpu", "8. phide distill on the device (bf16 autocast; tests/test_distill_runs.py -m gpu)", False),
    ("sm90_compile", "9. every Triton kernel variant compiled for sm_90a offline (profiling/sm90_compile.py)", False),
]
# What runs without a CUDA device (the rest needs one).
CPU_STEPS = {"test_triton_interp", "plan", "sm90_compile"}


def plan_check(driver_version: str | None, torch_cuda: str | None, nvcc_version: str | None,
               compute_capability: tuple[int, int] | None, *, driver_cuda: str | None = None,
               nsys: bool = True, requested_archs: str | None = None) -> Plan:
    """The checks and the steps to run from the facts. Only the CUDA build (and what needs its
    extension) depends on driver / nvcc / compute capability; every other step runs."""
    checks = [check_driver(driver_version, torch_cuda, driver_cuda),
              check_nvcc(nvcc_version, torch_cuda),
              check_compute_capability(compute_capability)]
    blockers = [c.message for c in checks if c.ok is False]
    build = not blockers
    build_reason = "; ".join(blockers)
    notes = []
    archs = cuda_archs_for(compute_capability, requested_archs)
    if build and archs != (requested_archs or DEFAULT_CUDA_ARCHS):
        notes.append(f"no {DEFAULT_CUDA_ARCHS} cubin runs on compute capability "
                     f"{compute_capability[0]}.{compute_capability[1]}: building for {archs}")
    steps = []
    for key, title, needs_ext in STEPS:
        if compute_capability is None and key not in CPU_STEPS:
            steps.append(Step(key, title, False, "no CUDA device", needs_ext))
        elif key == "build_cuda":
            steps.append(Step(key, title, build, build_reason))
        elif needs_ext and not build:
            steps.append(Step(key, title, False, "no CUDA extension: " + build_reason, needs_ext))
        elif key == "bench_tree_accept" and not build:
            steps.append(Step(key, title, True, "torch twin only (no CUDA extension: "
                              f"{build_reason})", needs_ext))
        elif key == "nsys" and not nsys:
            steps.append(Step(key, title, False, "nsys not installed"))
        else:
            steps.append(Step(key, title, True, "", needs_ext))
    return Plan(checks, steps, build, archs, notes)


def plan_for(facts: Facts, requested_archs: str | None = None) -> Plan:
    return plan_check(facts.driver_version, facts.torch_cuda, facts.nvcc_version,
                      facts.compute_capability, driver_cuda=facts.driver_cuda, nsys=facts.nsys,
                      requested_archs=requested_archs)


# -- gathering the facts --------------------------------------------------------------------------

def _run(cmd: list[str], timeout: float = 30) -> str | None:
    try:
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, check=False)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout if out.returncode == 0 else None


def driver_version() -> tuple[str | None, str]:
    """(version, source): nvidia-smi, else the kernel module's /proc/driver/nvidia/version."""
    if shutil.which("nvidia-smi"):
        out = _run(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"])
        if out and out.strip() and parse_version(out.splitlines()[0]):
            return out.splitlines()[0].strip(), "nvidia-smi"
    try:
        with open("/proc/driver/nvidia/version") as f:
            m = re.search(r"Kernel Module(?: for \S+)?\s+(\d+(?:\.\d+)+)", f.read())
        if m:
            return m.group(1), "/proc/driver/nvidia/version"
    except OSError:
        pass
    smi = "nvidia-smi failed" if shutil.which("nvidia-smi") else "no nvidia-smi"
    return None, f"{smi}, no /proc/driver/nvidia/version"


def driver_cuda_version() -> str | None:
    """The CUDA version libcuda (the driver's user-space library) supports: cuDriverGetVersion."""
    try:
        lib = ctypes.CDLL("libcuda.so.1")
    except OSError:
        return None
    version = ctypes.c_int(0)
    if lib.cuDriverGetVersion(ctypes.byref(version)) != 0 or version.value <= 0:
        return None
    return f"{version.value // 1000}.{version.value % 1000 // 10}"


def find_nvcc() -> str | None:
    """The nvcc torch.utils.cpp_extension builds with: $CUDA_HOME/$CUDA_PATH, else nvcc on PATH,
    else /usr/local/cuda (its lookup order, without importing it)."""
    home = os.environ.get("CUDA_HOME") or os.environ.get("CUDA_PATH")
    if home:
        path = os.path.join(home, "bin", "nvcc")
        return path if os.path.exists(path) else None
    return shutil.which("nvcc") or (
        "/usr/local/cuda/bin/nvcc" if os.path.exists("/usr/local/cuda/bin/nvcc") else None)


def nvcc_version(nvcc: str | None) -> str | None:
    out = _run([nvcc, "--version"]) if nvcc else None
    m = re.search(r"release (\d+\.\d+)", out or "")
    return m.group(1) if m else None


def gather() -> Facts:
    import torch

    notes: list[str] = []
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        available = torch.cuda.is_available()
    notes += [str(w.message).strip().splitlines()[0] for w in caught]
    name = cc = sms = None
    if available:
        props = torch.cuda.get_device_properties(0)
        name, cc, sms = props.name, (props.major, props.minor), props.multi_processor_count
    version, source = driver_version()
    nvcc = find_nvcc()
    return Facts(torch_version=torch.__version__, torch_cuda=torch.version.cuda, gpu_name=name,
                 compute_capability=cc, sm_count=sms, driver_version=version, driver_source=source,
                 driver_cuda=driver_cuda_version(), nvcc_path=nvcc, nvcc_version=nvcc_version(nvcc),
                 nsys=shutil.which("nsys") is not None, notes=tuple(notes))


def facts_from_env() -> Facts | None:
    raw = os.environ.get("PHIDE_GPU_FACTS")
    if not raw:
        return None
    data = json.loads(raw)
    if data.get("compute_capability") is not None:
        data["compute_capability"] = tuple(data["compute_capability"])
    data["notes"] = tuple(data.get("notes", ()))
    return Facts(**data)


# -- report -----------------------------------------------------------------------------------------

def _mark(ok: bool | None) -> str:
    return {True: "ok", False: "NO", None: "?"}[ok]


def report(facts: Facts, plan: Plan) -> list[str]:
    """The lines gpu_check.sh prints first: device, driver, nvcc, compute capability, plan."""
    p = "gpu_check:"
    built = f"CUDA {facts.torch_cuda}" if facts.torch_cuda else "no CUDA: a CPU-only build"
    torch_line = f"torch {facts.torch_version} (built for {built})"
    if facts.gpu_name is None:
        lines = [f"{p} no CUDA device visible to {torch_line}: only the steps a CPU can run"]
    else:
        cc = facts.compute_capability
        lines = [(f"{p} GPU {facts.gpu_name}, compute capability {cc[0]}.{cc[1]}, "
                  f"{facts.sm_count} SMs; {torch_line}")]
    driver = (f"NVIDIA driver {facts.driver_version}" if facts.driver_version
              else "NVIDIA driver: not found")
    libcuda = (f"libcuda supports CUDA {facts.driver_cuda}" if facts.driver_cuda
               else "libcuda.so.1: not loadable")
    lines.append(f"{p} {driver} ({facts.driver_source or 'not looked up'}); {libcuda}")
    nvcc = (f"nvcc {facts.nvcc_version} ({facts.nvcc_path})" if facts.nvcc_version
            else "nvcc not found")
    lines.append(f"{p} {nvcc}")
    for check in plan.checks:
        lines.append(f"{p}   [{_mark(check.ok)}] {check.name}: {check.message}")
    lines += [f"{p} note: {n}" for n in list(facts.notes) + plan.notes]
    for step in plan.steps:
        what = "run " if step.run else "skip"
        lines.append(f"{p}   {what} {step.title}" + (f": {step.reason}" if step.reason else ""))
    return lines


def write_plan(path: str, plan: Plan) -> None:
    def clean(s: str) -> str:
        return s.replace("\t", " ").replace("\n", " ")

    with open(path, "w") as f:
        f.write(f"archs\t{plan.cuda_archs}\n")
        f.writelines("\t".join([s.key, "run" if s.run else "skip", "ext" if s.needs_ext else "-",
                                clean(s.title), clean(s.reason) or "-"]) + "\n"
                     for s in plan.steps)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--plan-file", help="write the step plan here (for gpu_check.sh)")
    args = ap.parse_args(argv)
    facts = facts_from_env() or gather()
    plan = plan_for(facts, os.environ.get("PHIDE_CUDA_ARCHS", "").strip() or None)
    lines = report(facts, plan)
    print("\n".join(lines), flush=True)
    if args.plan_file:
        write_plan(args.plan_file, plan)
    return 2 if facts.gpu_name is None else 0  # 2: no CUDA device (the plan runs the CPU steps)


if __name__ == "__main__":
    sys.exit(main())

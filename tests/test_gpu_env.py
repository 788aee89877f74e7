"""profiling/gpu_env.py's decisions (what gpu_check.sh runs) and gpu_check.sh itself, without a GPU:
the script's steps are driven through PHIDE_GPU_FACTS and a stand-in python that only logs them."""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import stat
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "profiling" / "gpu_check.sh"

_spec = importlib.util.spec_from_file_location("gpu_env", ROOT / "profiling" / "gpu_env.py")
gpu_env = importlib.util.module_from_spec(_spec)
sys.modules["gpu_env"] = gpu_env  # dataclasses look the module up while the class is made
_spec.loader.exec_module(gpu_env)

H100 = {"driver_version": "580.65.06", "torch_cuda": "13.0", "nvcc_version": "13.0",
        "compute_capability": (9, 0)}
NEEDS_EXT = {"test_ext"}


def plan(**overrides):
    facts = {**H100, **overrides}
    return gpu_env.plan_check(facts.pop("driver_version"), facts.pop("torch_cuda"),
                              facts.pop("nvcc_version"), facts.pop("compute_capability"), **facts)


def runs(p) -> set[str]:
    return {s.key for s in p.steps if s.run}


def check(p, name):
    return next(c for c in p.checks if c.name == name)


ALL_STEPS = {key for key, _, _ in gpu_env.STEPS}


# -- the decisions ----------------------------------------------------------------------------------

def test_all_good_runs_every_step():
    p = plan()
    assert p.build_cuda and runs(p) == ALL_STEPS
    assert all(c.ok for c in p.checks)
    assert "580.65.06 supports CUDA 13.0" in check(p, "driver").message
    assert "matches torch's CUDA 13.0" in check(p, "nvcc").message
    assert "9.0 >= 8.0" in check(p, "compute capability").message
    assert p.cuda_archs == "80;90a" and p.step("bench_tree_accept").reason == ""


def test_old_driver_skips_only_the_cuda_extension():
    p = plan(driver_version="570.124.06")
    assert not p.build_cuda
    assert runs(p) == ALL_STEPS - {"build_cuda"} - NEEDS_EXT
    driver = check(p, "driver")
    assert driver.ok is False
    assert "570.124.06 is too old for CUDA 13.0" in driver.message and ">= 580" in driver.message
    assert "too old" in p.step("build_cuda").reason and "too old" in p.step("test_ext").reason
    assert p.step("bench_tree_accept").reason.startswith("torch twin only")
    for key in ("test_triton", "test_triton_interp", "plan", "sweep_lanes", "test_gpu"):
        assert p.step(key).run


def test_no_nvcc_skips_the_build():
    p = plan(nvcc_version=None)
    assert not p.build_cuda and runs(p) == ALL_STEPS - {"build_cuda"} - NEEDS_EXT
    assert check(p, "nvcc").ok is False and check(p, "driver").ok
    assert "nvcc not found" in p.step("build_cuda").reason


@pytest.mark.parametrize("nvcc", ["12.8", "14.0"])
def test_mismatched_nvcc_skips_the_build(nvcc):
    p = plan(nvcc_version=nvcc)
    assert not p.build_cuda and runs(p) == ALL_STEPS - {"build_cuda"} - NEEDS_EXT
    assert f"nvcc {nvcc} does not match torch's CUDA 13.0" in p.step("build_cuda").reason


def test_an_nvcc_of_the_same_major_version_builds():
    """CUDA's minor-version compatibility: nvcc 13.1 builds for a torch built with CUDA 13.0
    (gpu_check.sh and `make setup` decide alike: scripts/cuda_build.py)."""
    import importlib.util
    from pathlib import Path

    p = plan(nvcc_version="13.1")
    assert p.build_cuda and "matches torch's CUDA 13.0" in check(p, "nvcc").message
    path = Path(__file__).resolve().parents[1] / "scripts" / "cuda_build.py"
    spec = importlib.util.spec_from_file_location("cuda_build", path)
    cuda_build = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(cuda_build)
    assert cuda_build.decide("13.0", "/x/nvcc", "13.1")[0] is True
    build, why = cuda_build.decide("13.0", "/x/nvcc", "12.8")
    assert build is False and "nvcc 12.8 is not CUDA 13.x" in why
    assert cuda_build.decide("13.0", None, None)[0] is False and cuda_build.decide(None, "/x/nvcc", "13.0")[0] is False


def test_compute_capability_below_8_skips_the_build():
    p = plan(compute_capability=(7, 5))
    assert not p.build_cuda and runs(p) == ALL_STEPS - {"build_cuda"} - NEEDS_EXT
    assert "compute capability 7.5 < 8.0" in p.step("build_cuda").reason
    assert check(p, "driver").ok and check(p, "nvcc").ok


def test_every_blocker_is_named():
    p = plan(driver_version="550.54.14", nvcc_version=None, compute_capability=(7, 0))
    reason = p.step("build_cuda").reason
    assert "too old" in reason and "nvcc not found" in reason and "7.0 < 8.0" in reason


def test_driver_checks_per_cuda_major_and_fallbacks():
    assert check(plan(torch_cuda="12.8", nvcc_version="12.8", driver_version="535.183.01"),
                 "driver").ok  # minor-version compatibility: 12.x runs on >= 525
    assert check(plan(torch_cuda="12.8", nvcc_version="12.8", driver_version="520.61.05"),
                 "driver").ok is False
    # a CUDA forward-compatibility libcuda on an older kernel driver
    assert check(plan(driver_version="535.104.05", driver_cuda="13.0"), "driver").ok
    # no driver number: the CUDA version libcuda reports
    assert check(plan(driver_version=None, driver_cuda="13.0"), "driver").ok
    assert check(plan(driver_version=None, driver_cuda="12.9"), "driver").ok is False
    unknown = plan(driver_version=None)
    assert check(unknown, "driver").ok is None and unknown.build_cuda  # cannot tell: not blocking
    assert check(plan(torch_cuda=None), "driver").ok is False


def test_architectures_beyond_the_defaults_are_added():
    assert plan(compute_capability=(8, 6)).cuda_archs == "80;90a"
    p = plan(compute_capability=(10, 0))
    assert p.build_cuda and p.cuda_archs == "80;90a;100" and "building for 80;90a;100" in p.notes[0]
    assert plan(compute_capability=(12, 0), requested_archs="120").cuda_archs == "120"


def test_missing_nsys_is_a_skip():
    p = plan(nsys=False)
    assert not p.step("nsys").run and p.step("nsys").reason == "nsys not installed"


def test_version_parsing():
    assert gpu_env.parse_version("580.65.06") == (580, 65, 6)
    assert gpu_env.parse_version("N/A") is None and gpu_env.parse_version(None) is None


def test_report_names_device_driver_nvcc_and_capability():
    facts = gpu_env.Facts(torch_version="2.14.1+cu130", torch_cuda="13.0", gpu_name="NVIDIA H100",
                          compute_capability=(9, 0), sm_count=132, driver_version="575.51.03",
                          driver_source="nvidia-smi", driver_cuda="12.9",
                          nvcc_path="/usr/local/cuda/bin/nvcc", nvcc_version="13.0")
    lines = gpu_env.report(facts, gpu_env.plan_for(facts))
    assert lines[0].startswith("gpu_check: GPU NVIDIA H100, compute capability 9.0, 132 SMs")
    assert "NVIDIA driver 575.51.03 (nvidia-smi)" in lines[1]
    assert "nvcc 13.0" in lines[2]
    text = "\n".join(lines)
    assert "[NO] driver: driver 575.51.03 is too old for CUDA 13.0" in text
    assert "skip 1. build the CUDA extension" in text


# -- gpu_check.sh -------------------------------------------------------------------------------------

needs_bash = pytest.mark.skipif(shutil.which("bash") is None, reason="needs bash")


@needs_bash
@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the GPU-less run")
def test_gpu_check_without_a_gpu_runs_the_cpu_steps_and_writes_its_report(tmp_path):
    report = tmp_path / "report"
    env = {**os.environ, "PYTHON": str(_stand_in_python(tmp_path, "no-such-command")), "GPU_CHECK_OUT": str(report)}
    env.pop("PHIDE_GPU_FACTS", None)
    out = subprocess.run(["bash", str(SCRIPT)], cwd=ROOT, env=env, capture_output=True, text=True,
                         timeout=120, check=False)
    assert out.returncode == 2, out.stdout + out.stderr
    lines = out.stdout.splitlines()
    assert lines[1].startswith("gpu_check: no CUDA device visible to torch"), lines
    assert "only the steps a CPU can run" in lines[1]
    calls = (tmp_path / "calls.log").read_text().splitlines()
    assert not any("pip install" in c for c in calls)  # nothing built or installed
    assert "-m phide.cli plan" in calls and "profiling/sm90_compile.py" in calls
    assert any("tests/test_triton_kernels.py" in c for c in calls)
    assert "== summary: 3 run, 0 failed, 14 skipped" in out.stdout
    files = {f.name for f in report.iterdir()}
    assert {"environment.txt", "summary.txt", "plan.log", "sm90_compile.log", "test_triton_interp.log"} <= files
    assert "nvcc" in (report / "environment.txt").read_text()
    assert "skipped: 6. lane-overlap sweep" in (report / "summary.txt").read_text()


def _stand_in_python(tmp_path: Path, fail: str) -> Path:
    """A python for gpu_check.sh: gpu_env.py runs for real, every other command is logged to
    calls.log and exits 3 when its command line contains `fail`."""
    log = tmp_path / "calls.log"
    exe = tmp_path / "python"
    exe.write_text(f"""#!/usr/bin/env bash
if [ "$1" = profiling/gpu_env.py ]; then exec {sys.executable} "$@"; fi
if [ "$1" = - ]; then cat >/dev/null; fi
echo "$*" >> {log}
case "$*" in *"{fail}"*) exit 3;; esac
exit 0
""")
    exe.chmod(exe.stat().st_mode | stat.S_IXUSR)
    return exe


def _stand_in_nsys(tmp_path: Path) -> Path:
    """profiling/nsys_trace.sh's stand-in: logs its arguments and where the trace goes."""
    script = tmp_path / "nsys_trace.sh"
    script.write_text(f'echo "nsys_trace $* -> $OUT" >> {tmp_path / "calls.log"}\n')
    return script


def _gpu_check(tmp_path, fail="no-such-command", **facts):
    facts = {"torch_version": "2.14.1+cu130", "torch_cuda": "13.0", "gpu_name": "NVIDIA H100",
             "compute_capability": [9, 0], "sm_count": 132, "driver_version": "580.65.06",
             "driver_source": "nvidia-smi", "nvcc_version": "13.0",
             "nvcc_path": "/usr/local/cuda/bin/nvcc", "nsys": False, **facts}
    env = {**os.environ, "PYTHON": str(_stand_in_python(tmp_path, fail)),
           "PHIDE_GPU_FACTS": json.dumps(facts), "GPU_CHECK_OUT": str(tmp_path / "report"),
           "NSYS_TRACE": str(_stand_in_nsys(tmp_path))}
    env.pop("PHIDE_CUDA_ARCHS", None)
    out = subprocess.run(["bash", str(SCRIPT)], cwd=ROOT, env=env, capture_output=True, text=True,
                         timeout=120, check=False)
    log = tmp_path / "calls.log"
    calls = log.read_text().splitlines() if log.exists() else []
    return out, calls


@needs_bash
def test_gpu_check_failed_build_skips_only_the_extension_steps(tmp_path):
    out, calls = _gpu_check(tmp_path, fail="pip install")
    text = out.stdout
    assert out.returncode == 1, text + out.stderr
    assert text.splitlines()[1].startswith("gpu_check: GPU NVIDIA H100, compute capability 9.0")
    assert "FAILED: 1. build the CUDA extension (exit 3)" in text
    assert not any("test_ext.py" in c for c in calls)
    assert any("tests/test_tree_attention.py" in c for c in calls)  # Triton still runs
    assert "-m phide.cli plan" in calls and any("sweep_lanes.py" in c for c in calls)
    assert "profiling/bench_tree_accept.py --backends torch" in calls
    assert "cpp backend skipped: the CUDA extension's build failed" in text
    assert "== summary: 14 run, 1 failed, 3 skipped" in text
    assert "  FAILED: 1. build the CUDA extension (exit 3)" in text


@needs_bash
def test_gpu_check_without_nvcc_skips_the_build_and_goes_on(tmp_path):
    out, calls = _gpu_check(tmp_path, nvcc_version=None)
    text = out.stdout
    assert out.returncode == 0, text + out.stderr
    assert "[NO] nvcc: nvcc not found" in text
    assert not any("pip install" in c for c in calls) and not any("test_ext.py" in c for c in calls)
    assert "profiling/bench_tree_accept.py --backends torch" in calls
    assert "-m phide.cli plan" in calls
    assert "skipped: nvcc not found" in text and "FAILED" not in text
    assert "== summary: 14 run, 0 failed, 4 skipped" in text


@needs_bash
def test_gpu_check_a_failing_step_does_not_stop_the_rest(tmp_path):
    out, calls = _gpu_check(tmp_path, fail="test_tree_attention.py", nsys=True)
    text = out.stdout
    assert out.returncode == 1, text + out.stderr
    assert any(c.startswith("-m pip install") for c in calls)
    assert any("-m pytest -q -m gpu tests/test_ext.py" in c for c in calls)  # the build worked
    assert "profiling/bench_tree_accept.py" in calls  # both backends
    assert "FAILED: 2. Triton kernels compiled for the device (exit 3)" in text
    assert calls[-1] == "profiling/sm90_compile.py"  # the last step still ran
    assert f"nsys_trace phide/toy/bundled/target phide/toy/bundled/draft -> {tmp_path}/report/nsys_hide" in calls
    assert "== summary: 16 run, 1 failed, 0 skipped" in text
    assert (tmp_path / "report" / "test_triton.log").exists()

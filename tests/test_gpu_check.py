"""The CPU side of ``make gpu-check`` (dmkernels/bench/gpu_check.py): the skip
path without CUDA, argument parsing, the stage commands, time limits, the
parsers of pytest's and compute-sanitizer's output, the result files on fake
numbers, a failing stage not stopping the next, and a dry run of the pipeline
on CPU tensors (the sanitize script and the GPU benchmark cases)."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import torch

from dmkernels.bench import gpu_bench, gpu_check, gpu_profile, gpu_sanitize
from dmkernels.bench.gpu_check import StageResult

ROOT = Path(__file__).resolve().parents[1]


def _no_gpu_env() -> dict:
    env = dict(os.environ, CUDA_VISIBLE_DEVICES="", PYTHONPATH=str(ROOT))
    env.pop("DMKERNELS_BACKEND", None)
    return env


# ---------------------------------------------------------------------------
# Without CUDA
# ---------------------------------------------------------------------------


def test_without_cuda_it_exits_0_with_one_line():
    # CUDA_VISIBLE_DEVICES="" hides any GPU, so this holds on a GPU machine too.
    done = subprocess.run([sys.executable, "-m", "dmkernels.bench.gpu_check"], cwd=ROOT, env=_no_gpu_env(),
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    lines = done.stdout.strip().splitlines()
    assert len(lines) == 1, done.stdout
    assert lines[0].startswith("gpu-check: skipped: ")
    assert "CUDA" in lines[0]


def test_make_gpu_check_target_calls_the_module_without_installing():
    text = (ROOT / "Makefile").read_text()
    phony = next(line for line in text.splitlines() if line.startswith(".PHONY:"))
    assert "gpu-check" in phony.split()
    target = text.split("\ngpu-check:", 1)[1].split("\n\n", 1)[0]
    assert target.startswith("\n")  # no prerequisites: in particular not `install`
    assert "-m dmkernels.bench.gpu_check" in target
    assert "install" not in target and "pip" not in target


def test_skip_reason(monkeypatch):
    monkeypatch.setattr(torch.version, "cuda", None)
    assert "built without CUDA" in gpu_check.skip_reason()
    monkeypatch.setattr(torch.version, "cuda", "13.0")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
    assert "sees no CUDA device" in gpu_check.skip_reason() and "CUDA_VISIBLE_DEVICES=''" in gpu_check.skip_reason()
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert gpu_check.skip_reason() is None


def test_main_skips_before_doing_anything(monkeypatch, capsys):
    monkeypatch.setattr(gpu_check, "skip_reason", lambda: "no GPU in this test")
    monkeypatch.setattr(gpu_check, "Pipeline", None)  # reaching it would raise
    assert gpu_check.main(["--device", "cuda"]) == 0
    assert capsys.readouterr().out == "gpu-check: skipped: no GPU in this test\n"


# ---------------------------------------------------------------------------
# Arguments
# ---------------------------------------------------------------------------


def test_parse_args_defaults():
    args = gpu_check.parse_args([])
    assert args.device == "auto"
    assert args.stages == ("build", "tests", "sanitize", "bench")
    assert args.out_dir == ROOT / "benchmarks" / "results"
    assert args.log_dir == ROOT / "build" / "gpu_check"
    assert args.backends == ["native", "triton"]
    assert args.budget == gpu_check.BUDGET_S <= 570  # inside the lent machine's 10-minute command limit
    assert args.test_select == "cuda"
    assert not args.quick
    assert [getattr(args, f"{s}_timeout") for s in gpu_check.STAGES] == [gpu_check.STAGE_LIMITS[s]
                                                                       for s in gpu_check.STAGES]


def test_parse_args_cpu_dry_run_and_overrides(tmp_path):
    args = gpu_check.parse_args(["--device", "cpu", "--stages", "bench,sanitize", "--out-dir", str(tmp_path),
                                 "--budget", "100", "--tests-timeout", "30", "--backends", "native"])
    assert args.stages == ("sanitize", "bench")  # pipeline order, whatever the order given
    assert args.out_dir == tmp_path and args.quick
    assert args.budget == 100 and args.tests_timeout == 30 and args.backends == ["native"]
    cpu = gpu_check.parse_args(["--device", "cpu"])
    assert cpu.stages == ("sanitize", "bench") and cpu.out_dir == ROOT / "build" / "gpu_check"


@pytest.mark.parametrize("argv", [
    ["--stages", "build,lint"], ["--stages", ""], ["--device", "tpu"], ["--budget", "0"], ["--budget", "nan"],
    ["--bench-timeout", "-5"], ["--backends", "native,cuda"], ["--test-workers", "-2"],
])
def test_parse_args_refuses(argv, capsys):
    with pytest.raises(SystemExit) as exc:
        gpu_check.parse_args(argv)
    assert exc.value.code == 2
    assert "error" in capsys.readouterr().err


# ---------------------------------------------------------------------------
# The stages' commands and limits
# ---------------------------------------------------------------------------


def test_build_command_targets_the_present_architecture_only():
    cmd, env = gpu_check.build_command((9, 0), 16)
    assert cmd[1:] == ["setup.py", "build_ext", "--inplace"]
    assert env == {"TORCH_CUDA_ARCH_LIST": "9.0", "MAX_JOBS": "16"}
    assert gpu_check.build_command((8, 6), None)[1] == {"TORCH_CUDA_ARCH_LIST": "8.6", "MAX_JOBS": "1"}


def test_tests_command(tmp_path):
    args = gpu_check.parse_args([])
    cmd = gpu_check.tests_command(args, tmp_path / "junit.xml", workers=0)
    assert cmd[:4] == [sys.executable, "-m", "pytest", "tests"]
    assert cmd[cmd.index("-k") + 1] == "cuda"
    assert f"--junitxml={tmp_path / 'junit.xml'}" in cmd and "-rA" in cmd
    assert "--continue-on-collection-errors" in cmd  # one broken module must not stop the rest
    assert "--ignore=tests/test_cuda_compile.py" in cmd  # minutes of nvcc, no GPU work
    assert "-n" not in cmd
    with_workers = gpu_check.tests_command(args, tmp_path / "junit.xml", workers=4)
    assert with_workers[with_workers.index("-n") + 1] == "4"


def test_sanitize_command():
    cmd = gpu_check.sanitize_command("/opt/cuda/bin/compute-sanitizer", torch.device("cuda"), ["native", "triton"])
    assert cmd[:3] == ["/opt/cuda/bin/compute-sanitizer", "--tool", "memcheck"]
    script = cmd[cmd.index(sys.executable):]
    assert script == [sys.executable, "-m", "dmkernels.bench.gpu_sanitize", "--device", "cuda", "--backends",
                      "native,triton"]
    assert gpu_check.sanitize_command(None, torch.device("cpu"), ["native"])[0] == sys.executable


def test_child_env(monkeypatch):
    monkeypatch.setenv("DMKERNELS_BACKEND", "reference")
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    cuda = gpu_check.child_env(torch.device("cuda"), MAX_JOBS="3")
    assert "DMKERNELS_BACKEND" not in cuda and "TRITON_INTERPRET" not in cuda  # Triton compiled for the GPU
    assert cuda["MAX_JOBS"] == "3" and cuda["PYTHONPATH"].split(os.pathsep)[0] == str(ROOT)
    assert cuda["PATH"].split(os.pathsep)[0] == os.path.dirname(sys.executable)  # ninja beside this Python
    assert gpu_check.child_env(torch.device("cpu"))["TRITON_INTERPRET"] == "1"


def test_stage_time_limits_fit_the_budget():
    args = gpu_check.parse_args(["--budget", "10000"])
    p = gpu_check.Pipeline(args, torch.device("cpu"))
    assert p.timeout("build") == gpu_check.STAGE_LIMITS["build"]  # plenty of budget: the stage's own limit
    p.args.budget = 280  # build leaves tests, sanitize and bench their reserve: 280 - 60 - 45 - 75
    assert p.timeout("build") == pytest.approx(100, abs=1)
    p.start -= 390  # 10 s left: still the stage's own reserve, never nothing
    assert p.timeout("bench") == gpu_check.STAGE_RESERVE["bench"]
    p.args.stages = ("build",)  # no later stage to keep time for
    p.start += 390
    assert p.timeout("build") == gpu_check.STAGE_LIMITS["build"]


def test_device_slug():
    assert gpu_check.device_slug("NVIDIA H200") == "nvidia-h200"
    assert gpu_check.device_slug("NVIDIA H100 80GB HBM3") == "nvidia-h100-80gb-hbm3"
    assert gpu_check.device_slug("  Tesla T4 (PCIe)/x ") == "tesla-t4-pcie-x"
    assert gpu_check.device_slug("??") == "unknown"


# ---------------------------------------------------------------------------
# Running a stage: time limits, pytest and compute-sanitizer output
# ---------------------------------------------------------------------------


def test_run_logged_records_output_and_exit_code(tmp_path):
    done = gpu_check.run_logged([sys.executable, "-c", "print('hello'); raise SystemExit(3)"], tmp_path / "a.log",
                                timeout=60)
    assert done.returncode == 3 and not done.timed_out
    assert "hello" in done.text() and done.text().startswith("$ ")


def test_run_logged_stops_a_stage_at_its_limit(tmp_path):
    start = time.perf_counter()
    done = gpu_check.run_logged([sys.executable, "-c", "import time; print('started', flush=True); time.sleep(60)"],
                                tmp_path / "b.log", timeout=2)
    assert done.timed_out and time.perf_counter() - start < 30
    assert "started" in done.text()


def test_run_logged_kills_what_ignores_the_interrupt(tmp_path, monkeypatch):
    monkeypatch.setattr(gpu_check, "GRACE_S", 1)
    code = "import signal, time; signal.signal(signal.SIGINT, signal.SIG_IGN); print('up', flush=True); time.sleep(60)"
    start = time.perf_counter()
    done = gpu_check.run_logged([sys.executable, "-c", code], tmp_path / "c.log", timeout=2)
    # It outlived the SIGINT (the grace second passed) and then not the SIGKILL.
    assert done.timed_out and 2.9 <= time.perf_counter() - start < 30
    assert "up" in done.text()


def test_junit_and_summary_parsers(tmp_path):
    junit = tmp_path / "junit.xml"
    junit.write_text(textwrap.dedent("""\
        <?xml version="1.0" encoding="utf-8"?>
        <testsuites><testsuite name="pytest" errors="1" failures="2" skipped="3" tests="10">
        <testcase classname="tests.test_a" name="test_x[native-cuda]"><failure message="boom"/></testcase>
        <testcase classname="tests.test_a" name="test_y[triton-cuda]"><error message="setup"/></testcase>
        <testcase classname="tests.test_b" name="test_z[native-cuda]"/>
        </testsuite></testsuites>"""))
    assert gpu_check.junit_counts(junit) == dict(passed=4, failed=2, errors=1, skipped=3)
    assert gpu_check.junit_failures(junit) == ["tests.test_a::test_x[native-cuda]", "tests.test_a::test_y[triton-cuda]"]
    assert gpu_check.junit_counts(tmp_path / "missing.xml") is None
    line = "==== 3 failed, 120 passed, 7 skipped, 2 errors in 81.2s (0:01:21) ===="
    assert gpu_check.summary_counts("noise\n" + line) == dict(passed=120, failed=3, errors=2, skipped=7)
    assert gpu_check.summary_counts("nothing ran") is None


def test_sanitizer_error_count():
    assert gpu_check.sanitizer_errors("========= COMPUTE-SANITIZER\n...\n========= ERROR SUMMARY: 0 errors\n") == 0
    text = "========= Invalid __global__ read of size 4 bytes\n========= ERROR SUMMARY: 12 errors\n"
    assert gpu_check.sanitizer_errors(text) == 12
    assert gpu_check.sanitizer_errors("========= ERROR SUMMARY: 1 error\n") == 1
    assert gpu_check.sanitizer_errors("Traceback (most recent call last):") is None


def test_tests_stage_counts_a_real_pytest_run(tmp_path):
    module = tmp_path / "test_fake_gpu.py"
    module.write_text(textwrap.dedent("""\
        import pytest

        def test_ok_cuda():
            pass

        def test_broken_cuda():
            assert False

        @pytest.mark.skip(reason="absent")
        def test_absent_cuda():
            pass

        def test_not_selected():
            assert False
        """))
    args = gpu_check.parse_args(["--device", "cpu", "--log-dir", str(tmp_path / "logs"), "--test-workers", "0"])
    result = gpu_check.stage_tests(gpu_check.Pipeline(args, torch.device("cpu")), paths=[str(module)])
    assert result.status == "failed"
    assert {k: result.data[k] for k in ("passed", "failed", "errors", "skipped")} == dict(
        passed=1, failed=1, errors=0, skipped=1)
    # JUnit's class name carries the module's path relative to pytest's rootdir,
    # which for a file under tmp_path depends on where the run starts.
    [failed] = result.data["failed_tests"]
    assert failed.endswith("test_fake_gpu::test_broken_cuda"), failed
    assert "1 passed, 1 failed" in result.detail
    assert (tmp_path / "logs" / "tests.log").exists()


def test_tests_stage_runs_in_one_process_when_xdist_workers_disagree(tmp_path, monkeypatch):
    calls = []

    def fake_run_logged(cmd, log, *, timeout, env=None, cwd=ROOT):
        calls.append(cmd)
        log.parent.mkdir(parents=True, exist_ok=True)
        first = len(calls) == 1
        log.write_text("Different tests were collected between gw0 and gw1\n" if first else "== 5 passed in 1.0s ==\n")
        return gpu_check.Finished(1 if first else 0, 1.0, log)

    monkeypatch.setattr(gpu_check, "run_logged", fake_run_logged)
    args = gpu_check.parse_args(["--device", "cpu", "--log-dir", str(tmp_path)])
    monkeypatch.setattr(gpu_check, "xdist_workers", lambda requested, cpus: 4)
    result = gpu_check.stage_tests(gpu_check.Pipeline(args, torch.device("cpu")))
    assert "-n" in calls[0] and "-n" not in calls[1]
    assert result.status == "ok" and result.data["passed"] == 5


# What the first H200 run printed: a crashed xdist worker, and cuda-gdb's bt.
_CRASH_LOG = """..Fatal Python error: Segmentation fault
[gw2] node down: Not properly terminated
worker 'gw2' crashed while running 'tests/test_validation.py::test_raw_ops_name_the_argument[native-cuda-token_stats-3]'
worker 'gw7' crashed while running 'tests/test_validation.py::test_raw_ops_name_the_argument[native-cuda-select_group-55]'
== 10 failed, 1331 passed, 12 skipped in 166.94s ==
"""
_GDB_OUTPUT = """warning: Cuda Driver error detected: No CUDA context is current to the calling thread
Thread 1 "python3" received signal SIGSEGV, Segmentation fault.
0x00007fff144d0a34 in std::codecvt<char16_t, char, __mbstate_t>::do_unshift() const () from _C.so
#0  0x00007fff144d0a34 in std::codecvt<char16_t, char, __mbstate_t>::do_unshift() const () from _C.so
#1  0x00007fff14524c51 in std::basic_ostream<char>::_M_insert<long>(long) () from _C.so
#2  0x00007fff144b246f in dmkernels::check_token_stats_args(...) () from _C.so
"""


def test_crashed_tests_and_backtrace_frames_are_read_from_the_logs():
    assert gpu_check.crashed_tests(_CRASH_LOG) == [
        "tests/test_validation.py::test_raw_ops_name_the_argument[native-cuda-token_stats-3]",
        "tests/test_validation.py::test_raw_ops_name_the_argument[native-cuda-select_group-55]"]
    assert gpu_check.crashed_tests("== 3 passed ==") == []
    frames = gpu_check.backtrace_frames(_GDB_OUTPUT)
    assert frames[0].startswith('Thread 1 "python3" received signal SIGSEGV')
    assert [f.split()[0] for f in frames[1:]] == ["#0", "#1", "#2"] and "_M_insert<long>" in frames[2]
    assert gpu_check.backtrace_frames("exited normally") == []


def test_a_crashed_test_is_rerun_under_the_debugger(tmp_path, monkeypatch):
    # A stand-in debugger that prints what cuda-gdb printed for the first crash.
    debugger = tmp_path / "fake-gdb"
    debugger.write_text(f"#!{sys.executable}\nimport sys\nsys.stdout.write({_GDB_OUTPUT!r})\n")
    debugger.chmod(0o755)
    monkeypatch.setattr(gpu_check, "find_debugger", lambda: str(debugger))
    log = tmp_path / "tests.log"
    log.write_text(_CRASH_LOG)
    test_id = gpu_check.crashed_tests(_CRASH_LOG)[0]
    frames = gpu_check.backtrace_of(test_id, log, 100.0, torch.device("cpu"))
    assert len(frames) == 4 and "check_token_stats_args" in frames[-1]
    assert f"===== {test_id} under fake-gdb =====" in log.read_text()  # appended to the tests log
    assert not log.with_suffix(".crash.log").exists()
    cmd = gpu_check.backtrace_command("cuda-gdb", test_id)
    assert cmd[:3] == ["cuda-gdb", "-q", "-batch"] and cmd[cmd.index("--args") + 1:][:4] == [
        sys.executable, "-m", "pytest", test_id]
    # No time left, or no debugger: a reason instead of frames, nothing run.
    assert "not enough time" in gpu_check.backtrace_of(test_id, log, 10.0, torch.device("cpu"))[0]
    monkeypatch.setattr(gpu_check, "find_debugger", lambda: None)
    assert gpu_check.backtrace_of(test_id, log, 100.0, torch.device("cpu")) == ["no cuda-gdb or gdb on this machine"]


def test_tests_stage_reports_crashed_workers_with_a_backtrace(tmp_path, monkeypatch):
    def fake_run_logged(cmd, log, *, timeout, env=None, cwd=ROOT):
        log.parent.mkdir(parents=True, exist_ok=True)
        log.write_text(_CRASH_LOG)
        return gpu_check.Finished(1, 1.0, log)

    monkeypatch.setattr(gpu_check, "run_logged", fake_run_logged)
    monkeypatch.setattr(gpu_check, "backtrace_of", lambda test_id, log, left, device: [f"bt of {test_id}"])
    args = gpu_check.parse_args(["--device", "cpu", "--log-dir", str(tmp_path)])
    result = gpu_check.stage_tests(gpu_check.Pipeline(args, torch.device("cpu")))
    assert result.status == "failed" and len(result.data["crashed_tests"]) == 2
    assert result.data["crash_backtrace"] == [f"bt of {result.data['crashed_tests'][0]}"]
    report = gpu_check.build_report(dict(device="d", torch="t", slug="s"), {"tests": result}, [], 1.0)
    summary = gpu_check.format_summary(report)
    assert "crashed (2): tests/test_validation.py" in summary and "bt of tests/" in summary


def _fake_sanitizer(tmp_path: Path, errors: int) -> str:
    """A stand-in for compute-sanitizer: runs the command after its options, then
    prints the summary line the real one prints, with ``errors``."""
    path = tmp_path / f"fake-sanitizer-{errors}"
    path.write_text(textwrap.dedent(f"""\
        #!{sys.executable}
        import subprocess, sys
        args = sys.argv[1:]
        app = args[args.index({sys.executable!r}):]
        rc = subprocess.call(app)
        print("========= ERROR SUMMARY: {errors} errors", flush=True)
        sys.exit(3 if {errors} else rc)
        """))
    path.chmod(0o755)
    return str(path)


@pytest.mark.parametrize("errors", [0, 2])
def test_sanitize_stage_reads_the_sanitizer_summary(tmp_path, errors):
    args = gpu_check.parse_args(["--device", "cpu", "--backends", "native", "--log-dir", str(tmp_path / "logs"),
                                 "--sanitizer", _fake_sanitizer(tmp_path, errors)])
    result = gpu_check.stage_sanitize(gpu_check.Pipeline(args, torch.device("cpu")))
    assert result.data["errors"] == errors
    assert result.status == ("ok" if errors == 0 else "failed")
    assert result.detail.startswith(f"memcheck: {errors} errors; ok: ")
    log = (tmp_path / "logs" / "sanitize.log").read_text()
    assert "--tool memcheck" in log.splitlines()[0] and "ok   native  commit_" in log


def test_sanitize_stage_without_a_summary_fails(tmp_path):
    quiet = tmp_path / "quiet-sanitizer"
    quiet.write_text(f"#!{sys.executable}\nimport sys\nsys.exit(0)\n")
    quiet.chmod(0o755)
    args = gpu_check.parse_args(["--device", "cpu", "--log-dir", str(tmp_path), "--sanitizer", str(quiet)])
    result = gpu_check.stage_sanitize(gpu_check.Pipeline(args, torch.device("cpu")))
    assert result.status == "failed" and "no ERROR SUMMARY" in result.detail


def test_build_stage(tmp_path, monkeypatch):
    """The build stage on a pretend GPU: the command's environment, the old
    extension unlinked first, and the check that the CUDA kernels loaded."""
    import sysconfig

    root = tmp_path / "checkout"
    (root / "dmkernels").mkdir(parents=True)
    (root / "setup.py").write_text("")
    old = root / "dmkernels" / f"_C{sysconfig.get_config_var('EXT_SUFFIX')}"
    old.write_text("an older build")
    seen = {}

    def fake_run_logged(cmd, log, *, timeout, env=None, cwd=ROOT):
        seen.update(cmd=cmd, env=env, old_exists=old.exists())
        log.parent.mkdir(parents=True, exist_ok=True)
        log.write_text("$ python setup.py build_ext --inplace\nsrc.cu(3): error: identifier undefined\n"
                       "ninja: build stopped\nRuntimeError: Error compiling objects for extension\n"
                       if seen.get("fail") else "")
        return gpu_check.Finished(seen.get("rc", 0), 2.0, log)

    monkeypatch.setattr(gpu_check, "ROOT", root)
    monkeypatch.setattr(gpu_check, "_nvcc", lambda: "/usr/local/cuda/bin/nvcc")
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: (9, 0))
    monkeypatch.setattr(gpu_check, "run_logged", fake_run_logged)
    args = gpu_check.parse_args(["--log-dir", str(tmp_path / "logs")])
    p = gpu_check.Pipeline(args, torch.device("cuda"))

    result = gpu_check.stage_build(p)
    assert seen["cmd"][1:] == ["setup.py", "build_ext", "--inplace"]
    assert seen["env"]["TORCH_CUDA_ARCH_LIST"] == "9.0" and "DMKERNELS_NO_CUDA" not in seen["env"]
    assert not seen["old_exists"]  # unlinked before the build wrote a new one
    # No CUDA kernels load here (no GPU, and the pretend checkout has no package):
    assert result.status == "failed" and "CUDA kernels" in result.detail
    assert result.data["arch"] == "9.0"

    seen.update(fail=True, rc=1)
    result = gpu_check.stage_build(p)
    assert result.status == "failed" and result.detail == "exit 1: src.cu(3): error: identifier undefined"
    seen.update(rc=None)
    assert gpu_check.stage_build(p).status == "timeout"
    monkeypatch.setattr(gpu_check, "_nvcc", lambda: None)
    assert "no CUDA toolkit" in gpu_check.stage_build(p).detail


# ---------------------------------------------------------------------------
# Results
# ---------------------------------------------------------------------------


def _fake_records() -> list[dict]:
    meta = dict(device="NVIDIA H200", device_type="cuda")
    out = [dict(meta, group="copy", case="copy/1073741824B", op="copy_", backend="torch", shape=[1 << 30],
                dtype="uint8", gbps=4300.0, check="ok")]
    for rows in (32, 256, 2048, 8192):
        nbytes = rows * 126464 * 2
        for t in (0.0, 1.0):
            for i, backend in enumerate(("native", "triton")):
                us = nbytes / 3.5e6 * (1 + 0.1 * i + t)  # 3500 GB/s, less for Triton and T = 1
                record = dict(meta, group="sweep", case=f"sweep/token_stats/{rows}x126464/bf16/T{t:g}",
                              op="token_stats", backend=backend, shape=[rows, 126464], dtype="bfloat16",
                              temperature=t, logits_bytes=nbytes, median_us=us, repeats=20, gbps=nbytes / us / 1e3,
                              copy_gbps=4000.0, bandwidth_fraction=nbytes / us / 1e3 / 4000.0, check="ok")
                if t == 0:
                    record.update(baseline="eager_float32_stats", baseline_median_us=us * 20, ratio=20.0)
                out.append(record)
                out.append(dict(record, case=record["case"].replace("token_stats", "llada_step"),
                                op="token_stats+select_topk+commit_", baseline="llada_step",
                                baseline_median_us=us * 300, ratio=300.0 / 1.5))
    for group, case, _ in gpu_bench.plan(quick=False):  # every case the GPU run has, with made-up numbers
        if group != "cases":
            continue
        for backend in ("native", "triton"):
            wrong = backend == "triton" and case.name == "llada_step/8x256x126464/f32/T1"
            out.append(dict(meta, group="cases", case=case.name, op=case.op, backend=backend,
                            shape=list(case.shape), dtype="float32", temperature=case.temperature, median_us=100.0,
                            gbps=float("nan"), baseline=case.baseline, baseline_median_us=5000.0, ratio=50.0,
                            check="ours: tokens: 3 of 2048 differ" if wrong else "ok"))
    return out


def _fake_report(records=None) -> dict:
    meta = dict(device="NVIDIA H200", device_type="cuda", torch="2.11.0+cu130", cuda="13.0", triton="3.6.0",
                python="3.12.3", capability="9.0", memory_gib=139.8, nvcc="13.0, V13.0.88", commit="abc1234",
                slug=gpu_check.device_slug("NVIDIA H200"))
    results = {
        "build": StageResult("build", "ok", 95.0, "CUDA kernels for sm_90", dict(arch="9.0")),
        "tests": StageResult("tests", "failed", 180.0, "exit 1: 1490 passed, 2 failed, 0 errors, 12 skipped",
                             dict(passed=1490, failed=2, errors=0, skipped=12,
                                  failed_tests=["tests.test_token_stats::test_x[triton-cuda]"] +
                                  [f"tests.test_commit::test_{i}[native-cuda]" for i in range(9)])),
        "sanitize": StageResult("sanitize", "ok", 40.0, "memcheck: 0 errors; ok", dict(errors=0)),
        "bench": StageResult("bench", "ok", 70.0, "23 records", {}),
    }
    return gpu_check.build_report(meta, results, _fake_records() if records is None else records, 385.0)


def test_write_results_on_fake_numbers(tmp_path):
    json_path, txt_path = gpu_check.write_results(_fake_report(), tmp_path / "results")
    assert json_path == tmp_path / "results" / "gpu_nvidia-h200.json"
    assert txt_path == tmp_path / "results" / "gpu_nvidia-h200.txt"
    report = json.loads(json_path.read_text())
    assert report["device"] == "NVIDIA H200" and report["capability"] == "9.0"
    assert report["ok"] is False  # the tests stage failed
    assert (report["build_ok"], report["tests_passed"], report["tests_failed"], report["sanitizer_errors"]) == (
        True, 1490, 2, 0)
    assert report["stages"]["tests"]["data"]["failed_tests"][0] == "tests.test_token_stats::test_x[triton-cuda]"
    sweep = [r for r in report["records"] if r["group"] == "sweep"]
    assert sorted({r["shape"][0] for r in sweep}) == [32, 256, 2048, 8192]
    for record in sweep:
        for key in ("device", "op", "backend", "shape", "dtype", "median_us", "gbps", "bandwidth_fraction"):
            assert record[key] is not None, key
    assert all(r["ratio"] == 20.0 for r in sweep if r["temperature"] == 0 and r["op"] == "token_stats")
    assert all(r["gbps"] is None for r in report["records"] if r["group"] == "cases")  # NaN -> null, valid JSON

    text = txt_path.read_text()
    summary = gpu_check.format_summary(report)
    assert text.startswith(summary)
    assert "records (the same as the JSON file's):" in text
    assert "case=sweep/token_stats/8192x126464/bf16/T0 backend=triton" in text


def test_summary_fits_one_screen_and_shows_every_stage_and_size():
    summary = gpu_check.format_summary(_fake_report())
    lines = summary.splitlines()
    assert len(lines) <= 64 and max(map(len, lines)) <= 160  # one case line per op case: grows with the ops
    assert lines[0].startswith("gpu-check on NVIDIA H200 (sm_90, 139.8 GiB)")
    for stage, status in (("build", "ok"), ("tests", "FAILED"), ("sanitize", "ok"), ("bench", "ok")):
        assert any(line.split()[:2] == [stage, status] for line in lines), stage
    assert "  failed: tests.test_token_stats::test_x[triton-cuda]" in lines
    assert "  ... 5 more in junit.xml" in lines
    sweep_rows = [line.split() for line in lines if line.split()[:1] in (["32"], ["256"], ["2048"], ["8192"])]
    assert [(r[0], r[1]) for r in sweep_rows] == [(n, t) for t in ("0", "1") for n in ("32", "256", "2048", "8192")]
    assert all(r[-1] == "200.0x" for r in sweep_rows)  # LLaDA's step / ours, native
    assert [r[-4] for r in sweep_rows] == ["20.0x"] * 4 + ["-"] * 4  # eager float32 / ours at T = 0 only
    assert "1024 MiB copy: 4300 GB/s" in summary
    llada = next(line for line in lines if line.startswith("llada_step/8x256x126464/f32/T1"))
    assert "triton: ours: tokens: 3 of 2048 differ" in llada  # a wrong output is on the screen
    assert lines[-1] == "FAILED: build ok, tests failed, sanitize ok, bench ok"


def test_summary_without_records():
    summary = gpu_check.format_summary(_fake_report(records=[]))
    assert "token_stats, bf16" not in summary and "cases (" not in summary
    assert summary.splitlines()[-1].startswith("FAILED")


# ---------------------------------------------------------------------------
# A failing stage does not stop the next
# ---------------------------------------------------------------------------


def test_a_failing_stage_is_recorded_and_the_next_still_run(tmp_path, monkeypatch, capsys):
    ran = []

    def fake(name, status):
        def stage(p):
            ran.append(name)
            if status == "raise":
                raise RuntimeError("nvcc exploded")
            return StageResult(name, status, 1.0, f"{name} says {status}")

        return stage

    monkeypatch.setattr(gpu_check, "stage_build", fake("build", "raise"))
    monkeypatch.setattr(gpu_check, "stage_tests", fake("tests", "timeout"))
    monkeypatch.setattr(gpu_check, "stage_sanitize", fake("sanitize", "ok"))
    monkeypatch.setattr(gpu_check, "stage_bench", fake("bench", "ok"))
    code = gpu_check.main(["--device", "cpu", "--stages", "build,tests,sanitize,bench", "--out-dir", str(tmp_path),
                           "--log-dir", str(tmp_path / "logs")])
    assert code == 1
    assert ran == ["build", "tests", "sanitize", "bench"]
    report = json.loads((tmp_path / "gpu_cpu-dry-run.json").read_text())
    assert report["stages"]["build"]["status"] == "failed"
    assert report["stages"]["build"]["detail"] == "RuntimeError: nvcc exploded"
    assert report["stages"]["tests"]["status"] == "timeout"
    assert report["stages"]["bench"]["status"] == "ok" and not report["ok"]
    assert "FAILED: build failed, tests timeout, sanitize ok, bench ok" in capsys.readouterr().out


# ---------------------------------------------------------------------------
# The dry run on CPU tensors
# ---------------------------------------------------------------------------


def test_dry_run_on_cpu_runs_the_sanitize_and_bench_stages(tmp_path, capsys):
    code = gpu_check.main(["--device", "cpu", "--backends", "native", "--out-dir", str(tmp_path),
                           "--log-dir", str(tmp_path / "logs")])
    out = capsys.readouterr().out
    assert code == 0, out
    report = json.loads((tmp_path / "gpu_cpu-dry-run.json").read_text())
    assert report["ok"] and report["device_type"] == "cpu"
    assert report["stages"]["sanitize"]["status"] == "ok"
    assert report["stages"]["bench"]["status"] == "ok"
    groups = {r["group"] for r in report["records"]}
    assert groups == {"copy", "sweep", "sampling", "cases"}
    sampling = [r for r in report["records"] if r["group"] == "sampling"]
    assert len(sampling) == 8 and all(r["check"] == "ok" for r in sampling)
    summary = (tmp_path / "gpu_cpu-dry-run.txt").read_text()
    # Each T > 0 time over the same backend's T = 0 time on the same rows.
    assert summary.count(" us = ") == 6 and "native   peaked   T=0.7  tempered" in summary
    sweep = [r for r in report["records"] if r["group"] == "sweep"]
    assert {r["temperature"] for r in sweep} == {0.0, 1.0} and all(r["check"] == "ok" for r in sweep)
    assert all(r["bandwidth_fraction"] > 0 and r["copy_gbps"] > 0 for r in sweep)
    assert any(r["op"] == "select_topk+commit_" for r in report["records"])
    assert "PASSED: build skipped, tests skipped, sanitize ok, bench ok" in out
    assert (tmp_path / "logs" / "bench.log").exists() and (tmp_path / "gpu_cpu-dry-run.txt").exists()


def test_gpu_bench_plan_covers_the_issue_shapes():
    planned = gpu_bench.plan(quick=False)
    sweep = [c for group, c, _ in planned if group == "sweep"]
    assert sorted({c.shape[1] for c in sweep}) == [32, 256, 2048, 8192]
    assert all(c.shape[2] == 126464 and c.dtype == torch.bfloat16 for c in sweep)
    ops = ("token_stats", "token_stats+select_topk+commit_")
    assert {(c.op, c.temperature) for c in sweep} == {(op, t) for op in ops for t in (0.0, 1.0)}
    # The eager float32 step is a baseline of the argmax only; LLaDA's step samples too.
    assert all(timed == (c.baseline == "llada_step" or c.temperature == 0)
               for group, c, timed in planned if group == "sweep")
    baselines = {c.baseline for group, c, _ in planned if group == "cases"}
    assert {"llada_step", "eager_float32_stats", "llada_topk_transfer"} <= baselines
    assert any(c.shape == (8, 1024) for _, c, _ in planned)


def test_sanitize_script_calls_every_op_on_every_backend(capsys):
    # Triton runs under the interpreter here (tests/conftest.py sets TRITON_INTERPRET
    # where there is no GPU), so the script's calls are checked against both backends.
    assert gpu_sanitize.main(["--device", "cpu"]) == 0
    out = capsys.readouterr().out
    for op in gpu_sanitize.registered_ops():
        assert f"ok   native  {op}" in out
        if os.environ.get("TRITON_INTERPRET") == "1":
            assert f"ok   triton  {op}" in out
    assert "gpu_sanitize: ok" in out


def test_sanitize_script_fails_when_an_op_is_never_called(monkeypatch, capsys):
    monkeypatch.setattr(gpu_sanitize, "registered_ops", lambda: {"token_stats", "select_made_up"})
    assert gpu_sanitize.main(["--device", "cpu", "--backends", "native"]) == 1
    assert "never called successfully: select_made_up" in capsys.readouterr().out


@pytest.mark.skipif(torch.cuda.is_available(), reason="the no-CUDA path")
def test_gpu_profile_without_cuda_says_why(capsys):
    assert gpu_profile.main(["--rows", "3"]) == 0
    assert "skipped: no CUDA device" in capsys.readouterr().out

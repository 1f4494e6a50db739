"""``python -m dmkernels.bench.gpu_check`` (``make gpu-check``): the whole GPU validation in one command.

Four stages, each a subprocess with a time limit, run from the source checkout
with the Python, PyTorch, Triton and CUDA toolkit already on the machine
(nothing is installed or fetched). A failing stage is recorded and the next one
still runs; the command exits 1 if any stage failed, 0 otherwise.

1. build: ``setup.py build_ext --inplace`` with the CUDA kernels compiled for
   this GPU's architecture only (``TORCH_CUDA_ARCH_LIST`` from its compute
   capability, ``MAX_JOBS`` = the CPU count); then a fresh process must report
   the CUDA kernels available (``dmkernels.backends()``).
2. tests: the test suite's CUDA cases (``pytest -k cuda``: the ``native-cuda`` /
   ``triton-cuda`` params of the ``backend`` fixtures, opcheck among them, and
   tests/test_cuda_graph.py), without the nvcc compile,
   generic-build and wheel tests. JUnit XML and the ``-rA`` log go to the log
   directory; with pytest-xdist installed, several workers.
3. sanitize: ``compute-sanitizer --tool memcheck`` on
   ``python -m dmkernels.bench.gpu_sanitize`` (every kernel once, native and
   Triton), PyTorch's caching allocator off.
4. bench: ``python -m dmkernels.bench.gpu_bench`` (token_stats and LLaDA's
   step on bf16 ``[B*L, 126464]`` against a device copy of the same bytes, the
   float32 eager step and LLaDA's float64 step; every case of
   dmkernels/bench/cases.py, select + commit at ``[8, 1024]`` among them).

Results: ``<out-dir>/gpu_<device>.json`` (metadata, stage results, one record per
benchmark case and backend) and ``.txt`` (the summary printed at the end plus
every record). Logs: ``<log-dir>/{build,tests,sanitize,bench}.log``,
``junit.xml``. On a machine without CUDA it prints one line saying why and
exits 0. ``--device cpu`` is a dry run of the same pipeline on CPU tensors
(sanitize and bench stages by default, small shapes, no compute-sanitizer),
which is how CI tests it.
"""
from __future__ import annotations

import argparse
import datetime
import importlib.util
import json
import math
import os
import platform
import re
import shlex
import shutil
import signal
import subprocess
import sys
import sysconfig
import tempfile
import time
import xml.etree.ElementTree as ET
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[2]  # the source checkout (setup.py, tests/)
STAGES = ("build", "tests", "sanitize", "bench")
CPU_STAGES = ("sanitize", "bench")
# Most seconds each stage may take, and the least left to each later stage: the
# whole run fits in --budget (10 minutes on the lent GPU machine, all included).
# The first H200 run (16 CPUs): build 35 s, sanitize 45 s, bench 59 s; 1353 of the
# 1642 CUDA tests in 167 s on 8 workers.
STAGE_LIMITS = {"build": 120, "tests": 300, "sanitize": 90, "bench": 120}
STAGE_RESERVE = {"build": 60, "tests": 60, "sanitize": 45, "bench": 75}
BUDGET_S = 540
TEST_SELECT = "cuda"  # the backend fixtures' ids: native-cuda, triton-cuda
# nvcc compile checks (minutes of CPU), the generic-build and wheel tests: not GPU cases.
TEST_IGNORE = ("tests/test_cuda_compile.py", "tests/test_generic_build.py", "tests/test_wheel.py")
TEST_TIMEOUT_S = 120  # per test, where pytest-timeout is installed
GRACE_S = 20  # after SIGINT at a stage's limit, before SIGKILL
CRASH_RESERVE_S = 50  # of the tests stage, for one crashed test's backtrace under cuda-gdb / gdb


# ---------------------------------------------------------------------------
# Arguments
# ---------------------------------------------------------------------------


def _stage_list(text: str) -> tuple[str, ...]:
    names = tuple(s.strip() for s in text.split(",") if s.strip())
    unknown = [s for s in names if s not in STAGES]
    if unknown or not names:
        raise argparse.ArgumentTypeError(f"stages must be a comma-separated subset of {','.join(STAGES)}, "
                                         f"got {text!r}")
    return tuple(s for s in STAGES if s in names)  # always in pipeline order


def _positive(text: str) -> float:
    value = float(text)
    if not value > 0 or not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"must be a positive number of seconds, got {text!r}")
    return value


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m dmkernels.bench.gpu_check",
                                     description="The whole GPU validation in one command.\n" + __doc__.split("\n", 1)[1],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", choices=("auto", "cuda", "cpu"), default="auto",
                        help="auto/cuda: the GPU (no CUDA: say why, exit 0); cpu: a dry run on CPU tensors")
    parser.add_argument("--stages", type=_stage_list,
                        help=f"comma-separated subset of {','.join(STAGES)} (default: all; "
                             f"with --device cpu: {','.join(CPU_STAGES)})")
    parser.add_argument("--out-dir", help="where gpu_<device>.{json,txt} go (default: benchmarks/results; "
                                          "with --device cpu: build/gpu_check)")
    parser.add_argument("--log-dir", help="stage logs and junit.xml (default: build/gpu_check)")
    parser.add_argument("--budget", type=_positive, default=BUDGET_S,
                        help=f"seconds for the whole run (default {BUDGET_S}); each stage is cut to fit")
    for stage in STAGES:
        parser.add_argument(f"--{stage}-timeout", type=_positive, default=STAGE_LIMITS[stage],
                            help=f"most seconds for the {stage} stage (default {STAGE_LIMITS[stage]})")
    parser.add_argument("--test-select", default=TEST_SELECT, help=f"pytest -k expression (default {TEST_SELECT!r})")
    parser.add_argument("--test-workers", type=int, default=-1,
                        help="pytest-xdist workers (default: min(14, CPUs - 2) where xdist is installed; 0: none)")
    parser.add_argument("--test-timeout", type=_positive, default=TEST_TIMEOUT_S,
                        help=f"seconds per test, where pytest-timeout is installed (default {TEST_TIMEOUT_S})")
    parser.add_argument("--backends", default="native,triton",
                        help="backends the sanitize and bench stages run (default native,triton)")
    parser.add_argument("--quick", action="store_true", help="bench: small shapes (default with --device cpu)")
    parser.add_argument("--sanitizer", metavar="PATH",
                        help="the compute-sanitizer to run (default: on PATH or in the CUDA toolkit; "
                             "with --device cpu: none unless given)")
    return parser


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = build_parser()
    args = parser.parse_args(argv)
    cpu = args.device == "cpu"
    args.stages = args.stages or (CPU_STAGES if cpu else STAGES)
    args.out_dir = Path(args.out_dir) if args.out_dir else ROOT / ("build/gpu_check" if cpu else "benchmarks/results")
    args.log_dir = Path(args.log_dir) if args.log_dir else ROOT / "build" / "gpu_check"
    args.quick = args.quick or cpu
    args.backends = [b for b in args.backends.split(",") if b]
    bad = [b for b in args.backends if b not in ("native", "triton", "reference")]
    if bad or not args.backends:
        parser.error(f"--backends: comma-separated native, triton, reference; got {bad or 'none'}")
    if args.test_workers < -1:
        parser.error("--test-workers must be >= 0 (or -1: automatic)")
    return args


# ---------------------------------------------------------------------------
# The machine
# ---------------------------------------------------------------------------


def skip_reason() -> str | None:
    """Why there is no GPU to check here, or None."""
    if torch.version.cuda is None:
        return f"this PyTorch ({torch.__version__}) is built without CUDA"
    if not torch.cuda.is_available():
        visible = os.environ.get("CUDA_VISIBLE_DEVICES")
        hint = f" (CUDA_VISIBLE_DEVICES={visible!r})" if visible is not None else ""
        return f"PyTorch {torch.__version__} sees no CUDA device{hint}"
    return None


def device_slug(name: str) -> str:
    """``"NVIDIA H200"`` -> ``"nvidia-h200"``: lower case, runs of anything but
    letters and digits as one dash."""
    slug = re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-")
    return slug or "unknown"


def _command_output(cmd: list[str], timeout: float = 20) -> str | None:
    try:
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    except (OSError, subprocess.SubprocessError):
        return None
    return done.stdout.strip() if done.returncode == 0 else None


def _package_version(name: str) -> str | None:
    try:
        from importlib.metadata import version

        return version(name)
    except Exception:
        return None


def collect_meta(device: torch.device) -> dict:
    """What ran: the device, the software on the machine, the commit."""
    from dmkernels.bench import measure

    meta = dict(device=measure.device_name(device), device_type=device.type, torch=torch.__version__,
                cuda=torch.version.cuda, triton=_package_version("triton"), python=platform.python_version(),
                cpus=os.cpu_count(), started=datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
                commit=_command_output(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"]))
    if device.type == "cuda":
        major, minor = torch.cuda.get_device_capability(device)
        props = torch.cuda.get_device_properties(device)
        nvcc = _nvcc()
        nvcc_version = _command_output([nvcc, "--version"]) if nvcc else None
        meta.update(capability=f"{major}.{minor}", multiprocessors=props.multi_processor_count,
                    memory_gib=round(props.total_memory / 2**30, 1),
                    nvcc=_release(nvcc_version) if nvcc_version else None,
                    driver=_command_output(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"]))
        meta["slug"] = device_slug(meta["device"])
    else:
        meta["slug"] = "cpu-dry-run"
    return meta


def _release(nvcc_version: str) -> str:
    """``"13.0, V13.0.88"`` out of ``nvcc --version``'s text."""
    found = re.search(r"release ([^\n]+)", nvcc_version)
    return found.group(1).strip() if found else nvcc_version.splitlines()[-1]


def _nvcc() -> str | None:
    from torch.utils.cpp_extension import CUDA_HOME

    candidates = [shutil.which("nvcc")] + ([os.path.join(CUDA_HOME, "bin", "nvcc")] if CUDA_HOME else [])
    return next((c for c in candidates if c and os.path.exists(c)), None)


def find_sanitizer() -> str | None:
    """compute-sanitizer on PATH or in the CUDA toolkit, or None."""
    from torch.utils.cpp_extension import CUDA_HOME

    candidates = [shutil.which("compute-sanitizer")]
    for home in filter(None, (CUDA_HOME, os.environ.get("CUDA_HOME"), "/usr/local/cuda")):
        candidates += [os.path.join(home, "bin", "compute-sanitizer"),
                       os.path.join(home, "compute-sanitizer", "compute-sanitizer")]
    return next((c for c in candidates if c and os.path.exists(c)), None)


# ---------------------------------------------------------------------------
# Running a stage
# ---------------------------------------------------------------------------


@dataclass
class StageResult:
    """How a stage ended: ``status`` ok | failed | timeout | skipped."""

    name: str
    status: str
    seconds: float = 0.0
    detail: str = ""
    data: dict = field(default_factory=dict)

    @property
    def failed(self) -> bool:
        return self.status in ("failed", "timeout")


@dataclass
class Finished:
    returncode: int | None  # None: stopped at the time limit
    seconds: float
    log: Path

    @property
    def timed_out(self) -> bool:
        return self.returncode is None

    def text(self) -> str:
        try:
            return self.log.read_text(errors="replace")
        except OSError:
            return ""

    def tail(self, lines: int = 15) -> str:
        return "\n".join(self.text().splitlines()[-lines:])


def run_logged(cmd: list[str], log: Path, *, timeout: float, env: dict | None = None, cwd: Path = ROOT) -> Finished:
    """Run ``cmd`` with its output in ``log``. At ``timeout`` its process group gets
    SIGINT (pytest then still writes its summary and JUnit file), and SIGKILL
    ``GRACE_S`` later."""
    log.parent.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    with open(log, "w") as out:
        out.write(f"$ {shlex.join(cmd)}\n")
        out.flush()
        proc = subprocess.Popen(cmd, cwd=cwd, env=env, stdout=out, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL, start_new_session=True)
        try:
            returncode = proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            returncode = None
            _signal_group(proc, signal.SIGINT)
            try:
                proc.wait(timeout=GRACE_S)
            except subprocess.TimeoutExpired:
                _signal_group(proc, signal.SIGKILL)
                proc.wait()
    return Finished(returncode, time.perf_counter() - start, log)


def _signal_group(proc: subprocess.Popen, sig: int) -> None:
    try:
        os.killpg(proc.pid, sig)  # the group this stage's process leads (start_new_session)
    except (ProcessLookupError, PermissionError):
        pass


def child_env(device: torch.device, **extra: str) -> dict:
    """The stages' environment: the checkout importable, Triton compiled for the
    GPU (or interpreted on a CPU dry run), the default backend choice."""
    env = dict(os.environ)
    for name in ("DMKERNELS_BACKEND", "DMKERNELS_NO_EXTENSION", "DMKERNELS_NO_CUDA"):
        env.pop(name, None)
    if device.type == "cuda":
        env.pop("TRITON_INTERPRET", None)
    else:
        env["TRITON_INTERPRET"] = "1"
    env["PYTHONPATH"] = os.pathsep.join(filter(None, (str(ROOT), env.get("PYTHONPATH"))))
    # This Python's scripts first: the ninja that torch's extension build looks for
    # may be installed beside it without its folder being on PATH.
    env["PATH"] = os.pathsep.join(filter(None, (os.path.dirname(sys.executable), env.get("PATH"))))
    env["PYTHONUNBUFFERED"] = "1"
    env.update(extra)
    return env


class Pipeline:
    """The stages of one run: their order, the time each may take, the results."""

    def __init__(self, args: argparse.Namespace, device: torch.device):
        self.args, self.device = args, device
        self.start = time.perf_counter()
        self.results: dict[str, StageResult] = {}
        self.records: list[dict] = []

    def timeout(self, stage: str) -> float:
        """The stage's own limit, cut so that every later stage keeps its reserve
        inside the budget (never below this stage's own reserve)."""
        left = self.args.budget - (time.perf_counter() - self.start)
        later = STAGES[STAGES.index(stage) + 1:]
        reserved = sum(STAGE_RESERVE[s] for s in later if s in self.args.stages)
        limit = getattr(self.args, f"{stage}_timeout")
        return max(min(limit, left - reserved), min(limit, STAGE_RESERVE[stage]))

    def run(self) -> dict[str, StageResult]:
        stage_fns = {"build": stage_build, "tests": stage_tests, "sanitize": stage_sanitize, "bench": stage_bench}
        for name in STAGES:
            if name not in self.args.stages:
                self.results[name] = StageResult(name, "skipped", detail="not asked for (--stages)")
                continue
            print(f"gpu-check: {name} ...", flush=True)
            started = time.perf_counter()
            try:
                result = stage_fns[name](self)
            except Exception as exc:  # a broken stage is a result, not the end of the run
                result = StageResult(name, "failed", detail=f"{type(exc).__name__}: {exc}")
            result.seconds = result.seconds or time.perf_counter() - started
            self.results[name] = result
            print(f"gpu-check: {name} {result.status} ({result.seconds:.0f} s): {result.detail}", flush=True)
        return self.results


# ---------------------------------------------------------------------------
# The stages
# ---------------------------------------------------------------------------


def arch_list(capability: tuple[int, int]) -> str:
    """TORCH_CUDA_ARCH_LIST for one GPU: ``(9, 0)`` -> ``"9.0"``."""
    return f"{capability[0]}.{capability[1]}"


def build_command(capability: tuple[int, int], cpus: int | None) -> tuple[list[str], dict[str, str]]:
    """The build: command and the variables it adds to the environment."""
    env = {"TORCH_CUDA_ARCH_LIST": arch_list(capability), "MAX_JOBS": str(max(1, cpus or 1))}
    return [sys.executable, "setup.py", "build_ext", "--inplace"], env


def stage_build(p: Pipeline) -> StageResult:
    if p.device.type != "cuda":
        return StageResult("build", "skipped", detail="no CUDA build on a CPU dry run")
    if not (ROOT / "setup.py").exists():
        return StageResult("build", "failed", detail=f"no setup.py in {ROOT}: not a source checkout")
    if _nvcc() is None:
        return StageResult("build", "failed", detail="no CUDA toolkit: nvcc is neither on PATH nor in CUDA_HOME")
    capability = torch.cuda.get_device_capability(p.device)
    cmd, extra = build_command(capability, os.cpu_count())
    # This process may have loaded an older dmkernels/_C (importing dmkernels does):
    # unlink it, so that the build writes a new file instead of rewriting a mapped one.
    built = ROOT / "dmkernels" / f"_C{sysconfig.get_config_var('EXT_SUFFIX')}"
    if built.exists():
        built.unlink()
    done = run_logged(cmd, p.args.log_dir / "build.log", timeout=p.timeout("build"), env=child_env(p.device, **extra))
    data = dict(arch=extra["TORCH_CUDA_ARCH_LIST"], max_jobs=int(extra["MAX_JOBS"]), returncode=done.returncode,
                log=str(done.log))
    if done.timed_out:
        return StageResult("build", "timeout", done.seconds, "stopped at the time limit; see build.log", data)
    if done.returncode != 0:
        return StageResult("build", "failed", done.seconds, f"exit {done.returncode}: {_first_error(done)}", data)
    # A fresh process: is the CUDA kernel there?
    probe = subprocess.run([sys.executable, "-c", "import json, dmkernels; print(json.dumps(dmkernels.backends()))"],
                           cwd=ROOT, env=child_env(p.device), capture_output=True, text=True, timeout=120)
    try:
        report = json.loads(probe.stdout.strip().splitlines()[-1])
    except (ValueError, IndexError):
        report = {"cuda": f"import failed: {(probe.stderr.strip().splitlines() or ['?'])[-1]}"}
    data["backends"] = report
    if report.get("cuda") != "available":
        return StageResult("build", "failed", done.seconds, f"built, but CUDA kernels: {report.get('cuda')}", data)
    needed = needed_libraries(built)
    data["needed"] = needed
    if needed is not None and not any(name.startswith("libstdc++") for name in needed):
        # A second, static libstdc++ beside PyTorch's shared one: number formatting in
        # error messages segfaulted on the first GPU run (setup.py now avoids it).
        return StageResult("build", "failed", done.seconds,
                           f"{built.name} carries its own static libstdc++ (NEEDED: {', '.join(needed)})", data)
    sm = extra["TORCH_CUDA_ARCH_LIST"].replace(".", "")
    return StageResult("build", "ok", done.seconds, f"CUDA kernels for sm_{sm}", data)


def needed_libraries(path: Path) -> list[str] | None:
    """The DT_NEEDED entries of a shared object (``readelf -d``), or None where
    readelf is missing or fails."""
    text = _command_output(["readelf", "-d", str(path)])
    return None if text is None else re.findall(r"\(NEEDED\)\s+Shared library: \[([^\]]+)\]", text)


def _first_error(done: Finished) -> str:
    """The first compiler error of a log (what to fix first), else its last line."""
    lines = [ln.strip() for ln in done.text().splitlines()[1:] if ln.strip()]  # [0] is the command
    errors = [ln for ln in lines if re.search(r"\berror\b", ln, re.IGNORECASE)]
    return (errors[:1] or lines[-1:] or ["no output"])[0][:200]


def _last_line(done: Finished) -> str:
    lines = [ln.strip() for ln in done.text().splitlines()[1:] if ln.strip()]
    return (lines[-1:] or ["no output"])[0][:200]


def xdist_workers(requested: int, cpus: int | None) -> int:
    """pytest-xdist workers: as asked, or min(14, CPUs - 2) where xdist is installed."""
    if requested >= 0:
        return requested if importlib.util.find_spec("xdist") else 0
    if importlib.util.find_spec("xdist") is None:
        return 0
    return max(1, min(14, (cpus or 1) - 2))


def tests_command(args: argparse.Namespace, junit: Path, paths: list[str] | None = None,
                  workers: int | None = None) -> list[str]:
    """pytest on the CUDA cases: ``-k`` selection, ignores, JUnit, -rA, xdist and
    per-test timeout where installed."""
    cmd = [sys.executable, "-m", "pytest", *(paths or ["tests"]), "-k", args.test_select, "-rA", "-q",
           "-p", "no:cacheprovider", f"--junitxml={junit}", "--continue-on-collection-errors"]
    cmd += [f"--ignore={path}" for path in TEST_IGNORE if (ROOT / path).exists()]
    workers = xdist_workers(args.test_workers, os.cpu_count()) if workers is None else workers
    if workers > 0:
        cmd += ["-n", str(workers)]
    if importlib.util.find_spec("pytest_timeout") is not None:
        cmd += [f"--timeout={args.test_timeout:g}"]
    return cmd


def stage_tests(p: Pipeline, paths: list[str] | None = None) -> StageResult:
    junit = p.args.log_dir / "junit.xml"
    if junit.exists():
        junit.unlink()  # never count a previous run's results
    limit = p.timeout("tests")
    deadline = time.perf_counter() + limit
    # Where a debugger could take a crashed test's backtrace, pytest stops early enough to leave time for it.
    crash_reserve = CRASH_RESERVE_S if p.device.type == "cuda" and find_debugger() else 0.0
    pytest_deadline = deadline - min(crash_reserve, limit / 4)
    cmd = tests_command(p.args, junit, paths)
    done = run_logged(cmd, p.args.log_dir / "tests.log", timeout=pytest_deadline - time.perf_counter(),
                      env=child_env(p.device))
    if "Different tests were collected between" in done.text() and pytest_deadline - time.perf_counter() > 30:
        # xdist needs every worker to collect the same ids; run them in one process instead.
        cmd = tests_command(p.args, junit, paths, workers=0)
        done = run_logged(cmd, p.args.log_dir / "tests.log", timeout=pytest_deadline - time.perf_counter(),
                          env=child_env(p.device))
    counts = junit_counts(junit) or summary_counts(done.text())
    data = dict(returncode=done.returncode, command=shlex.join(cmd), log=str(done.log), junit=str(junit),
                **(counts or {}))
    data["failed_tests"] = junit_failures(junit)[:30]
    crashed = crashed_tests(done.text())
    if crashed:
        data["crashed_tests"] = crashed[:30]
        data["crash_backtrace"] = backtrace_of(crashed[0], done.log, deadline - time.perf_counter(), p.device)
    described = _describe_counts(counts) if counts else "no test counts (see tests.log)"
    if done.timed_out:
        return StageResult("tests", "timeout", done.seconds, f"stopped at the time limit: {described}", data)
    if done.returncode == 5:
        return StageResult("tests", "failed", done.seconds, f"no test selected by -k {p.args.test_select!r}", data)
    if done.returncode != 0 or not counts or counts["failed"] or counts["errors"]:
        return StageResult("tests", "failed", done.seconds, f"exit {done.returncode}: {described}", data)
    return StageResult("tests", "ok", done.seconds, described, data)


def crashed_tests(text: str) -> list[str]:
    """The tests whose xdist worker died (a segfault, an abort), in log order."""
    return list(dict.fromkeys(re.findall(r"worker '[^']+' crashed while running '([^']+)'", text)))


def find_debugger() -> str | None:
    """cuda-gdb (it also debugs host code) or gdb, or None."""
    from torch.utils.cpp_extension import CUDA_HOME

    candidates = [shutil.which("cuda-gdb"), shutil.which("gdb")]
    if CUDA_HOME:
        candidates.append(os.path.join(CUDA_HOME, "bin", "cuda-gdb"))
    return next((c for c in candidates if c and os.path.exists(c)), None)


def backtrace_command(debugger: str, test_id: str) -> list[str]:
    """The crashed test alone under the debugger in batch mode: run, then ``bt``."""
    return [debugger, "-q", "-batch", "-ex", "set pagination off", "-ex", "run", "-ex", "bt", "--args",
            sys.executable, "-m", "pytest", test_id, "-q", "-p", "no:cacheprovider", "-x"]


def backtrace_frames(text: str, frames: int = 12) -> list[str]:
    """The signal line and the first frames of the debugger's ``bt`` after it."""
    start = next((i for i, line in enumerate(text.splitlines()) if "received signal" in line), None)
    if start is None:
        return []
    lines = text.splitlines()[start:]
    picked = [lines[0].strip()] + [ln.strip()[:300] for ln in lines[1:] if re.match(r"\s*#\d+ ", ln)]
    return picked[:frames + 1]


def backtrace_of(test_id: str, log: Path, seconds_left: float, device: torch.device) -> list[str]:
    """Rerun one crashed test under cuda-gdb / gdb (when there is one and time for
    it) and append the backtrace to the tests log: the first GPU run needed a
    second machine start to get it by hand. Returns the frames, or a one-line
    reason why there are none."""
    debugger = find_debugger()
    if debugger is None:
        return ["no cuda-gdb or gdb on this machine"]
    if seconds_left < 45:
        return [f"not enough time left in the stage ({seconds_left:.0f} s) to rerun {test_id} under {debugger}"]
    done = run_logged(backtrace_command(debugger, test_id), log.with_suffix(".crash.log"),
                      timeout=min(120.0, seconds_left - 10), env=child_env(device))
    text = done.text()
    with open(log, "a") as out:
        out.write(f"\n===== {test_id} under {os.path.basename(debugger)} =====\n{text}")
    log.with_suffix(".crash.log").unlink(missing_ok=True)
    return backtrace_frames(text) or [f"no signal caught rerunning {test_id} alone (exit {done.returncode})"]


def _describe_counts(c: dict) -> str:
    return f"{c['passed']} passed, {c['failed']} failed, {c['errors']} errors, {c['skipped']} skipped"


def junit_counts(path: Path) -> dict | None:
    """passed/failed/errors/skipped from a pytest JUnit XML file, or None."""
    try:
        root = ET.parse(path).getroot()
    except (OSError, ET.ParseError):
        return None
    suites = [root] if root.tag == "testsuite" else root.findall("testsuite")
    if not suites:
        return None
    total = {key: sum(int(s.get(key, 0)) for s in suites) for key in ("tests", "failures", "errors", "skipped")}
    return dict(passed=total["tests"] - total["failures"] - total["errors"] - total["skipped"],
                failed=total["failures"], errors=total["errors"], skipped=total["skipped"])


def junit_failures(path: Path) -> list[str]:
    """``file::name`` of each failed or erroring test case in a JUnit XML file."""
    try:
        root = ET.parse(path).getroot()
    except (OSError, ET.ParseError):
        return []
    out = []
    for case in root.iter("testcase"):
        if case.find("failure") is not None or case.find("error") is not None:
            out.append(f"{case.get('classname', '')}::{case.get('name', '')}")
    return out


def summary_counts(text: str) -> dict | None:
    """The counts in pytest's last summary line (``== 3 failed, 10 passed in 2.0s ==``)."""
    lines = [ln for ln in text.splitlines() if re.search(r"\d+ (passed|failed|error|skipped)", ln)]
    if not lines:
        return None
    line = lines[-1]

    def n(word):
        m = re.search(rf"(\d+) {word}", line)
        return int(m.group(1)) if m else 0

    return dict(passed=n("passed"), failed=n("failed"), errors=n("error"), skipped=n("skipped"))


def sanitizer_errors(text: str) -> int | None:
    """The count in compute-sanitizer's ``ERROR SUMMARY: N errors``, or None."""
    found = re.findall(r"ERROR SUMMARY:\s*(\d+)\s+error", text)
    return int(found[-1]) if found else None


def sanitize_command(sanitizer: str | None, device: torch.device, backends: list[str]) -> list[str]:
    script = [sys.executable, "-m", "dmkernels.bench.gpu_sanitize", "--device", device.type,
              "--backends", ",".join(backends)]
    if sanitizer is None:
        return script
    # API errors off: PyTorch's own probing calls would count; our launches are
    # checked by the kernels' bindings (C10_CUDA_KERNEL_LAUNCH_CHECK), which raise.
    # No launch timeout: importing torch can take longer than the default 10 s to
    # reach CUDA; the stage has its own limit.
    return [sanitizer, "--tool", "memcheck", "--report-api-errors", "no", "--error-exitcode", "3",
            "--print-limit", "50", "--launch-timeout", "0", *script]


def stage_sanitize(p: Pipeline) -> StageResult:
    cuda = p.device.type == "cuda"
    sanitizer = p.args.sanitizer or (find_sanitizer() if cuda else None)
    cmd = sanitize_command(sanitizer, p.device, p.args.backends)
    # Each tensor its own cudaMalloc: an access past a tensor is past an allocation.
    env = child_env(p.device, PYTORCH_NO_CUDA_MEMORY_CACHING="1")
    done = run_logged(cmd, p.args.log_dir / "sanitize.log", timeout=p.timeout("sanitize"), env=env)
    text = done.text()
    errors = sanitizer_errors(text) if sanitizer else None
    finished = re.search(r"^gpu_sanitize: (.*)$", text, re.MULTILINE)
    data = dict(returncode=done.returncode, sanitizer=sanitizer, errors=errors, log=str(done.log),
                script=finished.group(1) if finished else None)
    if done.timed_out:
        return StageResult("sanitize", "timeout", done.seconds, "stopped at the time limit; see sanitize.log", data)
    script = finished.group(1) if finished else f"did not finish (exit {done.returncode}): {_last_line(done)}"
    if cuda and sanitizer is None:
        return StageResult("sanitize", "failed", done.seconds,
                           f"compute-sanitizer not found (ran the script without it: {script})", data)
    if sanitizer and errors is None:
        return StageResult("sanitize", "failed", done.seconds, f"no ERROR SUMMARY from compute-sanitizer: {script}",
                           data)
    tool = f"memcheck: {errors} errors; " if sanitizer else "no compute-sanitizer on a CPU dry run; "
    ok = done.returncode == 0 and not errors and finished is not None and script.startswith("ok")
    return StageResult("sanitize", "ok" if ok else "failed", done.seconds, tool + script, data)


def bench_backends(backends: list[str], device: torch.device) -> list[str]:
    """The bench's backends: on a CPU dry run not Triton, whose interpreter takes
    seconds per call at V = 126464 (the sanitize stage still runs it)."""
    kept = [b for b in backends if not (device.type == "cpu" and b == "triton")]
    return kept or backends


def stage_bench(p: Pipeline) -> StageResult:
    with tempfile.TemporaryDirectory() as tmp:
        records_path = Path(tmp) / "records.jsonl"
        cmd = [sys.executable, "-m", "dmkernels.bench.gpu_bench", "--device", p.device.type, "--out",
               str(records_path), "--backends", ",".join(bench_backends(p.args.backends, p.device))]
        cmd += ["--quick"] if p.args.quick else []
        done = run_logged(cmd, p.args.log_dir / "bench.log", timeout=p.timeout("bench"), env=child_env(p.device))
        records = read_records(records_path)
    p.records = records
    bad = [r for r in records if record_failed(r)]
    data = dict(returncode=done.returncode, records=len(records), failed_records=len(bad), log=str(done.log))
    described = f"{len(records)} records, {len(bad)} with a wrong output or an error"
    if done.timed_out:
        return StageResult("bench", "timeout", done.seconds, f"stopped at the time limit: {described}", data)
    if done.returncode != 0 or bad or not records:
        return StageResult("bench", "failed", done.seconds, f"exit {done.returncode}: {described}", data)
    return StageResult("bench", "ok", done.seconds, f"{described}", data)


def record_failed(record: dict) -> bool:
    """A bench record whose output was wrong or whose case errored (a skip is not a failure)."""
    check = record.get("check", "ok")
    return check != "ok" and not check.startswith("skipped")


def read_records(path: Path) -> list[dict]:
    """The JSON lines a bench run wrote (a line cut short at a kill is dropped)."""
    records = []
    try:
        lines = path.read_text().splitlines()
    except OSError:
        return records
    for line in lines:
        try:
            records.append(json.loads(line))
        except ValueError:
            pass
    return records


# ---------------------------------------------------------------------------
# Results
# ---------------------------------------------------------------------------


def build_report(meta: dict, results: dict[str, StageResult], records: list[dict], seconds: float) -> dict:
    """The JSON file's content: ``meta``, ``ok``, the headline numbers of the
    stages (``build_ok``, ``tests_passed`` / ``tests_failed``,
    ``sanitizer_errors``; None where the stage did not say), every stage, every record."""
    stages = {name: asdict(r) for name, r in results.items()}
    tests = results.get("tests", StageResult("tests", "skipped")).data
    sanitize = results.get("sanitize", StageResult("sanitize", "skipped")).data
    build = results.get("build")
    headline = dict(build_ok=None if build is None or build.status == "skipped" else build.status == "ok",
                    tests_passed=tests.get("passed"),
                    tests_failed=_sum_or_none(tests.get("failed"), tests.get("errors")),
                    tests_skipped=tests.get("skipped"), sanitizer_errors=sanitize.get("errors"))
    return dict(meta, seconds=round(seconds, 1), ok=not any(r.failed for r in results.values()), **headline,
                stages=stages, records=records)


def _sum_or_none(*values):
    return None if all(v is None for v in values) else sum(v or 0 for v in values)


def result_paths(out_dir: Path, slug: str) -> tuple[Path, Path]:
    return out_dir / f"gpu_{slug}.json", out_dir / f"gpu_{slug}.txt"


def write_results(report: dict, out_dir: Path) -> tuple[Path, Path]:
    """``gpu_<slug>.json`` (the report) and ``.txt`` (summary and every record)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    json_path, txt_path = result_paths(out_dir, report["slug"])
    with open(json_path, "w") as f:
        json.dump(_json_safe(report), f, indent=1)
        f.write("\n")
    txt_path.write_text(format_summary(report) + "\n\n" + format_records(report["records"]) + "\n")
    return json_path, txt_path


def _sampling_summary(records: list[dict]) -> list[str]:
    """Lines of the sampling-cost table: each T > 0 token_stats time over the T = 0
    time of the same backend, rows and kind of rows (gpu_bench.sampling_cases)."""
    sampling = [r for r in records if r.get("group") == "sampling" and r.get("median_us")]
    if not sampling:
        return []

    def kind(r):  # the case name ends in the kind of rows, but for randn * 4 (cases._name)
        last = r["case"].rsplit("/", 1)[-1]
        return "randn4" if last.startswith("T") else last

    base = {(r["backend"], kind(r)): r["median_us"] for r in sampling if r["case"].startswith("sampling_T0/")}
    lines = ["", "sampling cost, bf16 " + "x".join(map(str, sampling[0]["shape"])) + ": token_stats at T > 0 / "
             "at T = 0, same backend (targets: 1.5x one distribution, 2.2x two)"]
    for r in sampling:
        if r["case"].startswith("sampling_T0/"):
            continue
        t0 = base.get((r["backend"], kind(r)))
        mode = "tempered" if r["case"].startswith("sampling_cost_tempered/") else "untempered"
        ratio = f"{r['median_us'] / t0:.2f}x" if t0 else "-"
        mark = "" if not record_failed(r) else " (wrong output)"
        lines.append(f"  {r['backend']:<8} {kind(r):<8} T={r['temperature']:<4g} {mode:<11} "
                     f"{r['median_us']:>9.1f} us / {_num(t0, '.1f', 8)} us = {ratio}{mark}")
    return lines


def _json_safe(value):
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_safe(v) for v in value]
    return value


def _num(value, fmt: str, width: int) -> str:
    return (format(value, fmt) if isinstance(value, (int, float)) else "-").rjust(width)


def _ratio(value, width: int) -> str:
    return (f"{value:.1f}x" if isinstance(value, (int, float)) else "-").rjust(width)


def format_summary(report: dict) -> str:
    """One screen: what ran, each stage, the token_stats sweep, one line per case."""
    head = f"gpu-check on {report['device']}"
    if report.get("capability"):
        head += f" (sm_{report['capability'].replace('.', '')}, {report.get('memory_gib')} GiB)"
    lines = [head + f": torch {report['torch']}, CUDA {report.get('cuda')}, triton {report.get('triton')}, "
                    f"nvcc {report.get('nvcc') or '-'}, commit {report.get('commit') or '-'}, "
                    f"{report['seconds']:.0f} s", ""]
    lines.append(f"{'stage':<9} {'status':<8} {'time':>6}  detail")
    for name, stage in report["stages"].items():
        status = stage["status"] if stage["status"] in ("ok", "skipped") else stage["status"].upper()
        lines.append(f"{name:<9} {status:<8} {stage['seconds']:>5.0f}s  {stage['detail']}")
    tests_data = report["stages"].get("tests", {}).get("data", {})
    failed_tests = tests_data.get("failed_tests") or []
    for name in failed_tests[:5]:
        lines.append(f"  failed: {name}")
    if len(failed_tests) > 5:
        lines.append(f"  ... {len(failed_tests) - 5} more in junit.xml")
    crashed = tests_data.get("crashed_tests") or []
    if crashed:
        lines.append(f"  crashed ({len(crashed)}): {crashed[0]}" + (" ..." if len(crashed) > 1 else "")
                     + "; backtrace of the first (tests.log):")
        lines += [f"    {frame}" for frame in tests_data.get("crash_backtrace") or []]
    records = report["records"]
    copy = next((r for r in records if r.get("group") == "copy"), None)
    sweep = [r for r in records if r.get("group") == "sweep" and r.get("op") == "token_stats"]
    llada = {(r["shape"][0], r["temperature"]): r for r in records
             if r.get("group") == "sweep" and r.get("baseline") == "llada_step" and r.get("backend") == (
                 sweep[0]["backend"] if sweep else None)}
    if sweep:
        big_copy = ""
        if copy and copy.get("gbps"):
            big_copy = f"; {copy['shape'][0] / 2**20:.0f} MiB copy: {copy['gbps']:.0f} GB/s"
        lines += ["", "token_stats, bf16 [rows, V]: GB/s of logits read; frac = GB/s / copy GB/s of the same bytes "
                      "(read + written)" + big_copy]
        backends = list(dict.fromkeys(r["backend"] for r in sweep))
        lines.append(f"ratio = eager float32 token_stats (T = 0 only) / {backends[0]}; LLaDA: its float64 step / "
                     f"{backends[0]} token_stats + select_topk + commit_")
        header = f"{'rows':>6} {'T':>3} {'copy GB/s':>9}"
        for b in backends:
            header += f" | {b + ' us':>10} {'GB/s':>6} {'frac':>5}"
        lines.append(header + f" | {'eager f32 us':>12} {'ratio':>6} | {'LLaDA us':>9} {'ratio':>6}")
        for key in sorted(set((r["shape"][0], r["temperature"]) for r in sweep), key=lambda k: (k[1], k[0])):
            group = {r["backend"]: r for r in sweep if (r["shape"][0], r["temperature"]) == key}
            first = next(iter(group.values()))
            row = f"{key[0]:>6} {key[1]:>3g} {_num(first.get('copy_gbps'), '.0f', 9)}"
            for b in backends:
                r = group.get(b, {})
                mark = "" if not record_failed(r) else "!"
                row += (f" | {_num(r.get('median_us'), '.1f', 10)} {_num(r.get('gbps'), '.0f', 6)}"
                        f" {_num(r.get('bandwidth_fraction'), '.2f', 5)}{mark}")
            ratio = group.get(backends[0], {}).get("ratio")
            step = llada.get(key, {})
            lines.append(row + f" | {_num(first.get('baseline_median_us'), '.1f', 12)} {_ratio(ratio, 6)}"
                         f" | {_num(step.get('baseline_median_us'), '.0f', 9)} {_ratio(step.get('ratio'), 6)}")
    lines += _sampling_summary(records)
    cases = [r for r in records if r.get("group") == "cases"]
    if cases:
        backends = list(dict.fromkeys(r["backend"] for r in cases if r["backend"] != "-"))
        lines += ["", "cases (dmkernels/bench/cases.py): median us, ours per backend and the baseline; "
                      "ratio = baseline / ours"]
        header = f"{'case':<44}" + "".join(f" {b + ' us':>11} {'ratio':>6}" for b in backends)
        lines.append(header + f" {'baseline us':>12}  check")
        for name in dict.fromkeys(r["case"] for r in cases):
            group = {r["backend"]: r for r in cases if r["case"] == name}
            row = f"{name[:44]:<44}"
            for b in backends:
                r = group.get(b, {})
                row += f" {_num(r.get('median_us'), '.1f', 11)} {_ratio(r.get('ratio'), 6)}"
            base = next((r.get("baseline_median_us") for r in group.values() if r.get("baseline_median_us")), None)
            bad = [f"{b}: {r['check']}" for b, r in group.items() if record_failed(r)]
            lines.append(row + f" {_num(base, '.1f', 12)}  {'; '.join(bad)[:60] if bad else 'ok'}")
    lines += ["", f"{'PASSED' if report['ok'] else 'FAILED'}: "
                  + ", ".join(f"{n} {s['status']}" for n, s in report["stages"].items())]
    return "\n".join(lines)


_RECORD_COLUMNS = ("group", "case", "backend", "shape", "dtype", "temperature", "median_us", "repeats", "gbps",
                   "copy_gbps", "bandwidth_fraction", "baseline", "baseline_median_us", "ratio", "peak_extra_bytes",
                   "check")


def format_records(records: list[dict]) -> str:
    """Every record, one per line, ``key=value`` for the columns that matter."""
    if not records:
        return "no benchmark records"
    lines = ["records (the same as the JSON file's):"]
    for r in records:
        cells = []
        for key in _RECORD_COLUMNS:
            value = r.get(key)
            if value is None:
                continue
            if isinstance(value, float):
                value = f"{value:.4g}"
            elif isinstance(value, list):
                value = "x".join(map(str, value))
            cells.append(f"{key}={value}")
        lines.append(" ".join(cells))
    return "\n".join(lines)


# ---------------------------------------------------------------------------
# Entry point
# ---------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.device == "cpu":
        device = torch.device("cpu")
    else:
        reason = skip_reason()
        if reason:
            print(f"gpu-check: skipped: {reason}")
            return 0
        device = torch.device("cuda")
    meta = collect_meta(device)
    print(f"gpu-check on {meta['device']} ({device.type}{', dry run' if device.type == 'cpu' else ''}): stages "
          f"{','.join(args.stages)}, budget {args.budget:.0f} s, logs in {args.log_dir}", flush=True)
    pipeline = Pipeline(args, device)
    results = pipeline.run()
    report = build_report(meta, results, pipeline.records, time.perf_counter() - pipeline.start)
    json_path, txt_path = write_results(report, args.out_dir)
    print()
    print(format_summary(report))
    print(f"results: {json_path} and {txt_path.name}; logs: {args.log_dir}")
    return 0 if report["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())

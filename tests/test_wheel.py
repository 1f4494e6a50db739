"""The installed wheel is the whole product.

Builds the wheel from a copy of the source tree, installs it into a fresh
virtual environment, and from a directory outside the repository runs what a
user would: ``python -m dmkernels.bench --quick``, one small end-to-end case
(the eager samplers must ship in the package), the distributed smoke case
(spawned workers import the installed package) and a small Sudoku ``quality``
run (the denoiser and policy checkpoints must ship too).

The fresh environment reuses the packages of the interpreter running the tests
(torch, transformers, ...): every entry of this interpreter's ``sys.path``
outside the repository goes, in order, into a ``.pth`` file of the new
environment, after its own site-packages. Directories named in a ``.pth`` file
are added to ``sys.path`` without processing the ``.pth`` files inside them, so
the editable install of this checkout (a ``.pth`` hook in this interpreter's
site-packages) stays out, whether the tests run in a virtual environment or
under a plain system Python. The test checks that ``dmkernels`` is imported
from the new environment anyway.

It takes a few minutes: the build compiles the C++ extension from scratch (a
copy of the tree, so that stale files in ``build/`` cannot end up in the wheel,
and a concurrent in-place build is not disturbed).
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from dmkernels import _extension

ROOT = Path(__file__).resolve().parents[1]

# Never copied into the build: VCS data, build outputs (the wheel must compile
# its own extension), caches.
_IGNORE = shutil.ignore_patterns(".git", "build", "dist", "*.egg-info", "__pycache__", "*.so", "*.o", "*.pyd",
                                 ".hypothesis", ".benchmarks", ".pytest_cache")

# What the package reads at run time and must therefore be in the wheel.
_SHIPPED = (
    "dmkernels/bench/eager/__init__.py",
    "dmkernels/bench/eager/_common.py",
    "dmkernels/bench/eager/llada.py",
    "dmkernels/bench/eager/fast_dllm.py",
    "dmkernels/bench/eager/dream.py",
    "dmkernels/bench/eager/policies.py",
    "dmkernels/bench/eager/llada2.py",
    "dmkernels/bench/eager/sdar.py",
    "dmkernels/tasks/checkpoints/sudoku_short.json",
    "dmkernels/tasks/checkpoints/sudoku_short.safetensors",
    "dmkernels/tasks/checkpoints/sudoku_long.json",
    "dmkernels/tasks/checkpoints/sudoku_long.safetensors",
    "dmkernels/tasks/checkpoints/pairs_denoiser.json",
    "dmkernels/tasks/checkpoints/pairs_denoiser.safetensors",
    "dmkernels/tasks/checkpoints/pairs_order_rloo_4.safetensors",
    "dmkernels/tasks/checkpoints/pairs_order_rloo_8.safetensors",
    "dmkernels/tasks/checkpoints/policy_block_grpo.safetensors",
    "dmkernels/tasks/checkpoints/policy_block_embed_supervised.safetensors",
)


def _run(cmd, *, cwd, env, timeout, what):
    proc = subprocess.run([str(c) for c in cmd], cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, (f"{what} failed with status {proc.returncode}:\n{' '.join(map(str, cmd))}\n"
                                  f"--- stdout (tail)\n{proc.stdout[-6000:]}\n--- stderr (tail)\n{proc.stderr[-6000:]}")
    return proc.stdout


def _outside_repo(entry: str) -> bool:
    if not entry:
        return False  # the current directory
    try:
        Path(entry).resolve().relative_to(ROOT)
    except ValueError:
        return True
    return False


@pytest.fixture(scope="module")
def wheel_env(tmp_path_factory):
    """(python of a fresh venv with the wheel installed, a run directory outside
    the repository, the environment for subprocesses, the venv's site-packages)."""
    tmp = tmp_path_factory.mktemp("wheel")
    # As a user runs it: none of the test suite's settings (conftest.py sets
    # DMKERNELS_POISON_OUTPUTS and, without a GPU, TRITON_INTERPRET).
    dropped = ("PYTHONPATH", "PYTHONHOME", "PYTHONSTARTUP", "DMKERNELS_POISON_OUTPUTS", "TRITON_INTERPRET")
    env = {k: v for k, v in os.environ.items() if k not in dropped}
    env["PIP_DISABLE_PIP_VERSION_CHECK"] = "1"

    src = tmp / "src"
    shutil.copytree(ROOT, src, ignore=_IGNORE)
    dist = tmp / "dist"
    _run([sys.executable, "-m", "pip", "wheel", "--no-build-isolation", "--no-deps", "--no-index", "-w", dist, src],
         cwd=tmp, env=env, timeout=1500, what="building the wheel")
    wheels = list(dist.glob("dmkernels-*.whl"))
    assert len(wheels) == 1, f"expected one dmkernels wheel in {dist}, found {wheels}"
    with zipfile.ZipFile(wheels[0]) as zf:
        names = set(zf.namelist())
    missing = [f for f in _SHIPPED if f not in names]
    assert not missing, f"{wheels[0].name} lacks what the package reads at run time: {missing}"
    assert not any(n.startswith(("tests/", "benchmarks/")) for n in names), "the wheel ships tests/ or benchmarks/"

    venv = tmp / "venv"
    _run([sys.executable, "-m", "venv", "--without-pip", venv], cwd=tmp, env=env, timeout=300,
         what="creating the venv")
    python = venv / ("Scripts/python.exe" if os.name == "nt" else "bin/python")
    site = Path(_run([python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                     cwd=tmp, env=env, timeout=60, what="asking the venv for its site-packages").strip())
    reused = [p for p in dict.fromkeys(sys.path) if _outside_repo(p) and os.path.isdir(p)]
    (site / "_dmkernels_test_reuse.pth").write_text("".join(f"{p}\n" for p in reused))
    # --target: pip neither looks at nor touches this interpreter's editable dmkernels.
    _run([sys.executable, "-m", "pip", "install", "--no-deps", "--no-index", "--target", site, wheels[0]],
         cwd=tmp, env=env, timeout=300, what="installing the wheel")

    run_dir = tmp / "run"
    run_dir.mkdir()
    assert _outside_repo(str(run_dir)), f"the run directory {run_dir} is inside the repository"
    return python, run_dir, env, site


def test_wheel_imports_the_installed_package(wheel_env):
    python, run_dir, env, site = wheel_env
    probe = ("import json, dmkernels, dmkernels._extension as e\n"
             "from dmkernels.tasks import sudoku\n"
             "print(json.dumps({'file': dmkernels.__file__, 'loaded': e.LOADED, 'reason': e.REASON,\n"
             "                  'checkpoints': str(sudoku.checkpoint_dir())}))\n")
    info = json.loads(_run([python, "-c", probe], cwd=run_dir, env=env, timeout=300, what="importing dmkernels")
                      .strip().splitlines()[-1])
    package = Path(info["file"]).resolve().parent
    assert package == (site / "dmkernels").resolve(), f"dmkernels imported from {package}, not from the wheel in {site}"
    assert Path(info["checkpoints"]).resolve().is_relative_to(package)
    # The wheel's own extension loads wherever this checkout's does.
    assert info["loaded"] == _extension.LOADED, f"wheel: {info['reason']}; checkout: {_extension.REASON}"


def test_wheel_bench_quick(wheel_env):
    python, run_dir, env, _ = wheel_env
    out = _run([python, "-m", "dmkernels.bench", "--quick", "--device", "cpu", "--json", run_dir / "quick.json"],
               cwd=run_dir, env=env, timeout=900, what="python -m dmkernels.bench --quick")
    records = json.loads((run_dir / "quick.json").read_text())
    assert records and all(r["check"] == "ok" for r in records), out[-3000:]


def test_wheel_bench_e2e_and_distributed(wheel_env):
    python, run_dir, env, _ = wheel_env
    # One small end-to-end case: imports the eager samplers from the wheel.
    _run([python, "-m", "dmkernels.bench", "--e2e", "--quick", "--device", "cpu", "--filter", "e2e/llada/",
          "--json", run_dir / "e2e.json"], cwd=run_dir, env=env, timeout=600, what="python -m dmkernels.bench --e2e")
    records = json.loads((run_dir / "e2e.json").read_text())
    assert len(records) == 1 and records[0]["check"] == "ok", records
    _run([python, "-m", "dmkernels.bench", "--distributed", "--quick", "--json", run_dir / "dist.json"],
         cwd=run_dir, env=env, timeout=600, what="python -m dmkernels.bench --distributed")
    records = json.loads((run_dir / "dist.json").read_text())
    assert records and all(r["check"] == "ok" for r in records), records


def test_wheel_quality_small(wheel_env):
    python, run_dir, env, _ = wheel_env
    out_dir = run_dir / "quality"
    _run([python, "-m", "dmkernels.bench", "quality", "--quick", "--puzzles", "4", "--no-cost", "--out-dir", out_dir],
         cwd=run_dir, env=env, timeout=900, what="python -m dmkernels.bench quality")
    records = json.loads((out_dir / "sudoku_quality.json").read_text())
    assert {r["denoiser"] for r in records} == {"short", "long"}
    learned = {r["policy"] for r in records if r["policy"].startswith("Learned[")}
    assert learned, "no learned policy was loaded from the wheel"
    assert all(r["n_puzzles"] == 4 for r in records)

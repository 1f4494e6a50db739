"""Packaging: declared ranges, pinned versions and the build backend agree.

`make test` installs requirements-test.txt under constraints.txt; setup.py
declares the ranges a user's pip resolves. These tests keep the three files
from drifting apart, and check that a build without PyTorch stops with what to
run instead of a bare ``No module named 'torch'``.
"""
import ast
import os
import subprocess
import sys
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.version import Version

ROOT = Path(__file__).resolve().parents[1]


def _setup_requirements():
    """install_requires and every extra of setup.py, read without running it."""
    tree = ast.parse((ROOT / "setup.py").read_text())
    call = next(n for n in ast.walk(tree) if isinstance(n, ast.Call) and getattr(n.func, "id", None) == "setup")
    kw = {k.arg: ast.literal_eval(k.value) for k in call.keywords if k.arg in ("install_requires", "extras_require")}
    reqs = list(kw["install_requires"])
    for extra in kw["extras_require"].values():
        reqs += extra
    return {Requirement(r).name.lower(): Requirement(r) for r in reqs}


def _requirement_lines(path):
    out = []
    for line in (ROOT / path).read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            out.append(line)
    return out


def _constraints():
    pins = {}
    for line in _requirement_lines("constraints.txt"):
        name, _, version = line.partition("==")
        assert version, f"constraints.txt: {line!r} is not an exact pin (name==version)"
        pins[name.strip().lower().replace("_", "-")] = Version(version.strip())
    return pins


def test_declared_ranges_have_upper_bounds():
    reqs = _setup_requirements()
    for name in ("torch", "transformers", "numpy", "safetensors"):
        spec = reqs[name].specifier
        assert any(s.operator == ">=" for s in spec), f"{name}: no lower bound in setup.py"
        assert any(s.operator == "<" for s in spec), f"{name}: no upper bound in setup.py"


def test_requirements_file_matches_setup_py():
    declared = _setup_requirements()
    for line in _requirement_lines("requirements-test.txt"):
        req = Requirement(line)
        if req.name.lower() in declared:
            assert req.specifier == declared[req.name.lower()].specifier, (
                f"requirements-test.txt says {req}, setup.py says {declared[req.name.lower()]}")


def test_constraints_pin_every_requirement_inside_its_range():
    pins = _constraints()
    for line in _requirement_lines("requirements-test.txt"):
        req = Requirement(line)
        name = req.name.lower().replace("_", "-")
        assert name in pins, f"constraints.txt pins no version of {req.name}"
        assert req.specifier.contains(pins[name], prereleases=True), (
            f"constraints.txt pins {name}=={pins[name]}, outside {req}")
    # torch is installed by the Makefile (only when absent): the same version.
    makefile = (ROOT / "Makefile").read_text()
    torch_pin = next(l.split(":=")[1].strip() for l in makefile.splitlines() if l.startswith("TORCH_VERSION"))
    assert _setup_requirements()["torch"].specifier.contains(torch_pin)


_NO_TORCH = "import sys; sys.modules['torch'] = None; sys.path.insert(0, 'tools'); import build_backend; "


@pytest.mark.parametrize("hook", ["get_requires_for_build_wheel()", "get_requires_for_build_editable()",
                                  "build_wheel('unused')", "prepare_metadata_for_build_wheel('unused')"])
def test_build_backend_without_torch_says_what_to_run(hook):
    env = {k: v for k, v in os.environ.items() if k != "DMKERNELS_NO_EXTENSION"}
    r = subprocess.run([sys.executable, "-c", _NO_TORCH + "build_backend." + hook],
                       cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert r.returncode != 0
    assert "pip install --no-build-isolation ." in r.stderr
    assert "Traceback" not in r.stderr


def test_setup_py_without_torch_says_what_to_run():
    env = {k: v for k, v in os.environ.items() if k != "DMKERNELS_NO_EXTENSION"}
    code = "import sys, runpy; sys.modules['torch'] = None; sys.argv = ['setup.py', '--name']; runpy.run_path('setup.py')"
    r = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert r.returncode != 0
    assert "--no-build-isolation" in r.stderr and "Traceback" not in r.stderr


def test_isolated_pip_install_stops_with_the_instructions(tmp_path):
    """A plain `pip install .` (build isolation on): pip's build environment has no
    torch, so the backend must stop at once with the instructions. Needs the
    package index for setuptools, as every install here does."""
    env = {k: v for k, v in os.environ.items() if k != "DMKERNELS_NO_EXTENSION"}
    env["PIP_NO_INPUT"] = "1"
    r = subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "--target", str(tmp_path / "t"), str(ROOT)],
                       env=env, capture_output=True, text=True, timeout=600)
    out = r.stdout + r.stderr
    assert r.returncode != 0, out
    assert "pip install --no-build-isolation ." in out, out
    assert "No module named 'torch'" not in out, out

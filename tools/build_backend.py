"""PEP 517 build backend: setuptools' own, after checking that PyTorch is importable.

dmkernels._C is compiled against the PyTorch that will import it (its C++ ABI
and the CUDA version must match), so the build must see that PyTorch. Under
pip's default build isolation it cannot: pip would build in an empty
environment, and setup.py would fail with a bare ``No module named 'torch'``
(or, if torch were a build requirement, download a different PyTorch, several
GB of CUDA packages, and build against it). So every hook that would run
setup.py first checks for torch and otherwise stops with what to run instead.
``DMKERNELS_NO_EXTENSION=1`` builds the pure-Python package and needs no torch.
"""
from __future__ import annotations

import os

from setuptools import build_meta as _setuptools

MESSAGE = """
dmkernels: PyTorch is not importable in the build environment.

dmkernels compiles its C++/CUDA kernels against the PyTorch installed where it
will run, and pip's build isolation hides that PyTorch. Install PyTorch first,
then build without isolation:

    pip install torch                    # on this project's CPU machines: torch==2.13.0
    pip install --no-build-isolation .   # or: pip wheel --no-build-isolation .

(DMKERNELS_NO_EXTENSION=1 pip install . builds without compiled kernels; the ops
then run on their slow PyTorch references.)
"""


def _no_extension() -> bool:
    return os.environ.get("DMKERNELS_NO_EXTENSION", "0").lower() in ("1", "true", "yes", "on")


def _require_torch() -> None:
    if _no_extension():
        return
    try:
        import torch  # noqa: F401
    except ImportError:
        raise SystemExit(MESSAGE) from None


def get_requires_for_build_wheel(config_settings=None):
    _require_torch()
    return _setuptools.get_requires_for_build_wheel(config_settings)


def get_requires_for_build_editable(config_settings=None):
    _require_torch()
    return _setuptools.get_requires_for_build_editable(config_settings)


def get_requires_for_build_sdist(config_settings=None):
    _require_torch()
    return _setuptools.get_requires_for_build_sdist(config_settings)


def prepare_metadata_for_build_wheel(metadata_directory, config_settings=None):
    _require_torch()
    return _setuptools.prepare_metadata_for_build_wheel(metadata_directory, config_settings)


def prepare_metadata_for_build_editable(metadata_directory, config_settings=None):
    _require_torch()
    return _setuptools.prepare_metadata_for_build_editable(metadata_directory, config_settings)


def build_wheel(wheel_directory, config_settings=None, metadata_directory=None):
    _require_torch()
    return _setuptools.build_wheel(wheel_directory, config_settings, metadata_directory)


def build_editable(wheel_directory, config_settings=None, metadata_directory=None):
    _require_torch()
    return _setuptools.build_editable(wheel_directory, config_settings, metadata_directory)


def build_sdist(sdist_directory, config_settings=None):
    _require_torch()
    return _setuptools.build_sdist(sdist_directory, config_settings)

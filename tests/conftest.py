"""Test setup: poison the compiled kernels' outputs (see csrc/checks.h) so an
unwritten element fails, run Triton in its interpreter where there is no GPU,
give every test a fresh, seeded random stream, and the ``backend`` fixture that
runs every op test on every backend present."""
import os
import shutil
import zlib

os.environ.setdefault("DMKERNELS_POISON_OUTPUTS", "1")
# Without a GPU, Triton kernels run in its interpreter on CPU tensors; the
# variable must be set before triton is first imported.
if shutil.which("nvidia-smi") is None:
    os.environ.setdefault("TRITON_INTERPRET", "1")

from dataclasses import dataclass  # noqa: E402

import pytest  # noqa: E402
import torch  # noqa: E402

import dmkernels  # noqa: E402,F401
from dmkernels import _extension, _registry, ops  # noqa: E402
from dmkernels import triton as _triton  # noqa: E402

requires_extension = pytest.mark.skipif(not _extension.LOADED, reason=f"dmkernels._C: {_extension.REASON}")

INTERPRET = os.environ.get("TRITON_INTERPRET") == "1"


@dataclass(frozen=True)
class Backend:
    """One backend on one device: ``name`` is the ``backend=`` keyword of the ops,
    ``device`` where the inputs go. Tests build inputs on the CPU, run them here
    through :meth:`call` (or :meth:`raw`), and compare with the reference on the CPU.
    Every backend gets the same cases and tolerances; under the Triton interpreter
    (slow per operation) :meth:`cap` shrinks the longest shapes and
    :meth:`examples` the number of Hypothesis examples."""

    name: str
    device: str

    @property
    def id(self) -> str:
        return self.name if self.device == "cpu" else f"{self.name}-{self.device}"

    @property
    def interpreted(self) -> bool:
        return self.name == "triton" and self.device == "cpu"

    def to(self, value):
        """A tensor (or a tuple / list / dict of them) on this backend's device."""
        if isinstance(value, torch.Tensor):
            return value if value.device.type == "meta" else value.to(self.device)  # meta: a device-mismatch case
        if isinstance(value, (tuple, list)):
            return type(value)(self.to(v) for v in value)
        if isinstance(value, dict):
            return {k: self.to(v) for k, v in value.items()}
        return value

    def call(self, op: str, *args, **kwargs):
        """The public op ``dmkernels.ops.<op>`` on this backend, inputs moved to its device."""
        return getattr(ops, op)(*self.to(args), backend=self.name, **self.to(kwargs))

    def raw(self, op: str, *args):
        """The backend's raw op (``torch.ops.dmkernels[_triton].<op>``, or the registry's
        call of the reference) on the raw arguments, moved to the device."""
        args = self.to(args)
        if self.name == "native":
            return getattr(torch.ops.dmkernels, op)(*args)
        if self.name == "triton":
            _triton.load()
            return getattr(torch.ops.dmkernels_triton, op)(*args)
        spec = _registry.OPS[op]
        return spec.call_reference(getattr(ops, spec.reference), spec.check(*args))

    def cap(self, n: int, limit: int) -> int:
        """``n``, or at most ``limit`` under the Triton interpreter."""
        return min(n, limit) if self.interpreted else n

    def examples(self, n: int) -> int:
        """Hypothesis examples: ``n``, a third under the Triton interpreter."""
        return max(10, n // 3) if self.interpreted else n


def why_not(name: str, device: str) -> str | None:
    """None when the backend runs here, else why it is skipped."""
    if device == "cuda" and not torch.cuda.is_available():
        return "needs a CUDA device"
    if name == "native" and not _extension.has_kernel("token_stats", torch.device(device)):
        return f"dmkernels._C has no {device} kernels: {dmkernels.backends()['cuda' if device == 'cuda' else 'cpu']}"
    if name == "triton":
        if not _triton.AVAILABLE:
            return _triton.REASON
        if device == "cpu" and not INTERPRET:
            return "Triton runs on CPU tensors only under TRITON_INTERPRET=1 (set where there is no GPU)"
        if device == "cuda" and INTERPRET:
            return "TRITON_INTERPRET=1: Triton runs on the CPU here"
    return None


def _params(names):
    out = []
    for name, device in names:
        backend = Backend(name, device)
        why = why_not(name, device)
        marks = [pytest.mark.skip(reason=why)] if why else []
        if name == "triton":  # inf - inf in rows without a distribution: numpy warns under the interpreter
            marks.append(pytest.mark.filterwarnings("ignore::RuntimeWarning"))
        out.append(pytest.param(backend, id=backend.id, marks=marks))
    return out


# The ids are what `-k` selects: `make gpu-check` runs the CUDA cases with `-k cuda`.
ALL_BACKENDS = [("reference", "cpu"), ("native", "cpu"), ("triton", "cpu"), ("native", "cuda"), ("triton", "cuda")]
KERNEL_BACKENDS = [b for b in ALL_BACKENDS if b[0] != "reference"]
TRITON_BACKENDS = [b for b in ALL_BACKENDS if b[0] == "triton"]


@pytest.fixture(scope="session", params=_params(ALL_BACKENDS))
def backend(request) -> Backend:
    """Every backend present: reference, native (CPU), triton (CPU, interpreter),
    native-cuda, triton-cuda; the absent ones are skipped with the reason."""
    return request.param


@pytest.fixture(scope="session", params=_params(KERNEL_BACKENDS))
def kernel_backend(request) -> Backend:
    """The compiled and Triton backends (what a test of a kernel's own limits needs)."""
    return request.param


@pytest.fixture(scope="session", params=_params(TRITON_BACKENDS))
def triton_backend(request) -> Backend:
    """Triton on the CPU (interpreter) and on CUDA: tests of its tiling and splits."""
    return request.param


@pytest.fixture(autouse=True)
def _seed(request):
    # A different but reproducible stream per test.
    torch.manual_seed(zlib.crc32(request.node.nodeid.encode()))
    yield


@pytest.fixture
def tiles(monkeypatch):
    """Force the Triton token_stats tile width and number of vocabulary splits
    (None: the kernel's own choice), for the Triton token_stats tests."""
    def force(block_v=None, splits=None):
        if not _triton.AVAILABLE:  # nothing to force: the other backends do not tile
            return
        from dmkernels.triton import token_stats as triton_token_stats

        monkeypatch.setattr(triton_token_stats, "BLOCK_V_OVERRIDE", block_v)
        monkeypatch.setattr(triton_token_stats, "SPLITS_OVERRIDE", splits)

    return force

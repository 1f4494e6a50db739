"""The benchmark cases: one op of ours against one baseline on fixed inputs.

Inputs. Logits are ``randn * 4`` (cast to the case's dtype): a spread of a few
nats like an LM head's, top probabilities from 3% to 95% (median 15% at
V = 126464), and a random order within each row, so a one-pass kernel's running maximum moves about log(V)
times per row, as on real rows; for the kernels the cost depends on the bytes,
not the values. Every position is masked (a generation's first step, the
largest one). Selection cases use a [8, 1024] canvas with about half the
positions masked and distinct scores (a permutation), so rankings have no ties
and both sides must choose the same positions.

Every case can say whether an output is right (:meth:`Case.mismatch`): at
temperature 0 both sides must return the argmax tokens; selection cases must
leave the canvas the dmkernels reference ops leave. A broken op or baseline then
fails loudly instead of looking fast.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch

import dmkernels
from dmkernels import reference
from dmkernels.bench import baselines
from dmkernels.constants import DREAM_VOCAB_SIZE, LLADA_MASK_ID, LLADA_VOCAB_SIZE
from dmkernels.reference.token_stats_partial import token_stats_partial_reference

LLADA_VOCAB = LLADA_VOCAB_SIZE
DREAM_VOCAB = DREAM_VOCAB_SIZE
SEED = 1234  # fixed noise seed for our sampler: no host-side draw per call

_SHORT_DTYPE = {torch.float32: "f32", torch.bfloat16: "bf16", torch.float16: "f16"}


def random_logits(shape, dtype, device) -> torch.Tensor:
    """``randn * 4`` in ``dtype``, built without a second full-size temporary."""
    logits = torch.randn(shape, device=device).mul_(4.0)
    return logits if dtype == torch.float32 else logits.to(dtype)


@dataclass
class Case:
    """One benchmark: ours against a baseline on one input.

    ``setup(device)`` builds the inputs, ``run_ours()`` / ``run_baseline()`` run
    one call each, ``teardown()`` frees the inputs. ``large`` cases (LLaDA-size
    logits) are left out of quick runs.
    """

    name: str
    op: str
    baseline: str
    shape: tuple[int, ...]
    dtype: torch.dtype = torch.float32
    temperature: float = 0.0
    large: bool = False
    inputs: dict = field(default_factory=dict, repr=False, compare=False)

    @property
    def logits_bytes(self) -> int:
        """Bytes of logits one call reads (0 for cases without logits)."""
        if len(self.shape) < 3:
            return 0
        n = 1
        for d in self.shape:
            n *= d
        return n * torch.empty((), dtype=self.dtype).element_size()

    def setup(self, device: torch.device | str = "cpu") -> None:
        self.inputs = self._build(torch.device(device))

    def teardown(self) -> None:
        self.inputs = {}

    def _build(self, device: torch.device) -> dict:
        raise NotImplementedError

    def run_ours(self):
        raise NotImplementedError

    def run_baseline(self):
        raise NotImplementedError

    def mismatch(self, side: str, out) -> str | None:
        """Why ``out`` (from ``run_ours`` if side == "ours", else ``run_baseline``)
        is wrong, or None."""
        raise NotImplementedError


def _compare(what: str, got: torch.Tensor, want: torch.Tensor) -> str | None:
    if got.shape != want.shape:
        return f"{what}: shape {list(got.shape)}, expected {list(want.shape)}"
    wrong = int((got != want).sum())
    return f"{what}: {wrong} of {want.numel()} differ" if wrong else None


def _tokens_in_range(token: torch.Tensor, vocab: int) -> str | None:
    bad = int(((token < 0) | (token >= vocab)).sum())
    return f"{bad} tokens outside [0, {vocab})" if bad else None


@dataclass
class TokenStatsCase(Case):
    """``token_stats`` against ``eager_float32_stats`` (temperature 0) or
    ``dream_step`` (Dream scores the tempered distribution: ``tempered_scores=True``)."""

    def _build(self, device):
        logits = random_logits(self.shape, self.dtype, device)
        mask = torch.ones(self.shape[:-1], dtype=torch.bool, device=device)
        argmax = torch.argmax(logits, dim=-1) if self.temperature == 0 else None
        return {"logits": logits, "mask": mask, "argmax": argmax}

    def run_ours(self):
        if self.baseline == "dream_step":
            return dmkernels.token_stats(
                self.inputs["logits"], temperature=self.temperature, seed=SEED,
                positions=self.inputs["mask"], tempered_scores=True,
            )
        return dmkernels.token_stats(self.inputs["logits"], temperature=self.temperature, seed=SEED)

    def run_baseline(self):
        if self.baseline == "dream_step":
            return baselines.dream_step(self.inputs["logits"], self.inputs["mask"], self.temperature)
        return baselines.eager_float32_stats(self.inputs["logits"])

    def mismatch(self, side, out):
        token = out.token
        if side == "ours" and self.baseline == "dream_step":
            token = token[self.inputs["mask"]]  # Dream returns the masked rows only
        if self.inputs["argmax"] is None:
            return _tokens_in_range(token, self.shape[-1])
        want = self.inputs["argmax"]
        return _compare("tokens", token, want[self.inputs["mask"]] if token.dim() == 1 else want)


@dataclass
class LLaDAStepCase(Case):
    """LLaDA's whole step: ``token_stats`` + ``select_topk`` + ``commit_`` against
    :func:`baselines.llada_step`. Each call starts from a fresh copy of the canvas
    (a [B, L] clone on both sides, negligible next to the logits)."""

    commit_per_row: int = 4

    def _build(self, device):
        B, L, _ = self.shape
        logits = random_logits(self.shape, self.dtype, device)
        canvas = torch.full((B, L), LLADA_MASK_ID, dtype=torch.int64, device=device)
        num_transfer = torch.full((B,), self.commit_per_row, dtype=torch.int64, device=device)
        argmax = torch.argmax(logits, dim=-1) if self.temperature == 0 else None
        return {"logits": logits, "canvas": canvas, "num_transfer": num_transfer, "argmax": argmax}

    def run_ours(self):
        x = self.inputs["canvas"].clone()
        stats = dmkernels.token_stats(self.inputs["logits"], temperature=self.temperature, seed=SEED)
        chosen = dmkernels.select_topk(stats.confidence, self.inputs["num_transfer"], x == LLADA_MASK_ID)
        dmkernels.commit_(x, stats.token, chosen, LLADA_MASK_ID)
        return stats.token, x

    def run_baseline(self):
        x = self.inputs["canvas"].clone()
        mask_index = x == LLADA_MASK_ID
        step = baselines.llada_step(
            self.inputs["logits"], x, mask_index, self.inputs["num_transfer"], self.temperature, LLADA_MASK_ID
        )
        return step.x0, x

    def mismatch(self, side, out):
        token, x = out
        committed = (x != LLADA_MASK_ID).sum(-1)
        problem = _compare("committed per row", committed, self.inputs["num_transfer"].clamp(max=self.shape[1]))
        if problem:
            return problem
        if self.inputs["argmax"] is None:
            return _tokens_in_range(token, self.shape[-1])
        return _compare("tokens", token, self.inputs["argmax"])


@dataclass
class SelectCommitCase(Case):
    """A selection rule + ``commit_`` on a [B, L] canvas against the samplers'
    per-row loops (LLaDA top-k, Fast-dLLM factor, EB-Sampler) or Fast-dLLM's
    vectorised threshold, each followed by ``x[transfer] = x0[transfer]``."""

    rule: str = "topk"  # topk | threshold | factor | entropy_bounded | group
    parameter: float = 0.0  # threshold, factor or gamma; the step for group

    def _build(self, device):
        B, L = self.shape
        gen = torch.Generator().manual_seed(0)
        canvas = torch.randint(0, LLADA_MASK_ID, (B, L), generator=gen)
        canvas[torch.rand(B, L, generator=gen) < 0.5] = LLADA_MASK_ID
        x0 = torch.randint(0, LLADA_MASK_ID, (B, L), generator=gen)
        # Distinct values: rankings without ties, so both sides pick the same positions.
        confidence = ((torch.randperm(B * L, generator=gen) + 1).float() / (B * L + 1)).reshape(B, L)
        entropy = (torch.randperm(B * L, generator=gen) + 1).float().mul_(3.0 / (B * L)).reshape(B, L)
        k = torch.randint(1, 17, (B,), generator=gen)
        inputs = {"canvas": canvas, "x0": x0, "confidence": confidence, "entropy": entropy, "k": k}
        inputs = {name: t.to(device) for name, t in inputs.items()}
        inputs["expected"] = self._reference(**inputs)
        return inputs

    def _reference(self, canvas, x0, confidence, entropy, k):
        eligible = canvas == LLADA_MASK_ID
        chosen = {
            "topk": lambda: reference.select_topk_reference(confidence, k, eligible),
            "threshold": lambda: reference.select_threshold_reference(confidence, eligible, self.parameter),
            "factor": lambda: reference.select_factor_reference(confidence, eligible, self.parameter),
            "entropy_bounded": lambda: reference.select_entropy_bounded_reference(
                entropy, entropy, eligible, self.parameter),
            "group": lambda: reference.select_group_reference(
                eligible, _groups(canvas), torch.tensor(int(self.parameter), device=canvas.device)),
        }[self.rule]()
        x = canvas.clone()
        reference.commit_reference(x, x0, chosen, LLADA_MASK_ID)
        return x

    def run_ours(self):
        i = self.inputs
        x = i["canvas"].clone()
        eligible = x == LLADA_MASK_ID
        if self.rule == "topk":
            chosen = dmkernels.select_topk(i["confidence"], i["k"], eligible)
        elif self.rule == "threshold":
            chosen = dmkernels.select_threshold(i["confidence"], eligible, self.parameter)
        elif self.rule == "factor":
            chosen = dmkernels.select_factor(i["confidence"], eligible, self.parameter)
        elif self.rule == "group":
            chosen = dmkernels.select_group(eligible, _groups(x), int(self.parameter))
        else:  # EB-Sampler with entropy as its error proxy
            chosen = dmkernels.select_entropy_bounded(i["entropy"], i["entropy"], eligible, self.parameter)
        dmkernels.commit_(x, i["x0"], chosen, LLADA_MASK_ID)
        return x

    def run_baseline(self):
        i = self.inputs
        x = i["canvas"].clone()
        mask_index = x == LLADA_MASK_ID
        if self.rule == "topk":
            transfer = baselines.llada_topk_transfer(torch.where(mask_index, i["confidence"], -torch.inf), i["k"])
        elif self.rule == "threshold":
            transfer = baselines.threshold_transfer(i["confidence"], mask_index, self.parameter)
        elif self.rule == "factor":
            transfer = baselines.factor_transfer(i["confidence"], mask_index, self.parameter)
        elif self.rule == "group":  # no public loop to compare with: the PyTorch reference
            transfer = reference.select_group_reference(
                mask_index, _groups(x), torch.tensor(int(self.parameter), device=x.device))
        else:
            transfer = baselines.entropy_bounded_transfer(i["entropy"], i["entropy"], mask_index, self.parameter)
        baselines.write_transfer(x, i["x0"], transfer, LLADA_MASK_ID)
        return x

    def mismatch(self, side, out):
        return _compare("canvas after commit", out, self.inputs["expected"])


def _groups(canvas: torch.Tensor) -> torch.Tensor:
    """DUS groups of 32-position blocks over the canvas's length (a constant)."""
    L = canvas.shape[1]
    return dmkernels.dilated_groups(32, device=canvas.device).repeat((L + 31) // 32)[:L]


@dataclass
class TokenStatsPartialCase(Case):
    """``token_stats_partial`` of one tensor-parallel rank's vocabulary slice (the
    second half of LLaDA's vocabulary) against the PyTorch reference of the same op
    (there is no public baseline: the public samplers gather the whole logits)."""

    def _build(self, device):
        logits = random_logits(self.shape, self.dtype, device)
        return {"logits": logits, "vocab_start": LLADA_VOCAB - self.shape[-1],
                "argmax": torch.argmax(logits, dim=-1) + (LLADA_VOCAB - self.shape[-1])}

    def run_ours(self):
        return dmkernels.token_stats_partial(self.inputs["logits"], vocab_start=self.inputs["vocab_start"],
                                             temperature=self.temperature, seed=SEED)

    def run_baseline(self):
        return token_stats_partial_reference(
            self.inputs["logits"], vocab_start=self.inputs["vocab_start"], temperature=self.temperature, seed=SEED)

    def mismatch(self, side, out):
        token = out[..., 5]  # the global column of the slice's token (reference/token_stats_partial.py)
        if self.temperature == 0:
            return _compare("tokens", token.to(torch.int64), self.inputs["argmax"])
        return _tokens_in_range(token.to(torch.int64), LLADA_VOCAB)


def _name(kind: str, shape, dtype, temperature) -> str:
    return f"{kind}/{'x'.join(map(str, shape))}/{_SHORT_DTYPE[dtype]}/T{temperature:g}"


def _token_stats_case(baseline, shape, dtype=torch.float32, temperature=0.0, large=False):
    return TokenStatsCase(_name(baseline, shape, dtype, temperature), "token_stats", baseline, shape, dtype,
                          temperature, large)


def _llada_case(shape, temperature, large=False):
    return LLaDAStepCase(_name("llada_step", shape, torch.float32, temperature),
                         "token_stats+select_topk+commit_", "llada_step", shape, torch.float32, temperature, large)


def _select_case(rule, baseline, parameter):
    shape = (8, 1024)
    return SelectCommitCase(f"{rule}+commit/{shape[0]}x{shape[1]}", f"select_{rule}+commit_", baseline, shape,
                            rule=rule, parameter=parameter)


def all_cases() -> list[Case]:
    """Every case, small ones first (fresh objects, no inputs built yet)."""
    small_llada, small_bf16 = (2, 32, LLADA_VOCAB), (4, 64, 32000)
    return [
        _token_stats_case("eager_float32_stats", small_llada),
        _token_stats_case("eager_float32_stats", small_bf16, torch.bfloat16),
        _llada_case(small_llada, 0.0),
        _llada_case(small_llada, 1.0),
        _token_stats_case("dream_step", small_llada),
        _token_stats_case("dream_step", small_bf16, torch.bfloat16, 1.0),
        _select_case("topk", "llada_topk_transfer", 0.0),
        _select_case("threshold", "threshold_transfer", 0.9),
        _select_case("factor", "factor_transfer", 1.0),
        _select_case("entropy_bounded", "entropy_bounded_transfer", 1.0),
        _select_case("group", "reference", 2),
        TokenStatsPartialCase(_name("token_stats_partial", (2, 32, LLADA_VOCAB // 2), torch.bfloat16, 0.0),
                              "token_stats_partial", "reference", (2, 32, LLADA_VOCAB // 2), torch.bfloat16),
        # LLaDA-size logits: 0.52 GB ([1, 1024]) and 1.04 GB ([8, 256]) of float32;
        # LLaDA's float64 step takes 5-60 s and up to 10 GB, so it runs once.
        _llada_case((1, 1024, LLADA_VOCAB), 0.0, large=True),
        _llada_case((1, 1024, LLADA_VOCAB), 1.0, large=True),
        _llada_case((8, 256, LLADA_VOCAB), 0.0, large=True),
        _llada_case((8, 256, LLADA_VOCAB), 1.0, large=True),
        _token_stats_case("eager_float32_stats", (1, 1024, LLADA_VOCAB), large=True),
        _token_stats_case("eager_float32_stats", (1, 1024, LLADA_VOCAB), torch.bfloat16, large=True),
        _token_stats_case("dream_step", (1, 256, DREAM_VOCAB), torch.bfloat16, large=True),
    ]


def select_cases(*, quick: bool = False, name_filter: str | None = None) -> list[Case]:
    """The cases to run: without the large ones when ``quick``, and only names
    containing ``name_filter`` when given."""
    return [c for c in all_cases() if not (quick and c.large) and (not name_filter or name_filter in c.name)]

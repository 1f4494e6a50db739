"""The benchmark cases: one op of ours against one baseline on fixed inputs.

Inputs. Logits are ``randn * 4`` (cast to the case's dtype): a spread of a few
nats like an LM head's, top probabilities from 3% to 95% (median 15% at
V = 126464), and a random order within each row, so a one-pass kernel's running maximum moves about log(V)
times per row, as on real rows. The token_stats cases also run on three other
kinds of rows (``Case.logits``, :func:`make_logits`), because sampling's cost
can depend on the values: ``randn1`` (flat rows, nothing to skip),
``peaked`` (LM-like: each row a Zipf profile at its own temperature, most of the
mass on a few tokens; :func:`logits_profile` prints its mean top probability
and entropy) and ``neginf`` (``randn * 4`` with a third of the entries and the
last eighth of the vocabulary at -inf, like masked or padded vocabularies).
Every position is masked (a generation's first step, the largest one). Selection cases use a [8, 1024] canvas with about half the
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


#: Row temperatures of the peaked rows: p_j ~ rank_j ** (-1 / t), a Zipf law
#: with exponent 1 / t in [2, 5] (top probability about 0.6 to 0.96).
PEAKED_T = (0.2, 0.5)
_CHUNK_ROWS = 64  # rows built at a time: the permutations stay small


def make_logits(shape, dtype, device, kind: str = "randn4") -> torch.Tensor:
    """Logits of one kind (module docstring), in ``dtype``, on ``device``.

    ``peaked``: row i gets a random order of the ranks 1..V and the logits
    ``-log(rank) / t_i`` with ``t_i`` uniform in :data:`PEAKED_T` (its own
    temperature), i.e. ``softmax`` is the Zipf law ``rank ** (-1 / t_i)``; the
    generator is seeded, so every run builds the same rows."""
    if kind == "randn4":
        return random_logits(shape, dtype, device)
    V = shape[-1]
    rows = 1
    for d in shape[:-1]:
        rows *= d
    gen = torch.Generator().manual_seed(7)
    out = torch.empty(rows, V, dtype=dtype, device=device)
    for r0 in range(0, rows, _CHUNK_ROWS):
        n = min(_CHUNK_ROWS, rows - r0)
        if kind == "randn1":
            x = torch.randn(n, V, generator=gen)
        elif kind == "peaked":
            rank = torch.rand(n, V, generator=gen).argsort(-1).add_(1).float()
            t = torch.empty(n, 1).uniform_(*PEAKED_T, generator=gen)
            x = rank.log_().neg_().div_(t)
        elif kind == "neginf":
            x = torch.randn(n, V, generator=gen).mul_(4.0)
            x[torch.rand(n, V, generator=gen) < 1 / 3] = float("-inf")
            x[:, V - V // 8:] = float("-inf")
        else:
            raise ValueError(f"unknown logits kind {kind!r}")
        out[r0:r0 + n] = x.to(dtype)
    return out.reshape(shape)


def logits_profile(logits: torch.Tensor) -> dict:
    """Mean top probability and mean entropy (nats) of ``softmax(logits)`` rows,
    computed a few rows at a time."""
    x = logits.reshape(-1, logits.shape[-1])
    top = ent = 0.0
    for r0 in range(0, x.shape[0], _CHUNK_ROWS):
        logp = torch.log_softmax(x[r0:r0 + _CHUNK_ROWS].float(), -1)
        p = logp.exp()
        top += float(p.max(-1).values.sum())
        ent += float(torch.special.entr(p).sum())
    return {"mean_top_probability": top / max(1, x.shape[0]), "mean_entropy": ent / max(1, x.shape[0])}


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
    logits: str = "randn4"  # the kind of rows (make_logits)
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
        if self.logits != "randn4" and "logits" in self.inputs:
            profile = logits_profile(self.inputs["logits"])
            print(f"{self.name}: {self.logits} logits, mean top probability "
                  f"{profile['mean_top_probability']:.3g}, mean entropy {profile['mean_entropy']:.3g} nats")

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
        logits = make_logits(self.shape, self.dtype, device, self.logits)
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
        logits = make_logits(self.shape, self.dtype, device, self.logits)
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
class EditCase(Case):
    """``edit_`` (token editing) on a [B, W] block against LLaDA2.1's editing
    statement, which builds the edit mask with PyTorch ops and writes it through
    boolean-mask indexing (``x[edit] = x0[edit]``: a host sync per step). About a
    third of the block is editable, half of the proposals differ, confidences
    are spread over [0, 1) around the threshold."""

    threshold: float = 0.9

    def _build(self, device):
        B, W = self.shape
        gen = torch.Generator().manual_seed(0)
        canvas = torch.randint(0, LLADA_MASK_ID, (B, W), generator=gen)
        token = torch.where(torch.rand(B, W, generator=gen) < 0.5, canvas,
                            torch.randint(0, LLADA_MASK_ID, (B, W), generator=gen))
        confidence = torch.rand(B, W, generator=gen)
        editable = torch.rand(B, W, generator=gen) < 1 / 3
        inputs = {"canvas": canvas, "token": token, "confidence": confidence, "editable": editable}
        inputs = {name: t.to(device) for name, t in inputs.items()}
        expected = inputs["canvas"].clone()
        reference.edit_reference(expected, inputs["token"], inputs["confidence"], inputs["editable"], self.threshold)
        inputs["expected"] = expected
        return inputs

    def run_ours(self):
        i = self.inputs
        x = i["canvas"].clone()
        dmkernels.edit_(x, i["token"], i["confidence"], i["editable"], self.threshold)
        return x

    def run_baseline(self):
        i = self.inputs
        x = i["canvas"].clone()
        edit = (i["confidence"] > self.threshold) & i["editable"] & (i["token"] != x)
        x[edit] = i["token"][edit]
        return x

    def mismatch(self, side, out):
        return _compare("canvas after edit", out, self.inputs["expected"])


DIFFUSION_GEMMA_VOCAB = 262144  # DiffusionGemma's vocabulary (transformers' DiffusionGemmaConfig)


@dataclass
class RenoiseCase(Case):
    """``renoise_`` on a [B, C] DiffusionGemma canvas against transformers' eager
    re-noising (``EntropyBoundSampler.accept_canvas`` + ``renoise_canvas`` and the
    finished-row restore of ``_denoising_step``): ``torch.where(accept, sample,
    torch.randint(0, V, ...))`` then ``torch.where(frozen, canvas, ...)``, without
    the upstream ``finished.any()`` host sync (which only favours the baseline).
    About a tenth of the positions are accepted; the last row is frozen when B > 1.
    Both sides must keep frozen rows, write the accepted samples and draw tokens in
    [0, V); ours must also equal the reference bit for bit (same seed)."""

    vocab: int = DIFFUSION_GEMMA_VOCAB

    def _build(self, device):
        B, C = self.shape
        gen = torch.Generator().manual_seed(0)
        canvas = torch.randint(0, self.vocab, (B, C), generator=gen)
        sample = torch.randint(0, self.vocab, (B, C), generator=gen)
        accept = torch.rand(B, C, generator=gen) < 0.1
        frozen = torch.zeros(B, dtype=torch.bool)
        if B > 1:
            frozen[-1] = True
        inputs = {"canvas": canvas, "sample": sample, "accept": accept, "frozen": frozen}
        inputs = {name: t.to(device) for name, t in inputs.items()}
        expected = inputs["canvas"].clone()
        reference.renoise_reference(expected, inputs["sample"], inputs["accept"], inputs["frozen"], self.vocab, SEED, 0)
        inputs["expected"] = expected
        return inputs

    def run_ours(self):
        i = self.inputs
        x = i["canvas"].clone()
        return dmkernels.renoise_(x, i["sample"], i["accept"], self.vocab, frozen=i["frozen"], seed=SEED, offset=0)

    def run_baseline(self):
        i = self.inputs
        x = i["canvas"].clone()
        accepted = torch.where(i["accept"], i["sample"], x).clone()
        random = torch.randint(0, self.vocab, x.shape, device=x.device)
        new = torch.where(~i["accept"], random, accepted).clone()
        return torch.where(i["frozen"][:, None], x, new)

    def mismatch(self, side, out):
        i = self.inputs
        if side == "ours":
            return _compare("canvas after renoise_", out, i["expected"])
        live = ~i["frozen"][:, None] & torch.ones_like(i["accept"])
        kept = torch.where(live, i["canvas"], out)  # out where frozen
        return (_compare("frozen rows", kept, i["canvas"])
                or _compare("accepted positions", torch.where(i["accept"] & live, out, i["sample"]), i["sample"])
                or _tokens_in_range(out, self.vocab))


@dataclass
class DenoiseStatsCase(Case):
    """``denoise_stats`` on [B, C, V] DiffusionGemma logits against the per-position
    part of transformers' ``_denoising_step`` (generation_diffusion_gemma.py), run
    as it runs there: ``p = logits / T`` (T a float32 0-d tensor), ``softmax(p,
    float32)`` and ``torch.multinomial`` for the sample, ``argmax(p)``,
    ``Categorical(logits=p).entropy()`` for acceptance, and ``p.to(bfloat16)`` (the
    self-conditioning input of a bf16 model). Ours writes that bf16 tensor into a
    buffer reused across calls (the steady state of a generation). Both sides
    must return ``torch.argmax(logits / T)`` and tokens in [0, V); ours' buffer
    must equal ``(logits / T).to(bfloat16)`` bit for bit."""

    def _build(self, device):
        logits = make_logits(self.shape, self.dtype, device, self.logits)
        T = torch.tensor(self.temperature, dtype=torch.float32, device=device)
        z = logits / T
        inputs = {"logits": logits, "T": T, "argmax": torch.argmax(z, -1),
                  "sc_buf": torch.empty(self.shape, dtype=torch.bfloat16, device=device)}
        inputs["expected_sc"] = z.to(torch.bfloat16)
        del z
        return inputs

    def run_ours(self):
        i = self.inputs
        return dmkernels.denoise_stats(i["logits"], i["T"], seed=SEED, processed_out=i["sc_buf"]), i["sc_buf"]

    def run_baseline(self):
        i = self.inputs
        p = i["logits"] / i["T"]
        V = p.shape[-1]
        probs = torch.softmax(p, dim=-1, dtype=torch.float32)
        token = torch.multinomial(probs.view(-1, V), 1).view(p.shape[:-1])
        del probs
        argmax = torch.argmax(p, -1)
        entropy = torch.distributions.Categorical(logits=p).entropy()
        return dmkernels.DenoiseStats(token, argmax, entropy), p.to(torch.bfloat16)

    def mismatch(self, side, out):
        stats, sc = out
        problem = _compare("argmax", stats.argmax, self.inputs["argmax"]) or _tokens_in_range(stats.token,
                                                                                                self.shape[-1])
        if problem or side != "ours":
            return problem
        return _compare("processed_out", sc.view(torch.int16), self.inputs["expected_sc"].view(torch.int16))


@dataclass
class TokenStatsPartialCase(Case):
    """``token_stats_partial`` of one tensor-parallel rank's vocabulary slice (the
    second half of LLaDA's vocabulary) against the PyTorch reference of the same op
    (there is no public baseline: the public samplers gather the whole logits)."""

    def _build(self, device):
        logits = make_logits(self.shape, self.dtype, device, self.logits)
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


@dataclass
class SamplingCostCase(TokenStatsCase):
    """What sampling costs over the argmax: ``token_stats`` at T > 0 against
    ``token_stats`` at T = 0 on the same logits (ratio = T0 time / T time, so 0.8
    means sampling takes 1.25x the argmax). ``tempered`` picks which distribution
    the scores describe: True (or T = 1) is one distribution per element, False
    at T != 1 two."""

    tempered: bool = False

    def run_ours(self):
        return dmkernels.token_stats(self.inputs["logits"], temperature=self.temperature, seed=SEED,
                                     tempered_scores=self.tempered)

    def run_baseline(self):
        return dmkernels.token_stats(self.inputs["logits"], temperature=0.0)

    def mismatch(self, side, out):
        if side == "ours":
            return _tokens_in_range(out.token, self.shape[-1])
        return _compare("tokens", out.token, torch.argmax(self.inputs["logits"], dim=-1))


def _name(kind: str, shape, dtype, temperature, logits: str = "randn4") -> str:
    base = f"{kind}/{'x'.join(map(str, shape))}/{_SHORT_DTYPE[dtype]}/T{temperature:g}"
    return base if logits == "randn4" else f"{base}/{logits}"  # the randn * 4 names stay as they were


def _token_stats_case(baseline, shape, dtype=torch.float32, temperature=0.0, large=False, logits="randn4"):
    return TokenStatsCase(_name(baseline, shape, dtype, temperature, logits), "token_stats", baseline, shape, dtype,
                          temperature, large, logits)


def _llada_case(shape, temperature, large=False, logits="randn4"):
    return LLaDAStepCase(_name("llada_step", shape, torch.float32, temperature, logits),
                         "token_stats+select_topk+commit_", "llada_step", shape, torch.float32, temperature, large,
                         logits)


LOGITS_KINDS = ("randn4", "randn1", "peaked", "neginf")
#: The sampling-cost shape: the dLLM case of 256 positions over LLaDA's vocabulary.
SAMPLING_SHAPE = (1, 256, LLADA_VOCAB)


def sampling_cost_cases() -> list[Case]:
    """token_stats at T > 0 against T = 0, float32 and bf16, every kind of rows:
    T = 1 and T = 0.7 with tempered scores (one distribution), T = 0.7 untempered (two)."""
    out = []
    for logits in LOGITS_KINDS:
        for dtype in (torch.float32, torch.bfloat16):
            for T, tempered in ((1.0, False), (0.7, True), (0.7, False)):
                kind = "sampling_cost_tempered" if tempered else "sampling_cost"
                out.append(SamplingCostCase(_name(kind, SAMPLING_SHAPE, dtype, T, logits), "token_stats",
                                            "token_stats_T0", SAMPLING_SHAPE, dtype, T, True, logits,
                                            tempered=tempered))
    return out


def _with_other_logits(cases: list[Case]) -> list[Case]:
    """Each token_stats case again on the other kinds of rows (randn1, peaked, neginf)."""
    out = []
    for case in cases:
        for logits in LOGITS_KINDS[1:]:
            if isinstance(case, LLaDAStepCase):
                if not case.large:  # the float64 LLaDA step takes a minute at the large shapes
                    out.append(_llada_case(case.shape, case.temperature, case.large, logits))
            elif isinstance(case, TokenStatsPartialCase):
                out.append(TokenStatsPartialCase(
                    _name("token_stats_partial", case.shape, case.dtype, case.temperature, logits), case.op,
                    case.baseline, case.shape, case.dtype, case.temperature, case.large, logits))
            elif isinstance(case, TokenStatsCase):
                out.append(_token_stats_case(case.baseline, case.shape, case.dtype, case.temperature, case.large,
                                             logits))
    return out


def _select_case(rule, baseline, parameter):
    shape = (8, 1024)
    return SelectCommitCase(f"{rule}+commit/{shape[0]}x{shape[1]}", f"select_{rule}+commit_", baseline, shape,
                            rule=rule, parameter=parameter)


def every_case() -> list[Case]:
    """:func:`all_cases`, then the token_stats cases on the other kinds of rows
    (:func:`logits_variant_cases`) and the sampling-cost cases: what
    ``python -m dmkernels.bench`` and the pytest benchmarks run."""
    return all_cases() + logits_variant_cases() + sampling_cost_cases()


def logits_variant_cases() -> list[Case]:
    """Each token_stats case of :func:`all_cases` on the other kinds of rows
    (randn1, peaked, neginf), small ones first."""
    variants = _with_other_logits(all_cases())
    return [c for c in variants if not c.large] + [c for c in variants if c.large]


def all_cases() -> list[Case]:
    """Every case on ``randn * 4`` logits, small ones first (fresh objects, no
    inputs built yet): the set the GPU check times and summarises."""
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
        EditCase("edit/8x32", "edit_", "llada21_edit", (8, 32)),
        EditCase("edit/8x1024", "edit_", "llada21_edit", (8, 1024)),
        RenoiseCase("renoise/1x256", "renoise_", "diffusion_gemma_renoise", (1, 256)),
        RenoiseCase("renoise/8x256", "renoise_", "diffusion_gemma_renoise", (8, 256)),
        DenoiseStatsCase(_name("denoise_stats", (1, 32, DIFFUSION_GEMMA_VOCAB), torch.float32, 0.8),
                         "denoise_stats", "diffusion_gemma_position_stats", (1, 32, DIFFUSION_GEMMA_VOCAB),
                         torch.float32, 0.8),
        TokenStatsPartialCase(_name("token_stats_partial", (2, 32, LLADA_VOCAB // 2), torch.bfloat16, 0.0),
                              "token_stats_partial", "reference", (2, 32, LLADA_VOCAB // 2), torch.bfloat16),
        TokenStatsPartialCase(_name("token_stats_partial", (2, 32, LLADA_VOCAB // 2), torch.bfloat16, 1.0),
                              "token_stats_partial", "reference", (2, 32, LLADA_VOCAB // 2), torch.bfloat16, 1.0),
        # LLaDA-size logits: 0.13 GB ([1, 256], one block of gen length 256), 0.52 GB
        # ([1, 1024]) and 1.04 GB ([8, 256]) of float32; LLaDA's float64 step takes
        # 1-60 s and up to 10 GB, so it runs once.
        _llada_case((1, 256, LLADA_VOCAB), 0.0, large=True),
        _llada_case((1, 256, LLADA_VOCAB), 1.0, large=True),
        _llada_case((1, 1024, LLADA_VOCAB), 0.0, large=True),
        _llada_case((1, 1024, LLADA_VOCAB), 1.0, large=True),
        _llada_case((8, 256, LLADA_VOCAB), 0.0, large=True),
        _llada_case((8, 256, LLADA_VOCAB), 1.0, large=True),
        _token_stats_case("eager_float32_stats", (1, 1024, LLADA_VOCAB), large=True),
        _token_stats_case("eager_float32_stats", (1, 1024, LLADA_VOCAB), torch.bfloat16, large=True),
        _token_stats_case("dream_step", (1, 256, DREAM_VOCAB), torch.bfloat16, large=True),
        # DiffusionGemma's step at its real vocabulary and canvas (issue 15).
        *(DenoiseStatsCase(_name("denoise_stats", (1, 256, DIFFUSION_GEMMA_VOCAB), dtype, 0.8), "denoise_stats",
                           "diffusion_gemma_position_stats", (1, 256, DIFFUSION_GEMMA_VOCAB), dtype, 0.8, large=True)
          for dtype in (torch.float32, torch.bfloat16)),
    ]


def select_cases(*, quick: bool = False, name_filter: str | None = None) -> list[Case]:
    """The cases to run: without the large ones when ``quick``, and only names
    containing ``name_filter`` when given."""
    return [c for c in every_case() if not (quick and c.large) and (not name_filter or name_filter in c.name)]

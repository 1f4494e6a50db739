"""token_stats in Triton: ``torch.ops.dmkernels_triton.token_stats``.

The same op as ``torch.ops.dmkernels.token_stats`` (csrc/ops.cpp, semantics in
dmkernels/reference/token_stats.py): one pass over the vocabulary of each row
keeps the running maximum m, ``S = sum exp(z - m)``, ``A = sum exp(z - m)(z - m)``
(rescaled when m grows), the top value with its first column, the second value,
and when sampling the best group key of the hierarchical Gumbel-max
(csrc/common/noise.h, dmkernels/triton/noise.py) with its group.
Then ``p(top) = 1 / S``, ``entropy = log S - A / S``,
``margin = (1 - exp(top2 - m)) / S`` (derivation in csrc/cpu/token_stats.cpp).

A program walks its columns in tiles of BLOCK_V with scalar running state; per
tile at T = 0 it does three reductions: (max, first index), the maximum of the
others, and (sum e, sum e * d) as one joined reduction. A NaN logit needs no
reduction of its own: it makes S NaN.

Sampling views the tile as [BLOCK_V / 32, 32] noise groups with maxima m_g
(w = x * c) and keys K_g = m_g + (log_f32(S_g) + G_g) s (noise.h). The canonical
S_g (exp_f32, group_sum32) costs a polynomial exp per column, which made
sampling compute-bound on a GPU (2.4x the T = 0 time on an H200 when every
column took it), yet only a group that can beat the best key so far needs it.
So a tile takes fast group sums Sf_g (the hardware exp) and one Gumbel per
group, bounds every key from above (U_g in _best_group: exact, by monotone
rounding), and computes the canonical key only of the groups whose bound
reaches the best key, in decreasing bound order: on a row, about one group per
new best. A tile whose ``max x * c + 21 s`` (noise.h kGroupKeyBound) cannot beat
the best key skips even the Gumbels. With SHARED (T = 1 or tempered scores: the
scores describe the sampled distribution) the fast group sums also give the
tile's sums, ``sum_g exp(m_g / s - m) Sf_g`` (one exp per element, as at T = 0),
and its top two come from the raw group maxima (a tile holding a new maximum
reads that group's 32 columns again for the second); otherwise the sums and
the top two are the T = 0 ones, with the group pass beside them. Scores stay
within float32 tolerance of the reference; tokens are bit-identical, because
only canonical keys enter the comparison. UNIT (c = s = 1: T = 1) skips the
multiplies by one. The element noise is drawn only for the winning group, in
the kernel that finishes the row. The kernels run with enable_fp_fusion=False
(the spec's fused multiply-adds are explicit ``tl.fma``).

Few rows with a large V (the dLLM case: 32 to 256 rows of 126464) do not fill a
GPU with one program per row, so the vocabulary is split: program (row, split)
reduces columns [split * chunk, (split + 1) * chunk) (chunk a whole number of
tiles, so whole noise groups) to a partial tuple (m, S, A, top1 column, top2,
best group key, its group, NaN seen), stored as float32 [8, rows * splits], and
a second kernel, one program per row, merges the ``splits`` tuples:

  M = max m_k,  S = sum_k exp(m_k - M) S_k,  A = sum_k exp(m_k - M) (A_k + (m_k - M) S_k)
  top1 column = that of the first split with m_k == M (splits hold increasing columns,
  and each split keeps its first maximum, so this is the lowest column overall);
  top2 = max(top2_k over all k, m_k over the other splits) (two splits sharing the
  maximum give top2 = top1: margin 0);
  sampled group = the lowest group among the splits whose best key is the maximum;
  NaN seen = any split saw one.

Splits whose slice is all -inf have m_k = -inf and S_k = A_k = 0 exactly and are
left out of the sums (no 0 * inf). With one split the first kernel finishes the
row itself. The logits are read in place through row strides, never copied.

``torch.ops.dmkernels_triton.token_stats_partial`` (a vocabulary slice, unfinished:
dmkernels/reference/token_stats_partial.py) runs the same two kernels with the
constexpr PARTIAL: the slice of global columns [vocab_start, vocab_start + V) is
seen as a row of lead + V columns, lead = vocab_start % 32, starting at the noise
group edge vocab_start - lead, whose first lead columns read as -inf (they never
win and add 0 to the sums), so tiles still start on noise groups and draw the
noise of their global columns; rows draw the noise of row_offset + r. Instead of
the four scores the last kernel (the first when the vocabulary is not split)
writes the eight fields. Without PARTIAL the kernels are token_stats' own.
"""
import contextlib
import os
from typing import Optional

import torch
import triton
import triton.language as tl

from .. import _checks as check
from .._registry import triton_op
from ..reference.token_stats import inverse_temperature, key_scales
from .noise import (EXP_FLUSH, GROUP_KEY_BOUND, exp_f32, group_gumbel, group_sum32, gumbel, log_f32, noise_bits_tile,
                    seed_words, split_u64)

_OP = "token_stats"
# Partial tuple fields, stored as float32 (columns < 2^24 are exact).
_FIELDS = 8  # m, S, A, top1 column, top2, best y, best column, NaN seen
# Floor of exp's argument in the sums: exp(-128) is 0 in float32.
EXP_FLOOR: tl.constexpr = tl.constexpr(-128.0)
# Added to the fast log of a group sum to bound the canonical one (_best_group).
KEY_SLACK: tl.constexpr = tl.constexpr(1.0e-3)
# Tests may force the tile width (a power of two >= 32) and the number of
# vocabulary splits (None: chosen from V and the row count).
BLOCK_V_OVERRIDE: Optional[int] = None
SPLITS_OVERRIDE: Optional[int] = None


def _interpreting() -> bool:
    """Whether the kernels were built for the interpreter (TRITON_INTERPRET=1 when
    this module was imported): then they take CPU tensors."""
    return type(_token_stats_kernel).__name__ == "InterpretedFunction"


def _poison() -> bool:
    return os.environ.get("DMKERNELS_POISON_OUTPUTS", "") == "1"


@triton.jit
def _row_offset(row, rowoff_ptr, size1, size2, size3, stride0, stride1, stride2, stride3,
                USE_ROWOFF: tl.constexpr):
    """Element offset of flat row ``row`` (int64) over up to 4 coalesced leading dims,
    or looked up in a table when there are more."""
    if USE_ROWOFF:
        off = tl.load(rowoff_ptr + row)
    else:
        i3 = row % size3
        r = row // size3
        i2 = r % size2
        r = r // size2
        i1 = r % size1
        i0 = r // size1
        off = i0 * stride0 + i1 * stride1 + i2 * stride2 + i3 * stride3
    return off


@triton.jit
def _sample_in_group(xrow_ptr, grp, ok, V, lead, key_c, key_s, noise_row, group_base,
                     seed_lo, seed_hi, offset_lo, offset_hi):
    """The column sampled inside the winning noise group ``grp`` (virtual columns
    grp * 32 ..): y = x * c + g * s with the element noise of the global group,
    the first maximum (noise.h). Padding columns read as -inf and never win."""
    cols = grp * 32 + tl.arange(0, 32)
    # (a [32] mask and'ed with a scalar one is refused by the interpreter: where)
    inside = tl.where(ok, (cols < V) & (cols >= lead), False)
    x = tl.load(xrow_ptr + cols, mask=inside, other=float("-inf")).to(tl.float32)
    bits = noise_bits_tile(group_base + grp, 1, noise_row, seed_lo, seed_hi, offset_lo, offset_hi)
    y = x * key_c + tl.reshape(gumbel(bits), [32]) * key_s
    _, idx = tl.max(y, axis=0, return_indices=True, return_indices_tie_break_left=True)
    return grp * 32 + idx


@triton.jit
def _finish(row, active, bad, m, S, A, top1_col, top2, best_y, best_col, xrow_ptr, inv_t,
            V, key_c, key_s, seed_lo, seed_hi, offset_lo, offset_hi,
            tok_ptr, conf_ptr, marg_ptr, ent_ptr, SAMPLE: tl.constexpr, TEMPERED: tl.constexpr):
    """Scores of one row from its merged tuple; writes the four outputs. When
    sampling, best_col is the winning noise group."""
    valid = active & (bad == 0) & (m > float("-inf")) & (m < float("inf"))
    if SAMPLE:
        valid = valid & (best_y > float("-inf"))
        token = _sample_in_group(xrow_ptr, best_col, valid, V, 0, key_c, key_s, row, 0,
                                 seed_lo, seed_hi, offset_lo, offset_hi)
        xt = tl.load(xrow_ptr + tl.where(valid, token, 0), mask=valid, other=0.0).to(tl.float32)
        if TEMPERED:
            zt = xt * inv_t
        else:
            zt = xt
    else:
        token = top1_col
        zt = m
    m_safe = tl.where(valid, m, 0.0)
    S_safe = tl.where(valid, S, 1.0)
    conf = tl.exp(zt - m_safe) / S_safe
    margin = (1.0 - tl.exp(top2 - m_safe)) / S_safe
    ent = tl.maximum(tl.log(S_safe) - tl.where(valid, A, 0.0) / S_safe, 0.0)
    nan = float("nan")
    token = tl.where(valid, token, -1)
    conf = tl.where(valid, conf, nan)
    margin = tl.where(valid, margin, nan)
    ent = tl.where(valid, ent, nan)
    token = tl.where(active, token, -1)
    conf = tl.where(active, conf, float("-inf"))
    margin = tl.where(active, margin, float("-inf"))
    ent = tl.where(active, ent, float("inf"))
    tl.store(tok_ptr + row, token.to(tl.int64))
    tl.store(conf_ptr + row, conf)
    tl.store(marg_ptr + row, margin)
    tl.store(ent_ptr + row, ent)


@triton.jit
def _write_partial(row, active, bad, m, S, A, top1_col, top2, best_y, best_col, xrow_ptr, inv_t, group_base,
                   V, lead, key_c, key_s, row_base, seed_lo, seed_hi, offset_lo, offset_hi,
                   out_ptr, SAMPLE: tl.constexpr, TEMPERED: tl.constexpr):
    """token_stats_partial's 8 fields of one row (dmkernels/reference/token_stats_partial.py)
    from its merged tuple; columns are virtual (xrow_ptr + u is column u), global
    column = group_base * 32 + u. When sampling, best_col is the winning group."""
    NEG_INF: tl.constexpr = float("-inf")
    nan = float("nan")
    ok = active & (bad == 0)
    if SAMPLE:
        key = best_y
        has = ok & (key > NEG_INF)
        col = _sample_in_group(xrow_ptr, best_col, has, V, lead, key_c, key_s, row + row_base, group_base,
                               seed_lo, seed_hi, offset_lo, offset_hi)
        xt = tl.load(xrow_ptr + tl.where(has, col, lead), mask=has, other=0.0).to(tl.float32)
        if TEMPERED:
            zt = xt * inv_t
        else:
            zt = xt
    else:
        key = m
        col = top1_col
        has = ok & (key > NEG_INF)
        zt = m
    token = tl.where(has, (group_base * 32 + col).to(tl.float32), -1.0)
    token_score = tl.where(has, zt, NEG_INF)
    invalid = active & (bad != 0)
    # Invalid slices are NaN but for TOKEN -1 and INVALID 1; rows left out are empty.
    m = tl.where(invalid, nan, tl.where(active, m, NEG_INF))
    S = tl.where(invalid, nan, tl.where(active, S, 0.0))
    A = tl.where(invalid, nan, tl.where(active, A, 0.0))
    top2 = tl.where(invalid, nan, tl.where(active, top2, NEG_INF))
    key = tl.where(invalid, nan, tl.where(active, key, NEG_INF))
    token_score = tl.where(invalid, nan, token_score)
    o = out_ptr + row * 8
    tl.store(o, m)
    tl.store(o + 1, S)
    tl.store(o + 2, A)
    tl.store(o + 3, top2)
    tl.store(o + 4, key)
    tl.store(o + 5, token)
    tl.store(o + 6, token_score)
    tl.store(o + 7, invalid.to(tl.float32))


@triton.jit
def _may_win(tile_max_x, key_c, key_s, best_y):
    """Whether a group of a tile whose largest logit is tile_max_x can still beat
    best_y: K_g <= m_g + GROUP_KEY_BOUND * s (noise.h), max(x) * c == max(x * c),
    with slack for the rounding of K at large |K|."""
    return tile_max_x * key_c + GROUP_KEY_BOUND * key_s > best_y - tl.abs(best_y) * 9.5367431640625e-07


@triton.jit
def _group_sums(xg, mx, key_c, inv_s, UNIT: tl.constexpr):
    """Per noise group of the tile xg [G, 32] (raw logits, group maxima mx): m_g,
    whether the group is all -inf, and the sums of e = exp(d) and e * d over the
    group, d = (w - m_g) / s (w = x * c) floored at EXP_FLUSH as exp_f32 does,
    with the fast exp. UNIT: c = s = 1, whose multiplies are skipped (exact)."""
    NEG_INF: tl.constexpr = float("-inf")
    if UNIT:
        w = xg
        mg = mx
    else:
        w = xg * key_c
        mg = mx * key_c  # rounding is monotone: max(x) * c == max(x * c)
    empty = mg == NEG_INF
    d = w - tl.where(empty, 0.0, mg)[:, None]
    if not UNIT:
        d = d * inv_s
    d = tl.where(d < EXP_FLUSH, EXP_FLUSH, d)  # NaN stays NaN
    e = tl.exp(d)
    return mg, empty, tl.sum(e, axis=1), tl.sum(e * d, axis=1)


@triton.jit
def _group_key(xrow_ptr, grp, Gg, V, lead, key_c, key_s, inv_s, UNIT: tl.constexpr):
    """The canonical key K_g = m_g + (log_f32(S_g) + G_g) s of one noise group
    (virtual columns grp * 32 ..; its Gumbel Gg; noise.h): its 32 columns read
    again, exp_f32, group_sum32 and log_f32 as the spec has them. -inf for an
    all -inf group."""
    NEG_INF: tl.constexpr = float("-inf")
    cols = grp * 32 + tl.arange(0, 32)
    x = tl.load(xrow_ptr + cols, mask=(cols < V) & (cols >= lead), other=NEG_INF).to(tl.float32)
    if UNIT:
        w = x
    else:
        w = x * key_c
    mg = tl.max(w, axis=0)
    empty = mg == NEG_INF
    d = w - tl.where(empty, 0.0, mg)
    if not UNIT:
        d = d * inv_s
    Sg = tl.sum(group_sum32(tl.reshape(exp_f32(d), [1, 32]), 1), axis=0)  # one term: exact
    return tl.where(empty, NEG_INF, mg + (log_f32(tl.where(empty, 1.0, Sg)) + Gg) * key_s)


@triton.jit
def _best_group(mg, empty, Sf, best_y, best_col, group0, xrow_ptr, V, lead, key_c, key_s, inv_s, group_base,
                noise_row, seed_lo, seed_hi, offset_lo, offset_hi, G: tl.constexpr, UNIT: tl.constexpr):
    """The hierarchical Gumbel-max's group pass over a tile (noise.h): the running
    (best key, its group) over the keys K_g = m_g + (log_f32(S_g) + G_g) s of the
    tile's groups group0 .., earlier groups winning ties.

    Every group gets its Gumbel G_g, but only groups that can still win get their
    canonical key. The bound U_g = m_g + ((log(Sf_g) + KEY_SLACK) + G_g) s uses
    the fast sums Sf: they and the canonical S_g lie in [1, 32] and differ far
    less than KEY_SLACK in the log, so log(Sf_g) + KEY_SLACK > log_f32(S_g), and as
    every float operation after it rounds monotonically, U_g >= K_g. Groups are
    taken in decreasing U_g while U_g >= best_y; once the largest left is below
    best_y none can win. Each key taken raises best_y to within about KEY_SLACK s
    of the bounds, so a tile costs one canonical key per new best, not 32 exps
    per column."""
    NEG_INF: tl.constexpr = float("-inf")
    idx = tl.arange(0, G)
    Gg = group_gumbel(group_base + group0 + idx, noise_row, seed_lo, seed_hi, offset_lo, offset_hi)
    # A NaN sum (a NaN logit: the row has no distribution) bounds nothing.
    U = tl.where(empty | (Sf != Sf), NEG_INF, mg + ((tl.log(Sf) + KEY_SLACK) + Gg) * key_s)
    umax, ug = tl.max(U, axis=0, return_indices=True, return_indices_tie_break_left=True)
    while (umax >= best_y) & (umax > NEG_INF):
        grp = group0 + ug
        G_ug = tl.max(tl.where(idx == ug, Gg, NEG_INF), axis=0)  # that group's Gumbel, as drawn above
        K = _group_key(xrow_ptr, grp, G_ug, V, lead, key_c, key_s, inv_s, UNIT)
        better = (K > best_y) | ((K == best_y) & (grp < best_col))  # ties: the earlier group
        best_col = tl.where(better, grp, best_col)
        best_y = tl.where(better, K, best_y)
        U = tl.where(idx == ug, NEG_INF, U)
        umax, ug = tl.max(U, axis=0, return_indices=True, return_indices_tie_break_left=True)
    return best_y, best_col


@triton.jit
def _device_scales(temp_ptr):
    """inv_t, c, s, 1 / s (as the host computes them, reference/token_stats.py) from a
    float32 temperature read on the device (denoise_stats' 0-d tensor, so a captured
    step needs no host read), and whether T is a valid one (>= 2**-100, finite)."""
    t = tl.load(temp_ptr)
    t_ok = (t >= 7.888609052210118e-31) & (t < float("inf"))  # 2**-100; NaN fails both
    t = tl.where(t_ok, t, 1.0)
    inv_t = (1.0 / t.to(tl.float64)).to(tl.float32)  # divided in double, rounded once
    # key_scales: s = 2**-e, e >= 0 the least with inv_t * s <= 1 (from inv_t's exponent bits).
    bits = inv_t.to(tl.int32, bitcast=True)
    e = ((bits >> 23) & 0xFF) - 127 + ((bits & 0x7FFFFF) != 0).to(tl.int32)
    e = tl.where(inv_t > 1.0, e, 0)
    key_s = ((127 - e) << 23).to(tl.float32, bitcast=True)
    inv_s = ((127 + e) << 23).to(tl.float32, bitcast=True)
    return inv_t, inv_t * key_s, key_s, inv_s, t_ok


# Seeds, offsets and the slice's place are plain runtime values (no recompile, no constexpr 1).
@triton.jit(do_not_specialize=["seed_lo", "seed_hi", "offset_lo", "offset_hi", "group_base", "lead", "row_base"])
def _token_stats_kernel(
    x_ptr, pos_ptr, rowoff_ptr, tok_ptr, conf_ptr, marg_ptr, ent_ptr, part_ptr, rng_ptr, out_ptr, temp_ptr,
    n_parts, V, chunk, size1, size2, size3, stride0, stride1, stride2, stride3,
    inv_t, key_c, key_s, inv_s, seed_lo, seed_hi, offset_lo, offset_hi, group_base, lead, row_base,
    SAMPLE: tl.constexpr, TEMPERED: tl.constexpr, SHARED: tl.constexpr, HAS_POS: tl.constexpr,
    USE_ROWOFF: tl.constexpr, HAS_RNG: tl.constexpr, FINAL: tl.constexpr, PARTIAL: tl.constexpr,
    BLOCK_V: tl.constexpr, T_PTR: tl.constexpr = False, UNIT: tl.constexpr = False,
):
    """PARTIAL (token_stats_partial): V counts ``lead`` leading virtual -inf columns
    before the slice, so column u is local column u - lead and global column
    group_base * 32 + u (whole noise groups again); noise row = row + row_base.
    Without PARTIAL those three are unused and the code is token_stats' own.
    SHARED: sampling with scores that describe the sampled distribution, whose
    sums come from the sampler's group exps (one exp per element).
    T_PTR (denoise_stats): the temperature is read from temp_ptr on the device; the
    scales passed as arguments are ignored, and an invalid T makes every row invalid."""
    row = tl.program_id(0).to(tl.int64)
    if T_PTR:
        inv_t, key_c, key_s, inv_s, t_ok = _device_scales(temp_ptr)
    split = tl.program_id(1)
    n_splits = tl.num_programs(1)
    G: tl.constexpr = BLOCK_V // 32
    start = split * chunk  # whole tiles: every tile starts on a noise group (32 columns)
    end = tl.minimum(start + chunk, V)
    if HAS_POS:
        active = tl.load(pos_ptr + row).to(tl.int1)
    else:
        active = row >= 0
    n_tiles = tl.where(active, tl.cdiv(end - start, BLOCK_V), 0)
    xrow_ptr = x_ptr + _row_offset(row, rowoff_ptr, size1, size2, size3, stride0, stride1, stride2, stride3,
                                   USE_ROWOFF)
    if PARTIAL:
        xrow_ptr -= lead  # virtual columns: only u >= lead is ever loaded
    if SAMPLE:
        seed_lo, seed_hi, offset_lo, offset_hi = seed_words(rng_ptr, seed_lo, seed_hi, offset_lo, offset_hi, HAS_RNG)
    offs = tl.arange(0, BLOCK_V)
    NEG_INF: tl.constexpr = float("-inf")

    m = tl.full((), NEG_INF, tl.float32)  # running maximum (= top1)
    S = tl.zeros((), tl.float32)
    A = tl.zeros((), tl.float32)
    top1_col = tl.zeros((), tl.int32)
    top2 = tl.full((), NEG_INF, tl.float32)
    best_y = tl.full((), NEG_INF, tl.float32)  # sampling: best group key so far
    best_col = tl.zeros((), tl.int32)          # sampling: its (virtual) group
    for t in range(n_tiles):
        col0 = start + t * BLOCK_V
        cols = col0 + offs
        if PARTIAL:
            x = tl.load(xrow_ptr + cols, mask=(cols < end) & (cols >= lead), other=NEG_INF).to(tl.float32)
        else:
            x = tl.load(xrow_ptr + cols, mask=cols < end, other=NEG_INF).to(tl.float32)
        if SHARED:
            # One distribution: the scores' sums come from the sampler's group exps,
            # and the tile's top two from its raw group maxima (below).
            xg = tl.reshape(x, [G, 32])
            mx = tl.max(xg, axis=1)
            tmax_x = tl.max(mx, axis=0)
            if TEMPERED:
                tmax = tmax_x * inv_t  # rounding is monotone: max(x) * c == max(x * c)
            else:
                tmax = tmax_x
            if tmax > m:
                # The tile holds the new maximum, so its second value matters: the
                # largest other group maximum, or the second of the maximum's group
                # (its 32 columns read again: once per record, not per tile).
                gmax, gidx = tl.max(mx, axis=0, return_indices=True, return_indices_tie_break_left=True)
                others = tl.max(tl.where(tl.arange(0, G) == gidx, NEG_INF, mx), axis=0)
                gcols = col0 + gidx * 32 + tl.arange(0, 32)
                v = tl.load(xrow_ptr + gcols, mask=(gcols < end) & (gcols >= lead), other=NEG_INF).to(tl.float32)
                _, vidx = tl.max(v, axis=0, return_indices=True, return_indices_tie_break_left=True)
                tsecond = tl.maximum(others, tl.max(tl.where(tl.arange(0, 32) == vidx, NEG_INF, v), axis=0))
                if TEMPERED:
                    tsecond = tsecond * inv_t
                top2 = tl.maximum(m, tsecond)
            else:
                top2 = tl.maximum(top2, tmax)
        else:
            if SAMPLE and TEMPERED:
                z = x * inv_t
            else:
                z = x
            # Tile top two; the first column of the maximum (earlier tiles win ties).
            tmax, tidx = tl.max(z, axis=0, return_indices=True, return_indices_tie_break_left=True)
            tsecond = tl.max(tl.where(offs == tidx, NEG_INF, z), axis=0)
            grows = tmax > m
            top2 = tl.where(grows, tl.maximum(m, tsecond), tl.maximum(top2, tmax))
            top1_col = tl.where(grows, col0 + tidx, top1_col)
        m_new = tl.maximum(m, tmax)
        had = m > NEG_INF
        shift = tl.where(had, tl.maximum(m - m_new, EXP_FLOOR), 0.0)
        r = tl.where(had, tl.exp(shift), 0.0)
        if SHARED:
            # z = w / s, so a group adds exp(m_g / s - m) times its own sums, taken
            # with the fast exp; the canonical ones only where a key can still win.
            mg, empty, Sf, Af = _group_sums(xg, mx, key_c, inv_s, UNIT)
            if UNIT:
                mgz = mg
            else:
                mgz = mg * inv_s
            live = mgz > NEG_INF
            dd = tl.where(live, tl.maximum(mgz - m_new, EXP_FLOOR), EXP_FLOOR)
            rg = tl.where(live, tl.exp(dd), 0.0)
            tile_S = tl.sum(rg * Sf, axis=0)
            tile_A = tl.sum(tl.where(live, rg * (Af + dd * Sf), 0.0), axis=0)
            if _may_win(tmax_x, key_c, key_s, best_y):
                best_y, best_col = _best_group(mg, empty, Sf, best_y, best_col, col0 // 32, xrow_ptr, end, lead,
                                               key_c, key_s, inv_s, group_base, row + row_base,
                                               seed_lo, seed_hi, offset_lo, offset_hi, G, UNIT)
        else:
            # Exp sums against the new maximum. -inf entries add exactly 0; a NaN entry
            # makes S NaN (how a NaN row is detected: no extra reduction). Differences
            # of finite values can overflow to -inf (2e38 - -2e38): clamped to
            # EXP_FLOOR, where exp is already 0, so that 0 * -inf adds no NaN.
            neg_inf = z == NEG_INF
            dz = z - m_new
            dz = tl.where(neg_inf, 0.0, tl.where(dz < EXP_FLOOR, EXP_FLOOR, dz))  # NaN stays NaN
            ez = tl.where(neg_inf, 0.0, tl.exp(dz))
            sums = tl.sum(tl.join(ez, ez * dz), axis=0)  # one reduction for both sums
            tile_S, tile_A = tl.split(sums)
            if SAMPLE:
                # Two distributions (z = x here): the group pass only where a group key could still win.
                if _may_win(tmax, key_c, key_s, best_y):
                    xg = tl.reshape(x, [G, 32])
                    mg, empty, Sf, _Af = _group_sums(xg, tl.max(xg, axis=1), key_c, inv_s, UNIT)
                    best_y, best_col = _best_group(mg, empty, Sf, best_y, best_col, col0 // 32, xrow_ptr, end, lead,
                                                   key_c, key_s, inv_s, group_base, row + row_base,
                                                   seed_lo, seed_hi, offset_lo, offset_hi, G, UNIT)
        A = r * (A + shift * S) + tile_A
        S = r * S + tile_S
        m = m_new
    # A NaN makes S NaN; a +inf score (x / T overflowing with tempered scores) is
    # caught by m, since with SHARED the sums come from the finite w = x * c.
    bad = ((S != S) | (m == float("inf"))).to(tl.int32)
    if T_PTR:
        bad = tl.where(t_ok, bad, 1)

    if FINAL:
        if PARTIAL:
            _write_partial(row, active, bad, m, S, A, top1_col, top2, best_y, best_col, xrow_ptr, inv_t,
                           group_base, V, lead, key_c, key_s, row_base, seed_lo, seed_hi, offset_lo, offset_hi,
                           out_ptr, SAMPLE, TEMPERED)
        else:
            _finish(row, active, bad, m, S, A, top1_col, top2, best_y, best_col, xrow_ptr, inv_t,
                    V, key_c, key_s, seed_lo, seed_hi, offset_lo, offset_hi,
                    tok_ptr, conf_ptr, marg_ptr, ent_ptr, SAMPLE, TEMPERED)
    else:
        p = part_ptr + row * n_splits + split
        tl.store(p, m)
        tl.store(p + n_parts, S)
        tl.store(p + 2 * n_parts, A)
        tl.store(p + 3 * n_parts, top1_col.to(tl.float32))
        tl.store(p + 4 * n_parts, top2)
        tl.store(p + 5 * n_parts, best_y)
        tl.store(p + 6 * n_parts, best_col.to(tl.float32))
        tl.store(p + 7 * n_parts, bad.to(tl.float32))


@triton.jit(do_not_specialize=["seed_lo", "seed_hi", "offset_lo", "offset_hi", "group_base", "lead", "row_base"])
def _merge_kernel(
    x_ptr, pos_ptr, rowoff_ptr, tok_ptr, conf_ptr, marg_ptr, ent_ptr, part_ptr, rng_ptr, out_ptr, temp_ptr,
    n_parts, n_splits, V, size1, size2, size3, stride0, stride1, stride2, stride3, inv_t, key_c, key_s,
    seed_lo, seed_hi, offset_lo, offset_hi, group_base, lead, row_base,
    SAMPLE: tl.constexpr, TEMPERED: tl.constexpr, HAS_POS: tl.constexpr, USE_ROWOFF: tl.constexpr,
    HAS_RNG: tl.constexpr, PARTIAL: tl.constexpr, BLOCK_S: tl.constexpr, T_PTR: tl.constexpr = False,
):
    row = tl.program_id(0).to(tl.int64)
    if T_PTR:  # the splits flagged an invalid T already (their bad field)
        inv_t, key_c, key_s, _inv_s, _t_ok = _device_scales(temp_ptr)
    k = tl.arange(0, BLOCK_S)
    kmask = k < n_splits
    p = part_ptr + row * n_splits + k
    m_k = tl.load(p, mask=kmask, other=float("-inf"))
    S_k = tl.load(p + n_parts, mask=kmask, other=0.0)
    A_k = tl.load(p + 2 * n_parts, mask=kmask, other=0.0)
    c1_k = tl.load(p + 3 * n_parts, mask=kmask, other=0.0).to(tl.int32)
    t2_k = tl.load(p + 4 * n_parts, mask=kmask, other=float("-inf"))
    by_k = tl.load(p + 5 * n_parts, mask=kmask, other=float("-inf"))
    bc_k = tl.load(p + 6 * n_parts, mask=kmask, other=0.0).to(tl.int32)
    bad = tl.max(tl.load(p + 7 * n_parts, mask=kmask, other=0.0), axis=0).to(tl.int32)
    if HAS_POS:
        active = tl.load(pos_ptr + row).to(tl.int1)
    else:
        active = row >= 0
    if SAMPLE:
        seed_lo, seed_hi, offset_lo, offset_hi = seed_words(rng_ptr, seed_lo, seed_hi, offset_lo, offset_hi, HAS_RNG)
    BIG: tl.constexpr = 2147483647

    M = tl.max(m_k, axis=0)
    live = m_k > float("-inf")  # all -inf slices have S = A = 0: leave them out
    shift = tl.where(live, tl.maximum(m_k - M, EXP_FLOOR), 0.0)  # finite maxima can differ by inf
    r = tl.where(live, tl.exp(shift), 0.0)
    S = tl.sum(r * S_k, axis=0)
    A = tl.sum(tl.where(live, r * (A_k + shift * S_k), 0.0), axis=0)
    first = tl.min(tl.where(m_k == M, k, BIG), axis=0)
    top1_col = tl.min(tl.where(k == first, c1_k, BIG), axis=0)
    top2 = tl.maximum(tl.max(t2_k, axis=0), tl.max(tl.where(k == first, float("-inf"), m_k), axis=0))
    best_y = tl.max(by_k, axis=0)
    best_col = tl.min(tl.where(kmask & (by_k == best_y), bc_k, BIG), axis=0)  # the lowest group on ties

    xrow_ptr = x_ptr + _row_offset(row, rowoff_ptr, size1, size2, size3, stride0, stride1, stride2, stride3,
                                   USE_ROWOFF)
    if PARTIAL:
        _write_partial(row, active, bad, M, S, A, top1_col, top2, best_y, best_col, xrow_ptr - lead, inv_t,
                       group_base, V, lead, key_c, key_s, row_base, seed_lo, seed_hi, offset_lo, offset_hi,
                       out_ptr, SAMPLE, TEMPERED)
    else:
        _finish(row, active, bad, M, S, A, top1_col, top2, best_y, best_col, xrow_ptr, inv_t,
                V, key_c, key_s, seed_lo, seed_hi, offset_lo, offset_hi,
                tok_ptr, conf_ptr, marg_ptr, ent_ptr, SAMPLE, TEMPERED)


_sm_counts: dict = {}


def _target_programs(device: torch.device) -> int:
    """Programs that fill the device: several waves of a few resident programs per
    SM on a GPU; a handful under the interpreter (so that CPU tests split the
    vocabulary of small batches too)."""
    if device.type != "cuda":
        return 4
    index = device.index if device.index is not None else torch.cuda.current_device()
    if index not in _sm_counts:
        _sm_counts[index] = torch.cuda.get_device_properties(index).multi_processor_count
    return 8 * _sm_counts[index]


def _plan(rows: int, V: int, device: torch.device) -> tuple[int, int, int]:
    """(BLOCK_V, chunk, splits): tile width, columns per split (whole tiles, so only
    the last tile of the row is partial), number of splits."""
    block_max = 4096 if device.type == "cuda" else 1024
    BLOCK_V = BLOCK_V_OVERRIDE or max(32, min(block_max, triton.next_power_of_2(V)))
    tiles = triton.cdiv(V, BLOCK_V)
    splits = SPLITS_OVERRIDE
    if splits is None:
        splits = triton.cdiv(_target_programs(device), rows) if rows else 1
    tiles_per_split = triton.cdiv(tiles, max(1, min(int(splits), tiles)))
    chunk = tiles_per_split * BLOCK_V
    return BLOCK_V, chunk, triton.cdiv(V, chunk)


def _on_device(device: torch.device):
    """Launch on the tensor's GPU, not the current one."""
    return torch.cuda.device(device) if device.type == "cuda" else contextlib.nullcontext()


def _lead_layout(logits: torch.Tensor) -> tuple[list[int], list[int]]:
    """Coalesced (sizes, strides) of the leading dims, size-1 dims dropped."""
    dims = [(s, st) for s, st in zip(logits.shape[:-1], logits.stride()[:-1]) if s != 1]
    out: list[list[int]] = []
    for size, stride in dims:
        if out and out[-1][1] == stride * size:
            out[-1] = [out[-1][0] * size, stride]
        else:
            out.append([size, stride])
    return [s for s, _ in out], [st for _, st in out]


def _check_launch(op, logits):
    """What only the Triton launch limits (the registry checked the arguments)."""
    if logits.numel() // logits.shape[-1] >= 2**31:
        check.fail(op, "logits has 2^31 rows or more (the Triton grid limit)")
    if logits.device.type == "cpu" and not _interpreting():
        check.fail(op, "CPU tensors need the Triton interpreter (TRITON_INTERPRET=1 before importing "
                   "dmkernels.triton.token_stats)", RuntimeError)


def _launch(logits, temperature, seed, offset, tempered_scores, positions, rng, outputs, partial=None,
            temperature_tensor=None):
    """Run the kernels on rows > 0. ``outputs`` is (token, confidence, margin, entropy)
    for token_stats, or (out,) with ``partial = (vocab_start, row_offset)`` for
    token_stats_partial: the slice is then seen as a row of V + vocab_start % 32
    columns starting at global column vocab_start - vocab_start % 32 (a noise
    group boundary) whose first vocab_start % 32 are -inf. ``temperature_tensor``
    (a 0-d float32 tensor on the device, tempered scores): the kernels read T there
    and ``temperature`` only says that they sample."""
    V = logits.shape[-1]
    rows = logits.numel() // V
    placeholder = outputs[0]  # any tensor, for pointer arguments a variant does not use
    if partial is None:
        token, conf, margin, ent = outputs
        out = placeholder
        group_base, lead, row_base = 0, 0, 0
    else:
        token = conf = margin = ent = placeholder
        (out,) = outputs
        vocab_start, row_base = partial
        lead = vocab_start % 32
        group_base = vocab_start // 32
    sample = temperature > 0.0
    inv_t = inverse_temperature(temperature) if sample else 1.0
    key_c, key_s = key_scales(inv_t) if sample else (1.0, 1.0)
    inv_s = 1.0 / key_s  # a power of two
    # One distribution: the sampler's group exps are the scores' exps.
    shared = sample and (bool(tempered_scores) or inv_t == 1.0)
    # c = s = 1 (T = 1 among others): the kernel skips those multiplies (exact).
    unit = sample and temperature_tensor is None and key_c == 1.0 and key_s == 1.0
    seed_lo, seed_hi = split_u64(seed)
    offset_lo, offset_hi = split_u64(offset)
    pos = positions.reshape(-1) if positions is not None else placeholder  # tiny: [rows] bools
    sizes, strides = _lead_layout(logits)
    rowoff = placeholder  # unused placeholder pointer
    if len(sizes) > 4:
        # More than 4 leading dims that do not coalesce: a table of row offsets ([rows] int64).
        rowoff = torch.zeros((), dtype=torch.int64, device=logits.device)
        for size, stride in zip(sizes, strides):
            rowoff = (rowoff.unsqueeze(-1) + torch.arange(size, device=logits.device) * stride)
        rowoff = rowoff.reshape(-1)
        sizes, strides = [], []
    sizes = [1] * (4 - len(sizes)) + sizes
    strides = [0] * (4 - len(strides)) + strides
    layout = (sizes[1], sizes[2], sizes[3], *strides)
    flags = dict(SAMPLE=sample, TEMPERED=bool(tempered_scores) and sample, HAS_POS=positions is not None,
                 USE_ROWOFF=rowoff is not placeholder, PARTIAL=partial is not None, HAS_RNG=rng is not None,
                 T_PTR=temperature_tensor is not None)
    temp_ptr = temperature_tensor if temperature_tensor is not None else placeholder
    rng_ptr = rng if rng is not None else placeholder  # placeholder when absent

    Vv = V + lead  # virtual columns (= V for token_stats)
    BLOCK_V, chunk, splits = _plan(rows, Vv, logits.device)
    n_parts = rows * splits
    # Partial tuples only when the vocabulary is split (else an unused placeholder).
    part = torch.empty(_FIELDS, n_parts, dtype=torch.float32, device=logits.device) if splits > 1 else conf
    num_warps = 8 if BLOCK_V >= 4096 else 4
    with _on_device(logits.device):
        _token_stats_kernel[(rows, splits)](
            logits, pos, rowoff, token, conf, margin, ent, part, rng_ptr, out, temp_ptr,
            n_parts, Vv, chunk, *layout, inv_t, key_c, key_s, inv_s, seed_lo, seed_hi, offset_lo, offset_hi,
            group_base, lead, row_base,
            SHARED=shared, FINAL=splits == 1, BLOCK_V=BLOCK_V, num_warps=num_warps, UNIT=unit,
            enable_fp_fusion=False, **flags,
        )
        if splits > 1:
            _merge_kernel[(rows,)](
                logits, pos, rowoff, token, conf, margin, ent, part, rng_ptr, out, temp_ptr,
                n_parts, splits, Vv, *layout, inv_t, key_c, key_s, seed_lo, seed_hi, offset_lo, offset_hi,
                group_base, lead, row_base,
                BLOCK_S=max(2, triton.next_power_of_2(splits)), num_warps=1, enable_fp_fusion=False, **flags,
            )


@triton_op("token_stats")
def token_stats(
    logits: torch.Tensor,
    temperature: float,
    seed: int,
    offset: int,
    tempered_scores: bool,
    positions: Optional[torch.Tensor],
    rng: Optional[torch.Tensor] = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """See dmkernels.token_stats. ``rng`` (int64 [2] = seed, offset, on the logits'
    device) overrides ``seed`` and ``offset`` and is read by the kernel, not the host."""
    _check_launch(_OP, logits)
    rng = rng.contiguous() if rng is not None else None  # 2 elements
    lead = logits.shape[:-1]
    token = torch.empty(lead, dtype=torch.int64, device=logits.device)
    conf, margin, ent = (torch.empty(lead, dtype=torch.float32, device=logits.device) for _ in range(3))
    if _poison():
        token.fill_(-7)
        for t in (conf, margin, ent):
            t.fill_(12345.0)
    if logits.numel() // logits.shape[-1] == 0:
        return token, conf, margin, ent
    _launch(logits, temperature, seed, offset, tempered_scores, positions, rng, (token, conf, margin, ent))
    return token, conf, margin, ent


_PARTIAL_OP = "token_stats_partial"


@triton_op("token_stats_partial")
def token_stats_partial(
    logits: torch.Tensor,
    temperature: float,
    seed: int,
    offset: int,
    tempered_scores: bool,
    positions: Optional[torch.Tensor],
    rng: Optional[torch.Tensor],
    vocab_start: int,
    row_offset: int,
) -> torch.Tensor:
    """See dmkernels.token_stats_partial: float32 [..., 8] per row for the slice of
    global columns [vocab_start, vocab_start + V), rows drawing the noise of
    row_offset + r. The same kernels as token_stats (PARTIAL mode)."""
    _check_launch(_PARTIAL_OP, logits)
    rng = rng.contiguous() if rng is not None else None
    rows = logits.numel() // logits.shape[-1]
    out = torch.empty((*logits.shape[:-1], 8), dtype=torch.float32, device=logits.device)
    if _poison():
        out.fill_(12345.0)
    if rows == 0:
        return out
    _launch(logits, temperature, seed, offset, tempered_scores, positions, rng, (out,), (vocab_start, row_offset))
    return out

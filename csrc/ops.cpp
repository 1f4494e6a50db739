// Every dmkernels op schema, defined once. Backends only implement them:
// CPU kernels in csrc/cpu/, CUDA kernels in csrc/cuda/ (TORCH_LIBRARY_IMPL per
// file), fake (meta) implementations for torch.compile in dmkernels/fake.py.
// Semantics of each op: its reference in dmkernels/reference/.
#include <Python.h>
#include <torch/library.h>

extern "C" {
// `import dmkernels._C` loads this library, which runs the registrations below.
PyObject* PyInit__C(void) {
  static struct PyModuleDef module_def = {PyModuleDef_HEAD_INIT, "_C", nullptr, -1, nullptr};
  return PyModule_Create(&module_def);
}
}

TORCH_LIBRARY(dmkernels, m) {
  // Per-row argmax (temperature 0) or Gumbel-max sample, with the probability of
  // that token, the top-1 minus top-2 probability and the entropy, in one pass.
  // `rng` (int64 [2] = seed, offset, on the logits' device) overrides the ints:
  // a CUDA graph reads it at replay, so bumping rng[1] in place draws fresh noise.
  m.def(
      "token_stats(Tensor logits, float temperature, int seed, int offset, bool tempered_scores, "
      "Tensor? positions, Tensor? rng=None) -> (Tensor, Tensor, Tensor, Tensor)");
  // token_stats of the vocabulary slice [vocab_start, vocab_start + V), unfinished:
  // float32 [..., 8] per row (fields in dmkernels/reference/token_stats_partial.py)
  // that merge across slices into token_stats of the whole row. The noise of a
  // column is that of its global index, and of row r that of row_offset + r.
  m.def(
      "token_stats_partial(Tensor logits, float temperature, int seed, int offset, bool tempered_scores, "
      "Tensor? positions, Tensor? rng, int vocab_start, int row_offset) -> Tensor");
  // Per row: the min(k[b], #eligible) eligible positions with the highest scores.
  m.def("select_topk(Tensor scores, Tensor k, Tensor eligible) -> Tensor");
  // Fast-dLLM threshold rule: eligible with score >= threshold, at least the best.
  m.def("select_threshold(Tensor scores, Tensor eligible, float threshold) -> Tensor");
  // Fast-dLLM factor rule: longest prefix of sorted scores with (n+1)(1-c_n) <= factor.
  m.def("select_factor(Tensor scores, Tensor eligible, float factor) -> Tensor");
  // EB-Sampler: ascending error, longest prefix with sum(H) - max(H) <= gamma.
  m.def("select_entropy_bounded(Tensor error, Tensor entropy, Tensor eligible, float gamma) -> Tensor");
  // DUS: eligible positions whose dilated group is <= step (or the first non-empty group).
  m.def("select_group(Tensor eligible, Tensor groups, Tensor step) -> Tensor");
  // Write token where select and x == mask_id; returns (changed, remaining masks per row).
  m.def("commit_(Tensor(a!) x, Tensor token, Tensor select, int mask_id) -> (Tensor, Tensor)");
}

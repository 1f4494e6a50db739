"""Tasks with a checkable answer, for measuring the quality of unmasking orders.

- :mod:`dmkernels.tasks.sudoku`: 9x9 Sudoku puzzles with unique solutions
  (seeded generator, token encoding, scoring, a fixed held-out set and a
  development set), a small trained masked-diffusion denoiser shipped with the
  repository, the constraint features of learned policies (feature provider
  ``"sudoku.constraints"``) and the hand rule ``SinglesFirst``.
- :mod:`dmkernels.tasks.pairs`: a synthetic task where pairs of positions must
  agree (committing both partners in one step hurts), with a shipped denoiser
  and learned few-step orders (``python -m dmkernels.bench quality --orders``).
"""
from . import pairs, sudoku

__all__ = ["pairs", "sudoku"]

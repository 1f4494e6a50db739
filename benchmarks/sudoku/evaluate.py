"""The Sudoku quality benchmark as a plain script (no pytest-benchmark):

    python benchmarks/sudoku/evaluate.py [--quick] [--puzzles N] [--out-dir DIR]

the same run as ``python -m dmkernels.bench quality`` (dmkernels/bench/quality.py).
"""
import sys

from dmkernels.bench.cli import main

if __name__ == "__main__":
    sys.exit(main(["quality", *sys.argv[1:]]))

"""``python -m dmkernels.bench``: the command line of :mod:`dmkernels.bench.cli`
(``--help`` lists the jobs). Nothing else lives here: library code imported from
``__main__`` would tie the job modules back to the entry point."""
import sys

from dmkernels.bench.cli import main, run_case  # noqa: F401  (run_case: its old home, still importable)

if __name__ == "__main__":
    sys.exit(main())

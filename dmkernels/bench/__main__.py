"""``python -m dmkernels.bench``: the command line of :mod:`dmkernels.bench.cli`
(``--help`` lists the jobs). Nothing else lives here: library code imported from
``__main__`` would tie the job modules back to the entry point."""
import sys

from dmkernels.bench.cli import main

if __name__ == "__main__":
    sys.exit(main())

"""Benchmarks of the core ops against eager PyTorch written the way the public
samplers write it. Run ``python -m dmkernels.bench --help``; the pytest-benchmark
versions of the same cases live in benchmarks/."""

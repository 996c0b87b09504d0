"""The pieces of ``benchmarks/bench_quality.py`` (its docstring describes the benchmark)."""

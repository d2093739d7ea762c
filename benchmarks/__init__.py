"""The benchmark suite (`python -m benchmarks.run`, `make bench`) and standalone benchmarks."""

"""What the CPU demo (`make demo`, `launch.demo`) and the tests need beyond the algorithm, all
offline: the demo's arithmetic task (`arith_task`), its base model made from a PyPI wheel
(`base_model`), and tiny Qwen2 models built locally for tests and benchmarks (`tiny`). It sits
beside `drgrpo` and imports only from it; nothing in `drgrpo` or `actors` imports it.
"""

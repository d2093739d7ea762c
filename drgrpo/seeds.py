"""Seeds derived from the run's seed: stable across processes, machines and Python versions.

Every random draw of a run is keyed by what it is for (a rollout step, an evaluation chunk, a
prompt within it), so a resumed run, a re-run of a lost request or a run on a different number
of generators draws exactly the same numbers as the uninterrupted run on one.
"""

from __future__ import annotations

import hashlib


def derive_seed(*key: int | str) -> int:
    """A 62-bit seed for `key`. 62 bits, because vLLM gives sample j of a request with n > 1
    the seed `seed + j`, and torch generators take at most 64-bit seeds."""
    digest = hashlib.blake2b(repr(key).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") >> 2


def request_seeds(seed: int, count: int) -> list[int]:
    """One seed per prompt of a batch sampled with `seed`. Prompt i's samples then draw from
    seeds s_i, s_i + 1, ..., which no other prompt's range meets (62-bit s_i, G << 2**62):
    a single seed per batch would give sample j of every prompt the same random numbers."""
    return [derive_seed(seed, i) for i in range(count)]

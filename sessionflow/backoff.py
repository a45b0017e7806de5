"""How long to wait before trying again: exponential, capped, with jitter so that many
workers that failed together do not come back together."""

from __future__ import annotations

import random


def backoff_seconds(failures: int, *, base: float, cap: float) -> float:
    """The wait after the failures-th consecutive failure (1, 2, ...)."""
    if failures <= 0 or base <= 0:
        return 0.0
    ceiling = min(cap, base * 2.0 ** min(failures - 1, 30))
    return ceiling * random.uniform(0.5, 1.0)

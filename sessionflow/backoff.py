"""How long to wait before trying again: exponential, capped, and (by default) with jitter so
that many clients or workers that failed together do not come back together. Every retry loop
of sessionflow takes its waits from here."""

from __future__ import annotations

import random


def backoff_seconds(failures: int, *, base: float, cap: float, jitter: bool = True) -> float:
    """The wait after the failures-th consecutive failure (1, 2, ...): base, doubling up to
    cap; with jitter, a random half to all of that."""
    if failures <= 0 or base <= 0:
        return 0.0
    ceiling = min(cap, base * 2.0 ** min(failures - 1, 30))
    return ceiling * random.uniform(0.5, 1.0) if jitter else ceiling

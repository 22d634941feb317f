"""A fresh random subset of the training parts each epoch (the paper: 400 of Eyecandies' 1000 per epoch).

Why and how it is used: docs/RESULTS.md#eyecandies-paper-41-tables-4-15-16.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

# Mixed into the generator's seed so that the subsets do not correlate with the other per-epoch draws
# (texture anomalies use (seed, epoch, item), the trainer (seed, epoch, 7)).
_STREAM = 400


def epoch_subset(pool: Sequence[int], n: int, seed: int, epoch: int) -> list[int]:
    """`n` distinct entries of `pool` drawn for `epoch`, in pool order.

    A pure function of (pool, n, seed, epoch): a resumed run draws the same subsets as an uninterrupted
    one, and every epoch draws anew. Raises ValueError when `n` is not in 1…len(pool).
    """
    if not 1 <= n <= len(pool):
        raise ValueError(f"--samples-per-epoch {n}: must be between 1 and the {len(pool)} training parts")
    rng = np.random.default_rng((seed, epoch, _STREAM))
    chosen = np.sort(rng.choice(len(pool), size=n, replace=False))
    return [int(pool[i]) for i in chosen]

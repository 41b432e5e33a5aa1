"""Exponential back-off with jitter: the one helper every retry loop of ours uses.

A loop that retries a failing step (the outbox relay, the ledger's event publisher, the
projection runner, the sync and mail relays) asks ``next_wait_s()`` after each failure and calls
``reset()`` after a success. Jitter (a factor drawn from [1 - jitter, 1 + jitter]) keeps several
processes that failed together from retrying in step; the cap bounds how long an operator's fix
waits to be noticed.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field


@dataclass(slots=True)
class Backoff:
    initial_s: float
    max_s: float
    factor: float = 2.0
    jitter: float = 0.5
    _next_s: float = field(init=False)

    def __post_init__(self) -> None:
        assert 0 < self.initial_s <= self.max_s and self.factor >= 1 and 0 <= self.jitter < 1
        self._next_s = self.initial_s

    def next_wait_s(self) -> float:
        """The wait before the next try; each call lengthens the following one up to the cap."""
        base_s = self._next_s
        self._next_s = min(self._next_s * self.factor, self.max_s)
        spread = 1.0 + self.jitter * (2 * random.random() - 1)  # noqa: S311 (jitter, not a secret)
        return min(base_s * spread, self.max_s)

    def reset(self) -> None:
        self._next_s = self.initial_s

    @property
    def upcoming_s(self) -> float:
        """The un-jittered next wait (for a log line)."""
        return self._next_s

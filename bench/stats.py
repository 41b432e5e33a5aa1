"""Small, exact statistics over measured samples (no interpolation: a reported p99 is a
latency that some request really had)."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any


def percentile(sorted_values: Sequence[float], fraction: float) -> float:
    """Nearest-rank percentile of already sorted values; fraction in (0, 1]."""
    if not sorted_values:
        return math.nan
    rank = max(1, math.ceil(fraction * len(sorted_values)))
    return sorted_values[rank - 1]


@dataclass(frozen=True, slots=True)
class LatencySummary:
    count: int
    ms_min: float
    ms_p50: float
    ms_p95: float
    ms_p99: float
    ms_max: float

    @classmethod
    def of_seconds(cls, samples_s: Sequence[float]) -> LatencySummary:
        values = sorted(s * 1000.0 for s in samples_s)
        if not values:
            return cls(0, math.nan, math.nan, math.nan, math.nan, math.nan)
        return cls(
            count=len(values),
            ms_min=values[0],
            ms_p50=percentile(values, 0.50),
            ms_p95=percentile(values, 0.95),
            ms_p99=percentile(values, 0.99),
            ms_max=values[-1],
        )

    def as_dict(self) -> dict[str, Any]:
        return {k: round(v, 3) if isinstance(v, float) else v for k, v in asdict(self).items()}

    def line(self) -> str:
        return (f"n={self.count} min {self.ms_min:.2f} p50 {self.ms_p50:.2f} p95 {self.ms_p95:.2f}"
                f" p99 {self.ms_p99:.2f} max {self.ms_max:.2f} ms")


def rate_per_s(count: int, elapsed_s: float) -> float:
    return count / elapsed_s if elapsed_s > 0 else math.nan

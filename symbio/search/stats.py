"""Small statistics for the confirmation: mean/sd and paired t confidence intervals.

No scipy: the two-sided 95% Student-t quantiles ``t(0.975, df)`` for df 1..30
are tabulated (exact to the 3 decimals of any t-table); beyond 30 the
Cornish-Fisher expansion around the normal quantile
(``z + (z^3 + z) / 4df + (5z^5 + 16z^3 + 3z) / 96df^2``) is within 1e-3 of the
exact value.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

#: t(0.975, df) for df = 1..30.
T975 = (
    12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228,
    2.201, 2.179, 2.160, 2.145, 2.131, 2.120, 2.110, 2.101, 2.093, 2.086,
    2.080, 2.074, 2.069, 2.064, 2.060, 2.056, 2.052, 2.048, 2.045, 2.042,
)  # fmt: skip
_Z975 = statistics.NormalDist().inv_cdf(0.975)


def t_quantile_975(df: int) -> float:
    """The 0.975 quantile of Student's t with ``df`` degrees of freedom (df >= 1)."""
    if df < 1:
        raise ValueError(f"degrees of freedom must be >= 1 (got {df})")
    if df <= len(T975):
        return T975[df - 1]
    z = _Z975
    return z + (z**3 + z) / (4 * df) + (5 * z**5 + 16 * z**3 + 3 * z) / (96 * df**2)


@dataclass(frozen=True)
class Summary:
    n: int
    mean: float | None
    sd: float | None  # sample sd (n - 1); None for n < 2

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def summarize(values: Sequence[float]) -> Summary:
    xs = [float(v) for v in values if v is not None and math.isfinite(v)]
    if not xs:
        return Summary(0, None, None)
    return Summary(len(xs), statistics.fmean(xs), statistics.stdev(xs) if len(xs) > 1 else None)


@dataclass(frozen=True)
class PairedDiff:
    """``a - b`` over paired seeds: mean, sd, 95% t interval, and the verdict."""

    n: int
    mean: float | None
    sd: float | None
    ci95: tuple[float, float] | None  # None with fewer than 2 pairs

    @property
    def significant(self) -> bool:
        """The interval excludes 0."""
        return self.ci95 is not None and (self.ci95[1] < 0 or self.ci95[0] > 0)

    @property
    def verdict(self) -> str:
        if self.ci95 is None:
            return "not enough paired seeds for an interval"
        if not self.significant:
            return "no significant difference"
        return "lower (better)" if self.ci95[1] < 0 else "higher (worse)"

    def to_dict(self) -> dict[str, Any]:
        return {
            "n_pairs": self.n,
            "mean_diff": self.mean,
            "sd_diff": self.sd,
            "ci95": list(self.ci95) if self.ci95 else None,
            "significant": self.significant,
            "verdict": self.verdict,
        }


def paired_diff(a: Sequence[float | None], b: Sequence[float | None]) -> PairedDiff:
    """Paired difference ``a[i] - b[i]`` over the indices where both are finite."""
    diffs = [
        x - y
        for x, y in zip(a, b, strict=True)
        if x is not None and y is not None and math.isfinite(x) and math.isfinite(y)
    ]
    s = summarize(diffs)
    if s.n < 2 or s.sd is None:
        return PairedDiff(s.n, s.mean, s.sd, None)
    half = t_quantile_975(s.n - 1) * s.sd / math.sqrt(s.n)
    return PairedDiff(s.n, s.mean, s.sd, (s.mean - half, s.mean + half))

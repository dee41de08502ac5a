"""Seed statistics: mean ± std with a Student-t interval, and Welch's t-test between two configurations.

A sweep's confirmation stage and ``wilson-ray table --seeds`` re-run a configuration with several training seeds;
these functions turn those per-seed values into the numbers a table reports and the verdict a sweep prints.
Everything is computed by scipy.stats; NaN values (a run that produced no number) are dropped first. scipy is
imported on the first computation, not with this module: the sweep driver imports the confirmation stage (and so
this module) at its start, and scipy.stats alone took ~1 s of it (``python -X importtime``, 2 cores).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

CONFIDENCE = 0.95


def _scipy_stats():
    """``scipy.stats``, imported when first needed."""
    from scipy import stats

    return stats


@dataclass(frozen=True)
class Summary:
    """``n`` finite values: their mean, sample std (ddof=1) and the ``confidence`` Student-t interval of the mean."""

    n: int
    mean: float
    std: float
    low: float
    high: float

    def as_dict(self) -> dict[str, float | int | None]:
        clean = lambda v: None if math.isnan(v) else round(v, 4)  # noqa: E731  JSON has no NaN
        return {"n": self.n, "mean": clean(self.mean), "std": clean(self.std), "low": clean(self.low),
                "high": clean(self.high)}  # fmt: skip


def _finite(values: Sequence[float | None]) -> np.ndarray:
    arr = np.asarray([v for v in values if v is not None], dtype=np.float64)
    return arr[np.isfinite(arr)]


def summarize(values: Sequence[float | None], confidence: float = CONFIDENCE) -> Summary:
    """Mean, sample standard deviation and the two-sided Student-t confidence interval of the mean
    (mean ± t_{(1+c)/2, n-1} · s / √n). With one value the std and the interval are NaN; with none, all are."""
    x = _finite(values)
    n = len(x)
    if n == 0:
        return Summary(0, math.nan, math.nan, math.nan, math.nan)
    mean = float(x.mean())
    if n == 1:
        return Summary(1, mean, math.nan, math.nan, math.nan)
    std = float(x.std(ddof=1))
    half = float(_scipy_stats().t.ppf((1 + confidence) / 2, n - 1)) * std / math.sqrt(n)
    return Summary(n, mean, std, mean - half, mean + half)


def format_summary(s: Summary, digits: int = 1) -> str:
    """``"29.5 ± 1.2"`` (mean ± sample std), ``"29.5"`` for one value, ``"-"`` for none."""
    if s.n == 0:
        return "-"
    if s.n == 1 or math.isnan(s.std):
        return f"{s.mean:.{digits}f}"
    return f"{s.mean:.{digits}f} ± {s.std:.{digits}f}"


@dataclass(frozen=True)
class Comparison:
    """Welch's t-test of ``a`` against ``b``: the difference of the means with its Welch confidence interval,
    the t statistic, the Welch–Satterthwaite degrees of freedom and the one-sided p-value of "a is better"."""

    diff: float
    low: float
    high: float
    t: float
    df: float
    p: float
    n_a: int
    n_b: int
    alpha: float

    @property
    def significant(self) -> bool:
        """True when the one-sided test rejects "a is no better than b" at level ``alpha``."""
        return not math.isnan(self.p) and self.p < self.alpha

    def as_dict(self) -> dict[str, float | int | bool | None]:
        clean = lambda v: None if isinstance(v, float) and math.isnan(v) else v  # noqa: E731
        return {k: clean(getattr(self, k)) for k in ("diff", "low", "high", "t", "df", "p", "n_a", "n_b", "alpha")} | {
            "significant": self.significant
        }


def welch(
    a: Sequence[float | None], b: Sequence[float | None], mode: str = "max", confidence: float = CONFIDENCE
) -> Comparison:
    """Welch's unequal-variance t-test of whether configuration ``a`` is better than ``b`` (larger means when
    ``mode`` is "max", smaller when "min"), one-sided at level 1 - ``confidence``; the interval is the two-sided
    Welch interval of mean(a) - mean(b). Needs at least two finite values on each side, else every number is NaN."""
    if mode not in ("max", "min"):
        raise ValueError(f"welch: mode is {mode!r}, expected 'max' or 'min'")
    x, y = _finite(a), _finite(b)
    alpha = 1 - confidence
    nan = math.nan
    if len(x) < 2 or len(y) < 2:
        diff = float(x.mean() - y.mean()) if len(x) and len(y) else nan
        return Comparison(diff, nan, nan, nan, nan, nan, len(x), len(y), alpha)
    res = _scipy_stats().ttest_ind(x, y, equal_var=False, alternative="greater" if mode == "max" else "less")
    diff = float(x.mean() - y.mean())
    va, vb = x.var(ddof=1) / len(x), y.var(ddof=1) / len(y)
    se = math.sqrt(va + vb)
    df = float(res.df)
    if se == 0.0:  # identical constant samples: no spread to test against
        return Comparison(diff, diff, diff, nan, df, nan, len(x), len(y), alpha)
    half = float(_scipy_stats().t.ppf((1 + confidence) / 2, df)) * se
    return Comparison(
        diff, diff - half, diff + half, float(res.statistic), df, float(res.pvalue), len(x), len(y), alpha
    )

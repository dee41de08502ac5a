"""wilson_ray.stats on inputs whose answers are known by hand (Student-t interval, Welch's t-test)."""

import math

import pytest

from wilson_ray.stats import format_summary, summarize, welch


def test_summary_of_one_to_five():
    s = summarize([1, 2, 3, 4, 5])
    assert s.n == 5 and s.mean == 3.0
    assert s.std == pytest.approx(math.sqrt(2.5))  # ddof=1: sum of squares 10 over 4
    # t_{0.975, 4} = 2.7764451 (tables); half width = t * s / sqrt(5)
    half = 2.7764451 * math.sqrt(2.5) / math.sqrt(5)
    assert s.low == pytest.approx(3 - half, abs=1e-6) and s.high == pytest.approx(3 + half, abs=1e-6)
    assert format_summary(s) == "3.0 ± 1.6"
    assert format_summary(s, digits=2) == "3.00 ± 1.58"


def test_summary_drops_missing_and_handles_tiny_samples():
    assert summarize([None, float("nan"), 4.0]).n == 1
    one = summarize([4.0])
    assert one.mean == 4.0 and math.isnan(one.std) and math.isnan(one.low) and format_summary(one) == "4.0"
    empty = summarize([])
    assert empty.n == 0 and format_summary(empty) == "-"
    assert summarize([2.0, 2.0]).std == 0.0 and summarize([2.0, 2.0]).low == 2.0
    assert summarize([1.0, 3.0]).as_dict()["std"] == pytest.approx(math.sqrt(2), abs=1e-4)


def test_welch_matches_the_hand_computation():
    # a = 1,2,3 (mean 2, var 1), b = 2,3,5 (mean 10/3, var 7/3): se^2 = 1/3 + 7/9 = 10/9
    c = welch([1, 2, 3], [2, 3, 5], mode="max")
    assert c.diff == pytest.approx(-4 / 3)
    assert c.t == pytest.approx((-4 / 3) / math.sqrt(10 / 9))  # -1.2649
    # Welch-Satterthwaite: (10/9)^2 / ((1/3)^2/2 + (7/9)^2/2) = 3.44828
    assert c.df == pytest.approx((10 / 9) ** 2 / ((1 / 3) ** 2 / 2 + (7 / 9) ** 2 / 2))
    assert c.n_a == 3 and c.n_b == 3 and not c.significant and c.p > 0.5  # a is worse: one-sided p above 1/2
    # the same pair asked the other way round ("is b better?") has p = 1 - p
    assert welch([2, 3, 5], [1, 2, 3]).p == pytest.approx(1 - c.p)
    # for mode "min", smaller is better: a (mean 2) vs b (mean 3.33) has the p of "b better" under max
    assert welch([1, 2, 3], [2, 3, 5], mode="min").p == pytest.approx(1 - c.p)
    assert c.low < c.diff < c.high


def test_welch_is_significant_only_for_a_clear_gap():
    clear = welch([30.1, 30.4, 29.9, 30.2], [25.0, 25.3, 24.8, 25.1])
    assert clear.significant and clear.p < 1e-5 and clear.low > 4.0
    noisy = welch([30.0, 22.0, 27.0], [25.0, 28.0, 21.0])
    assert not noisy.significant and noisy.low < 0 < noisy.high


def test_welch_with_too_few_values_says_nothing():
    c = welch([30.0], [25.0, 26.0])
    assert c.diff == pytest.approx(4.5) and math.isnan(c.p) and not c.significant
    assert c.as_dict()["p"] is None
    with pytest.raises(ValueError, match="mode is 'best'"):
        welch([1, 2], [1, 2], mode="best")

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


def test_welch_p_and_interval_with_four_degrees_of_freedom_in_closed_form():
    # a = 4,5,6 and b = 1,2,3: both variances 1, n = 3, so se^2 = 1/3 + 1/3 = 2/3 and t = 3 / sqrt(2/3) = 3.6742346;
    # Welch-Satterthwaite df = (2/3)^2 / ((1/3)^2/2 + (1/3)^2/2) = (4/9) / (1/9) = 4 exactly.
    # Student t with 4 df has a closed-form CDF: F(t) = 1/2 + (3/4) x (1 - x^2/3), x = t / sqrt(4 + t^2).
    # Here x^2 = 13.5 / 17.5 = 27/35, so the one-sided p = 1 - F(t) = 1/2 - (3/4)(26/35) sqrt(27/35)
    # = 1/2 - (39/70) sqrt(27/35) = 0.0106558206 (scipy.special.stdtr(4, t) and mpmath's integral of the density
    # give the same to 1e-15).
    c = welch([4, 5, 6], [1, 2, 3])
    assert c.diff == 3.0 and c.df == pytest.approx(4.0, abs=1e-12)
    assert c.t == pytest.approx(3.6742346, abs=1e-6)
    p = 0.5 - 39 / 70 * math.sqrt(27 / 35)
    assert p == pytest.approx(0.0106558206, abs=1e-9)
    assert c.p == pytest.approx(p, abs=1e-9) and c.significant  # 0.0107 < 0.05
    # two-sided 95 % Welch interval: 3 ± t_{0.975, 4} · sqrt(2/3), t_{0.975, 4} = 2.7764451 (tables)
    half = 2.7764451 * math.sqrt(2 / 3)  # 2.2669579
    assert c.low == pytest.approx(3 - half, abs=1e-6) and c.high == pytest.approx(3 + half, abs=1e-6)
    assert (c.low, c.high) == pytest.approx((0.7330421, 5.2669579), abs=1e-6)
    # the Bonferroni level of two candidates (confidence 0.975): t_{0.9875, 4} = 3.4954059 (tables; the root of
    # F(t) = 0.9875 above), and the one-sided test at 0.025 still rejects
    b = welch([4, 5, 6], [1, 2, 3], confidence=0.975)
    half = 3.4954059 * math.sqrt(2 / 3)
    assert (b.low, b.high) == pytest.approx((3 - half, 3 + half), abs=1e-6)
    assert b.p == pytest.approx(p, abs=1e-9) and b.alpha == pytest.approx(0.025) and b.significant
    # mode "min" asks whether a is smaller: the other tail
    assert welch([4, 5, 6], [1, 2, 3], mode="min").p == pytest.approx(1 - p, abs=1e-9)


def test_welch_p_and_interval_with_fractional_degrees_of_freedom():
    # a = 1,2,3 vs b = 2,3,5: t = -1.2649111, df = 100/29 = 3.4482759 (the hand computation above). The one-sided
    # p of "a is better" is P(T_df > t) = 0.8576864106 and t_{0.975, df} = 2.9607304803: both from mpmath's
    # quadrature of the Student-t density at 30 digits, equal to scipy.special.stdtr / stdtrit to 1e-15.
    c = welch([1, 2, 3], [2, 3, 5])
    assert c.df == pytest.approx(100 / 29, abs=1e-12)
    assert c.p == pytest.approx(0.8576864106, abs=1e-9)
    half = 2.9607304803 * math.sqrt(10 / 9)  # 3.1208839519
    assert c.low == pytest.approx(-4 / 3 - half, abs=1e-6) and c.high == pytest.approx(-4 / 3 + half, abs=1e-6)
    assert (c.low, c.high) == pytest.approx((-4.4542173, 1.7875506), abs=1e-6)


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

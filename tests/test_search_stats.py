"""The confirmation's statistics: t quantiles, mean/sd, paired 95% intervals."""

from __future__ import annotations

import math
import statistics

import pytest

from symbio.search.stats import T975, paired_diff, summarize, t_quantile_975


def test_t_quantiles_table_and_expansion():
    assert t_quantile_975(1) == 12.706 and t_quantile_975(2) == 4.303
    assert t_quantile_975(10) == 2.228 and t_quantile_975(30) == 2.042
    # beyond the table: exact values 2.021 (40), 2.000 (60), 1.980 (120)
    assert t_quantile_975(40) == pytest.approx(2.021, abs=1e-3)
    assert t_quantile_975(60) == pytest.approx(2.000, abs=1e-3)
    assert t_quantile_975(120) == pytest.approx(1.980, abs=1e-3)
    assert t_quantile_975(31) < T975[-1]  # continuous and decreasing past the table
    assert t_quantile_975(10**6) == pytest.approx(statistics.NormalDist().inv_cdf(0.975), abs=1e-5)
    assert list(T975) == sorted(T975, reverse=True)
    with pytest.raises(ValueError):
        t_quantile_975(0)


def test_summarize_skips_missing_values():
    s = summarize([1.0, None, 3.0, math.nan])
    assert (s.n, s.mean, s.sd) == (2, 2.0, pytest.approx(math.sqrt(2)))
    assert summarize([5.0]).sd is None and summarize([]).mean is None


def test_paired_interval_by_hand():
    a, b = [2.0, 2.1, 1.9, 2.2], [2.1, 2.3, 2.0, 2.3]  # diffs -0.1, -0.2, -0.1, -0.1
    d = paired_diff(a, b)
    mean, sd = -0.125, statistics.stdev([-0.1, -0.2, -0.1, -0.1])
    half = 3.182 * sd / 2  # t(0.975, 3) * sd / sqrt(4)
    assert d.n == 4 and d.mean == pytest.approx(mean) and d.sd == pytest.approx(sd)
    assert d.ci95 == pytest.approx((mean - half, mean + half))
    assert d.significant and d.verdict == "lower (better)"


def test_interval_covering_zero_is_no_significant_difference():
    d = paired_diff([2.0, 2.1, 1.9], [2.05, 2.0, 1.95])
    assert d.ci95[0] < 0 < d.ci95[1]
    assert not d.significant and d.verdict == "no significant difference"
    worse = paired_diff([2.3, 2.4, 2.35], [2.0, 2.1, 2.0])
    assert worse.significant and worse.verdict == "higher (worse)"


def test_pairs_with_a_missing_side_are_dropped():
    d = paired_diff([1.0, None, 1.2, 1.1], [1.1, 1.0, None, 1.3])
    assert d.n == 2 and d.mean == pytest.approx(-0.15)
    one = paired_diff([1.0, None], [1.1, 1.0])
    assert one.n == 1 and one.ci95 is None and not one.significant
    assert one.verdict.startswith("not enough")
    assert one.to_dict()["ci95"] is None

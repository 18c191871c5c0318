"""Paired per-seed statistics: hand-computed values, scipy's tests, and the verdict sentences."""

import math

import numpy as np
import pytest
from scipy import stats as scipy_stats

from distill.stats import compare, format_p, pair, sign_test_p, t_test_p, verdict


def test_pair_keeps_the_seeds_both_ran_in_the_variants_order():
  seeds, diffs = pair({2: 0.9, 0: 0.8, 5: 0.7}, {0: 0.75, 1: 0.6, 2: 0.85})
  assert seeds == [2, 0]
  assert diffs == pytest.approx([0.05, 0.05])


def test_t_test_by_hand_and_against_scipy():
  # diffs 1, 2, 3: mean 2, sample std 1, t = 2 * sqrt(3), 2 degrees of freedom, where the
  # t distribution's tail has a closed form: P(T > t) = (1 - t / sqrt(t^2 + 2)) / 2.
  t = 2 * math.sqrt(3)
  assert t_test_p([1.0, 2.0, 3.0]) == pytest.approx(1 - t / math.sqrt(t * t + 2), rel=1e-12)
  variant = np.array([0.851, 0.872, 0.903, 0.884, 0.861])
  baseline = np.array([0.842, 0.866, 0.889, 0.887, 0.850])
  expected = scipy_stats.ttest_rel(variant, baseline).pvalue
  assert t_test_p(variant - baseline) == pytest.approx(expected, rel=1e-10)
  assert t_test_p(baseline - variant) == pytest.approx(expected, rel=1e-10)


@pytest.mark.parametrize("diffs", [[], [0.01], [0.02, 0.02, 0.02], [0.0, 0.0]])
def test_t_test_is_undefined_without_two_differences_or_spread(diffs):
  assert t_test_p(diffs) is None


def test_equal_differences_up_to_float_noise_count_as_equal():
  # 0.83 - 0.80 and 0.85 - 0.82 differ in the last bits; a t-test on that would say p ~ 0.
  _, diffs = pair({0: 0.83, 1: 0.85}, {0: 0.80, 1: 0.82})
  assert diffs[0] != diffs[1]
  assert t_test_p(diffs) is None


def test_the_same_image_count_stored_as_float32_is_the_same_difference():
  # Two seeds that each lose exactly 32 of 359 test images, as summaries hold accuracies
  # (float32 values): the differences differ by 6e-8, which must not make a t-test.
  variant = {0: float(np.float32(300 / 359)), 1: float(np.float32(304 / 359))}
  baseline = {0: float(np.float32(332 / 359)), 1: float(np.float32(336 / 359))}
  _, diffs = pair(variant, baseline)
  assert diffs[0] != diffs[1]
  result = compare(variant, baseline, "hard")
  assert result["t_p"] is None and result["sign_p"] == 0.5
  assert result["verdict"] == ("-8.91 ± 0.00 pts over hard (2 seeds, the same difference on "
                               "every seed, sign test p = 0.5): too few seeds to tell")
  # Level on every seed, up to float32 noise: no difference, and never '-0.00'.
  level = compare({0: float(np.float32(0.1) * 3), 1: 0.7}, {0: 0.3, 1: 0.7}, "hard")
  assert level["verdict"] == "+0.00 ± 0.00 pts over hard (2 seeds): no difference on any seed"


@pytest.mark.parametrize("diffs, expected", [
    ([0.1] * 5, 2 / 32),                      # 5 of 5 positive
    ([-0.1] * 5, 2 / 32),                     # 5 of 5 negative: two-sided
    ([0.1] * 6, 2 / 64),                      # 6 of 6: the first count under 0.05
    ([0.1, 0.2, 0.3, 0.4, -0.1], 2 * 6 / 32),  # 4 of 5: 2 * (1 + 5) / 32
    ([0.1, 0.1, -0.1, -0.1], 1.0),            # even split: capped at 1
    ([0.1] * 5 + [0.0, 0.0], 2 / 32),         # ties dropped: 5 of 5 again
    ([0.1, 0.0, -0.1], 1.0),
])
def test_sign_test_by_hand_and_against_scipy(diffs, expected):
  assert sign_test_p(diffs) == pytest.approx(expected, rel=1e-12)
  nonzero = [d for d in diffs if d != 0]
  positive = sum(d > 0 for d in nonzero)
  assert sign_test_p(diffs) == pytest.approx(
      scipy_stats.binomtest(positive, len(nonzero)).pvalue, rel=1e-12)


def test_sign_test_is_undefined_when_every_difference_is_a_tie():
  assert sign_test_p([0.0, 0.0, 0.0]) is None
  assert sign_test_p([]) is None


def test_a_gain_beyond_seed_noise():
  # diffs 0.42, 0.52, 0.32 points: mean 0.42, sample std 0.10, t = 4.2 * sqrt(3).
  result = compare({0: 0.8042, 1: 0.8052, 2: 0.8032}, {0: 0.80, 1: 0.80, 2: 0.80}, "hard")
  t = 4.2 * math.sqrt(3)
  assert result["n"] == 3 and result["seeds"] == [0, 1, 2] and result["left_out"] == 0
  assert result["mean_diff"] == pytest.approx(0.0042)
  assert result["std_diff"] == pytest.approx(0.0010)
  assert result["t_p"] == pytest.approx(1 - t / math.sqrt(t * t + 2))
  assert result["sign_p"] == pytest.approx(0.25)
  assert result["verdict"] == ("+0.42 ± 0.10 pts over hard (3 seeds, t-test p = 0.0184): "
                               "a gain beyond seed noise")


def test_a_loss_beyond_seed_noise_and_unpaired_seeds_left_out():
  result = compare({0: 0.7958, 1: 0.7948, 2: 0.7968, 7: 0.5}, {0: 0.80, 1: 0.80, 2: 0.80, 9: 0.9},
                   "kd")
  assert result["n"] == 3 and result["left_out"] == 2
  assert result["verdict"] == ("-0.42 ± 0.10 pts over kd (3 seeds, 2 unpaired left out, "
                               "t-test p = 0.0184): a loss beyond seed noise")


def test_within_seed_noise():
  result = compare({0: 0.81, 1: 0.79, 2: 0.805}, {0: 0.80, 1: 0.80, 2: 0.80}, "hard")
  assert result["t_p"] > 0.05
  assert result["verdict"] == (f"+0.17 ± 1.04 pts over hard (3 seeds, t-test p = "
                               f"{result['t_p']:.3g}): within seed noise")


def test_one_seed_is_too_few():
  result = compare({0: 0.81}, {0: 0.80, 1: 0.79}, "hard")
  assert result["n"] == 1 and result["t_p"] is None and result["std_diff"] == 0.0
  assert result["sign_p"] == 1.0
  assert result["verdict"] == ("+1.00 pts over hard (1 seed, 1 unpaired left out): "
                               "too few seeds to tell (n = 1)")


def test_the_same_difference_on_every_seed_falls_back_to_the_sign_test():
  three = compare({0: 0.83, 1: 0.84, 2: 0.85}, {0: 0.80, 1: 0.81, 2: 0.82}, "hard")
  assert three["t_p"] is None and three["sign_p"] == pytest.approx(0.25)
  assert three["verdict"] == ("+3.00 ± 0.00 pts over hard (3 seeds, the same difference on "
                              "every seed, sign test p = 0.25): too few seeds to tell")
  six = compare({s: 0.9 for s in range(6)}, {s: 0.8 for s in range(6)}, "hard")
  assert six["verdict"].endswith("sign test p = 0.0312): a gain beyond seed noise")
  ties = compare({0: 0.8, 1: 0.9}, {0: 0.8, 1: 0.9}, "kd")
  assert ties["t_p"] is None and ties["sign_p"] is None
  assert ties["verdict"] == "+0.00 ± 0.00 pts over kd (2 seeds): no difference on any seed"


def test_no_common_seed():
  result = compare({0: 0.8}, {1: 0.8}, "hard")
  assert result["n"] == 0 and result["mean_diff"] is None and result["std_diff"] is None
  assert result["t_p"] is None and result["sign_p"] is None
  assert result["verdict"] == "no seed in common with hard: nothing to pair"


def test_p_values_for_people():
  assert format_p(None) == "-"
  assert format_p(0.0004) == "< 0.001"
  assert format_p(0.0625) == "0.0625"
  assert format_p(0.41234) == "0.412"
  assert "t-test p < 0.001" in verdict({
      "baseline": "hard", "n": 10, "left_out": 0, "mean_diff": 0.01, "std_diff": 0.001,
      "t_p": 1e-9, "sign_p": 0.002})


@pytest.mark.parametrize("accuracy, message", [
    (93.0, r"seed 1 has 93.0 \(in percent\? divide by 100\)$"),  # read as +196.67 points
    (math.nan, r"seed 1 has nan$"),
    (-0.1, r"seed 1 has -0.1$"),
])
def test_accuracies_that_are_no_fractions_are_refused(accuracy, message):
  with pytest.raises(ValueError, match=r"^accuracies are fractions in \[0, 1\]; " + message):
    compare({0: 0.9, 1: accuracy}, {0: 0.88, 1: 0.89}, "hard")
  assert compare({0: np.float32(0.9)}, {0: 1}, "hard")["n"] == 1  # numpy and ints are numbers

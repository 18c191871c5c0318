"""Paired statistics of two training variants over the seeds they share.

Two runs with the same seed start from the same initialisation and see the
training data in the same order, so the difference of their test accuracies on
that seed cancels what the seed alone does. Comparing the per-seed differences
(rather than two means, each with its own seed spread) is the paired test: it
tells a real gain from seed noise with far fewer seeds.

Everything here is pure: mappings of seed -> accuracy in, numbers and one
plain sentence out. Accuracies are fractions (0.91), the sentences speak in
percentage points ("+0.42 pts"). A difference counts as beyond seed noise when
its two-sided p-value is below `ALPHA` = 0.05.
"""

from __future__ import annotations

import math
from collections.abc import Hashable, Mapping, Sequence
from typing import Any

import numpy as np
from scipy import stats as scipy_stats

# The conventional 5% level: below it a difference is called beyond seed noise.
ALPHA = 0.05
# Accuracies lie in [0, 1] and a real difference is at least one test image (1e-6 even for a
# million images), but run summaries hold them as float32 values (about 7 significant digits):
# two seeds that each lose exactly 32 of 357 images store differences -0.0891364813 and
# -0.0891365409. Differences closer than this are the same difference, and ones this close to 0
# are ties.
_SAME = 5e-7


def pair(variant: Mapping[Hashable, float],
         baseline: Mapping[Hashable, float]) -> tuple[list[Hashable], list[float]]:
  """The seeds both variants ran, and variant - baseline on each, in the variant's seed order.

  Seeds that only one of the two ran are left out: without their partner they
  say nothing about the difference.
  """
  seeds = [seed for seed in variant if seed in baseline]
  return seeds, [float(variant[seed]) - float(baseline[seed]) for seed in seeds]


def _all_same(diffs: Sequence[float]) -> bool:
  return bool(np.ptp(np.asarray(diffs, float)) <= _SAME)


def t_test_p(diffs: Sequence[float]) -> float | None:
  """The two-sided paired t-test p-value of mean(diffs) != 0 (as scipy.stats.ttest_rel).

  None when it is undefined: fewer than two differences (no spread to
  estimate), or all of them equal (zero spread, so t is 0/0 or infinite).
  """
  diffs = np.asarray(diffs, float)
  n = len(diffs)
  if n < 2 or _all_same(diffs):
    return None
  t = diffs.mean() / (diffs.std(ddof=1) / math.sqrt(n))
  return float(2 * scipy_stats.t.sf(abs(t), df=n - 1))


def sign_test_p(diffs: Sequence[float]) -> float | None:
  """The exact two-sided sign test p-value: how often a fair coin splits as unevenly.

  Ties (zero differences) are dropped, as is usual; None when nothing is
  left. With k of n positive: p = min(1, 2 * P(Binomial(n, 1/2) <= min(k, n - k))),
  so 5 of 5 positive gives 2 / 32 = 0.0625.
  """
  signs = [d for d in diffs if abs(d) > _SAME]
  n = len(signs)
  if n == 0:
    return None
  k = min(sum(d > 0 for d in signs), sum(d < 0 for d in signs))
  tail = sum(math.comb(n, i) for i in range(k + 1)) / 2 ** n
  return min(1.0, 2 * tail)


def compare(variant: Mapping[Hashable, float], baseline: Mapping[Hashable, float],
            name: str) -> dict[str, Any]:
  """The paired comparison of `variant` against the baseline called `name`.

  Args:
    variant, baseline: seed -> test accuracy (a fraction) of each.
    name: what the baseline is called in the verdict ("hard", "kd").

  Returns:
    `baseline` (the name), `n` (seeds paired), `seeds` (which), `left_out`
    (seeds only one of the two ran), `mean_diff` and `std_diff` (mean and
    sample std of variant - baseline, fractions; None without pairs, std 0 for
    one), `t_p` and `sign_p` (see `t_test_p`, `sign_test_p`) and `verdict`.
  """
  for accuracies in (variant, baseline):
    # Percentages would read as +196.67 points; a NaN would make every statistic NaN.
    for seed, value in accuracies.items():
      if not 0.0 <= float(value) <= 1.0:
        percent = " (in percent? divide by 100)" if 1.0 < float(value) <= 100.0 else ""
        raise ValueError(f"accuracies are fractions in [0, 1]; seed {seed!r} has "
                         f"{float(value)!r}{percent}")
  seeds, diffs = pair(variant, baseline)
  n = len(seeds)
  result = {
      "baseline": name, "n": n, "seeds": seeds,
      "left_out": len(set(variant) ^ set(baseline)),
      "mean_diff": float(np.mean(diffs)) if n else None,
      "std_diff": float(np.std(diffs, ddof=1)) if n > 1 else (0.0 if n else None),
      "t_p": t_test_p(diffs), "sign_p": sign_test_p(diffs),
  }
  result["verdict"] = verdict(result)
  return result


def format_p(p: float | None) -> str:
  """A p-value for people: three significant digits, '< 0.001' below that, '-' if undefined."""
  if p is None:
    return "-"
  return "< 0.001" if p < 0.001 else f"{p:.3g}"


def p_clause(name: str, p: float) -> str:
  """A named p-value in words: 't-test p = 0.021', or 't-test p < 0.001' below that."""
  text = format_p(p)
  return f"{name} p {text}" if text.startswith("<") else f"{name} p = {text}"


def format_diff(result: Mapping[str, Any]) -> str:
  """The mean difference in percentage points, '± sample std' from two seeds on: '+0.42 ± 0.10'."""
  if not result["n"]:
    return "-"
  text = signed_points(result["mean_diff"])
  return text + (f" ± {100 * result['std_diff']:.2f}" if result["n"] > 1 else "")


def signed_points(fraction: float) -> str:
  """A difference of fractions in percentage points with its sign, two decimals: '+0.42';
  '+0.00' for one that rounds to nothing (float noise in a tie must not read '-0.00')."""
  points = round(100 * fraction, 2)
  return f"{points if points else 0.0:+.2f}"


def verdict(result: Mapping[str, Any]) -> str:
  """One plain sentence on a `compare` result, calling p < ALPHA (0.05) beyond seed noise.

  e.g. "+0.42 ± 0.10 pts over hard (3 seeds, t-test p = 0.03): a gain beyond
  seed noise", "... (3 seeds, t-test p = 0.41): within seed noise", "+0.40 pts
  over hard (1 seed): too few seeds to tell (n = 1)". When every seed shows the
  same difference the t-test is undefined and the sign test decides (it needs
  6 seeds to reach 0.05).
  """
  n, name = result["n"], result["baseline"]
  if n == 0:
    return f"no seed in common with {name}: nothing to pair"
  seeds = f"{n} seed" + ("s" if n > 1 else "")
  if result.get("left_out"):
    seeds += f", {result['left_out']} unpaired left out"
  head = f"{format_diff(result)} pts over {name}"
  if n == 1:
    return f"{head} ({seeds}): too few seeds to tell (n = 1)"
  if result["t_p"] is not None:
    p, detail = result["t_p"], p_clause("t-test", result["t_p"])
  elif result["sign_p"] is None:
    return f"{head} ({seeds}): no difference on any seed"
  else:
    p = result["sign_p"]
    detail = "the same difference on every seed, " + p_clause("sign test", p)
  if p >= ALPHA:
    conclusion = "within seed noise" if result["t_p"] is not None else "too few seeds to tell"
  else:
    conclusion = f"a {'gain' if result['mean_diff'] > 0 else 'loss'} beyond seed noise"
  return f"{head} ({seeds}, {detail}): {conclusion}"

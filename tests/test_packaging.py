"""The dependency floors pyproject.toml claims are true: each is at least what the code needs."""

import re

import pytest
from lowest_pins import floors

# What the code uses that older versions lack, and the first version with it.
NEEDS = {
    "python": ((3, 11), "tomllib"),
    "flax": ((0, 12), "nnx.List"),
    "optax": ((0, 2, 5), "optax.tree.norm"),
}


def _version(text):
  return tuple(int(part) for part in re.findall(r"\d+", text)[:3])


@pytest.mark.parametrize("package", sorted(NEEDS))
def test_each_floor_is_at_least_what_the_code_needs(package):
  needed, feature = NEEDS[package]
  assert _version(floors()[package]) >= needed, f"{package} below {needed} lacks {feature}"


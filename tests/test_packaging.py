"""The dependency floors pyproject.toml claims are true: each is at least what the code needs."""

import re
import tomllib
from pathlib import Path

import pytest

PYPROJECT = tomllib.loads((Path(__file__).parents[1] / "pyproject.toml").read_text())

# What the code uses that older versions lack, and the first version with it.
NEEDS = {
    "python": ((3, 11), "tomllib"),
    "flax": ((0, 12), "nnx.List"),
    "optax": ((0, 2, 5), "optax.tree.norm"),
}


def _version(text):
  return tuple(int(part) for part in re.findall(r"\d+", text)[:3])


def _floors():
  floors = {"python": _version(PYPROJECT["project"]["requires-python"].split(",")[0])}
  for requirement in PYPROJECT["project"]["dependencies"]:
    name, floor = re.match(r"([A-Za-z0-9_.-]+)\s*>=\s*([0-9.]+)", requirement).groups()
    floors[name.lower()] = _version(floor)
  return floors


@pytest.mark.parametrize("package", sorted(NEEDS))
def test_each_floor_is_at_least_what_the_code_needs(package):
  needed, feature = NEEDS[package]
  assert _floors()[package] >= needed, f"{package} below {needed} lacks {feature}"


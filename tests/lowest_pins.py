"""The dependency floors of pyproject.toml as exact pins: `make test-lowest` installs these.

    python tests/lowest_pins.py > constraints.txt
"""

import re
import tomllib
from pathlib import Path

PYPROJECT = Path(__file__).resolve().parents[1] / "pyproject.toml"


def floors() -> dict[str, str]:
  """{distribution name: its lowest allowed version} for every runtime dependency and the onnx
  extra, and python."""
  project = tomllib.loads(PYPROJECT.read_text())["project"]
  found = {"python": re.search(r">=\s*([0-9.]+)", project["requires-python"]).group(1)}
  # The extras `make install` installs are floors too (tests of ONNX export need them).
  extras = project.get("optional-dependencies", {}).get("onnx", [])
  for requirement in [*project["dependencies"], *extras]:
    name, floor = re.match(r"([A-Za-z0-9_.-]+)\s*>=\s*([0-9.]+)", requirement).groups()
    found[name.lower()] = floor
  return found


if __name__ == "__main__":
  print("\n".join(f"{name}=={version}" for name, version in floors().items()
                  if name != "python"))

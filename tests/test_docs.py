"""The project's Markdown documents link only to files and headings that exist."""

import functools
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOCUMENTS = ["README.md", "BENCHMARKS.md", "DEVELOPERS.md", "benchmarks/HISTORY.md"]
_LINK = re.compile(r"\]\(([^)\s]+)\)")


def _prose_lines(path: Path) -> list[str]:
  """The document's lines outside fenced code blocks."""
  lines, fenced = [], False
  for line in path.read_text().splitlines():
    if line.startswith("```"):
      fenced = not fenced
    elif not fenced:
      lines.append(line)
  return lines


@functools.cache
def _anchors(path: Path) -> frozenset[str]:
  """The fragments GitHub gives the document's headings (a repeated one gets -1, -2, ...).

  Cached: a document is linked many times, from itself and the others.
  """
  anchors, seen = set(), {}
  for line in _prose_lines(path):
    heading = re.match(r"#{1,6}\s+(.*)", line)
    if heading:
      slug = re.sub(r"[^\w\- ]", "", heading.group(1).strip().lower()).replace(" ", "-")
      count = seen.get(slug, 0)
      seen[slug] = count + 1
      anchors.add(slug if count == 0 else f"{slug}-{count}")
  return frozenset(anchors)


def test_anchors_follow_githubs_rule():
  path = ROOT / "BENCHMARKS.md"
  assert "throughput-distill-vs-pytorch-make-bench" in _anchors(path)
  assert "demo-recipesdemotoml-what-make-demo-runs" in _anchors(path)


@pytest.mark.parametrize("document", DOCUMENTS)
def test_links_reach_existing_files_and_headings(document):
  source = ROOT / document
  broken = []
  for line in _prose_lines(source):
    for target in _LINK.findall(line):
      if target.startswith(("http://", "https://", "mailto:")):
        continue
      path, _, fragment = target.partition("#")
      linked = (source.parent / path).resolve() if path else source
      if not linked.exists():
        broken.append(f"{target}: no such file")
      elif fragment and linked.suffix == ".md" and fragment not in _anchors(linked):
        broken.append(f"{target}: no such heading")
  assert not broken, f"{document}: " + "; ".join(broken)


def _python_blocks(path: Path) -> list[str]:
  """The document's ```python blocks."""
  return re.findall(r"```python\n(.*?)```", path.read_text(), re.DOTALL)


def test_readme_python_names_what_the_package_has():
  """Every `module.name` a README snippet takes from a distill module, and every name it imports
  from one, exists: a function moved to another module broke a snippet before."""
  import importlib  # noqa: PLC0415

  missing = []
  for block in _python_blocks(ROOT / "README.md"):
    modules = {}
    for package, names in re.findall(r"^from (distill[\w.]*) import ([\w, ]+)", block, re.M):
      for name in (name.strip() for name in names.split(",")):
        try:
          modules[name] = importlib.import_module(f"{package}.{name}")
        except ModuleNotFoundError:  # a function or class of the package, not a module
          if not hasattr(importlib.import_module(package), name):
            missing.append(f"{package}.{name}")
    for module_name, attribute in re.findall(r"\b(\w+)\.(\w+)\(", block):
      module = modules.get(module_name)
      if module is not None and not hasattr(module, attribute):
        missing.append(f"{module.__name__}.{attribute}")
  assert missing == []

"""Recipes: TOML files layered over built-in defaults, with `key=value` overrides.

The defaults below are the schema. A recipe or an override may only name keys
that exist here, and each value must have the default's type; anything else is
a `UserError` that names the valid keys. This keeps a typo from silently
training with a default.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import difflib
import functools
import hashlib
import json
import math
import os
import textwrap
import tomllib
import types
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from distill.errors import UserError, first_few

RECIPES_DIR = Path(__file__).resolve().parent / "recipes"

# Per-model settings live under the role, so one recipe can describe a teacher
# and every student without repeating the optimizer settings.
_MODEL_DEFAULTS: dict[str, dict[str, Any]] = {
    "vit": {
        "patch": 4,
        "width": 64,
        "depth": 4,
        "heads": 4,
        "mlp_ratio": 4,
        "stem": "patch",
        "stem_channels": [32, 64],
        "stem_blocks_per_stage": 1,
        "head_init_scale": 0.0,
    },
    "cnn": {"channels": [32, 64], "blocks_per_stage": 2, "pool": "mean", "head_init_scale": 0.0},
    "mlp": {"hidden": [512, 256], "head_init_scale": 0.0},
    "linear": {"head_init_scale": 0.0},
}

# Each distillation method's own settings, under [student.<method>] (see
# `distill.teaching.make_objective`); the temperature is the student's.
_METHOD_DEFAULTS: dict[str, dict[str, Any]] = {
    "dkd": {"alpha": 1.0, "beta": 8.0, "warmup_steps": 0},
    "dist": {"beta": 1.0, "gamma": 1.0},
    "token": {"variant": "hard"},
    "hint": {"kind": "mse", "weight": 1.0, "student_layer": -1, "teacher_layer": -1},
}

_TRAIN_DEFAULTS: dict[str, Any] = {
    "model": "vit",
    "steps": 1000,
    "batch_size": 128,
    "learning_rate": 1e-3,
    "weight_decay": 0.05,
    "warmup_steps": 100,
    "grad_clip": 1.0,
    "label_smoothing": 0.0,
    "log_every": 50,
    "eval_every": 500,
    "checkpoint_every": 500,
    # ...but no sooner than this many seconds after the last one: a small model passes 500
    # steps in under a second, and each save costs Orbax ~45 ms of CPU beside the step.
    "checkpoint_min_seconds": 10.0,
    "steps_per_dispatch": 10,
    "eval_batch_size": 256,
    "init_check_tolerance": 0.05,
    "compute_dtype": "float32",
}

DEFAULTS: dict[str, Any] = {
    "seed": 0,
    "data": {
        "dataset": "fashion_mnist",
        "data_dir": "",
        "val_size": 5000,
        "split_seed": 0,
        "train_limit": 0,
        # Keep the labels of only this many training images (0: all); the rest are
        # unlabelled images that the teacher labels for its students.
        "labelled": 0,
    },
    "augment": {
        "crop": "resize",
        "crop_size": 24,
        "pad": 4,
        "flip": True,
    },
    # init_from: a timm / Hugging Face ViT folder to fine-tune instead of training from scratch.
    "teacher": {**_TRAIN_DEFAULTS, "model": "vit", "init_from": "",
                **copy.deepcopy(_MODEL_DEFAULTS)},
    "student": {
        **_TRAIN_DEFAULTS,
        "model": "cnn",
        "loss": "soft",
        "method": "kd",
        "teaching": "targets",
        "temperature": 1.0,
        "alpha": 1.0,
        "soft_loss": "soft_ce",
        "mixup": 0.0,
        "augment": False,
        **copy.deepcopy(_MODEL_DEFAULTS),
        **copy.deepcopy(_METHOD_DEFAULTS),
    },
    "export": {"temperature": 1.0, "batch_size": 256, "views": 0},
}

CROP_MODES = ("resize", "pad", "none")
COMPUTE_DTYPES = ("float32", "bfloat16")
STUDENT_LOSSES = ("soft", "hard")
TEACHING_MODES = ("targets", "online", "views")
SOFT_LOSSES = ("soft_ce", "kl")
METHODS = ("kd", *_METHOD_DEFAULTS)
# Methods that can learn only one way: hints match the teacher's inner layer, which exported
# targets do not hold, so the teacher must run in the student's step.
METHOD_TEACHING = {"hint": "online"}
TOKEN_VARIANTS = ("hard", "soft")
HINT_KINDS = ("mse", "cosine")


def _unknown_key(dotted: str, where: str, *, in_file: bool = False) -> UserError:
  """The error for an unknown `dotted` key: a guess at the key meant, and the keys of the table
  where it went wrong (`augment.crop.size` lists augment's keys: `crop` holds no keys).

  in_file: the key comes from a TOML file, where a top-level key written below a [table]
  header lands in that table (`seed` after [teacher] reads as `teacher.seed`).
  """
  parts = dotted.split(".")
  node, depth = DEFAULTS, 0
  while depth < len(parts) - 1 and isinstance(node.get(parts[depth]), dict):
    node, depth = node[parts[depth]], depth + 1
  prefix = "".join(f"{part}." for part in parts[:depth])
  choices = [f"{prefix}{key}" for key in node]
  name = parts[-1]
  top_level = name == "base" or (name in DEFAULTS and not isinstance(DEFAULTS[name], dict))
  if in_file and depth and top_level:
    guess = (f"'{name}' is a top-level key: move it above the first [table] (a key below a "
             f"[table] header belongs to that table); ")
  else:
    close = _close_keys(dotted)
    guess = f"did you mean {' or '.join(map(repr, close))}? " if close else ""
  return UserError(
      f"unknown recipe key '{dotted}' in {where}; {guess}valid keys here: {', '.join(choices)}"
  )


# Short names users bring from other tools, for the guess of an unknown key.
_KEY_ALIASES = {"lr": "learning_rate", "wd": "weight_decay", "bs": "batch_size",
                "batch": "batch_size", "warmup": "warmup_steps", "temp": "temperature",
                "t": "temperature"}


def _leaf_keys(node: dict[str, Any] = DEFAULTS, prefix: str = "") -> list[str]:
  """Every key a recipe can set, dotted ('seed', 'teacher.vit.depth'), in DEFAULTS' order."""
  return [leaf for key, value in node.items()
          for leaf in (_leaf_keys(value, f"{prefix}{key}.") if isinstance(value, dict)
                       else [f"{prefix}{key}"])]


def _close_keys(dotted: str) -> list[str]:
  """The keys an unknown `dotted` key most likely meant, searched among every valid key ([]
  when none is close), the first rule that finds one winning:

  - two parts joined by '_' ('augment.crop.size' -> 'augment.crop_size');
  - a common short name read as its key ('teacher.lr' -> 'teacher.learning_rate');
  - every part equal or close ('teacher.stepz', 'studnet.lr' -> 'student.learning_rate'),
    and the keys of that last name in the same table ('student.kd.alpha' ->
    'student.dkd.alpha' or 'student.alpha');
  - else the keys of that last name elsewhere, those sharing the most parts ('steps' ->
    'teacher.steps' or 'student.steps', 'teacher.dataset' -> 'data.dataset');
  - a setting the key went below ('export.views.count' -> 'export.views').
  """
  keys = _leaf_keys()
  parts = dotted.split(".")
  for i in range(len(parts) - 1):
    joined = ".".join([*parts[:i], f"{parts[i]}_{parts[i + 1]}", *parts[i + 2:]])
    if joined in keys:
      return [joined]
  parts[-1] = _KEY_ALIASES.get(parts[-1].lower(), parts[-1])
  if ".".join(parts) in keys:
    return [".".join(parts)]

  def likeness(key: str) -> float:  # 0 unless every part is close (difflib's own cutoff)
    ratios = [difflib.SequenceMatcher(None, given, part).ratio()
              for given, part in zip(parts, key.split("."), strict=True)]
    return sum(ratios) if min(ratios) >= 0.6 else 0.0

  alike = sorted((key for key in keys if key.count(".") == len(parts) - 1 and likeness(key)),
                 key=likeness, reverse=True)[:1]
  named = [key for key in keys if key.rpartition(".")[2] == parts[-1]]
  shared = {key: len(set(key.split(".")) & set(parts)) for key in named}
  most = [key for key in named if shared[key] == max(shared.values())]
  if alike:  # only in the table given: not teacher.learning_rate for 'studnet.lr'
    most = [key for key in named if key.partition(".")[0] == parts[0]]
  found = list(dict.fromkeys([*alike, *most]))[:3]
  if found:
    return found
  below = [".".join(parts[:i]) for i in range(1, len(parts))]
  return [key for key in below if key in keys][:1]


def _type_name(default: Any) -> str:
  """How a key's type is named in errors: 'int', 'bool', 'list of int'."""
  if isinstance(default, list):
    return f"list of {type(default[0]).__name__ if default else 'str'}"
  return type(default).__name__


# Keys whose int default is a count that may also be given as a fraction of the whole.
_COUNT_OR_FRACTION = {"data.val_size": "of the training images"}


def _count_or_fraction(value: Any, dotted: str, where: str, *, typed: bool) -> int | float:
  """A count (int, 0 or more) or a fraction in [0, 1) for a `_COUNT_OR_FRACTION` key."""
  if not typed and isinstance(value, str):
    with contextlib.suppress(ValueError):
      value = int(value)
    with contextlib.suppress(ValueError, TypeError):
      value = float(value) if isinstance(value, str) else value
  if isinstance(value, int) and not isinstance(value, bool):
    return value
  if isinstance(value, float) and 0.0 <= value < 1.0:
    return value
  raise UserError(f"recipe key '{dotted}' in {where} must be a count (like 5000) or a fraction "
                  f"{_COUNT_OR_FRACTION[dotted]} in [0, 1) (like 0.1), got {value!r}")


def _coerce(value: Any, default: Any, dotted: str, where: str, *, typed: bool = False) -> Any:
  """Returns `value` converted to the type of `default`, or raises UserError.

  typed: the value comes from a file with types of its own (TOML, JSON), so it
  must already be of the key's type (an int is fine for a float key); only
  --set's text is parsed, so `steps = "10"` or `flip = "yes"` in a recipe is
  refused like `steps = "ten"` instead of being read as a number.
  """
  if not typed and isinstance(value, str) and len(value) > 1 and value[0] == value[-1] in "'\"":
    # --set 'teacher.compute_dtype="bfloat16"' keeps its quotes (a shell or TOML habit): no
    # name, number or path holds them, and a string key would take them without a word.
    raise UserError(f"recipe key '{dotted}' in {where} got {value!r} (a quoted string: write it "
                    f"without quotes)")
  if dotted in _COUNT_OR_FRACTION:
    return _count_or_fraction(value, dotted, where, typed=typed)
  parse = not typed and isinstance(value, str)
  if isinstance(default, bool):
    if isinstance(value, bool):
      return value
    if parse and value.lower() in ("true", "false", "1", "0", "yes", "no"):
      return value.lower() in ("true", "1", "yes")
  elif isinstance(default, int):
    if isinstance(value, int) and not isinstance(value, bool):
      return value
    if parse:
      try:
        return int(value)
      except ValueError:
        pass
  elif isinstance(default, float):
    if isinstance(value, (int, float)) and not isinstance(value, bool):
      return float(value)
    if parse:
      try:
        return float(value)
      except ValueError:
        pass
  elif isinstance(default, str):
    if isinstance(value, str):
      return value
  elif isinstance(default, list):
    items = value
    if parse:
      try:
        items = json.loads(value)
      except json.JSONDecodeError:
        items = [v.strip() for v in value.strip("[]").split(",") if v.strip()]
    if isinstance(items, list):
      item_default = default[0] if default else ""
      try:
        return [_coerce(v, item_default, dotted, where, typed=typed) for v in items]
      except UserError:
        pass  # named below as the whole list
  quoted = ""
  if typed and isinstance(value, str) and not isinstance(default, str):
    try:
      _coerce(value, default, dotted, where)
      quoted = " (a quoted string: write it without quotes)"
    except UserError:
      pass
  like = json.dumps(default) if isinstance(default, bool) else repr(default)
  raise UserError(
      f"recipe key '{dotted}' in {where} must be {_type_name(default)} "
      f"(like {like}), got {value!r}{quoted}"
  )


def _merge(base: dict[str, Any], update: dict[str, Any], where: str, prefix: str = "", *,
           in_file: bool = False) -> None:
  """Lays `update` over `base` in place, refusing unknown keys and values of the wrong type.

  in_file: `update` is a TOML file's table (see `_unknown_key`).
  """
  for key, value in update.items():
    dotted = f"{prefix}{key}"
    if key not in base:
      raise _unknown_key(dotted, where, in_file=in_file)
    if isinstance(base[key], dict):
      if not isinstance(value, dict):
        raise UserError(f"recipe key '{dotted}' in {where} is a table; set its keys, "
                        f"e.g. {dotted}.{next(iter(base[key]))}")
      _merge(base[key], value, where, dotted + ".", in_file=in_file)
    else:
      # A file's values carry their own types: no text is parsed (see `_coerce`).
      base[key] = _coerce(value, base[key], dotted, where, typed=True)


def recipe_names() -> list[str]:
  """Names of the packaged recipes, the default (fashion_mnist) first."""
  names = sorted(p.stem for p in RECIPES_DIR.glob("*.toml")) if RECIPES_DIR.is_dir() else []
  return sorted(names, key=lambda name: name != "fashion_mnist")


def recipe_summary(path: Path) -> str:
  """The first sentence of a recipe file's opening comment (what the recipe is for)."""
  comment = []
  for line in _read_recipe_file(path).splitlines():
    if not line.startswith("#"):
      break
    comment.append(line.lstrip("#").strip())
  text = " ".join(comment)
  end = text.find(". ")
  return text if end < 0 else text[:end + 1]


def recipes_listing(columns: int = 100) -> str:
  """The packaged recipes, each name beside what it is for, wrapped to `columns`."""
  names = recipe_names()
  width = max(map(len, names), default=0) + 2
  return "\n".join(textwrap.fill(recipe_summary(RECIPES_DIR / f"{name}.toml"), columns,
                                 initial_indent=name.ljust(width), subsequent_indent=" " * width,
                                 break_on_hyphens=False)
                   for name in names)


def recipe_text(recipe: str) -> str:
  """A recipe file's text, found by name or path, to copy and edit."""
  return _read_recipe_file(resolve_recipe_path(recipe))


def _read_recipe_file(path: Path) -> str:
  """A recipe file's text, refusing one that is not UTF-8 (TOML's only encoding) in one line."""
  data = path.read_bytes()
  try:
    return data.decode()
  except UnicodeDecodeError as e:
    # A binary file, or text saved in another encoding (Latin-1, UTF-16): tomllib would raise
    # the decoder's error as a traceback.
    raise UserError(f"recipe {path} is not a text (UTF-8) TOML file: byte {data[e.start]:#04x} "
                    f"at offset {e.start} is not UTF-8; give a .toml recipe saved as UTF-8"
                    ) from None


def resolve_recipe_path(recipe: str | None) -> Path | None:
  """Finds a recipe by path, or by name in the packaged `recipes/` folder."""
  if not recipe:
    return None
  path = Path(recipe)
  if path.is_file():
    return path
  for candidate in (RECIPES_DIR / recipe, RECIPES_DIR / f"{recipe}.toml"):
    if candidate.is_file():
      return candidate
  known = recipe_names()
  if path.is_dir():
    files = sorted(child.name for child in path.glob("*.toml"))
    raise UserError(f"recipe '{recipe}' is a folder; give one of its recipe files"
                    + (f": {', '.join(str(path / name) for name in files[:5])}" if files
                       else " (it holds no .toml file)"))
  close = difflib.get_close_matches(recipe, known, n=1)
  guess = f"did you mean '{close[0]}'? " if close else ""
  raise UserError(f"recipe '{recipe}' not found ({guess}a file path, or one of: "
                  f"{', '.join(known) or 'none'})")


def parse_override(text: str) -> tuple[str, str]:
  """Splits `key=value`, refusing anything without an '='."""
  if "=" not in text:
    raise UserError(f"--set expects key=value, got '{text}'")
  key, value = text.split("=", 1)
  return key.strip(), value.strip()


def with_flags(overrides: Sequence[str], flags: Mapping[str, tuple[str, Any]]) -> list[str]:
  """`--set` overrides, then the ones a command's own flags give, refusing a disagreement.

  Args:
    overrides: the `--set key=value` strings, in the order given.
    flags: flag spelling -> (the recipe key it sets, its value or None when not
      given), e.g. {"--steps": ("student.steps", 50)}.

  Returns:
    The overrides to apply: `overrides`, then one `key=value` per flag given.

  A flag and a `--set` of the same key with different values (`--steps 50
  --set student.steps=80`) are refused: either one winning would train
  another run than the other asks for, without a word.
  """
  combined = list(overrides)
  set_values = dict(parse_override(text) for text in overrides)  # the last --set of a key counts
  for flag, (key, value) in flags.items():
    if value is None:
      continue
    if key in set_values:
      # Each value as a recipe would hold it (typed, paths made absolute), to compare.
      given = []
      for text, where in ((set_values[key], "--set"), (str(value), flag)):
        recipe = copy.deepcopy(DEFAULTS)
        set_key(recipe, key, text, where=where)
        absolute_paths(recipe)  # ./data and data are one folder
        given.append(functools.reduce(lambda node, part: node[part], key.split("."), recipe))
      if given[0] != given[1]:
        raise UserError(f"{flag} {value} and --set {key}={set_values[key]} disagree; "
                        f"give one of them")
    combined.append(f"{key}={value}")
  return combined


def load_recipe(recipe: str | None = None,
                overrides: list[str] | tuple[str, ...] = ()) -> dict[str, Any]:
  """Builds the resolved recipe: defaults, then the recipe file, then overrides.

  Args:
    recipe: a TOML path or the name of a packaged recipe; None for defaults.
    overrides: `dotted.key=value` strings, applied last.

  Returns:
    A nested dict with every key of `DEFAULTS`, validated.
  """
  return resolve_overrides(recipe_as_written(recipe), overrides)


def recipe_as_written(recipe: str | None) -> dict[str, Any]:
  """The defaults, then the recipe file and its bases, unvalidated: what the files say.

  Cheap enough for help texts (validating imports the model registry, and with it JAX).
  """
  resolved = copy.deepcopy(DEFAULTS)
  path = resolve_recipe_path(recipe)
  if path is not None:
    for table, where in _recipe_chain(path):
      _merge(resolved, _beside(table, Path(where).parent), where, in_file=True)
  return resolved


def resolve_overrides(recipe: dict[str, Any], overrides: Sequence[str]) -> dict[str, Any]:
  """Applies `key=value` overrides to a recipe in place, makes its paths absolute, validates it.

  A data set given without a data_dir (`--dataset digits` over a recipe that
  reads an npz file) drops the recipe's data_dir: a folder belongs to the data
  set it holds. Returns `recipe`.
  """
  if isinstance(overrides, str):  # one "key=value" would be read as its characters
    raise UserError(f"overrides must be a list of 'key=value' strings, got the string "
                    f"{overrides!r}: pass [{overrides!r}]")
  keys = set()
  for text in overrides:
    key, value = parse_override(text)
    before = recipe["data"]["dataset"]
    set_key(recipe, key, value, where="--set")
    keys.add(key)
    if key == "data.dataset" and recipe["data"]["dataset"] != before and (
        "data.data_dir" not in keys):
      recipe["data"]["data_dir"] = ""
  absolute_paths(recipe)
  validate(recipe)
  return recipe


# Recipe keys that name files or folders.
PATH_KEYS = (("data", "data_dir"), ("teacher", "init_from"))


def _beside(table: dict[str, Any], folder: Path) -> dict[str, Any]:
  """A recipe file's table with its relative paths taken from the file's own `folder`.

  As its `base` is: a recipe and its data can move together. A path found
  only from the directory the command runs in stays as it was written.
  """
  table = copy.deepcopy(table)
  for section, key in PATH_KEYS:
    value = table.get(section, {}).get(key) if isinstance(table.get(section), dict) else None
    if isinstance(value, str) and value and not Path(value).expanduser().is_absolute():
      candidate = folder / value
      if candidate.exists():
        table[section][key] = str(candidate)
  return table


def absolute_paths(recipe: dict[str, Any]) -> None:
  """Makes the recipe's paths absolute, in place, from the directory the command was typed in.

  A run records its recipe; a relative path in it would point elsewhere when
  a student, a report or an export reads the run from another directory.
  """
  for section, key in PATH_KEYS:
    value = recipe[section][key]
    if value:
      recipe[section][key] = str(Path(value).expanduser().resolve())


def _recipe_chain(path: Path) -> list[tuple[dict[str, Any], str]]:
  """A recipe file's tables, its `base` recipe's (recursively) first.

  `base = "fashion_mnist"` at the top of a recipe starts it from that recipe,
  so a variant states only what it changes. Relative paths are resolved from
  the recipe's own folder, then as packaged names.
  """
  chain: list[tuple[dict[str, Any], str]] = []
  seen: list[Path] = []
  while True:
    if path.resolve() in seen:
      cycle = " -> ".join(str(p) for p in [*seen, path.resolve()])
      raise UserError(f"recipe bases form a cycle: {cycle}")
    seen.append(path.resolve())
    try:
      table = tomllib.loads(_read_recipe_file(path))
    except tomllib.TOMLDecodeError as e:
      raise UserError(f"recipe {path} is not valid TOML: {e}") from None
    base = table.pop("base", None)
    chain.append((table, str(path)))
    if base is None:
      break
    if not isinstance(base, str) or not base:
      raise UserError(f"recipe {path}: base must be a recipe name or path, got {base!r}")
    path = _base_path(path, base)
  return chain[::-1]


def _base_path(recipe: Path, base: str) -> Path:
  """The file a recipe's `base` names: a file beside the recipe, else a packaged recipe.

  Never one in the directory the command runs in: a recipe then means the same
  run wherever it is typed, and a base left behind fails everywhere, not only
  in the folders that lack a file of its name.
  """
  beside = recipe.parent / base
  if beside.is_file():
    return beside
  name = base.removesuffix(".toml")
  if name in recipe_names():
    return RECIPES_DIR / f"{name}.toml"
  # The file meant, where one is plain: a path without .toml (only packaged names may omit
  # it), or a file found from the current directory (as bases once were).
  guess = ""
  if (recipe.parent / f"{base}.toml").is_file():
    guess = f"; did you mean '{base}.toml'?"
  elif Path(base).is_file():
    meant = Path(os.path.relpath(Path(base).resolve(), recipe.parent.resolve())).as_posix()
    guess = (f"; a base is read from the recipe's folder, not the current directory: "
             f"did you mean '{meant}'?")
  raise UserError(f"recipe {recipe}: its base '{base}' is neither a file beside it nor a "
                  f"packaged recipe ({', '.join(recipe_names())}){guess}")


def set_key(recipe: dict[str, Any], dotted: str, value: Any, where: str = "--set") -> None:
  """Sets one dotted key in place, with the same checks as a recipe file."""
  node = recipe
  default = DEFAULTS
  parts = dotted.split(".")
  for part in parts[:-1]:
    if part not in node or not isinstance(node[part], dict):
      raise _unknown_key(dotted, where)
    node, default = node[part], default[part]
  last = parts[-1]
  if last not in node:
    raise _unknown_key(dotted, where)
  if isinstance(node[last], dict):  # a table: its keys take values, not the table
    keys = ", ".join(f"{dotted}.{key}" for key in node[last])
    raise UserError(f"recipe key '{dotted}' in {where} is a table; set its keys: {keys}")
  node[last] = _coerce(value, default[last], dotted, where)


def _one_of(dotted: str, value: str, valid: Sequence[str]) -> None:
  if value not in valid:
    raise UserError(f"{dotted} must be one of {', '.join(valid)}, got '{value}'")


def _validate_names(recipe: dict[str, Any]) -> None:
  """Checks the keys whose value is one of a set of names (data set, model, method...).

  Each such key is valid or not on its own, whatever the rest of the recipe
  says, so `check_overrides` can run these checks before a recipe is read.
  """
  from distill.data import dataset_names  # noqa: PLC0415
  from distill.models import model_names  # noqa: PLC0415 (keeps --help fast)

  # 'stream': array shards read from disk (data.data_dir), see distill.data.stream.
  names = [*dataset_names(), "stream"]
  if recipe["data"]["dataset"] not in names:
    raise UserError(f"unknown dataset '{recipe['data']['dataset']}'; valid: {', '.join(names)}")
  _one_of("augment.crop", recipe["augment"]["crop"], CROP_MODES)
  for role in ("teacher", "student"):
    if recipe[role]["model"] not in model_names():
      raise UserError(f"unknown model '{recipe[role]['model']}' for {role}; "
                      f"valid: {', '.join(model_names())}")
    _one_of(f"{role}.compute_dtype", recipe[role]["compute_dtype"], COMPUTE_DTYPES)
  student = recipe["student"]
  for key, valid in (("loss", STUDENT_LOSSES), ("teaching", TEACHING_MODES),
                     ("soft_loss", SOFT_LOSSES), ("method", METHODS)):
    _one_of(f"student.{key}", student[key], valid)
  _one_of("student.token.variant", student["token"]["variant"], TOKEN_VARIANTS)
  _one_of("student.hint.kind", student["hint"]["kind"], HINT_KINDS)


def check_overrides(overrides: Sequence[str]) -> None:
  """Refuses `key=value` overrides that no recipe could accept, before any recipe is read.

  An unknown key, a value of the wrong type or a name that is not among the
  valid ones (`--model nope`) is an error whatever recipe the overrides go
  over, so a command says so before it looks for the files the recipe needs
  (a student's teacher run).
  """
  recipe = copy.deepcopy(DEFAULTS)
  for text in overrides:
    key, value = parse_override(text)
    set_key(recipe, key, value, where="--set")
  _validate_names(recipe)


def validate(recipe: dict[str, Any]) -> None:
  """Checks names (`_validate_names`), then value ranges and combinations that types cannot,
  then that every float setting is a finite number."""
  _validate_names(recipe)
  for role in ("teacher", "student"):
    section = recipe[role]
    for key in ("steps", "batch_size", "log_every", "eval_every", "checkpoint_every",
                "steps_per_dispatch", "eval_batch_size"):
      if section[key] <= 0:
        raise UserError(f"{role}.{key} must be positive, got {section[key]}")
    for key in ("learning_rate",):
      if not (section[key] > 0 and math.isfinite(section[key])):
        raise UserError(f"{role}.{key} must be a positive number, got {section[key]}")
    if not section["checkpoint_min_seconds"] >= 0:
      raise UserError(f"{role}.checkpoint_min_seconds must be 0 or more seconds, "
                      f"got {section['checkpoint_min_seconds']}")
    for key in ("warmup_steps", "weight_decay", "grad_clip"):
      if not section[key] >= 0:  # NaN too
        raise UserError(f"{role}.{key} must be 0 or more, got {section[key]}")
    if not 0.0 <= section["label_smoothing"] < 1.0:
      raise UserError(f"{role}.label_smoothing must be in [0, 1), got {section['label_smoothing']}")
    tolerance = section["init_check_tolerance"]
    if not (tolerance >= 0 and math.isfinite(tolerance)):
      raise UserError(f"{role}.init_check_tolerance must be 0 or more (a relative difference, "
                      f"0.05 = 5%), got {tolerance}")
    _validate_model_sizes(role, section)
  _validate_distillation(recipe["student"])
  temperature = recipe["export"]["temperature"]
  if not (temperature > 0 and math.isfinite(temperature)):
    raise UserError(f"export.temperature must be a positive number, got {temperature}")
  if recipe["export"]["views"] < 0:
    raise UserError("export.views must be 0 (no augmented views) or more, "
                    f"got {recipe['export']['views']}")
  for key in ("val_size", "train_limit", "labelled"):
    if recipe["data"][key] < 0:
      raise UserError(f"data.{key} must be 0 or more, got {recipe['data'][key]}")
  # A crop of no pixels, a negative padding or a batch of no images fails deep inside JAX.
  for key, least in (("crop_size", 1), ("pad", 0)):
    if recipe["augment"][key] < least:
      raise UserError(f"augment.{key} must be {least} or more, got {recipe['augment'][key]}")
  if recipe["export"]["batch_size"] < 1:
    raise UserError(f"export.batch_size must be positive, got {recipe['export']['batch_size']}")
  # Seeds feed numpy's generators, which take none below 0.
  for key, value in (("seed", recipe["seed"]), ("data.split_seed", recipe["data"]["split_seed"])):
    if value < 0:
      raise UserError(f"{key} must be 0 or more, got {value}")
  # Last, so a range above names its own: a NaN or infinite setting passes a bound like
  # `>= 0` (weight_decay = inf) and trains to 'training diverged ... lower learning rate'.
  for key in _leaf_keys():
    value = functools.reduce(lambda node, part: node[part], key.split("."), recipe)
    if isinstance(value, float) and not math.isfinite(value):
      raise UserError(f"{key} must be a finite number, got {value}")


# The size keys of each model table, ints or lists of ints (one a layer or stage), that must be
# 1 or more: a layer of no units fails deep inside Flax (a division by zero in its initialiser),
# and a ViT of no blocks has no tokens to classify. An empty list is checked apart: an MLP with
# no hidden layer is a linear model, a CNN with no stage is nothing.
_MODEL_SIZE_KEYS = {
    "vit": ("patch", "width", "depth", "heads", "mlp_ratio", "stem_channels",
            "stem_blocks_per_stage"),
    "cnn": ("channels", "blocks_per_stage"),
    "mlp": ("hidden",),
}


def _validate_model_sizes(role: str, section: dict[str, Any]) -> None:
  """Checks the sizes of every model table of a role, not only the chosen model's.

  A zero is a mistake whichever model trains, and refusing it before the run
  starts names the key, where the model would fail with a bare ZeroDivisionError.
  Combinations that need the image size (the patch must divide it) are left
  to the model, which refuses them in one line.
  """
  for model, keys in _MODEL_SIZE_KEYS.items():
    for key in keys:
      value = section[model][key]
      if isinstance(value, list) and any(size < 1 for size in value):
        raise UserError(f"{role}.{model}.{key} must hold sizes of 1 or more, got {value}")
      if not isinstance(value, list) and value < 1:
        raise UserError(f"{role}.{model}.{key} must be 1 or more, got {value}")
  if not section["cnn"]["channels"]:
    raise UserError(f"{role}.cnn.channels must list at least one stage's channels, got []")
  vit = section["vit"]
  if vit["stem"] == "cnn" and not vit["stem_channels"]:
    raise UserError(f"{role}.vit.stem_channels must list at least one stage's channels for "
                    f"stem = 'cnn', got []")
  if vit["stem"] == "conv" and vit["width"] < 2:  # the conv stem has width / 2 channels
    raise UserError(f"{role}.vit.width must be 2 or more for stem = 'conv', got {vit['width']}")


def _validate_distillation(student: dict[str, Any]) -> None:
  """Checks the student's distillation settings, naming the valid values."""
  if not (student["temperature"] > 0 and math.isfinite(student["temperature"])):
    raise UserError(f"student.temperature must be a positive number, got {student['temperature']}")
  if not 0.0 <= student["alpha"] <= 1.0:
    raise UserError(f"student.alpha (the weight of the teacher's term) must be in [0, 1], "
                    f"got {student['alpha']}")
  if not (student["mixup"] >= 0 and math.isfinite(student["mixup"])):
    raise UserError(f"student.mixup (the Beta distribution's parameter; 0 = off) must be "
                    f"0 or positive, got {student['mixup']}")
  if student["loss"] == "hard" and student["teaching"] != "targets":
    raise UserError(f"student.teaching={student['teaching']} needs the teacher's soft labels; "
                    "it cannot be combined with loss=hard")
  _validate_method(student)
  if student["mixup"] > 0 and (student["teaching"] != "online" or student["alpha"] != 1.0):
    raise UserError("student.mixup needs teaching=online and alpha=1: only a teacher run on "
                    "the mixed images can label them")


def _validate_method(student: dict[str, Any]) -> None:
  """Checks the distillation method and its own table; combinations that cannot work."""
  method = student["method"]
  if student["loss"] == "hard" or method == "kd":
    return
  if method == "token" and student["model"] != "vit":
    raise UserError(f"student.method=token needs a ViT student (a distillation token sits "
                    f"beside its class token); the student is '{student['model']}'")
  if method == "hint":
    if student["teaching"] != METHOD_TEACHING["hint"]:
      raise UserError(f"student.method=hint needs teaching=online and a teacher trained by "
                      f"distill: the student matches the teacher's inner layer, which exported "
                      f"targets and imported teachers do not hold (got "
                      f"teaching={student['teaching']})")
    if student["model"] == "linear":
      raise UserError("student.method=hint needs a student with an inner layer (vit, cnn or "
                      "mlp); 'linear' has none")
  for key, value in student.get(method, {}).items():
    if isinstance(value, float) and not (value >= 0 and math.isfinite(value)):
      raise UserError(f"student.{method}.{key} must be 0 or positive, got {value}")
  if method == "dkd" and student["dkd"]["warmup_steps"] < 0:
    raise UserError(f"student.dkd.warmup_steps must be 0 or more, "
                    f"got {student['dkd']['warmup_steps']}")


@dataclasses.dataclass(frozen=True)
class TrainSettings:
  """One role's training settings (the recipe's [teacher] or [student] table), typed and frozen.

  Built once from a resolved recipe with `TrainSettings.of`; the step, the
  loop and the benchmark read attributes, not string keys. `model_options`
  is the chosen model's own table (e.g. [student.cnn]).
  """

  model: str
  model_options: Mapping[str, Any]
  steps: int
  batch_size: int
  learning_rate: float
  weight_decay: float
  warmup_steps: int
  grad_clip: float
  label_smoothing: float
  log_every: int
  eval_every: int
  checkpoint_every: int
  checkpoint_min_seconds: float
  steps_per_dispatch: int
  eval_batch_size: int
  init_check_tolerance: float
  compute_dtype: str

  @classmethod
  def of(cls, recipe: dict[str, Any], role: str) -> TrainSettings:
    """The settings of `role` ('teacher' or 'student') in a resolved recipe."""
    section = recipe[role]
    plain = {f.name: section[f.name] for f in dataclasses.fields(cls) if f.name != "model_options"}
    return cls(**plain, model_options=types.MappingProxyType(dict(section[section["model"]])))


@dataclasses.dataclass(frozen=True)
class DistillSettings:
  """How a student learns from its teacher (the distillation keys of [student]), typed."""

  loss: str
  method: str
  teaching: str
  temperature: float
  alpha: float
  soft_loss: str
  mixup: float
  augment: bool
  label_smoothing: float
  method_options: Mapping[str, Any]

  @classmethod
  def of(cls, recipe: dict[str, Any]) -> DistillSettings:
    """The student's distillation settings in a resolved recipe."""
    section = recipe["student"]
    return cls(**{f.name: section[f.name] for f in dataclasses.fields(cls)
                  if f.name != "method_options"},
               method_options=types.MappingProxyType(dict(section.get(section["method"], {}))))

  def objective_settings(self) -> dict[str, Any]:
    """The keyword settings `teaching.make_objective` takes for this student's method."""
    own = {f"{self.method}_{key}": value for key, value in self.method_options.items()}
    return {"temperature": self.temperature, "alpha": self.alpha, "soft_loss": self.soft_loss,
            "label_smoothing": self.label_smoothing, **own}

  @property
  def objective_name(self) -> str:
    """The objective this student minimises: 'hard', or its method ('kd', 'dkd', ...)."""
    return "hard" if self.loss == "hard" else self.method


def recipe_hash(recipe: dict[str, Any], role: str) -> str:
  """A stable hash of what a `role` ('teacher' or 'student') run reads from a resolved recipe.

  Resuming needs the same hash, and a sweep keeps a finished run only when it
  matches. The other role's section and the settings of models the run does
  not train are left out, so editing `student.vit.*` leaves a CNN student's
  hash (and so its checkpoints and sweep runs) alone.
  """
  canonical = json.dumps(_read_by(recipe, role), sort_keys=True, separators=(",", ":"))
  return hashlib.sha256(canonical.encode()).hexdigest()[:16]


def changed_method_options(method: str, options: Mapping[str, Any]) -> dict[str, Any]:
  """Those of a method's own settings (`student.<method>.*`) that are not their defaults:
  what tells a run of the method apart ({} for kd, which has no table)."""
  defaults = _METHOD_DEFAULTS.get(method, {})
  return {key: value for key, value in options.items() if value != defaults.get(key)}


def setting_text(value: Any) -> str:
  """A recipe value as a note or a help text writes it: 0.5, 8, true, [32,64], resize."""
  if isinstance(value, float):
    return f"{value:g}"
  if isinstance(value, (bool, list, dict)) or value is None:
    return json.dumps(value, separators=(",", ":"))
  return str(value)


# The data settings that choose a training split's rows from its data.
SPLIT_KEYS = ("val_size", "split_seed", "train_limit", "labelled")


def data_differences(theirs: Mapping[str, Any], ours: Mapping[str, Any],
                     keys: Sequence[str]) -> list[str]:
  """'data.KEY THEIRS vs OURS' for each of `keys` whose values differ in two recipes' data
  tables (or a targets file's record of them), for a refusal that names them."""
  return [f"data.{key} {theirs.get(key)!r} vs {ours.get(key)!r}" for key in keys
          if theirs.get(key) != ours.get(key)]


def differing_keys(old: dict[str, Any], new: dict[str, Any], role: str) -> dict[str, tuple]:
  """{dotted key: (old value, new value)} of what a `role` run reads that differs between two
  recipes, in key order: the keys `recipe_hash` covers, so two recipes of one hash have none."""
  def flat(node: Any, prefix: str = "") -> dict[str, Any]:
    if not isinstance(node, dict):
      return {prefix: node}
    return {key: value for name, child in node.items()
            for key, value in flat(child, f"{prefix}.{name}" if prefix else name).items()}

  before, after = flat(_read_by(old, role)), flat(_read_by(new, role))
  return {key: (before.get(key), after.get(key)) for key in sorted(before.keys() | after.keys())
          if before.get(key) != after.get(key)}


def recipe_differences(old: dict[str, Any], new: dict[str, Any], role: str) -> list[str]:
  """`differing_keys` as 'key: old -> new' lines, for a message."""
  return [f"{key}: {json.dumps(before)} -> {json.dumps(after)}"
          for key, (before, after) in differing_keys(old, new, role).items()]


def run_recipe_changes(run_dir: Path, recipe: dict[str, Any], role: str) -> str | None:
  """What `recipe` changes of the one a run folder's recipe.json holds, for a refusal: the first
  three `recipe_differences` lines ('student.steps: 10 -> 5; ...; and 2 more'). None when none
  differ, or when recipe.json is missing or of another layout (it names no keys)."""
  from distill import rundir  # noqa: PLC0415

  saved = rundir.saved_recipe(run_dir)
  try:
    changed = recipe_differences(saved, recipe, role) if saved else []
  except (KeyError, TypeError):  # a recipe.json of another layout names no keys
    changed = []
  if not changed:
    return None
  return first_few(changed, 3, sep="; ")


def _read_by(recipe: dict[str, Any], role: str) -> dict[str, Any]:
  """The part of a resolved recipe that a `role` run reads (`recipe_hash`'s input)."""
  section = recipe[role]
  read = {key: value for key, value in recipe.items() if key not in ("teacher", "student")}
  # When periodic checkpoints are saved changes no number the run computes.
  read[role] = {key: value for key, value in section.items()
                if (key not in _MODEL_DEFAULTS or key == section["model"])
                and key != "checkpoint_min_seconds"}
  if role == "teacher" and not section["init_from"]:
    read[role].pop("init_from")  # as before the key existed
  if role == "student":
    # Only the chosen method's table counts, and plain KD hashes as it did before
    # methods had names, so earlier runs still resume.
    method = section["method"]
    read[role] = {key: value for key, value in read[role].items()
                  if key not in _METHOD_DEFAULTS or key == method}
    if method == "kd":
      read[role].pop("method")
    if section["loss"] == "hard":
      # A student on hard labels reads no teaching setting: one a sweep's shared --set gave
      # it hashes as the default, as every hard-label run before it did, so its twin with the
      # default resumes and is kept rather than called another recipe.
      for key in _UNREAD_ON_HARD_LABELS:
        if key in read[role]:
          read[role][key] = DEFAULTS["student"][key]
  return read


# The student settings a run on hard labels does not read (`recipe_hash` counts their defaults).
_UNREAD_ON_HARD_LABELS = ("teaching", "temperature", "alpha", "soft_loss", "mixup")


def merge_resolved(recipe: dict[str, Any], other: dict[str, Any], where: str) -> None:
  """Merges another resolved recipe (e.g. a teacher run's recipe.json) into `recipe`."""
  _merge(recipe, other, where)


def checked_recipe(recipe: dict[str, Any], where: str = "the recipe given") -> dict[str, Any]:
  """A resolved recipe built or edited in Python, checked as a recipe file is.

  Unknown keys, values of the wrong type and out-of-range values are refused
  with the same one-line errors (`steps = -5` would otherwise train nothing
  and write a finished run). Returns a copy laid over the defaults.
  """
  resolved = copy.deepcopy(DEFAULTS)
  _merge(resolved, recipe, where)
  validate(resolved)
  return resolved

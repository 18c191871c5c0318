import functools
import re

import pytest
from conftest import run_cli

from distill import config
from distill.errors import UserError


@pytest.mark.parametrize("name", config.recipe_names())
def test_packaged_recipes_load(name):
  recipe = config.load_recipe(name)
  assert recipe["teacher"]["model"] == "vit"
  assert recipe["teacher"]["steps"] > 0


def test_defaults_then_file_then_overrides(tmp_path):
  path = tmp_path / "r.toml"
  path.write_text("[teacher]\nsteps = 7\n[teacher.vit]\ndepth = 3\n")
  recipe = config.load_recipe(str(path), ["teacher.steps=9", "augment.flip=false",
                                          "student.cnn.channels=[4, 8]"])
  assert recipe["teacher"]["steps"] == 9
  assert recipe["teacher"]["vit"]["depth"] == 3
  assert recipe["augment"]["flip"] is False
  assert recipe["student"]["cnn"]["channels"] == [4, 8]
  assert recipe["teacher"]["learning_rate"] == config.DEFAULTS["teacher"]["learning_rate"]


@pytest.mark.parametrize("override, words", [
    ("teacher.stepz=3", ["unknown recipe key 'teacher.stepz'", "teacher.steps"]),
    ("nosuch=1", ["unknown recipe key 'nosuch'", "seed", "teacher"]),
    ("teacher.vit.depht=2", ["teacher.vit.depth"]),
    # The guess: a sibling by name or a common short name, or the key under a misspelt table.
    ("teacher.stepz=3", ["; did you mean 'teacher.steps'? valid keys here"]),
    ("teacher.lr=0.1", ["; did you mean 'teacher.learning_rate'? valid keys here"]),
    ("student.temp=2", ["; did you mean 'student.temperature'? valid keys here"]),
    ("teachr.vit.depth=2", ["; did you mean 'teacher.vit.depth'? valid keys here"]),
    ("teacher.zzz=2", ["unknown recipe key 'teacher.zzz' in --set; valid keys here"]),
    # Guessed among every valid key, and listed at the table where the key went wrong.
    ("augment.crop.size=3", ["did you mean 'augment.crop_size'? valid keys here: augment.crop, "
                             "augment.crop_size, augment.pad, augment.flip"]),
    ("export.views.count=2", ["did you mean 'export.views'? valid keys here: export.temperature"]),
    ("student.kd.alpha=0.5", ["did you mean 'student.dkd.alpha' or 'student.alpha'? valid keys "
                              "here: student.model"]),
    ("student.method.dkd.beta=2", ["did you mean 'student.dkd.beta'? valid keys here: "
                                   "student.model"]),
    ("steps=5", ["did you mean 'teacher.steps' or 'student.steps'? valid keys here: seed, data"]),
    ("teacher.dataset=digits", ["did you mean 'data.dataset'? valid keys here: teacher.model"]),
    ("studnet.lr=0.1", ["did you mean 'student.learning_rate'? valid keys here: seed, data"]),
    ("teacher.steps=many", ["must be int", "'many'"]),
    ("teacher.steps=0", ["teacher.steps must be positive"]),
    ("teacher.batch_size=-4", ["teacher.batch_size must be positive"]),
    ("student.checkpoint_min_seconds=-1", ["student.checkpoint_min_seconds must be 0 or more"]),
    ("data.dataset=imagenet", ["unknown dataset 'imagenet'", "fashion_mnist"]),
    ("teacher.model=resnet", ["unknown model 'resnet'", "cnn", "vit"]),
    ("augment.crop=zoom", ["augment.crop must be one of"]),
    ("teacher.learning_rate=nan", ["learning_rate must be a positive number"]),
    ("no_equals_sign", ["key=value"]),
    ("seed=-1", ["seed must be 0 or more, got -1"]),
    ("data.split_seed=-3", ["data.split_seed must be 0 or more, got -3"]),
    ("teacher.vit=3", ["'teacher.vit' in --set is a table; set its keys: teacher.vit.patch, "
                       "teacher.vit.width"]),
])
def test_bad_overrides_name_the_problem(override, words):
  with pytest.raises(UserError) as error:
    config.load_recipe("digits", [override])
  for word in words:
    assert word in str(error.value)


def test_one_override_given_as_a_string_is_named():
  with pytest.raises(UserError, match=r"overrides must be a list of 'key=value' strings, got the "
                                      r"string 'teacher.steps=5': pass \['teacher.steps=5'\]"):
    config.load_recipe("digits", "teacher.steps=5")


def test_a_flag_and_a_set_of_one_key_must_agree():
  flags = {"--steps": ("student.steps", 50), "--seed": ("seed", None)}
  assert config.with_flags(["teacher.steps=3"], flags) == ["teacher.steps=3", "student.steps=50"]
  # The same value spelled two ways, and the same folder, are no disagreement.
  assert config.with_flags(["student.steps=50"], flags)[-1] == "student.steps=50"
  assert config.with_flags(["student.temperature=4"], {
      "--temperature": ("student.temperature", 4.0)}) == ["student.temperature=4",
                                                           "student.temperature=4.0"]
  assert config.with_flags(["data.data_dir=./data/x"], {"--data-dir": (
      "data.data_dir", "data/x")}) == ["data.data_dir=./data/x", "data.data_dir=data/x"]
  with pytest.raises(UserError, match=r"^--steps 50 and --set student.steps=80 disagree; "
                                      r"give one of them$"):
    config.with_flags(["student.steps=80"], flags)
  # Of several --set of one key the last counts, as when they are applied.
  with pytest.raises(UserError, match="--set student.steps=80 disagree"):
    config.with_flags(["student.steps=50", "student.steps=80"], flags)
  with pytest.raises(UserError, match="unknown recipe key 'student.stepz'"):
    config.with_flags(["student.stepz=80"], {"--steps": ("student.stepz", 50)})


@pytest.mark.parametrize("override, words", [
    ("student.model=nope", ["unknown model 'nope' for student", "cnn"]),
    ("student.method=fitnet", ["student.method must be one of kd, dkd"]),
    ("student.hint.kind=l1", ["student.hint.kind must be one of mse, cosine, got 'l1'"]),
    ("student.token.variant=x", ["student.token.variant must be one of hard, soft"]),
    ("teacher.compute_dtype=float16", ["teacher.compute_dtype must be one of"]),
    ("student.stepz=3", ["unknown recipe key 'student.stepz'"]),
    ("student.steps=many", ["must be int"]),
    # A shell keeps the quotes of --set 'key="value"': named as a recipe file's quoted number is.
    ('teacher.compute_dtype="bfloat16"', ["recipe key 'teacher.compute_dtype' in --set got "
                                          "'\"bfloat16\"' (a quoted string: write it without "
                                          "quotes)"]),
    ("student.steps='10'", ["'student.steps' in --set got \"'10'\" (a quoted string: write it "
                            "without quotes)"]),
    ('data.data_dir="data"', ["(a quoted string: write it without quotes)"]),
])
def test_overrides_no_recipe_could_take_are_refused_before_one_is_read(override, words):
  with pytest.raises(UserError) as error:
    config.check_overrides([override])
  for word in words:
    assert word in str(error.value)
  with pytest.raises(UserError) as loaded:  # the same words when a recipe is loaded
    config.load_recipe("digits", [override])
  assert str(loaded.value) == str(error.value)


def test_overrides_valid_only_beside_others_wait_for_the_recipe():
  # mixup needs online teaching, which the teacher's recipe (not the defaults) may choose.
  config.check_overrides(["student.mixup=0.4", "student.steps=0"])


@pytest.mark.parametrize("override, message", [
    ("teacher.weight_decay=-0.5", "teacher.weight_decay must be 0 or more, got -0.5"),
    ("student.warmup_steps=-1", "student.warmup_steps must be 0 or more, got -1"),
    ("teacher.grad_clip=nan", "teacher.grad_clip must be 0 or more, got nan"),
    ("data.val_size=-3", "data.val_size must be 0 or more, got -3"),
    ("data.train_limit=-1", "data.train_limit must be 0 or more, got -1"),
    ("data.labelled=-2", "data.labelled must be 0 or more, got -2"),
    ("augment.crop_size=0", "augment.crop_size must be 1 or more, got 0"),
    ("augment.pad=-1", "augment.pad must be 0 or more, got -1"),
    ("export.batch_size=0", "export.batch_size must be positive, got 0"),
    ("teacher.init_check_tolerance=-1", "teacher.init_check_tolerance must be 0 or more (a "
                                        "relative difference, 0.05 = 5%), got -1.0"),
    ("student.init_check_tolerance=nan", "student.init_check_tolerance must be 0 or more (a "
                                         "relative difference, 0.05 = 5%), got nan"),
    ("student.linear.head_init_scale=nan", "student.linear.head_init_scale must be a finite "
                                           "number, got nan"),
])
def test_a_value_out_of_range_is_named_alone_with_its_value(override, message):
  # One key and its value, not a list of the keys that could be wrong.
  with pytest.raises(UserError, match=f"^{re.escape(message)}$"):
    config.load_recipe("digits", [override])



def _float_keys():
  """Every float key of the recipe, dotted, so a new one is covered too."""
  def walk(node, prefix):
    for key, value in node.items():
      if isinstance(value, dict):
        yield from walk(value, f"{prefix}{key}.")
      elif isinstance(value, float):
        yield f"{prefix}{key}"
  return list(walk(config.DEFAULTS, ""))


@pytest.mark.parametrize("key", _float_keys())
def test_every_float_setting_must_be_finite(key):
  # A key with a range of its own may name the range instead.
  for value in ("inf", "-inf", "nan"):
    with pytest.raises(UserError, match=f"^{re.escape(key)}( \\(.*\\))? must be "):
      config.load_recipe("digits", [f"{key}={value}"])


def test_an_infinite_weight_decay_is_refused_before_training():
  # It passed its `>= 0` check and trained to 'training diverged ... Try a lower learning rate'.
  with pytest.raises(UserError, match=r"^teacher.weight_decay must be a finite number, got inf$"):
    config.load_recipe("digits", ["teacher.weight_decay=inf"])

def _model_size_keys():
  """Every int or list-of-int key of every model table of both roles, as a dotted key."""
  return [f"{role}.{model}.{key}" for role in ("teacher", "student")
          for model, table in config.DEFAULTS[role].items()
          if model in ("vit", "cnn", "mlp", "linear") for key, value in table.items()
          if isinstance(value, list) or (isinstance(value, int) and not isinstance(value, bool))]


@pytest.mark.parametrize("key", _model_size_keys())
def test_a_model_size_of_zero_is_named_with_its_value(key):
  # Such a zero failed inside Flax (float division by zero, integer modulo by zero) or on an
  # empty list of blocks; every size key of every table, so a new one is covered too.
  is_list = isinstance(functools.reduce(dict.get, key.split("."), config.DEFAULTS), list)
  value, shown = ("[0, 8]", "[0, 8]") if is_list else ("0", "0")
  words = f"must hold sizes of 1 or more, got {shown}" if is_list else "must be 1 or more, got 0"
  with pytest.raises(UserError, match=f"^{re.escape(key)} {re.escape(words)}$"):
    config.load_recipe("digits", [f"{key}={value}"])


@pytest.mark.parametrize("overrides, message", [
    (["student.cnn.channels=[]"], "student.cnn.channels must list at least one stage's channels, "
                                  "got []"),
    (["teacher.vit.stem=cnn", "teacher.vit.stem_channels=[]"],
     "teacher.vit.stem_channels must list at least one stage's channels for stem = 'cnn', got []"),
    # The conv stem has width / 2 channels: none at width 1.
    (["teacher.vit.width=1", "teacher.vit.heads=1"],
     "teacher.vit.width must be 2 or more for stem = 'conv', got 1"),
])
def test_model_sizes_that_build_nothing_are_named(overrides, message):
  with pytest.raises(UserError, match=f"^{re.escape(message)}$"):
    config.load_recipe("digits", overrides)


def test_model_sizes_that_mean_something_at_their_least_are_kept():
  # No hidden layer: the MLP is a linear model. No CNN stem's channels when the stem is not one.
  recipe = config.load_recipe("digits", ["student.mlp.hidden=[]", "teacher.vit.stem=patch",
                                         "teacher.vit.stem_channels=[]", "teacher.vit.width=1",
                                         "teacher.vit.heads=1", "teacher.vit.patch=1",
                                         "teacher.vit.depth=1", "teacher.vit.mlp_ratio=1"])
  assert recipe["student"]["mlp"]["hidden"] == []
  assert recipe["teacher"]["vit"]["width"] == 1


def test_a_model_size_of_zero_stops_the_cli_in_one_line():
  result = run_cli("teacher", "--recipe", "digits", "--steps", "30", "--set", "teacher.vit.width=0")
  assert result.exit_code == 2 and "Traceback" not in result.output
  assert result.stderr.strip().splitlines() == [
      "error: teacher.vit.width must be 1 or more, got 0"]


def test_a_negative_dkd_warmup_names_its_value():
  with pytest.raises(UserError, match=r"^student.dkd.warmup_steps must be 0 or more, got -4$"):
    config.load_recipe("digits", ["student.method=dkd", "student.dkd.warmup_steps=-4"])


def test_val_size_is_a_count_or_a_fraction_in_a_file_and_in_set(tmp_path):
  # As the README says, and as the data loaders take it.
  path = tmp_path / "frac.toml"
  path.write_text('base = "digits"\n[data]\nval_size = 0.2\n')
  assert config.load_recipe(str(path))["data"]["val_size"] == 0.2
  assert config.load_recipe("digits", ["data.val_size=0.1"])["data"]["val_size"] == 0.1
  assert config.load_recipe("digits", ["data.val_size=143"])["data"]["val_size"] == 143
  for bad in ("1.5", "-0.2", "ten"):
    with pytest.raises(UserError, match=r"data.val_size' in --set must be a count \(like 5000\) "
                                        r"or a fraction of the training images in \[0, 1\)"):
      config.load_recipe("digits", [f"data.val_size={bad}"])


def test_a_recipe_edited_in_python_is_checked_before_a_run_starts(tmp_path):
  from distill import workflow  # noqa: PLC0415

  for key, value, words in (("steps", -5, "teacher.steps must be positive, got -5"),
                            ("steps", "30", "'teacher.steps' in the recipe given must be int"),
                            ("stpes", 30, "unknown recipe key 'teacher.stpes'")):
    recipe = config.load_recipe("digits")
    recipe["teacher"][key] = value
    with pytest.raises(UserError, match=words):
      workflow.train_teacher(recipe, tmp_path / "run", quiet=True)
    recipe = config.load_recipe("digits")
    recipe["student"][key] = value
    with pytest.raises(UserError, match=words.replace("teacher", "student")):
      workflow.train_student(recipe, tmp_path / "teacher", tmp_path / "student", quiet=True)
  assert not list(tmp_path.iterdir())  # nothing written: no run to --restart later


def test_unknown_key_in_file(tmp_path):
  path = tmp_path / "r.toml"
  path.write_text("[teacher]\nlearning_rat = 1.0\n")
  with pytest.raises(UserError, match="teacher.learning_rate"):
    config.load_recipe(str(path))


def test_a_top_level_key_below_a_table_header_is_named_to_move(tmp_path):
  # TOML puts a key written after [teacher] into that table: `seed` reads as `teacher.seed`.
  path = tmp_path / "r.toml"
  for text, key in (("[teacher]\nsteps = 3\nseed = 4\n", "seed"),
                    ('[teacher.vit]\ndepth = 3\nbase = "digits"\n', "base")):
    path.write_text(text)
    with pytest.raises(UserError, match=re.escape(
        f"'{key}' is a top-level key: move it above the first [table] (a key below a [table] "
        f"header belongs to that table); valid keys here: ")):
      config.load_recipe(str(path))
  # Given to --set, the key is only guessed: there are no tables there.
  with pytest.raises(UserError, match=r"'teacher.seed' in --set; did you mean 'seed'\?"):
    config.load_recipe("digits", ["teacher.seed=4"])


def test_bad_toml_and_missing_recipe(tmp_path):
  path = tmp_path / "r.toml"
  path.write_text("[teacher\n")
  with pytest.raises(UserError, match="not valid TOML"):
    config.load_recipe(str(path))
  with pytest.raises(UserError, match="not found.*digits"):
    config.load_recipe("no_such_recipe")
  with pytest.raises(UserError, match=r"recipe 'digit' not found \(did you mean 'digits'\?"):
    config.load_recipe("digit")
  (tmp_path / "mine").mkdir()
  (tmp_path / "mine" / "a.toml").write_text('base = "digits"\n')
  with pytest.raises(UserError, match=f"recipe '{tmp_path / 'mine'}' is a folder; give one of its "
                                      f"recipe files: {tmp_path / 'mine' / 'a.toml'}"):
    config.load_recipe(str(tmp_path / "mine"))


def test_a_recipe_that_is_not_utf8_text_is_named_in_one_line(tmp_path):
  binary = tmp_path / "binary.toml"
  binary.write_bytes(b"\xff\xfe garbage")
  message = (f"recipe {binary} is not a text (UTF-8) TOML file: byte 0xff at offset 0 is not "
             f"UTF-8; give a .toml recipe saved as UTF-8")
  with pytest.raises(UserError, match=f"^{re.escape(message)}$"):
    config.load_recipe(str(binary))
  # As another recipe's base, and in Latin-1 rather than binary.
  (tmp_path / "child.toml").write_text('base = "binary.toml"\n')
  with pytest.raises(UserError, match=f"^{re.escape(message)}$"):
    config.load_recipe(str(tmp_path / "child.toml"))
  (tmp_path / "latin.toml").write_bytes("# café\nseed = 1\n".encode("latin-1"))
  with pytest.raises(UserError, match="latin.toml is not a text .* byte 0xe9 at offset 5"):
    config.load_recipe(str(tmp_path / "latin.toml"))
  for args in (("teacher", "--recipe", binary), ("recipes", binary)):
    result = run_cli(*args)
    assert result.exit_code == 2 and "Traceback" not in result.output
    assert result.stderr.strip().splitlines() == [f"error: {message}"]


def test_recipe_hash_tracks_changes():
  a = config.load_recipe("digits")
  b = config.load_recipe("digits", ["seed=1"])
  assert (config.recipe_hash(a, "teacher")
          == config.recipe_hash(config.load_recipe("digits"), "teacher"))
  assert config.recipe_hash(a, "teacher") != config.recipe_hash(b, "teacher")


def test_base_recipe_comes_first_and_the_variant_wins(tmp_path):
  (tmp_path / "parent.toml").write_text("seed = 4\n[teacher]\nsteps = 7\nbatch_size = 16\n")
  (tmp_path / "child.toml").write_text('base = "parent.toml"\n[teacher]\nsteps = 9\n')
  (tmp_path / "grandchild.toml").write_text('base = "child.toml"\n[student]\nmodel = "mlp"\n')
  recipe = config.load_recipe(str(tmp_path / "grandchild.toml"), ["teacher.batch_size=32"])
  assert (recipe["seed"], recipe["teacher"]["steps"]) == (4, 9)
  assert recipe["teacher"]["batch_size"] == 32 and recipe["student"]["model"] == "mlp"
  # A packaged recipe's name works as a base too.
  (tmp_path / "named.toml").write_text('base = "digits"\n[teacher]\nsteps = 3\n')
  assert config.load_recipe(str(tmp_path / "named.toml")) == config.load_recipe(
      "digits", ["teacher.steps=3"])


def test_a_recipe_files_relative_data_dir_is_found_beside_it(tmp_path, monkeypatch):
  """As its base is, so a recipe and its data move together; a path that is only found from
  the directory the command runs in keeps working."""
  (tmp_path / "project" / "data").mkdir(parents=True)
  (tmp_path / "project" / "data" / "mine.npz").write_bytes(b"")
  recipe_file = tmp_path / "project" / "mine.toml"
  recipe_file.write_text('base = "digits"\n[data]\ndataset = "npz"\ndata_dir = "data/mine.npz"\n')
  monkeypatch.chdir(tmp_path)
  recipe = config.load_recipe(str(recipe_file))
  assert recipe["data"]["data_dir"] == str(tmp_path / "project" / "data" / "mine.npz")
  (tmp_path / "elsewhere.npz").write_bytes(b"")
  recipe_file.write_text('[data]\ndataset = "npz"\ndata_dir = "elsewhere.npz"\n')
  assert config.load_recipe(str(recipe_file))["data"]["data_dir"] == str(
      tmp_path / "elsewhere.npz")


def test_another_data_set_leaves_the_recipes_data_dir_behind(tmp_path):
  """--dataset digits over a recipe that reads an npz file: the file was that data set's."""
  (tmp_path / "mine.npz").write_bytes(b"")
  recipe_file = tmp_path / "mine.toml"
  recipe_file.write_text('base = "digits"\n[data]\ndataset = "npz"\ndata_dir = "mine.npz"\n')
  assert config.load_recipe(str(recipe_file), ["data.dataset=digits"])["data"]["data_dir"] == ""
  # The same data set again, or a folder given with it, keeps what was asked for.
  assert config.load_recipe(str(recipe_file), ["data.dataset=npz"])["data"]["data_dir"] == str(
      tmp_path / "mine.npz")
  moved = config.load_recipe(str(recipe_file), [f"data.data_dir={tmp_path}",
                                                "data.dataset=fashion_mnist"])
  assert moved["data"]["data_dir"] == str(tmp_path)


@pytest.mark.parametrize("text, words", [
    ('base = "loop.toml"\n', ["bases form a cycle", "loop.toml -> ", "loop.toml"]),
    ("base = 3\n", ["base must be a recipe name or path, got 3"]),
    ('base = ""\n', ["base must be a recipe name or path, got ''"]),
    ('base = "no_such_recipe"\n', ["/loop.toml: its base 'no_such_recipe' is neither a file "
                                    "beside it nor a packaged recipe (", "digits"]),
    ('base = "digits"\n[teacher]\nstepz = 3\n', ["unknown recipe key 'teacher.stepz'"]),
])
def test_bad_base_names_the_problem(tmp_path, text, words):
  (tmp_path / "loop.toml").write_text(text)
  with pytest.raises(UserError) as error:
    config.load_recipe(str(tmp_path / "loop.toml"))
  for word in words:
    assert word in str(error.value)



def test_a_base_is_found_beside_its_recipe_never_in_the_current_directory(tmp_path, monkeypatch):
  """The same recipe file means the same run wherever the command is typed."""
  (tmp_path / "rec" / "sub").mkdir(parents=True)
  recipe_file = tmp_path / "rec" / "sub" / "cwdbase.toml"
  recipe_file.write_text('base = "c3.toml"\n')
  (tmp_path / "c3.toml").write_text('base = "digits"\nseed = 3\n')
  monkeypatch.chdir(tmp_path)  # where ./c3.toml was once loaded without a word
  with pytest.raises(UserError, match=re.escape(
      "its base 'c3.toml' is neither a file beside it nor a packaged recipe (") + ".*" + re.escape(
      "); a base is read from the recipe's folder, not the current directory: did you mean "
      "'../../c3.toml'?")):
    config.load_recipe("rec/sub/cwdbase.toml")
  monkeypatch.chdir(tmp_path / "rec")
  with pytest.raises(UserError, match=r"its base 'c3.toml' is neither .* recipe \([^)]*\)$"):
    config.load_recipe("sub/cwdbase.toml")
  # The path it names from its own folder, and a packaged name with .toml, work from anywhere.
  recipe_file.write_text('base = "../../c3.toml"\n')
  assert config.load_recipe("sub/cwdbase.toml")["seed"] == 3
  recipe_file.write_text('base = "digits.toml"\n')
  assert config.load_recipe("sub/cwdbase.toml") == config.load_recipe("digits")
  # Only a packaged name may leave out .toml; a path without it is named with it.
  recipe_file.write_text('base = "../../c3"\n')
  with pytest.raises(UserError, match=r"its base '../../c3' is neither .*; did you mean "
                                      r"'../../c3.toml'\?$"):
    config.load_recipe("sub/cwdbase.toml")

# The default teacher before the hybrid took its place (BENCHMARKS.md's earlier runs).
PATCH7_TEACHER = ["teacher.steps=20000", "teacher.vit.stem=conv", "teacher.vit.patch=7",
                  "teacher.vit.width=96", "teacher.vit.heads=6", "teacher.vit.mlp_ratio=4"]
HYBRID = ["teacher.steps=20000", "teacher.vit.stem_channels=[32,64]",
          "teacher.vit.stem_blocks_per_stage=2", "teacher.vit.width=64"]
CNN_STUDENT = ["student.steps=6000", "student.cnn.channels=[32,64,96]", "student.alpha=0.5",
               "student.temperature=2"]


@pytest.mark.parametrize("name, overrides", [
    ("fashion_mnist_vit_student",
     [*PATCH7_TEACHER, "student.model=vit", "student.steps=12000", "student.alpha=1",
      "student.temperature=2"]),
    ("fashion_mnist_hybrid", HYBRID),
    ("fashion_mnist_cnn_student", [*HYBRID, *CNN_STUDENT]),
])
def test_variant_recipes_are_the_measured_commands(name, overrides):
  # BENCHMARKS.md's runs were the default recipe with these overrides.
  assert config.load_recipe(name) == config.load_recipe("fashion_mnist", overrides)


def test_the_default_recipe_is_the_measured_hybrid_and_cnn_student():
  from distill.models import count_params, create_model  # noqa: PLC0415

  # BENCHMARKS.md's default-recipe runs: the 9-token hybrid teacher (642,282 parameters) for
  # 10,000 steps, and the CNN student recipe's student settings.
  recipe = config.load_recipe("fashion_mnist")
  teacher = create_model("vit", num_classes=10, image_shape=(28, 28, 1),
                         **recipe["teacher"]["vit"])
  assert (recipe["teacher"]["steps"], count_params(teacher)) == (10_000, 642_282)
  assert recipe["student"] == config.load_recipe("fashion_mnist_cnn_student")["student"]


def test_the_cnn_student_recipe_stays_under_100k_parameters():
  from distill.models import count_params, create_model  # noqa: PLC0415

  student = config.load_recipe("fashion_mnist_cnn_student")["student"]
  cnn = create_model("cnn", num_classes=10, image_shape=(28, 28, 1), **student["cnn"])
  assert count_params(cnn) == 83_050


def test_the_recipe_hash_covers_only_what_the_run_reads():
  cnn = config.load_recipe("digits", ["student.model=cnn"])
  # Another model's settings, the other role's, or when checkpoints are saved (nothing the
  # run computes depends on it) leave a CNN student's hash alone...
  for unread in ("student.vit.width=48", "student.mlp.hidden=[32]", "teacher.steps=7",
                 "student.checkpoint_min_seconds=60"):
    edited = config.load_recipe("digits", ["student.model=cnn", unread])
    assert config.recipe_hash(edited, "student") == config.recipe_hash(cnn, "student"), unread
  # ...while its own model's, its role's and the shared sections' settings do not.
  for read in ("student.cnn.channels=[4,8]", "student.steps=9", "augment.pad=2", "seed=3",
               "data.val_size=100"):
    edited = config.load_recipe("digits", ["student.model=cnn", read])
    assert config.recipe_hash(edited, "student") != config.recipe_hash(cnn, "student"), read
  # A teacher's hash ignores every student setting.
  edited = config.load_recipe("digits", ["student.model=vit", "student.steps=9"])
  assert config.recipe_hash(edited, "teacher") == config.recipe_hash(cnn, "teacher")
  # A student on hard labels reads no teaching setting: a sweep's shared -T 4 leaves its hash
  # (and so its finished twin) alone, as it does its differences; a taught student's moves.
  hard = config.load_recipe("digits", ["student.model=cnn", "student.loss=hard"])
  for unread in ("student.temperature=4", "student.alpha=0.3", "student.soft_loss=kl"):
    edited = config.load_recipe("digits", ["student.model=cnn", "student.loss=hard", unread])
    assert config.recipe_hash(edited, "student") == config.recipe_hash(hard, "student"), unread
    assert config.differing_keys(hard, edited, "student") == {}
    taught = config.load_recipe("digits", ["student.model=cnn", unread])
    assert config.recipe_hash(taught, "student") != config.recipe_hash(cnn, "student"), unread


def test_recipes_lists_each_packaged_recipe_and_prints_one_to_copy(tmp_path):
  listing = run_cli("recipes")
  assert listing.exit_code == 0, listing.output
  lines = listing.output.splitlines()
  starts = [line.split()[0] for line in lines if not line.startswith(" ")]
  assert starts == config.recipe_names()  # every recipe once, the default first
  assert "scikit-learn's 8x8 digits: tiny, ships offline, trains in seconds." in listing.output
  assert max(map(len, lines)) <= 100

  printed = run_cli("recipes", "fashion_mnist_vit_student")
  assert printed.exit_code == 0
  assert printed.output == (config.RECIPES_DIR / "fashion_mnist_vit_student.toml").read_text()
  # The copy, elsewhere, is the same recipe (its `base` names a packaged recipe).
  copy = tmp_path / "mine.toml"
  copy.write_text(printed.output)
  assert config.load_recipe(str(copy)) == config.load_recipe("fashion_mnist_vit_student")

  unknown = run_cli("recipes", "digit")
  assert unknown.exit_code == 2 and "Traceback" not in unknown.output
  assert unknown.stderr.strip().splitlines() == [
      "error: recipe 'digit' not found (did you mean 'digits'? a file path, or one of: "
      + ", ".join(config.recipe_names()) + ")"]

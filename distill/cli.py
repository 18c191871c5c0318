"""The `distill` command line: parse, then call one library function.

JAX and Flax are imported inside the commands, so `distill --help` answers at
once.
"""

from __future__ import annotations

import functools
import json
import os
import sys
import time
from pathlib import Path

import click

from distill import config as config_lib
from distill import interrupts
from distill.errors import UserError, resource_failure

_RECIPE_HELP = ("Recipe: a TOML file or the name of a packaged recipe "
                f"({', '.join(config_lib.recipe_names())}).")


def _set_help(*examples: str) -> str:
  """--set's help, with examples of keys the command reads."""
  shown = " ".join(f"--set {example}" for example in examples)
  return (f"Override any recipe key, e.g. {shown} (repeatable). Unknown keys are errors that "
          "list the valid ones.")


_SET_HELP = _set_help("teacher.steps=500", "teacher.vit.depth=6")
_STUDENT_SET_HELP = _set_help("student.steps=500", "student.cnn.blocks_per_stage=2")


class _Path(click.Path):
  """A file or folder path, never empty: `--workdir "$DIR"` with DIR unset would mean the current
  folder, and a run would write among the files there."""

  def convert(self, value, param, ctx):
    """click's path, unless the value is empty."""
    if isinstance(value, str) and not value.strip():
      self.fail("an empty path (an unset shell variable?); give a folder or file by name",
                param, ctx)
    return super().convert(value, param, ctx)


PATH = _Path()


def _fail(error: UserError):
  """One red line on stderr, then the error's exit code."""
  click.secho(f"error: {error}", err=True, fg="red")
  sys.exit(error.exit_code)


def _user_errors(command):
  """Shows UserError as one red line on stderr and exits non-zero, no traceback."""

  @functools.wraps(command)
  def wrapper(*args, **kwargs):
    interrupts.listen()  # a Ctrl-C JAX's callbacks drop still stops the loop (see the module)
    try:
      return command(*args, **kwargs)
    except UserError as e:
      _fail(e)
    except Exception as e:  # out of memory or disk: the machine's limits, said in one line
      failure = resource_failure(e)
      if failure is None:
        raise
      _fail(failure)
    except KeyboardInterrupt as e:
      # A second Ctrl-C, or one before the loop listens: this step is not saved.
      click.secho("interrupted: nothing saved since the last checkpoint, if there was one; run "
                  "the same command again to resume from it", err=True, fg="red")
      sys.exit(interrupts.exit_status(interrupts.interrupted_by(e)))

  return wrapper


def _say(text: str) -> None:
  """Prints a command's result line, once per run (process 0 of several)."""
  from distill.io import is_primary_process  # noqa: PLC0415

  if is_primary_process():
    click.echo(text)


# The packaged recipes a first run meets; an option's help shows its default in each.
_FIRST_RECIPES = ("fashion_mnist", "digits", "demo")


@functools.cache
def _first_recipes() -> dict[str, dict]:
  """The `_FIRST_RECIPES` as written, read once for every option's help."""
  return {name: config_lib.recipe_as_written(name) for name in _FIRST_RECIPES}


def _recipe_default(key: str) -> str:
  """'[default: the recipe's KEY: 2 in fashion_mnist, 1 in digits and demo]', read from the
  packaged recipes, so that the help cannot drift from them."""
  found: dict[str, list[str]] = {}
  for name, value in _first_recipes().items():
    for part in key.split("."):
      value = value[part]
    if isinstance(value, str):
      shown = value
    elif isinstance(value, int) and not isinstance(value, bool):
      shown = f"{value:,}"
    else:
      shown = f"{value:g}"
    found.setdefault(shown, []).append(name)
  def listed(names: list[str]) -> str:
    return names[0] if len(names) == 1 else f"{', '.join(names[:-1])} and {names[-1]}"
  where = ", ".join(f"{value} in {listed(names)}" for value, names in found.items())
  return f"[default: the recipe's {key}: {where}]"


def _method_settings(method: str) -> str:
  """'student.dkd.alpha=1, beta=8, warmup_steps=0': a method's settings and their defaults."""
  table = config_lib.DEFAULTS["student"][method]
  return f"student.{method}." + ", ".join(
      f"{key}={config_lib.setting_text(value)}" for key, value in table.items())


def _common_training_options(role: str):
  """The options `distill teacher` and `distill student` share, their help written for `role`."""
  recipe_default = ("[default: fashion_mnist]" if role == "teacher" else
                    "[default: the teacher run's own recipe, so that data and split match]")
  dataset_default = (_recipe_default("data.dataset") if role == "teacher"
                     else "[default: the teacher's data]")
  options = [
      click.option("--recipe", "-r", default=None, help=f"{_RECIPE_HELP} {recipe_default}"),
      click.option("--set", "overrides", multiple=True, metavar="KEY=VALUE",
                   help=_SET_HELP if role == "teacher" else _STUDENT_SET_HELP),
      click.option("--dataset", default=None,
                   help="Dataset: fashion_mnist, mnist, cifar10, digits, npz (your own: x "
                        "uint8 [N, H, W(, C)], y integer labels 0..K-1, optional x_test, y_test "
                        "and class_names; keras' x_train, y_train are read too), or stream "
                        "(array shards on disk, larger than memory; see --data-dir). "
                        f"{dataset_default}"),
      click.option("--data-dir", default=None, type=PATH,
                   help="Where the data is (a folder, the .npz file for --dataset npz, or the "
                        "folder holding train/ and test/ shards for --dataset stream)."),
      click.option("--steps", type=int, default=None,
                   help=f"Training steps. {_recipe_default(f'{role}.steps')}"),
      click.option("--batch-size", type=int, default=None,
                   help=f"Batch size. {_recipe_default(f'{role}.batch_size')}"),
      click.option("--seed", type=int, default=None,
                   help=f"Seed for init, data order and augmentation. {_recipe_default('seed')}"),
      click.option("--restart", is_flag=True, help="Discard an unfinished run in the workdir."),
      click.option("--overwrite", is_flag=True, help="Replace a finished run in the workdir."),
      click.option("--strict-init-check", is_flag=True,
                   help="Fail (instead of warning) if the step-0 loss is not log(n_classes)."),
      click.option("--quiet", "-q", is_flag=True, help="No progress bars or notes."),
  ]

  def decorate(command):
    for option in reversed(options):
      command = option(command)
    return command
  return decorate


def _absolute(path: str) -> str:
  """A path the user typed, made absolute: what a run records must work from anywhere later."""
  return str(Path(path).expanduser().resolve())


def _training_flags(role: str, dataset, data_dir, steps, batch_size, seed,
                    **more) -> dict[str, tuple[str, object]]:
  """The common training options as `config.with_flags` takes them: flag -> (key, value).

  `more`: a command's own flags, by option name (`model`, `loss`, ...), set `{role}.NAME`.
  """
  flags = {"--dataset": ("data.dataset", dataset), "--data-dir": ("data.data_dir", data_dir),
           "--steps": (f"{role}.steps", steps), "--batch-size": (f"{role}.batch_size", batch_size),
           "--seed": ("seed", seed)}
  flags.update({f"--{name.replace('_', '-')}": (f"{role}.{name}", value)
                for name, value in more.items()})
  return flags


def _option_of(command: click.Command, name: str) -> click.Option | None:
  """The option of `command` spelled `name` (e.g. '--steps'), or None."""
  for param in command.params:
    if isinstance(param, click.Option) and name in (*param.opts, *param.secondary_opts):
      return param
  return None


def _moved(args: list[str], name: str, option: click.Option, after: str | None) -> str:
  """`distill ARGS` with option `name` (and its value) moved to just after the word `after`
  (to the front when None), as a line to paste."""
  import shlex  # noqa: PLC0415

  rest, taken = list(args), []
  for i, arg in enumerate(rest):
    if arg == name:
      width = 1 if option.is_flag or option.count or i + 1 == len(rest) else 2
      taken, rest = rest[i:i + width], rest[:i] + rest[i + width:]
      break
    if arg.startswith(name + "="):
      taken, rest = [arg], rest[:i] + rest[i + 1:]
      break
  at = rest.index(after) + 1 if after in rest else 0
  return shlex.join(["distill", *rest[:at], *taken, *rest[at:]])


class _Command(click.Command):
  """A command that says where a global option goes when it is given after the command."""

  def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
    """click's parsing, except that a global option given here is pointed back before it."""
    original = list(args)  # click consumes the list it parses
    try:
      return super().parse_args(ctx, args)
    except click.NoSuchOption as e:
      group = ctx.parent.command if ctx.parent is not None else None
      option = _option_of(group, e.option_name) if group is not None else None
      if option is None:
        raise
      line = _moved([ctx.info_name, *original], e.option_name, option, None)
      _fail(UserError(f"{e.option_name} goes before the command: `{line}`"))


# `distill --help` lists the commands by what a person does with them, in the order they do it,
# not alphabetically (where `bench` came first and `teacher` last).
# Each command's line there is its `short_help`, short enough to stand whole in 80 columns.
_COMMAND_SECTIONS = (
    ("Train and compare", ("teacher", "student", "sweep", "compare", "report")),
    ("Teachers", ("import-teacher", "export")),
    ("Ship a student", ("export-model", "predict")),
    ("Measure", ("bench",)),
    ("Data and recipes", ("make-shards", "recipes")),
)


class _Group(click.Group):
  """The `distill` group: an option of a command given before it is pointed to its place."""

  command_class = _Command

  def list_commands(self, ctx: click.Context) -> list[str]:
    """The commands in the order of `_COMMAND_SECTIONS`, then any other."""
    ordered = [name for _, names in _COMMAND_SECTIONS for name in names if name in self.commands]
    return ordered + sorted(set(self.commands) - set(ordered))

  def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
    """The commands under the headings of `_COMMAND_SECTIONS`, each with its first line."""
    listed = [name for name in self.list_commands(ctx) if not self.commands[name].hidden]
    sections = [(title, [name for name in names if name in listed])
                for title, names in _COMMAND_SECTIONS]
    others = [name for name in listed if not any(name in names for _, names in sections)]
    width = max(map(len, listed))  # one column for every section
    limit = formatter.width - 6 - width
    for title, names in [*sections, ("Other commands", others)]:
      if names:
        with formatter.section(title):
          formatter.write_dl([(name.ljust(width), self.commands[name].get_short_help_str(limit))
                              for name in names])

  def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
    """click's parsing, except that a command's option given here names its command."""
    original = list(args)
    try:
      return super().parse_args(ctx, args)
    except click.NoSuchOption as e:
      owners = [name for name, command in self.commands.items()
                if _option_of(command, e.option_name) is not None]
      if not owners:
        raise
      typed = next((arg for arg in original if arg in self.commands), None)
      command = typed if typed in owners else owners[0]
      others = [name for name in owners if name != command]
      also = f" (and {', '.join(others)})" if others else ""
      option = _option_of(self.commands[command], e.option_name)
      args_with_command = original if command in original else [*original, command]
      line = _moved(args_with_command, e.option_name, option, command)
      _fail(UserError(f"{e.option_name} is an option of `distill {command}`{also}: "
                      f"write `{line}`"))


@click.group(cls=_Group,
             context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(package_name="distill")
@click.option("--coordinator", default=None, metavar="HOST:PORT",
              help="Several hosts: process 0's address, reachable by every process "
                   "(with --num-processes and --process-id).")
@click.option("--num-processes", type=int, default=None, help="Several hosts: how many processes.")
@click.option("--process-id", type=int, default=None, help="Several hosts: this process, 0..N-1.")
@click.option("--distributed", is_flag=True,
              help="Join a multi-process run from the cluster's variables (SLURM, Open MPI, "
                   "TPU slices), as jax.distributed.initialize() reads them.")
@click.pass_context
def main(ctx, coordinator, num_processes, process_id, distributed):
  """Teacher -> student knowledge distillation on JAX.

  \b
  The workflow:
    distill teacher                 train a ViT teacher on augmented hard labels
                                    and export its soft targets
    distill student --model cnn     train a student on those soft targets
    distill student --model cnn --loss hard   the same student on hard labels
    distill compare runs/*          student vs teacher, side by side
    distill report runs/*           report.html: curves, mistakes, calibration

  Every run checks its step-0 loss against log(n_classes) and warns loudly
  when it is off. Runs resume from their last checkpoint when re-run.

  \b
  Every local device trains data-parallel. Several hosts, one process each:
    distill --coordinator host0:1234 --num-processes 2 --process-id I teacher
  """
  if coordinator or distributed or os.environ.get("DISTILL_COORDINATOR"):
    try:
      from distill import parallel  # noqa: PLC0415

      parallel.initialize(coordinator, num_processes, process_id)
    except UserError as e:
      _fail(e)
  elif num_processes is not None or process_id is not None:
    _fail(UserError("--num-processes and --process-id need --coordinator (or --distributed)"))
  if ctx.invoked_subcommand != "bench":  # bench times compilation; it must not load programs
    from distill import backend  # noqa: PLC0415

    backend.enable_compilation_cache()


@main.result_callback()
def _leave_together(*_args, **_kwargs):
  """After a command that succeeded, a multi-process run's processes leave it together.

  JAX's own exit handler shuts the distributed system down only after it has
  torn down the backends, and process 0, whose coordination service the others
  still poll, could then abort at exit (`Check failed` in the service) after a
  finished run. Leaving through the shutdown barrier first, while everything is
  alive, lets every process go once all have finished. Not after a failure: the
  barrier would wait for processes that may never come.
  """
  if "jax" in sys.modules:  # a command that never imported JAX joined no run
    from distill import parallel  # noqa: PLC0415

    parallel.leave()


@main.command(short_help="Train the ViT teacher and export its soft targets.")
@_common_training_options("teacher")
@click.option("--workdir", "-w", type=PATH, default="runs/teacher", show_default=True,
              help="Run directory (checkpoints, metrics, summary, targets).")
@click.option("--no-export", is_flag=True, help="Skip exporting soft targets at the end.")
@click.option("--init-from", default=None, metavar="VIT_FOLDER",
              help="Fine-tune a timm or Hugging Face ViT (a folder with config.json and "
                   "model.safetensors) instead of training the recipe's model from scratch; a "
                   "head for other classes starts at zero.")
@_user_errors
def teacher(recipe, overrides, dataset, data_dir, steps, batch_size, seed, restart, overwrite,
            strict_init_check, quiet, workdir, no_export, init_from):
  """Train the ViT teacher, evaluate it on the test set, export its soft targets.

  The teacher learns from one-hot labels with random crop/resize and flips
  (see the recipe's [augment] table), AdamW with warm-up and cosine decay.
  At the end its softmax probabilities on every (un-augmented) training
  image are written to WORKDIR/targets.npz for students (WORKDIR/targets-shards/
  for streamed data).
  """
  start = time.perf_counter()
  from distill import workflow  # noqa: PLC0415

  init_from = None if init_from is None else _absolute(init_from)
  resolved = config_lib.load_recipe(recipe or "fashion_mnist", config_lib.with_flags(
      overrides, _training_flags("teacher", dataset, data_dir, steps, batch_size, seed,
                                 init_from=init_from)))
  summary = workflow.train_teacher(resolved, Path(workdir), restart=restart, overwrite=overwrite,
                                   strict_init_check=strict_init_check, quiet=quiet,
                                   export=not no_export)
  _say(workflow.result_line(summary, Path(workdir), time.perf_counter() - start))


@main.command("import-teacher", short_help="Make a teacher trained elsewhere a teacher run.")
@click.argument("source")
@click.option("--recipe", "-r", default=None,
              help="Recipe whose data settings to use [default: fashion_mnist].")
@click.option("--set", "overrides", multiple=True, metavar="KEY=VALUE",
              help=_set_help("data.val_size=0.1", "export.temperature=2"))
@click.option("--dataset", default=None, help="Dataset to label (overrides the recipe).")
@click.option("--data-dir", default=None, type=PATH,
              help="Where the dataset's files are (overrides the recipe).")
@click.option("--workdir", "-w", type=PATH, default="runs/imported-teacher",
              show_default=True, help="The teacher run directory to create.")
@click.option("--overwrite", is_flag=True, help="Replace a finished run in the workdir.")
@click.option("--quiet", "-q", is_flag=True, help="No progress bars or notes.")
@_user_errors
def import_teacher(source, recipe, overrides, dataset, data_dir, workdir, overwrite, quiet):
  """Make a teacher trained elsewhere a teacher run that students learn from.

  SOURCE is one of: a folder with config.json and model.safetensors (a ViT
  saved by timm or by transformers), a Keras 3 .keras file, a .npz of logits
  computed anywhere (train_logits, test_logits, optional val_logits, in the
  data set's own order), or package.module:function (uint8 NHWC images ->
  logits). The teacher labels the data set; WORKDIR gets summary.json,
  predictions.npz and targets.npz like a trained teacher's. A teacher that
  runs in JAX (a ViT, a Keras model, a JAX function) also labels K augmented
  views per image with --set export.views=K, for --teaching views.

  \b
    distill import-teacher my-vit/ --dataset fashion_mnist -w runs/vit-import
    distill import-teacher logits.npz -w runs/logits-teacher
    distill student --teacher runs/vit-import --model cnn
  """
  start = time.perf_counter()
  from distill import workflow  # noqa: PLC0415
  from distill.imported import import_teacher as run_import  # noqa: PLC0415

  resolved = config_lib.load_recipe(recipe or "fashion_mnist", config_lib.with_flags(
      overrides, _training_flags("teacher", dataset, data_dir, None, None, None)))
  summary = run_import(source, resolved, Path(workdir), overwrite=overwrite, quiet=quiet)
  _say(workflow.result_line(summary, Path(workdir), time.perf_counter() - start))


@main.command(short_help="Export the targets of a teacher or an ensemble (T, views).")
@click.option("--teacher", "teacher_dirs", required=True, multiple=True, type=PATH,
              help="A teacher's run directory: trained, or imported from a model that runs. "
                   "Repeat it to export an ensemble: the teachers' probabilities are averaged.")
@click.option("--out", "out_dir", type=PATH, default=None,
              help="Where targets.npz goes [default: the teacher's directory; required for an "
                   "ensemble].")
@click.option("--temperature", "-T", type=float, default=None,
              help="Softmax temperature of the stored probabilities (default: the recipe's). "
                   "Students re-temper the stored logits with their own --temperature.")
@click.option("--views", type=int, default=None,
              help="Also store the teacher's logits on K augmented views of every image, for "
                   "students taught with --teaching views (default: the recipe's export.views, 0).")
@click.option("--quiet", "-q", is_flag=True, help="No notes.")
@_user_errors
def export(teacher_dirs, out_dir, temperature, views, quiet):
  """Export a teacher's logits and soft targets for every training image.

  Writes targets.npz (atomically) with the dataset fingerprint, split, the
  teachers' identities and checkpoints, temperature and class names.
  `distill teacher` already does this at the end; use this to re-export, to
  add augmented views, or to combine teachers. An imported teacher runs again
  from the source its imported.json names (a .npz of logits cannot; views
  need a teacher that runs in JAX):

  \b
    distill export --teacher runs/teacher --views 8
    distill export --teacher runs/t1 --teacher runs/t2 --out runs/ensemble
    distill student --teacher runs/ensemble --model cnn
  """
  from distill import workflow  # noqa: PLC0415

  path = workflow.export_targets([Path(d) for d in teacher_dirs],
                                 out_dir=Path(out_dir) if out_dir else None,
                                 temperature=temperature, views=views, quiet=quiet)
  _say(str(path))


@main.command(short_help="Train a student against a teacher's soft targets.")
@_common_training_options("student")
@click.option("--teacher", "teacher_dir", type=PATH, default="runs/teacher",
              show_default=True, help="The teacher run whose targets to learn from.")
@click.option("--model", "-m", default=None,
              help="Student model: vit, cnn, mlp or linear (default: the recipe's).")
@click.option("--loss", type=click.Choice(["soft", "hard"]), default=None,
              help="soft: the distillation loss against the teacher's probabilities; "
                   "hard: one-hot labels, the baseline to beat. [default: soft]")
@click.option("--teaching", type=click.Choice(["targets", "online", "views"]), default=None,
              help="targets: the exported probabilities of un-augmented images (no student "
                   "augmentation, since an augmented view would meet another view's target); "
                   "online: the frozen teacher labels the student's own augmented batch inside "
                   "the step (consistent teaching); views: replay the K augmented views stored "
                   "by `distill export --views K`. [default: targets]")
@click.option("--temperature", "-T", type=float, default=None,
              help="Distillation temperature: student and teacher logits are divided by T and "
                   "the soft term is scaled by T^2. " + _recipe_default("student.temperature"))
@click.option("--alpha", type=float, default=None,
              help="Weight of the teacher's term; 1 - alpha goes to hard labels. "
                   + _recipe_default("student.alpha"))
@click.option("--soft-loss", type=click.Choice(["soft_ce", "kl"]), default=None,
              help="soft_ce starts at log(n_classes); kl (same gradient) starts at "
                   "log(n_classes) - H(teacher). The init check expects the right one. "
                   "[default: soft_ce]")
@click.option("--mixup", type=float, default=None,
              help="With --teaching online: mix image pairs with a Beta(m, m) weight; the "
                   "teacher labels the mixed image. [default: 0, off]")
@click.option("--method", type=click.Choice(["kd", "dkd", "dist", "token", "hint"]),
              default=None,
              help="How the student learns from the teacher: kd (Hinton's loss, -T, --alpha, "
                   "--soft-loss), dkd (decoupled KD, -T; "
                   f"{_method_settings('dkd')}), dist (Pearson correlations, -T; "
                   f"{_method_settings('dist')}), token (DeiT's distillation token, ViT "
                   f"students; {_method_settings('token')}, or soft, which reads -T), hint "
                   "(FitNets: a student layer matches a teacher layer; needs --teaching online; "
                   "not augmented unless student.augment=true; kd's settings and "
                   f"{_method_settings('hint')}). kd and hint at alpha 1 read no labels; the "
                   "others add the label loss. [default: kd]")
@click.option("--workdir", "-w", type=PATH, default=None,
              help="Run directory [default: runs/student-MODEL, then -hard for hard labels, "
                   "or -METHOD for a method other than kd, its variant if not the default "
                   "(-soft, -cosine), -TEACHING for online or views, -kl for the kl soft "
                   "loss and -mixup with mixup, e.g. runs/student-cnn-hint-online].")
@_user_errors
def student(recipe, overrides, dataset, data_dir, steps, batch_size, seed, restart, overwrite,
            strict_init_check, quiet, teacher_dir, model, loss, teaching, temperature, alpha,
            soft_loss, mixup, method, workdir):
  """Train a student against a teacher's exported soft targets.

  Without --recipe the student starts from the teacher run's own recipe, so
  the data and split match the targets. Targets made on other data are
  refused. With --teaching targets the student is not augmented by default:
  exported targets belong to un-augmented images. Online and views teaching
  augment the student and label each view it sees; hints run the teacher
  online for its inner layer and augment only with student.augment=true.

  \b
    distill student --model cnn                         # exported targets
    distill student --model cnn --loss hard             # the baseline
    distill student --model cnn --teaching online -T 2  # consistent teaching
    distill student --model cnn --method dkd -T 4       # decoupled KD
    distill student --model vit --method token          # DeiT's token
    distill student --model cnn --method hint --teaching online  # hints
  """
  start = time.perf_counter()
  from distill import run_recipe, workflow  # noqa: PLC0415
  from distill.console import Console  # noqa: PLC0415

  flags = _training_flags("student", dataset, data_dir, steps, batch_size, seed, model=model,
                          loss=loss, teaching=teaching, temperature=temperature, alpha=alpha,
                          soft_loss=soft_loss, mixup=mixup, method=method)
  resolved = run_recipe.student_recipe(Path(teacher_dir), recipe,
                                     config_lib.with_flags(overrides, flags),
                                     console=Console(quiet))
  workdir = (run_recipe.student_workdir(resolved, Path(teacher_dir), Console(quiet))
             if workdir is None else Path(workdir))
  summary = workflow.train_student(resolved, Path(teacher_dir), workdir, restart=restart,
                                   overwrite=overwrite, strict_init_check=strict_init_check,
                                   quiet=quiet)
  _say(workflow.result_line(summary, workdir, time.perf_counter() - start))


@main.command(short_help="Compare finished runs side by side.")
@click.argument("run_dirs", nargs=-1, required=True, type=PATH)
@click.option("--json", "as_json", is_flag=True, help="Print JSON for machines.")
@click.option("--markdown", is_flag=True, help="Print a Markdown table.")
@_user_errors
def compare(run_dirs, as_json, markdown):
  """Compare finished runs side by side: accuracy, agreement with the teacher, NLL, time.

  Directories without a summary.json are skipped with a note. Runs trained on
  different machines (CPU types, accelerators) get a note too: their training
  times do not compare. A sweep's folder stands for its teacher and runs.

  The columns: T and alpha are the distillation's temperature and the
  teacher's weight ('-' where the run's method reads none); agree is the
  share of test images where the run's top class is its teacher's; test NLL
  the mean negative log-likelihood; ECE the expected calibration error (0 to
  1, 15 confidence bins); train s the training seconds, compilation excluded.
  Shown only where runs differ in them: dataset, teacher (whose student a run
  is; a hard-label student's is the teacher its agree is measured against),
  soft loss (soft_ce or KL), mixup (images mixed with a Beta(m, m) weight),
  labels (how many labelled images a run learnt from, data.labelled), and
  steps, batch (the batch size) and seed where two teachers or two students
  differ in them. Other recipe settings in which they differ (a learning
  rate, a warm-up) are named under the table.
  """
  from distill.compare import compare_runs  # noqa: PLC0415

  click.echo(compare_runs([Path(d) for d in run_dirs], as_json=as_json, markdown=markdown))


@main.command(short_help="Write report.html: curves, mistakes, calibration.")
@click.argument("run_dirs", nargs=-1, required=True, type=PATH)
@click.option("--out", "-o", type=PATH, default="runs/report", show_default=True,
              help="Folder for report.html and the PNG figures.")
@click.option("--quiet", "-q", is_flag=True, help="No progress bar.")
@_user_errors
def report(run_dirs, out, quiet):
  """Write report.html: curves, mistakes, confusion, calibration, student vs teacher.

  One self-contained page (figures embedded, no network) plus each figure as a
  PNG beside it: training and validation curves with the step-0 loss against
  log(n_classes), misclassified test images, confusion matrices, reliability
  diagrams with ECE, accuracy against parameters, and the test images where
  each student disagrees with its teacher. A `distill sweep` folder stands for
  its teacher and runs, and adds the sweep's table and paired differences.
  """
  from distill.report import write_report  # noqa: PLC0415

  path = write_report([Path(d) for d in run_dirs], Path(out), quiet=quiet)
  click.echo(f"report: {path.resolve()}")


@main.command(short_help="Measure training and export throughput, compile time.")
@click.option("--recipe", "-r", default="fashion_mnist", show_default=True, help=_RECIPE_HELP)
@click.option("--set", "overrides", multiple=True, metavar="KEY=VALUE", help=_SET_HELP)
@click.option("--role", type=click.Choice(["teacher", "student"]), default="teacher",
              show_default=True,
              help="teacher: hard labels + augmentation; student: soft targets, no augmentation.")
@click.option("--batch-size", type=int, default=None, help="Batch size (overrides the recipe).")
@click.option("--steps", type=int, default=None,
              help="Optimizer steps timed in the real loop. Default: one period of the recipe's "
                   "validation/checkpoint cadence (the larger of eval_every and "
                   "checkpoint_every), so the loop pays for them as often as a real run does.")
@click.option("--bare-steps", type=int, default=None,
              help="Optimizer steps timed for the bare jitted step. Default: as many as the loop, "
                   "so machine speed drifting over minutes biases neither. The bare step runs "
                   "whole dispatches, so this is rounded down to a multiple of the steps per "
                   "dispatch (steps_per_dispatch in the output; at least one dispatch), with a "
                   "note on stderr.")
@click.option("--synthetic", default=None, metavar="HxWxC:N:CLASSES",
              help="Time on random data of this shape instead of the recipe's data set, "
                   "e.g. 32x32x3:50000:10 for CIFAR-10 where it cannot be downloaded.")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON line.")
@click.option("--quiet", "-q", is_flag=True, help="No progress bars.")
@_user_errors
def bench(recipe, overrides, role, batch_size, steps, bare_steps, synthetic, as_json, quiet):
  """Measure training and export throughput, compile time and peak memory.

  Times one model three ways: the bare jitted step (the compiled multi-step
  function called back to back on batches made in advance: the ceiling), the
  real training loop (sampling, augmentation, logging, validation and
  checkpoints at the recipe's cadence) and export (the forward pass over the
  training images at export.batch_size). What it prints (--json: the same
  keys on one line; seconds exclude compilation):

  \b
    bare_step_images_per_second  bare_steps x batch_size / bare_seconds
    bare_steps, bare_seconds     the bare step's steps (whole dispatches of
                                 steps_per_dispatch) and their seconds
    loop_images_per_second       loop_steps x batch_size / loop_seconds
    loop_steps, loop_seconds     the real loop's steps and seconds, its
                                 validations and checkpoints included
    loop_to_bare_ratio           loop over bare step img/s ("loop/bare")
    export_images_per_second     export's img/s over every training image
    export_to_train_ratio        export over bare step img/s ("export/bare")
    compile_seconds              compiling the bare step's one program
    loop_compile_seconds         the loop's compiles: a step program for each
                                 dispatch length it runs (a dispatch ends at
                                 every log, validation and checkpoint step:
                                 10 a dispatch logged every 25 steps runs 10
                                 and 5), the validation program and the
                                 learning rates; often 2-3x compile_seconds
    peak_rss_mb                  the process's peak resident memory

  The rest say what was measured: recipe, role, model, compute_dtype, params,
  dataset, image_shape, batch_size, steps_per_dispatch; and where: backend,
  device_kind, devices, cpu, jax_version, backend_choices (what
  distill.backend picked for this backend) and huge_pages (whether the
  process runs with glibc's huge pages).
  """
  from distill import bench as bench_lib  # noqa: PLC0415

  resolved = config_lib.load_recipe(recipe, config_lib.with_flags(
      overrides, {"--batch-size": (f"{role}.batch_size", batch_size)}))
  result = bench_lib.run_benchmark(resolved, role=role, steps=steps, bare_steps=bare_steps,
                                   synthetic=synthetic, quiet=quiet,
                                   note=lambda line: click.echo(line, err=True))
  result["recipe"] = recipe
  click.echo(json.dumps(result) if as_json else bench_lib.format_report(result))


@main.command(short_help="Train students over models, modes and seeds; pair them.")
@click.option("--teacher", "teacher_dir", type=PATH, default="runs/teacher",
              show_default=True, help="The teacher run every student learns from.")
@click.option("--out", "-o", type=PATH, default="runs/sweep", show_default=True,
              help="Folder for the runs (one sub-folder each), sweep.md and sweep.json.")
@click.option("--model", "-m", "models", multiple=True, default=("cnn",), show_default=True,
              help="Student model: vit, cnn, mlp, linear (repeatable).")
@click.option("--mode", "modes", multiple=True, default=("hard", "targets"), show_default=True,
              help="hard (labels, the baseline), targets (exported probabilities), online "
                   "(teacher run on the student's batches), views (targets of augmented views); "
                   "repeatable.")
@click.option("--soft-loss", "soft_losses", multiple=True, default=("soft_ce",),
              show_default=True,
              help="soft_ce or kl (repeatable); multiplies every mode but hard.")
@click.option("--method", "methods", multiple=True, default=("kd",), show_default=True,
              help="Distillation method, the recipe's student.method: kd, dkd, dist, token, "
                   "hint (repeatable); multiplies every mode but hard. hint always runs "
                   "online (it matches the teacher's inner layer), un-augmented like exported "
                   "targets, and is paired with kd on targets.")
@click.option("--seed", "seeds", type=int, multiple=True, default=(0, 1, 2), show_default=True,
              help="Seeds (repeatable); each combination runs once per seed.")
@click.option("--recipe", "-r", default=None,
              help=_RECIPE_HELP + " Default: the teacher run's own recipe.")
@click.option("--set", "overrides", multiple=True, metavar="KEY=VALUE",
              help=_STUDENT_SET_HELP + " Applied to every run.")
@click.option("--steps", type=int, default=None, help="Student training steps (every run).")
@click.option("--overwrite", is_flag=True,
              help="Retrain run folders that hold a run made with another recipe.")
@click.option("--jobs", "-j", type=int, default=1, show_default=True,
              help="Runs trained at once, each in a process of its own on its share of the CPU "
                   "cores. Small students use a second core poorly: on 2 cores the demo's 18 "
                   "runs took 62-77 s with --jobs 2, 93-116 s with 1. A run's last digits "
                   "depend on how many cores it has.")
@click.option("--quiet", "-q", is_flag=True, help="No progress notes or bars.")
@_user_errors
def sweep(teacher_dir, out, models, modes, soft_losses, methods, seeds, recipe, overrides, steps,
          overwrite, jobs, quiet):
  """Train several students against one teacher over seeds; tabulate mean ± std.

  Every model x mode (x method x soft loss) x seed trains in its own folder
  under OUT.
  The table (printed, and written to OUT/sweep.md, with everything in
  OUT/sweep.json) has one row per model, mode, method and soft loss: test accuracy
  mean ± sample std over seeds, agreement with the teacher, and "gap closed",
  the share of the teacher's lead over the same model's hard-label baseline
  that the mode recovers. A second table pairs each variant with its
  baselines (the same model on hard labels; with kd, for other methods) seed
  by seed: mean ± std of the differences, paired t-test and sign test
  p-values, and whether the difference is beyond seed noise (p < 0.05).

  Everything is checked before the first run trains. Finished runs with the
  same recipe are kept, so re-running the command resumes an interrupted sweep.

  \b
  Run folders: OUT/MODEL-MODE[-METHOD][-SOFT_LOSS]-sSEED: the method unless
  it is kd, the soft loss unless it is soft_ce.
  Example:
    distill sweep --teacher runs/teacher --model cnn --model mlp \\
      --mode hard --mode targets --seed 0 --seed 1 --seed 2 --out runs/sweep
  """
  from distill.sweep import run_sweep  # noqa: PLC0415

  result = run_sweep(Path(teacher_dir), Path(out), models=models, modes=modes,
                     soft_losses=soft_losses, seeds=seeds, methods=methods, recipe=recipe,
                     overrides=config_lib.with_flags(overrides,
                                                     {"--steps": ("student.steps", steps)}),
                     overwrite=overwrite, quiet=quiet, jobs=jobs)
  click.echo(result["table"])
  if result["paired_table"]:
    click.echo("\nPaired differences (per seed, p < 0.05 = beyond seed noise):\n"
               + result["paired_table"])
  click.echo(f"\n{result['markdown']}, {result['json']}")
  if result["headline"]:
    click.echo("\nWhat the teacher bought each student, against the same student on hard labels "
               "(same seeds):\n" + "\n".join(f"  {line}" for line in result["headline"]))
    click.echo("\n" + result["verdict"])


@main.command("export-model", short_help="Export a run's model as one StableHLO or ONNX file.")
@click.argument("run_dir", type=PATH, metavar="RUN")
# A plain string, not click.Choice: the library refuses an unknown format in one line.
@click.option("--format", "fmt", metavar="stablehlo|onnx",
              help="stablehlo: a serialised jax.export (load with jax.export.deserialize); "
                   "onnx: converted by jax2onnx and checked with onnxruntime "
                   "(pip install 'distill[onnx]'). Default: from OUT's extension "
                   "(.stablehlo or .onnx).")
@click.option("--out", "-o", required=True, type=PATH,
              help="The model file to write; its sidecar goes to OUT.json.")
@click.option("--overwrite", is_flag=True, help="Replace an existing OUT (and OUT.json).")
@_user_errors
def export_model(run_dir, fmt, out, overwrite):
  """Export a finished run's model as one file: uint8 NHWC images in, float32 logits out.

  The batch dimension is symbolic and the pixel normalisation is inside, so
  the file needs nothing else. OUT.json records the class names, the input
  shape and dtype, the data set and its fingerprint, the parameter hash, the
  model and role, the versions, and how far the export's logits are from
  JAX's on test images (ONNX must be within 1e-4 with the same argmax).
  Those test images come from the run's data set, so it must be where the
  run's recipe.json says (predict needs no data).

  \b
    distill export-model runs/student-cnn --out cnn.onnx
    distill export-model runs/student-cnn --out cnn.stablehlo
  """
  from distill.model_export import export_model as export_lib  # noqa: PLC0415

  meta = export_lib(Path(run_dir), fmt, Path(out), overwrite=overwrite)
  check = meta["check"]
  _say(f"{out} ({meta['format']}, {meta['model']} {meta['role']}): max |logit difference| vs "
       f"JAX {check['max_abs_logit_difference']:.3g}, argmax agreement "
       f"{check['argmax_agreement']:.4f} on {check['images']} test images; sidecar {out}.json")


@main.command(short_help="Classify images with a run or an exported model.")
@click.argument("source", type=PATH, metavar="RUN|EXPORTED")
@click.argument("more_images", nargs=-1, type=PATH, metavar="")
@click.option("--images", "images", multiple=True, type=PATH, required=True,
              metavar="FILES...",
              help="PNG/JPEG files (turned upright, converted to the model's channels, "
                   "scaled to cover its H x W and center-cropped, as image folders are for "
                   "training), or .npy/.npz files of uint8 images [N, H, W, C]: an .npz's "
                   "'images' (labels 'labels'), or an npz data set's 'x_test' (its held-out "
                   "split), else 'x'; or folders of pictures, or of class folders named by "
                   "the model's classes (<class>/<images>), which label them. With labels, the "
                   "accuracy is printed too. Several may follow one --images.")
@click.option("--top-k", "-k", type=int, default=3, show_default=True,
              help="Classes shown per image.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON for machines.")
@_user_errors
def predict(source, more_images, images, top_k, as_json):
  """Classify images with a finished run (RUN) or an exported model file (EXPORTED).

  Give the model first, then the images. An exported file needs only itself
  and its sidecar (FILE.json), not the recipe, the data or the training code;
  a run directory restores the model from its checkpoint, with the input
  shape, classes and pixel statistics its summary.json records (no data).

  \b
    distill predict cnn.onnx --images shoe.png bag.jpg --top-k 3
    distill predict runs/student-cnn --images shoe.png
  """
  from distill import predict as predict_lib  # noqa: PLC0415

  result = predict_lib.predict(Path(source), [Path(p) for p in (*images, *more_images)],
                               top_k=top_k)
  for note in predict_lib.input_notes(result):
    click.echo(note, err=True)
  click.echo(json.dumps(result) if as_json else predict_lib.format_predictions(result))


@main.command("make-shards", short_help="Convert image folders to array shards to train from.")
@click.argument("source", type=PATH, metavar="IMAGES")
@click.argument("out", type=PATH)
@click.option("--image-size", required=True, metavar="SIZE",
              help="Size images are scaled and center-cropped to: 64, or HxW such as 48x64.")
@click.option("--grayscale", is_flag=True, help="One channel instead of RGB.")
@click.option("--overwrite", is_flag=True, help="Replace shard folders already in OUT.")
@click.option("--quiet", "-q", is_flag=True, help="No progress bars or notes.")
@_user_errors
def make_shards(source, out, image_size, grayscale, overwrite, quiet):
  """Convert image folders (IMAGES/<class>/<image files>) to array shards in OUT.

  IMAGES holds train/ and test/ (OUT gets the same), or is one image folder
  (OUT holds its shards). Training with --dataset stream needs both splits:
  the test/ split is what a run is finally scored on. Each image is decoded
  once: turned upright (EXIF), converted to RGB (or grayscale), scaled to
  cover SIZE and center-cropped, as `distill predict` reads pictures. Files
  that are not images, or classes that differ between train/ and test/, are
  refused before anything is written.

  \b
    distill make-shards photos data/photos-64 --image-size 64
    distill teacher --dataset stream --data-dir data/photos-64
  """
  from distill.data.convert import image_folders_to_shards  # noqa: PLC0415

  written = image_folders_to_shards(Path(source), Path(out), image_size=_image_size(image_size),
                                    grayscale=grayscale, overwrite=overwrite, quiet=quiet)
  _say(f"shards: {', '.join(str(path) for path in written.values())}")


def _image_size(text: str) -> int | tuple[int, int]:
  """--image-size's 64 or 48x64 as an int or (height, width)."""
  parts = text.lower().split("x")
  if len(parts) in (1, 2) and all(part.strip().isdigit() for part in parts):
    sizes = [int(part) for part in parts]
    return sizes[0] if len(sizes) == 1 else (sizes[0], sizes[1])
  raise UserError(f"--image-size {text!r} is not a size: give 64, or HxW such as 48x64")


@main.command(short_help="List the packaged recipes, or print one to copy and edit.")
@click.argument("name", required=False)
@_user_errors
def recipes(name):
  """List the packaged recipes with what each is for, or print recipe NAME's TOML.

  Every command's --recipe takes one of these names, or the path of your own
  file. To change a recipe, copy it and edit the copy:

  \b
    distill recipes demo > my_recipe.toml
    distill teacher --recipe my_recipe.toml

  or write a file that starts with `base = "demo"` and states only the keys it
  changes. Single keys are changed from the command line with --set.
  """
  click.echo(config_lib.recipe_text(name) if name else config_lib.recipes_listing(), nl=not name)


if __name__ == "__main__":
  from distill.launcher import restart_with_huge_pages

  restart_with_huge_pages()  # As the `distill` command does (see `distill.launcher`).
  main()

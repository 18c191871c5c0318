"""Training checkpoints through Orbax's CheckpointManager.

A checkpoint holds the whole training state (parameters, optimizer state,
step) plus a small JSON record (recipe hash, role). The data order and the
augmentation keys are functions of (seed, step), so the step is all that is
needed to continue exactly where a run stopped.
"""

from __future__ import annotations

import concurrent.futures
from pathlib import Path
from typing import Any

import jax
import orbax.checkpoint as ocp

from distill.errors import UserError
from distill.rundir import CHECKPOINTS_DIR


class Checkpointer:
  """Saves and restores one run's training state under `workdir/checkpoints`."""

  def __init__(self, workdir: Path, max_to_keep: int = 2):
    self.directory = Path(workdir).resolve() / CHECKPOINTS_DIR
    # Asynchronous: `save` returns once the state is copied off the devices and the
    # files are written while training goes on (a small model's step is faster than
    # Orbax's writing). `wait` and `close` wait for the writes.
    options = ocp.CheckpointManagerOptions(max_to_keep=max_to_keep, create=True,
                                           enable_async_checkpointing=True)
    try:
      self._manager = ocp.CheckpointManager(self.directory, options=options)
    except OSError as e:
      raise UserError(f"cannot create checkpoints in {self.directory}: {e}") from None
    self._handoff: concurrent.futures.Future | None = None  # see `save_in_background`

  def latest_step(self) -> int | None:
    """The newest saved step, or None."""
    return self._manager.latest_step()

  def save(self, step: int, state: Any, meta: dict[str, Any]) -> None:
    """Starts saving `state` (a pytree of arrays) and `meta` (JSON) at `step`.

    The state may be donated to the next step as soon as this returns; the
    checkpoint is complete (and `latest_step` names it) after `wait`.
    """
    self._manager.save(step, args=ocp.args.Composite(
        state=ocp.args.StandardSave(state), meta=ocp.args.JsonSave(meta)), force=True)

  def save_in_background(self, step: int, state: Any, meta: dict[str, Any]) -> None:
    """`save`, called from a thread of its own: returns at once.

    For a run's last save, whose caller goes on with the state (evaluating it)
    while Orbax takes it: handing even a small state to Orbax costs ~10-20 ms
    of Python (its asyncio loop and threads), a few percent of a small
    student's whole run. The state must not be donated or deleted until
    `wait` or `close`, which wait for the handoff and raise what it raised.
    """
    if self._handoff is not None:  # one handoff at a time: an earlier one's error is raised
      self._handoff.result()
    executor = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="distill-save")
    self._handoff = executor.submit(self.save, step, state, meta)
    executor.shutdown(wait=False)  # the thread ends with the save

  def wait(self) -> None:
    """Blocks until every checkpoint started so far is on disk."""
    handoff, self._handoff = self._handoff, None
    if handoff is not None:
      handoff.result()
    self._manager.wait_until_finished()

  def restore(self, step: int, like: Any) -> tuple[Any, dict[str, Any]]:
    """Restores the state saved at `step` into the structure and shardings of `like`."""
    abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, like)
    try:
      restored = self._manager.restore(step, args=ocp.args.Composite(
          state=ocp.args.StandardRestore(abstract), meta=ocp.args.JsonRestore()))
    except Exception as e:  # Orbax raises many types for a damaged checkpoint.
      raise UserError(f"checkpoint {self.directory}/{step} cannot be restored: {e}") from None
    return restored.state, dict(restored.meta)

  def restore_meta(self, step: int) -> dict[str, Any]:
    """Reads only the JSON record of the checkpoint at `step`."""
    restored = self._manager.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))
    return dict(restored.meta)

  def close(self) -> None:
    """Waits for pending writes and releases the manager."""
    try:
      self.wait()
    finally:
      self._manager.close()


def latest_meta(workdir: Path) -> dict[str, Any] | None:
  """The JSON record of the newest checkpoint under `workdir/checkpoints`.

  None when there is none, or it cannot be read: restoring it says why.
  """
  checkpointer = Checkpointer(workdir)
  try:
    latest = checkpointer.latest_step()
    return None if latest is None else checkpointer.restore_meta(latest)
  except Exception:  # Orbax raises many types for a damaged checkpoint.
    return None
  finally:
    checkpointer.close()

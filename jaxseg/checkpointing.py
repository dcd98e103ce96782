"""Orbax checkpoints of the train state (the only module that imports orbax).

Layout under `<workdir>/checkpoints/`:
  latest/<step>/   periodic and final checkpoints (the newest `keep` are kept);
                   a rerun resumes from the newest one.
  best/<step>/     the checkpoint with the best validation mean foreground Dice,
                   with that Dice in its `meta` item.

Orbax writes each checkpoint to a temporary directory and renames it when
complete, so a run killed while saving leaves no half-written checkpoint that
looks finished. A checkpoint that exists but cannot be read is an error
(`CheckpointError`), never a reason to start over and overwrite it.
"""

from __future__ import annotations

import pathlib
from typing import Any

import jax
import orbax.checkpoint as ocp

from jaxseg.errors import CheckpointError, WorkdirError


def _manager(directory: pathlib.Path, keep: int, read_only: bool) -> ocp.CheckpointManager:
  options = ocp.CheckpointManagerOptions(max_to_keep=keep, create=not read_only, read_only=read_only,
                                         enable_async_checkpointing=False)
  return ocp.CheckpointManager(directory, options=options)


class Checkpoints:
  """The latest and best checkpoints of one workdir."""

  def __init__(self, workdir: str | pathlib.Path, *, keep: int = 2, read_only: bool = False):
    self.directory = pathlib.Path(workdir).absolute() / "checkpoints"
    try:
      self._latest = _manager(self.directory / "latest", keep, read_only)
      self._best = _manager(self.directory / "best", 1, read_only)
    except OSError as e:
      raise WorkdirError(f"cannot create checkpoint directory {self.directory}: {e.strerror or e}") from e

  def latest_step(self) -> int | None:
    return self._latest.latest_step()

  def best_step(self) -> int | None:
    return self._best.latest_step()

  def best_dice(self) -> float:
    """Validation Dice of the best checkpoint (-inf when there is none)."""
    step = self.best_step()
    if step is None:
      return float("-inf")
    meta = self._restore(self._best, step, {"meta": ocp.args.JsonRestore()})["meta"]
    return float(meta["dice"])

  def save(self, step: int, state: Any) -> None:
    """Saves a periodic/final checkpoint (no-op if `step` is already saved)."""
    if step in self._latest.all_steps():
      return
    self._latest.save(step, args=ocp.args.Composite(state=ocp.args.StandardSave(state)))

  def save_best(self, step: int, state: Any, dice: float) -> bool:
    """Saves `state` as the best checkpoint if `dice` beats the stored best."""
    if not dice > self.best_dice() or step in self._best.all_steps():
      return False
    self._best.save(step, args=ocp.args.Composite(state=ocp.args.StandardSave(state),
                                                  meta=ocp.args.JsonSave({"dice": float(dice), "step": step})))
    return True

  def restore(self, abstract_state: Any, which: str | int = "latest") -> tuple[Any, int]:
    """Restores `which` ('latest', 'best' or a step number) onto `abstract_state`'s shardings.

    Raises:
      CheckpointError: when there is no such checkpoint or it cannot be read.
    """
    manager, step = self._resolve(which)
    restored = self._restore(manager, step, {"state": ocp.args.StandardRestore(abstract_state)})
    return restored["state"], step

  def _resolve(self, which: str | int) -> tuple[ocp.CheckpointManager, int]:
    if which == "best":
      step = self.best_step()
      if step is not None:
        return self._best, step
      which = "latest"  # No validation has run yet: the latest checkpoint is the best we have.
    if which == "latest":
      step = self.latest_step()
      if step is None:
        raise CheckpointError(f"no checkpoint in {self.directory}; train first")
      return self._latest, step
    try:
      step = int(which)
    except ValueError:
      raise CheckpointError(f"checkpoint {which!r} is not 'best', 'latest' or a step number") from None
    for manager in (self._latest, self._best):
      if step in manager.all_steps():
        return manager, step
    raise CheckpointError(f"no checkpoint for step {step} in {self.directory} "
                          f"(have {sorted(set(self._latest.all_steps()) | set(self._best.all_steps()))})")

  def _restore(self, manager: ocp.CheckpointManager, step: int, items: dict[str, Any]) -> Any:
    path = manager.directory / str(step)
    try:
      return manager.restore(step, args=ocp.args.Composite(**items))
    except Exception as e:  # Orbax raises many types for truncated or corrupt files.
      message = str(e).splitlines()[0][:300] if str(e) else type(e).__name__
      raise CheckpointError(f"checkpoint {path} is corrupt or unreadable ({message}); move it away "
                            "to resume from an older one, or use a new --workdir") from e

  def close(self) -> None:
    self._latest.close()
    self._best.close()


def abstract_like(tree: Any) -> Any:
  """ShapeDtypeStructs (with shardings) of a pytree of arrays."""
  return jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=getattr(x, "sharding", None)),
                      tree)

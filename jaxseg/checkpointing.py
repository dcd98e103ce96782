"""Orbax checkpoints of the train state (the only module that imports orbax).

Layout under `<workdir>/checkpoints/`:
  latest/<step>/   periodic and final checkpoints (the newest `keep` are kept);
                   a rerun resumes from the newest one.
  best/<step>/     the checkpoint with the best validation mean foreground Dice,
                   with that Dice in its `meta` item.

The workdir may be a gs:// bucket (`jaxseg.paths`); with several processes every
process writes its shards of each array and orbax's primary process the metadata.
Orbax writes each checkpoint to a temporary directory and renames it when
complete, so a run killed while saving leaves no half-written checkpoint that
looks finished. A checkpoint that exists but cannot be read is an error
(`CheckpointError`), never a reason to start over and overwrite it; so is a
checkpoint whose arrays do not match the state built from the config (another
model, another width), which is detected from orbax's metadata before any
array is read.
"""

from __future__ import annotations

import pathlib
from typing import Any

import jax
import orbax.checkpoint as ocp

from jaxseg import paths
from jaxseg.errors import CheckpointError, WorkdirError


def _manager(directory: paths.Path, keep: int, read_only: bool) -> ocp.CheckpointManager:
  options = ocp.CheckpointManagerOptions(
    max_to_keep=keep, create=not read_only, read_only=read_only, enable_async_checkpointing=False
  )
  return ocp.CheckpointManager(directory, options=options)


class Checkpoints:
  """The latest and best checkpoints of one workdir."""

  def __init__(self, workdir: str | pathlib.Path, *, keep: int = 2, read_only: bool = False):
    workdir = paths.resolve(workdir, "workdir")  # A local directory or a gs:// prefix (orbax takes both).
    self.directory = (workdir.absolute() if isinstance(workdir, pathlib.Path) else workdir) / "checkpoints"
    self.read_only = read_only
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
    self._check_writable()
    if step in self._latest.all_steps():
      return
    self._latest.save(step, args=ocp.args.Composite(state=ocp.args.StandardSave(state)))

  def save_best(self, step: int, state: Any, dice: float) -> bool:
    """Saves `state` as the best checkpoint if `dice` beats the stored best; True when it did."""
    self._check_writable()
    if not dice > self.best_dice() or step in self._best.all_steps():
      return False
    self._best.save(
      step,
      args=ocp.args.Composite(
        state=ocp.args.StandardSave(state), meta=ocp.args.JsonSave({"dice": float(dice), "step": step})
      ),
    )
    return True

  def _check_writable(self) -> None:
    # orbax skips a save of a read-only manager with a warning only; a caller that saves through a reader is a bug.
    if self.read_only:
      raise ValueError(f"{self.directory}: opened read_only, cannot save")

  def restore(self, abstract_state: Any, which: str | int = "latest", *, mismatch_hint: str = "") -> tuple[Any, int]:
    """Restores `which` ('latest', 'best' or a step number) onto `abstract_state`'s shardings.

    Args:
      abstract_state: pytree of `jax.ShapeDtypeStruct` (with shardings) of the state to restore.
      which: 'latest', 'best' (the latest when no best exists yet) or a step number.
      mismatch_hint: text appended to the error when the checkpoint does not match `abstract_state`.

    Raises:
      CheckpointError: when there is no such checkpoint, it cannot be read, or its arrays differ in
        names or shapes from `abstract_state`.
    """
    manager, step = self._resolve(which)
    self._check_matches(manager, step, abstract_state, mismatch_hint)
    restored = self._restore(manager, step, {"state": ocp.args.StandardRestore(abstract_state)})
    return restored["state"], step

  def _check_matches(self, manager: ocp.CheckpointManager, step: int, abstract_state: Any, hint: str) -> None:
    path = manager.directory / str(step)
    handler = ocp.StandardCheckpointHandler()
    try:
      stored = handler.metadata(path / "state")
    except Exception as e:  # Orbax raises many types for missing or corrupt metadata.
      raise _corrupt(path, e) from e
    finally:
      handler.close()
    problem = tree_difference(_shapes(stored), _shapes(abstract_state))
    if problem:
      raise CheckpointError(f"checkpoint {path} does not match the config: {problem}" + (f"; {hint}" if hint else ""))

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
    raise CheckpointError(
      f"no checkpoint for step {step} in {self.directory} "
      f"(have {sorted(set(self._latest.all_steps()) | set(self._best.all_steps()))})"
    )

  def _restore(self, manager: ocp.CheckpointManager, step: int, items: dict[str, Any]) -> Any:
    path = manager.directory / str(step)
    try:
      return manager.restore(step, args=ocp.args.Composite(**items))
    except Exception as e:  # Orbax raises many types for truncated or corrupt files.
      raise _corrupt(path, e) from e

  def close(self) -> None:
    self._latest.close()
    self._best.close()


def _corrupt(path: paths.Path, error: Exception) -> CheckpointError:
  message = str(error).splitlines()[0][:300] if str(error) else type(error).__name__
  return CheckpointError(
    f"checkpoint {path} is corrupt or unreadable ({message}); move it away "
    "to resume from an older one, or use a new --workdir"
  )


def _shapes(tree: Any) -> dict[str, tuple[int, ...]]:
  """'params/down0/conv0/kernel' -> shape, for every array leaf of a pytree (or orbax metadata tree)."""

  def name(key) -> str:
    for attr in ("key", "name", "idx"):
      if hasattr(key, attr):
        return str(getattr(key, attr))
    return str(key)

  leaves = jax.tree_util.tree_flatten_with_path(tree)[0]
  return {"/".join(name(k) for k in path): tuple(getattr(leaf, "shape", ()) or ()) for path, leaf in leaves}


def tree_difference(stored: dict[str, tuple[int, ...]], expected: dict[str, tuple[int, ...]]) -> str:
  """A one-line description of how two {array name: shape} maps differ ('' when they agree).

  Model arrays (params, batch_stats) are named before optimiser state, so the message points
  at the layer that differs.
  """

  def order(names):
    return sorted(names, key=lambda n: (0 if n.startswith("params") else 1 if n.startswith("batch_stats") else 2, n))

  shape_diff = [n for n in order(stored.keys() & expected.keys()) if stored[n] != expected[n]]
  missing = order(expected.keys() - stored.keys())
  extra = order(stored.keys() - expected.keys())
  parts = []
  if shape_diff:
    n = shape_diff[0]
    more = f" (and {len(shape_diff) - 1} more arrays)" if len(shape_diff) > 1 else ""
    parts.append(f"{n} has shape {stored[n]} in the checkpoint but {expected[n]} for this config{more}")
  if missing:
    parts.append(f"{len(missing)} arrays of this config's state are not in the checkpoint (e.g. {missing[0]})")
  if extra:
    parts.append(f"{len(extra)} arrays of the checkpoint are not in this config's state (e.g. {extra[0]})")
  return "; ".join(parts)

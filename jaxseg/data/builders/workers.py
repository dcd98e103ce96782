"""Per-case work of a dataset preparation, run in parallel over cases.

The functions here take and return picklable values, so that they run in
'spawn' worker processes; this module imports neither TensorFlow Datasets nor
JAX, so a worker starts in about a second. `ordered_map` runs them in a
process pool (or inline for one worker) and yields results in input order,
with a bounded number of cases in flight so memory stays flat on large
datasets.

A 'spawn' worker starts by running the parent's main script again (as
`__mp_main__`). A script that prepares a dataset at its top level, without
`if __name__ == "__main__":`, would have every worker start the same
preparation and wait for the parent's lock: a silent hang. `process_pool`
therefore reads the main script's statement being run and, when it is
unguarded, prepares in this process instead (one line on the log says so and
how to get the worker processes back).
"""

from __future__ import annotations

import ast
import collections
import concurrent.futures
import json
import multiprocessing
import pathlib
import sys
from typing import Any, Callable, Iterable, Iterator, TypeVar

import numpy as np
from absl import logging

from jaxseg.data import nifti, preprocess

Job = TypeVar("Job")
Result = TypeVar("Result")


def fingerprint_case(job: tuple[nifti.RawCase, nifti.RawDataset, int]) -> preprocess.CaseStatistics:
  """Reads one training case and returns its foreground statistics.

  Args:
    job: (case, dataset, index of the case among the training cases).
  """
  case, raw, index = job
  loaded = nifti.load_case(case, raw)
  image, label, info = preprocess.to_canonical(loaded.image, loaded.label, loaded.affine)
  return preprocess.case_statistics(image, label, info.spacing, index)


def preprocess_example(
  job: tuple[nifti.RawCase, nifti.RawDataset, preprocess.Plan],
) -> tuple[dict[str, Any], dict[str, int]]:
  """Reads and preprocesses one case into a record of the prepared dataset.

  Returns:
    (example, class_voxels): the record's features (`image` float32
    `[Z, Y, X, C]`, `label` uint8 `[Z, Y, X]`, `case_id`, `spacing` (z, y, x)
    mm, `meta` JSON) and the number of voxels of each label value present,
    keyed by the value as a string.
  """
  case, raw, plan = job
  out = preprocess.preprocess_case(nifti.load_case(case, raw), plan)
  counts = np.bincount(out.label.ravel(), minlength=1)
  class_voxels = {str(value): int(n) for value, n in enumerate(counts) if n}
  example = {
    "image": out.image.astype(np.float32),
    "label": out.label.astype(np.uint8),
    "case_id": out.case_id,
    "spacing": np.asarray(out.spacing, np.float32),
    "meta": json.dumps(out.meta),
  }
  return example, class_voxels


def _is_main_guard(node: ast.stmt) -> bool:
  """Whether `node` is `if __name__ == "__main__":` (either operand order, possibly `and`-ed with more)."""

  def is_check(test: ast.expr) -> bool:
    if isinstance(test, ast.BoolOp) and isinstance(test.op, ast.And):
      return any(is_check(value) for value in test.values)
    if not (isinstance(test, ast.Compare) and len(test.ops) == 1 and isinstance(test.ops[0], ast.Eq)):
      return False
    operands = [test.left, test.comparators[0]]
    return any(isinstance(o, ast.Name) and o.id == "__name__" for o in operands) and any(
      isinstance(o, ast.Constant) and o.value == "__main__" for o in operands
    )

  return isinstance(node, ast.If) and is_check(node.test)


def unguarded_main_statement() -> str | None:
  """`"FILE:LINE"` of the main script's top-level statement running now if spawned workers would rerun it.

  None when spawning is safe: no main script file (interactive, `python -c`,
  notebooks), the main script's top level is not on this thread's stack, or
  the statement lies in the body of `if __name__ == "__main__":`. A script
  whose source cannot be read counts as unguarded.
  """
  main = sys.modules.get("__main__")
  if getattr(main, "__file__", None) is None:
    return None
  frame = sys._getframe(1)  # pylint: disable=protected-access
  while frame is not None and not (frame.f_code.co_name == "<module>" and frame.f_globals is vars(main)):
    frame = frame.f_back
  if frame is None:
    return None
  filename, line = frame.f_code.co_filename, frame.f_lineno
  location = f"{filename}:{line}"
  try:
    tree = ast.parse(pathlib.Path(filename).read_text(encoding="utf-8"))
  except (OSError, SyntaxError, ValueError, UnicodeDecodeError):
    return location
  for node in tree.body:
    if node.lineno <= line <= (node.end_lineno or node.lineno):
      guarded = _is_main_guard(node) and any(
        inner.lineno <= line <= (inner.end_lineno or inner.lineno) for inner in node.body
      )
      return None if guarded else location
  return location


def process_pool(num_workers: int) -> concurrent.futures.ProcessPoolExecutor | None:
  """A pool of 'spawn' processes (safe when JAX is loaded), or None for one worker.

  Also None, with a warning, when the main script is running an unguarded
  top-level statement (module docstring): its workers would run it again.
  """
  if num_workers <= 1:
    return None
  location = unguarded_main_statement()
  if location is not None:
    logging.warning(
      '%s prepares a dataset outside `if __name__ == "__main__":`, which %d worker processes '
      "would run again; preparing in this process instead. Move the script's work under that "
      "guard to prepare in parallel.",
      location,
      num_workers,
    )
    return None
  return concurrent.futures.ProcessPoolExecutor(num_workers, mp_context=multiprocessing.get_context("spawn"))


def ordered_map(
  fn: Callable[[Job], Result], jobs: Iterable[Job], pool: concurrent.futures.Executor | None, in_flight: int
) -> Iterator[Result]:
  """`map(fn, jobs)` in `pool`, in order, with at most `in_flight` jobs submitted ahead.

  The first exception of a job is raised here (for example the `DataError`
  naming a corrupt file) and the jobs not yet started are cancelled.
  """
  if pool is None:
    yield from map(fn, jobs)
    return
  pending: collections.deque[concurrent.futures.Future] = collections.deque()
  try:
    for job in jobs:
      pending.append(pool.submit(fn, job))
      if len(pending) >= in_flight:
        yield pending.popleft().result()
    while pending:
      yield pending.popleft().result()
  finally:
    for future in pending:
      future.cancel()

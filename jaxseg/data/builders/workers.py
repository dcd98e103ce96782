"""Per-case work of a dataset preparation, run in parallel over cases.

The functions here take and return picklable values, so that they run in
'spawn' worker processes; this module imports neither TensorFlow Datasets nor
JAX, so a worker starts in about a second. `ordered_map` runs them in a
process pool (or inline for one worker) and yields results in input order,
with a bounded number of cases in flight so memory stays flat on large
datasets.
"""

from __future__ import annotations

import collections
import concurrent.futures
import json
import multiprocessing
from typing import Any, Callable, Iterable, Iterator, TypeVar

import numpy as np

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


def preprocess_example(job: tuple[nifti.RawCase, nifti.RawDataset, preprocess.Plan]
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


def process_pool(num_workers: int) -> concurrent.futures.ProcessPoolExecutor | None:
  """A pool of 'spawn' processes (safe when JAX is loaded), or None for one worker."""
  if num_workers <= 1:
    return None
  return concurrent.futures.ProcessPoolExecutor(num_workers, mp_context=multiprocessing.get_context("spawn"))


def ordered_map(fn: Callable[[Job], Result], jobs: Iterable[Job],
                pool: concurrent.futures.Executor | None, in_flight: int) -> Iterator[Result]:
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

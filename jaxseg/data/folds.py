"""nnU-Net's 5-fold cross-validation over a prepared dataset (`config.data.fold`).

The folds split the cases that are not held out for testing (the prepared
dataset's 'train' and 'validation' splits together) as nnU-Net v2 splits its
training cases: scikit-learn's `KFold(n_splits=5, shuffle=True,
random_state=12345)` over the sorted case ids, fold k validating on the k-th
part and training on the other four (both lists sorted). They are computed
when the dataset is prepared and stored in its metadata (`folds`); datasets
prepared before get the same folds computed from their splits. The 'test'
split is never part of a fold.

`select(prepared, fold)` returns a view of the prepared dataset whose 'train'
and 'validation' splits are the fold's; its records are read from wherever
they are stored, so nothing is prepared again. Fold 'all' trains on every
non-test case and validates on the fixed validation split, which is then
part of the training data (as in nnU-Net, its scores are not held-out
scores).
"""

from __future__ import annotations

import dataclasses
from typing import Any, Sequence

import numpy as np

from jaxseg.errors import ConfigError, DataError

NUM_FOLDS = 5
SEED = 12345
FOLDS = tuple(str(k) for k in range(NUM_FOLDS)) + ("all",)


def kfold(case_ids: Sequence[str], num_folds: int = NUM_FOLDS, seed: int = SEED) -> list[dict[str, list[str]]]:
  """nnU-Net's folds: [{'train': ids, 'val': ids}] per fold (sklearn KFold with shuffle, reimplemented).

  The sorted ids' indices are shuffled by `np.random.RandomState(seed)`; the first `n % num_folds` folds get
  `n // num_folds + 1` of them, the others `n // num_folds`, consecutively.

  Raises:
    DataError: fewer cases than folds.
  """
  ids = sorted(case_ids)
  if len(ids) < num_folds:
    raise DataError(f"{num_folds}-fold cross-validation needs at least {num_folds} training and validation cases, "
                    f"the dataset has {len(ids)}")
  order = np.arange(len(ids))
  np.random.RandomState(seed).shuffle(order)
  sizes = np.full(num_folds, len(ids) // num_folds)
  sizes[:len(ids) % num_folds] += 1
  folds, start = [], 0
  for size in sizes:
    held = np.zeros(len(ids), bool)
    held[order[start:start + size]] = True
    start += size
    folds.append({"train": [ids[i] for i in np.flatnonzero(~held)], "val": [ids[i] for i in np.flatnonzero(held)]})
  return folds


def dataset_folds(splits: dict[str, list[str]]) -> list[dict[str, list[str]]]:
  """The folds of a dataset's non-test cases ([] when there are fewer than NUM_FOLDS)."""
  pool = list(splits.get("train", [])) + list(splits.get("validation", []))
  return kfold(pool) if len(pool) >= NUM_FOLDS else []


class RecordSelection:
  """Records of several stored splits as one random-access source (picklable, like the TFDS sources it holds)."""

  def __init__(self, sources: dict[str, Any], records: Sequence[tuple[str, int]]):
    self.sources = sources
    self.records = list(records)

  def __len__(self) -> int:
    return len(self.records)

  def __getitem__(self, index: int):
    split, i = self.records[int(index)]
    return self.sources[split][i]


class FoldBuilder:
  """A prepared dataset's TFDS builder whose `as_data_source` serves a fold's splits; everything else delegates."""

  def __init__(self, builder, records: dict[str, list[tuple[str, int]]]):
    self._builder = builder
    self._records = records

  def as_data_source(self, split: str):
    records = self._records.get(split, [])
    stored = sorted({s for s, _ in records})
    return RecordSelection({s: self._builder.as_data_source(split=s) for s in stored}, records)

  def __getattr__(self, name: str):
    if name.startswith("__") or name in ("_builder", "_records"):
      raise AttributeError(name)
    return getattr(self._builder, name)

  def __getstate__(self):
    return self.__dict__

  def __setstate__(self, state):
    self.__dict__.update(state)


def select(prepared, fold: str):
  """`prepared` (a `pipeline.PreparedDataset`) with the train / validation splits of `fold`.

  Args:
    prepared: the prepared dataset.
    fold: '' (unchanged), '0'..'4' or 'all' (`config.data.fold`).

  Raises:
    ConfigError: `fold` is not one of those.
    DataError: the dataset has fewer than NUM_FOLDS non-test cases.
  """
  fold = str(fold)
  if fold == "":
    return prepared
  if fold not in FOLDS:
    raise ConfigError(f"config.data.fold: {fold!r} is not a fold; use '' (the fixed split), 0..{NUM_FOLDS - 1} "
                      "or 'all'")
  meta = prepared.builder.info.metadata
  folds = meta.get("folds") or dataset_folds(prepared.splits)
  if not folds:
    raise DataError(f"config.data.fold={fold}: {NUM_FOLDS}-fold cross-validation needs at least {NUM_FOLDS} "
                    f"training and validation cases, dataset {prepared.name!r} has "
                    f"{len(prepared.splits.get('train', [])) + len(prepared.splits.get('validation', []))}")
  where = {case_id: (split, i) for split in ("train", "validation") for i, case_id in
           enumerate(prepared.splits.get(split, []))}
  if fold == "all":
    wanted = {"train": sorted(where), "validation": list(prepared.splits.get("validation", []))}
  else:
    wanted = {"train": list(folds[int(fold)]["train"]), "validation": list(folds[int(fold)]["val"])}
  missing = [c for ids in wanted.values() for c in ids if c not in where]
  if missing:
    raise DataError(f"{prepared.builder.data_dir}: the stored folds name cases {missing[:3]} that are not in its "
                    "train or validation split; prepare the dataset again")
  records = {name: [where[c] for c in ids] for name, ids in wanted.items()}
  test = prepared.splits.get("test", [])
  records["test"] = [("test", i) for i in range(len(test))]
  splits = {**wanted, "test": list(test)}
  class_voxels = {name: [prepared.class_voxels[s][i] for s, i in recs] for name, recs in records.items() if recs}
  return dataclasses.replace(prepared, builder=FoldBuilder(prepared.builder, records), splits=splits,
                             class_voxels=class_voxels)

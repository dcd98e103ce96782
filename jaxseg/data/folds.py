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

`subset_train(prepared, k)` (`config.data.max_train_cases`, applied by
`select` after the fold) keeps the first k cases of a fixed seeded
permutation of the training split (`train_order`: numpy's
`RandomState(SUBSET_SEED)` over the sorted ids), so the subsets are nested
(2 cases are among the 4, those among the 8...) and the same for every
`config.seed`; validation and test are unchanged.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Sequence

import numpy as np

from jaxseg.errors import ConfigError, DataError

NUM_FOLDS = 5
SEED = 12345
FOLDS = tuple(str(k) for k in range(NUM_FOLDS)) + ("all",)
SUBSET_SEED = 12345  # The permutation of the training split whose first k cases `max_train_cases=k` keeps.


def kfold(case_ids: Sequence[str], num_folds: int = NUM_FOLDS, seed: int = SEED) -> list[dict[str, list[str]]]:
  """nnU-Net's folds: [{'train': ids, 'val': ids}] per fold (sklearn KFold with shuffle, reimplemented).

  The sorted ids' indices are shuffled by `np.random.RandomState(seed)`; the first `n % num_folds` folds get
  `n // num_folds + 1` of them, the others `n // num_folds`, consecutively.

  Raises:
    DataError: fewer cases than folds.
  """
  ids = sorted(case_ids)
  if len(ids) < num_folds:
    raise DataError(
      f"{num_folds}-fold cross-validation needs at least {num_folds} training and validation cases, "
      f"the dataset has {len(ids)}"
    )
  order = np.arange(len(ids))
  np.random.RandomState(seed).shuffle(order)
  sizes = np.full(num_folds, len(ids) // num_folds)
  sizes[: len(ids) % num_folds] += 1
  folds, start = [], 0
  for size in sizes:
    held = np.zeros(len(ids), bool)
    held[order[start : start + size]] = True
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


def train_order(case_ids: Sequence[str], seed: int = SUBSET_SEED) -> list[str]:
  """The sorted ids in the order `np.random.RandomState(seed).permutation` gives; `max_train_cases=k`
  trains on the first k (so a smaller subset is always inside a larger one)."""
  ids = sorted(case_ids)
  return [ids[i] for i in np.random.RandomState(seed).permutation(len(ids))]


def subset_train(prepared, max_train_cases: int):
  """`prepared` whose 'train' split holds only the first `max_train_cases` of `train_order` (0: unchanged).

  The kept cases stay in their record order; 'validation' and 'test' are untouched. Works on a fold's view
  too (the records are read through it).

  Raises:
    ConfigError: `max_train_cases` is negative or more than the training split has.
  """
  train = list(prepared.splits.get("train", []))
  if max_train_cases == 0:
    return prepared
  if max_train_cases < 0 or max_train_cases > len(train):
    raise ConfigError(
      f"config.data.max_train_cases={max_train_cases} but the training split of dataset "
      f"{prepared.name!r} has {len(train)} cases; use 0 (all) or 1..{len(train)}"
    )
  kept = set(train_order(train)[:max_train_cases])
  records = {
    split: [(split, i) for i in range(len(prepared.splits.get(split, [])))] for split in ("validation", "test")
  }
  records["train"] = [("train", i) for i, case_id in enumerate(train) if case_id in kept]
  splits = {**prepared.splits, "train": [train[i] for _, i in records["train"]]}
  class_voxels = dict(prepared.class_voxels)
  class_voxels["train"] = [prepared.class_voxels["train"][i] for _, i in records["train"]]
  return dataclasses.replace(
    prepared, builder=FoldBuilder(prepared.builder, records), splits=splits, class_voxels=class_voxels
  )


def select(prepared, fold: str, max_train_cases: int = 0):
  """`prepared` (a `pipeline.PreparedDataset`) with the train / validation splits of `fold`, then the
  training split cut to `max_train_cases` (`subset_train`; 0 keeps it whole).

  Args:
    prepared: the prepared dataset.
    fold: '' (unchanged), '0'..'4' or 'all' (`config.data.fold`).
    max_train_cases: `config.data.max_train_cases`.

  Raises:
    ConfigError: `fold` is not one of those, or `max_train_cases` is more than the training split has.
    DataError: the dataset has fewer than NUM_FOLDS non-test cases.
  """
  fold = str(fold)
  if fold == "":
    return subset_train(prepared, max_train_cases)
  if fold not in FOLDS:
    raise ConfigError(
      f"config.data.fold: {fold!r} is not a fold; use '' (the fixed split), 0..{NUM_FOLDS - 1} or 'all'"
    )
  meta = prepared.builder.info.metadata
  folds = meta.get("folds") or dataset_folds(prepared.splits)
  if not folds:
    raise DataError(
      f"config.data.fold={fold}: {NUM_FOLDS}-fold cross-validation needs at least {NUM_FOLDS} "
      f"training and validation cases, dataset {prepared.name!r} has "
      f"{len(prepared.splits.get('train', [])) + len(prepared.splits.get('validation', []))}"
    )
  where = {
    case_id: (split, i) for split in ("train", "validation") for i, case_id in enumerate(prepared.splits.get(split, []))
  }
  if fold == "all":
    wanted = {"train": sorted(where), "validation": list(prepared.splits.get("validation", []))}
  else:
    wanted = {"train": list(folds[int(fold)]["train"]), "validation": list(folds[int(fold)]["val"])}
  missing = [c for ids in wanted.values() for c in ids if c not in where]
  if missing:
    raise DataError(
      f"{prepared.builder.data_dir}: the stored folds name cases {missing[:3]} that are not in its "
      "train or validation split; prepare the dataset again"
    )
  records = {name: [where[c] for c in ids] for name, ids in wanted.items()}
  test = prepared.splits.get("test", [])
  records["test"] = [("test", i) for i in range(len(test))]
  splits = {**wanted, "test": list(test)}
  class_voxels = {name: [prepared.class_voxels[s][i] for s, i in recs] for name, recs in records.items() if recs}
  return subset_train(
    dataclasses.replace(
      prepared, builder=FoldBuilder(prepared.builder, records), splits=splits, class_voxels=class_voxels
    ),
    max_train_cases,
  )

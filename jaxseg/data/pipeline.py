"""grain input pipelines over TFDS-prepared datasets.

`prepare(config)` makes sure the dataset exists (generating an embedded phantom
or reading `config.data.root`) and is prepared by the TFDS builder, then
`train_batches` yields this process's share of every global batch and
`CaseSource` gives whole preprocessed cases for evaluation.

Training batches are a pure function of (seed, step): global sample i of step
s is drawn with `np.random.default_rng([seed, s * B + i])`, so resuming at
step s continues the exact sequence an uninterrupted run would have seen,
whatever the number of processes or read threads.
"""

from __future__ import annotations

import collections
import dataclasses
import json
import pathlib
import threading
from typing import Iterator

import grain
import jax
import ml_collections
import numpy as np

from jaxseg import config as config_lib
from jaxseg.data import phantoms, preprocess, transforms
from jaxseg.data.builders.raw import RawSegmentation
from jaxseg.errors import DataError, WorkdirError


@dataclasses.dataclass(frozen=True)
class PreparedDataset:
  """A prepared dataset and what the rest of jaxseg needs to know about it."""
  builder: RawSegmentation
  name: str
  labels: dict[str, int]        # class name -> label value, background included
  channel_names: tuple[str, ...]
  plan: preprocess.Plan
  splits: dict[str, list[str]]  # split -> case ids

  @property
  def num_classes(self) -> int:
    return max(self.labels.values()) + 1

  @property
  def num_channels(self) -> int:
    return len(self.channel_names)

  @property
  def foreground(self) -> dict[str, int]:
    return {name: value for name, value in self.labels.items() if value != 0}


def raw_root(config: ml_collections.ConfigDict) -> pathlib.Path:
  """The raw dataset directory, generating an embedded phantom on first use."""
  if config.data.name in phantoms.PHANTOMS:
    return phantoms.ensure_phantom(config.data.name, config_lib.data_dir(config),
                                   num_cases=config.data.num_cases or None, seed=0)
  root = pathlib.Path(config.data.root).expanduser()
  if not root.is_dir():
    raise DataError(f"config.data.root: {root} is not a directory")
  return root


def prepare(config: ml_collections.ConfigDict) -> PreparedDataset:
  """Prepares the configured dataset once (process 0 writes, others wait) and opens it."""
  root = raw_root(config) if jax.process_index() == 0 else None
  if jax.process_count() > 1:
    from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top
    multihost_utils.sync_global_devices("jaxseg raw dataset ready")
    root = root or raw_root(config)
  prepared_dir = config_lib.data_dir(config) / "prepared"
  builder = RawSegmentation(raw_root=root, data_dir=str(prepared_dir))
  if jax.process_index() == 0:
    try:
      builder.download_and_prepare()
    except PermissionError as e:
      raise WorkdirError(f"cannot write prepared data under {prepared_dir}: {e.strerror}") from e
  if jax.process_count() > 1:
    multihost_utils.sync_global_devices("jaxseg dataset prepared")
    builder = RawSegmentation(raw_root=root, data_dir=str(prepared_dir))
  meta = builder.info.metadata
  return PreparedDataset(builder=builder, name=meta["name"], labels={k: int(v) for k, v in meta["labels"].items()},
                         channel_names=tuple(meta["channel_names"]),
                         plan=preprocess.Plan.from_dict(meta["plan"]), splits=dict(meta["splits"]))


class CaseSource:
  """Random access to one split's preprocessed cases, decoded once and kept in an LRU cache."""

  def __init__(self, prepared: PreparedDataset, split: str, cache_size: int = 64):
    self.split = split
    self._source = prepared.builder.as_data_source(split=split) if prepared.splits.get(split) else []
    self._cache: collections.OrderedDict[int, transforms.Case] = collections.OrderedDict()
    self._cache_size = cache_size
    self._lock = threading.Lock()

  def __len__(self) -> int:
    return len(self._source)

  def __getitem__(self, index: int) -> transforms.Case:
    with self._lock:
      if index in self._cache:
        self._cache.move_to_end(index)
        return self._cache[index]
    record = self._source[index]
    case = transforms.make_case(_text(record["case_id"]), record["image"], record["label"],
                                record["spacing"], json.loads(_text(record["meta"])))
    with self._lock:
      self._cache[index] = case
      while len(self._cache) > self._cache_size:
        self._cache.popitem(last=False)
    return case

  def __iter__(self) -> Iterator[transforms.Case]:
    return (self[i] for i in range(len(self)))


def _text(value) -> str:
  return value.decode() if isinstance(value, bytes) else str(value)


def train_batches(config: ml_collections.ConfigDict, source: CaseSource, *, start_step: int,
                  local_batch_size: int) -> Iterator[dict[str, np.ndarray]]:
  """This process's slices of the global batches of steps start_step .. num_steps - 1.

  Yields `image` `[b, *patch, C]` float32 and `label` `[b, *patch]` int32 with
  b = local_batch_size, process p holding global rows p*b .. (p+1)*b - 1.
  """
  if len(source) == 0:
    raise DataError("the training split is empty: no case to train on")
  data = config.data
  global_batch = config.train.batch_size
  offset = jax.process_index() * local_batch_size
  patch_size = tuple(data.patch_size)

  def sample(local_index: int) -> dict[str, np.ndarray]:
    step, row = divmod(local_index, local_batch_size)
    position = offset + row
    rng = np.random.default_rng([config.seed, step * global_batch + position])
    case = source[int(rng.integers(len(source)))]
    force = transforms.is_forced_foreground(position, global_batch, data.foreground_fraction)
    return transforms.training_sample(case, patch_size, rng, force_foreground=force, augment=data.augment)

  dataset = (grain.MapDataset.range(start_step * local_batch_size, config.train.num_steps * local_batch_size)
             .map(sample)
             .batch(local_batch_size, drop_remainder=True))
  options = grain.ReadOptions(num_threads=data.num_threads, prefetch_buffer_size=data.prefetch)
  return iter(dataset.to_iter_dataset(options))

"""grain input pipelines over TFDS-prepared datasets.

`prepare(config)` makes sure the dataset exists (generating an embedded
phantom, or reading `config.data.root`) and is prepared by its TFDS builder
(`builders.raw.RawSegmentation` for any raw directory, `builders.msd.MsdTask`
when `config.data.task` names a Decathlon task), then opens the prepared
directory with `tfds.builder_from_directory`. `train_batches` yields this
process's share of every global batch, read through `tfds` array_record data
sources by a grain pipeline (read threads, or worker processes with
`config.data.num_workers`); `CaseSource` gives whole preprocessed cases for
evaluation.

Training batches are a pure function of (seed, step): global sample i of step
s is drawn with `np.random.default_rng([seed, s * B + i])`, so resuming at
step s continues the exact sequence an uninterrupted run would have seen,
whatever the number of processes, read threads or worker processes.
"""

from __future__ import annotations

import collections
import dataclasses
import json
import pathlib
import threading
from typing import Any, Iterator

import grain
import jax
from absl import flags
import ml_collections
import numpy as np
import tensorflow_datasets as tfds

from jaxseg import models
from jaxseg.data import augment as augment_lib
from jaxseg.data import device_augment
from jaxseg.data import location
from jaxseg.data import nifti, phantoms, preprocess, sampling
from jaxseg.data.builders import msd, raw, segmentation
from jaxseg.errors import ConfigError, DataError, WorkdirError


@dataclasses.dataclass(frozen=True)
class PreparedDataset:
  """A prepared dataset and what the rest of jaxseg needs to know about it.

  Attributes:
    builder: read-only TFDS builder of the prepared directory; its
      `info.metadata` holds everything `segmentation.SegmentationBuilder`
      records (raw_root, plan, fingerprint, splits, class_voxels...).
    name: the raw dataset's name.
    labels: class name -> label value, background included.
    channel_names: image channels in channel order.
    plan: the preprocessing every case went through.
    splits: split -> case ids, in record order.
    ndim: 2 or 3, spatial dimensions of the raw images.
    class_voxels: split -> per record, label value (str) -> voxel count.
  """

  builder: tfds.core.DatasetBuilder
  name: str
  labels: dict[str, int]
  channel_names: tuple[str, ...]
  plan: preprocess.Plan
  splits: dict[str, list[str]]
  ndim: int
  class_voxels: dict[str, list[dict[str, int]]]

  @classmethod
  def open(cls, prepared_dir: pathlib.Path) -> PreparedDataset:
    """Opens a prepared dataset directory (`<data_dir>/prepared/<builder>/<config>/<version>`)."""
    builder = tfds.builder_from_directory(str(prepared_dir))
    meta = builder.info.metadata
    return cls(
      builder=builder,
      name=meta["name"],
      labels={k: int(v) for k, v in meta["labels"].items()},
      channel_names=tuple(meta["channel_names"]),
      plan=preprocess.Plan.from_dict(meta["plan"]),
      splits={k: list(v) for k, v in meta["splits"].items()},
      ndim=int(meta["ndim"]),
      class_voxels={k: list(v) for k, v in meta["class_voxels"].items()},
    )

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
  """The raw dataset directory (with `data.task`: the manual directory), generating a phantom on first use."""
  if config.data.name in phantoms.PHANTOMS:
    where = location.data_dir(config)
    if not isinstance(where, pathlib.Path):  # A gs:// data_dir: raw NIfTI stay local, prepared data go there.
      from jaxseg import paths  # pylint: disable=g-import-not-at-top

      where = paths.local_cache_dir()
    return phantoms.ensure_phantom(config.data.name, where, num_cases=config.data.num_cases or None, seed=0)
  root = pathlib.Path(config.data.root).expanduser()
  if not root.is_dir() and not config.data.task:  # A prepared task needs no raw files.
    raise DataError(f"config.data.root: {root} is not a directory")
  return root


def dataset_builder(
  config: ml_collections.ConfigDict, root: pathlib.Path
) -> tuple[segmentation.SegmentationBuilder, dict[str, Any]]:
  """The builder of the configured dataset and the keyword arguments of its `download_and_prepare`."""
  prepared_dir = str(location.data_dir(config) / "prepared")
  workers = config.data.prepare_workers
  if config.data.task:
    builder = msd.MsdTask(config=config.data.task, data_dir=prepared_dir, num_workers=workers)
    return builder, {"download_config": tfds.download.DownloadConfig(manual_dir=str(root))}
  return raw.RawSegmentation(raw_root=root, data_dir=prepared_dir, num_workers=workers), {}


def prepare(config: ml_collections.ConfigDict) -> PreparedDataset:
  """Prepares the configured dataset once (process 0 writes, others wait) and opens it.

  Raises:
    DataError: the raw dataset is missing or malformed (names the file).
    WorkdirError: the prepared data cannot be written.
    ConfigError: a 3D model is configured for a 2D dataset.
  """
  root = raw_root(config) if jax.process_index() == 0 else None
  if jax.process_count() > 1:
    from jaxseg import parallel  # pylint: disable=g-import-not-at-top

    parallel.barrier("raw dataset ready")  # Coordination service: no 30 s gloo rendezvous limit.
    root = root or raw_root(config)
  builder, prepare_kwargs = dataset_builder(config, root)
  if jax.process_index() == 0:
    try:
      builder.download_and_prepare(**prepare_kwargs)
    except PermissionError as e:
      raise WorkdirError(f"cannot write prepared data under {builder.prepared_dir.parent}: {e.strerror}") from e
  if jax.process_count() > 1:
    parallel.barrier("dataset prepared")
  prepared = PreparedDataset.open(builder.prepared_dir)
  if config.data.task:
    _check_same_task_copy(prepared, root, config.data.task, builder.prepared_dir)
  if models.spatial_dims(config.model.name) == 3 and prepared.ndim == 2:
    raise ConfigError(
      f"config.model.name: {config.model.name!r} is a 3D model but dataset {prepared.name!r} is 2D; choose a 2D model"
    )
  return prepared


def _check_same_task_copy(
  prepared: PreparedDataset, manual_dir: pathlib.Path, task: str, prepared_dir: pathlib.Path
) -> None:
  """Refuses a prepared task made from different raw files than those now in `manual_dir`."""
  try:
    raw_dataset = nifti.read_dataset(msd.task_root(manual_dir, task))
  except DataError:
    return  # The raw files are not needed once the task is prepared.
  recorded = prepared.builder.info.metadata["raw_signature"]
  if segmentation.raw_signature(raw_dataset, with_location=False) != recorded:
    raise DataError(
      f"{prepared_dir}: prepared from other {task} files ({prepared.builder.info.metadata['raw_root']}) "
      f"than those in {raw_dataset.root}; delete {prepared_dir} to prepare them"
    )


class CaseSource:
  """Random access to one split's preprocessed cases, decoded once and kept in an LRU cache.

  Picklable (grain worker processes get their own reader and cache).
  """

  def __init__(self, prepared: PreparedDataset, split: str, cache_size: int = 64):
    self.split = split
    self.case_ids = list(prepared.splits.get(split, []))
    self.index = sampling.CaseIndex.from_class_voxels(prepared.class_voxels.get(split, []))
    self._source = prepared.builder.as_data_source(split=split) if self.case_ids else []
    self._cache: collections.OrderedDict[int, sampling.Case] = collections.OrderedDict()
    self._cache_size = cache_size
    self._lock = threading.Lock()

  def __len__(self) -> int:
    return len(self._source)

  def __getitem__(self, index: int) -> sampling.Case:
    with self._lock:
      if index in self._cache:
        self._cache.move_to_end(index)
        return self._cache[index]
    record = self._source[index]
    case = sampling.make_case(
      _text(record["case_id"]), record["image"], record["label"], record["spacing"], json.loads(_text(record["meta"]))
    )
    with self._lock:
      self._cache[index] = case
      while len(self._cache) > self._cache_size:
        self._cache.popitem(last=False)
    return case

  def __iter__(self) -> Iterator[sampling.Case]:
    return (self[i] for i in range(len(self)))

  def __getstate__(self) -> dict[str, Any]:
    state = dict(self.__dict__)
    state["_cache"] = collections.OrderedDict()
    del state["_lock"]
    return state

  def __setstate__(self, state: dict[str, Any]) -> None:
    self.__dict__.update(state)
    self._lock = threading.Lock()


def _text(value) -> str:
  return value.decode() if isinstance(value, bytes) else str(value)


@dataclasses.dataclass(frozen=True)
class TrainSampler:
  """`sampler(i)`: local sample i (step i // b, row i % b) as a function of (seed, step, position).

  Attributes:
    source: the training split.
    seed: `config.seed`.
    global_batch: `config.train.batch_size`.
    local_batch: rows of the global batch this process holds.
    offset: global row of this process's first row.
    patch_size: `config.data.patch_size`.
    foreground_fraction: `config.data.foreground_fraction`.
    class_balanced: `config.data.class_balanced`.
    augment: resolved `config.data.augment`.
    crop_size: with `config.data.device_augment`, the unaugmented crop
      (`device_augment.crop_size`) each sample becomes
      (`sampling.training_crop`); None: augmented patches.
  """

  source: CaseSource
  seed: int
  global_batch: int
  local_batch: int
  offset: int
  patch_size: tuple[int, ...]
  foreground_fraction: float
  class_balanced: bool
  augment: augment_lib.Augmentation
  crop_size: tuple[int, ...] | None = None

  def __call__(self, local_index: int) -> dict[str, np.ndarray]:
    step, row = divmod(int(local_index), self.local_batch)
    position = self.offset + row
    rng = np.random.default_rng([self.seed, step * self.global_batch + position])
    force = sampling.is_forced_foreground(position, self.global_batch, self.foreground_fraction)
    index, class_value = self.source.index.choose(rng, force_foreground=force, class_balanced=self.class_balanced)
    if self.crop_size is not None:
      return sampling.training_crop(
        self.source[index], self.patch_size, self.crop_size, rng, force_foreground=force, class_value=class_value
      )
    return sampling.training_sample(
      self.source[index], self.patch_size, rng, force_foreground=force, augment=self.augment, class_value=class_value
    )


def train_batches(
  config: ml_collections.ConfigDict, source: CaseSource, *, start_step: int, local_batch_size: int
) -> Iterator[dict[str, np.ndarray]]:
  """This process's slices of the global batches of steps start_step .. num_steps - 1.

  Yields `image` `[b, *patch, C]` float32 and `label` `[b, *patch]` int32 with
  b = local_batch_size, process p holding global rows p*b .. (p+1)*b - 1.
  With `config.data.device_augment`, unaugmented crops instead
  (`sampling.training_crop`: `image` `[b, *crop, C]`, `label` uint8,
  `pad_value`, `low`, `high`), augmented by the train step.
  """
  if len(source) == 0:
    raise DataError("the training split is empty: no case to train on")
  data = config.data
  patch_size = tuple(int(p) for p in data.patch_size)
  augment = augment_lib.Augmentation.from_config(data.augment, len(patch_size))
  sampler = TrainSampler(
    source=source,
    seed=int(config.seed),
    global_batch=int(config.train.batch_size),
    local_batch=local_batch_size,
    offset=jax.process_index() * local_batch_size,
    patch_size=patch_size,
    foreground_fraction=float(data.foreground_fraction),
    class_balanced=bool(data.class_balanced),
    augment=augment,
    crop_size=device_augment.crop_size(augment, patch_size) if data.device_augment else None,
  )
  dataset = (
    grain.MapDataset.range(start_step * local_batch_size, config.train.num_steps * local_batch_size)
    .map(sampler)
    .batch(local_batch_size, drop_remainder=True)
  )
  batches = dataset.to_iter_dataset(grain.ReadOptions(num_threads=data.num_threads, prefetch_buffer_size=data.prefetch))
  if data.num_workers > 0:
    if not flags.FLAGS.is_parsed():  # grain's worker processes read absl flags; outside an absl app
      flags.FLAGS.mark_as_parsed()  # they keep their defaults.
    batches = batches.mp_prefetch(
      grain.MultiprocessingOptions(num_workers=data.num_workers, per_worker_buffer_size=max(1, data.prefetch))
    )
  return iter(batches)

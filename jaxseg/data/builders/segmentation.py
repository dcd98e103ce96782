"""What every jaxseg TFDS builder shares: preparing a raw dataset once.

Preparation (`download_and_prepare`) reads the raw NIfTI files, computes the
dataset fingerprint on the training split, plans the target spacing and
normalisation (`jaxseg.data.preprocess`), preprocesses every case and writes
array_record files, one record per case in split order. Both passes run in
parallel over cases in 'spawn' worker processes, each with a progress bar.

Recorded in the dataset's metadata (`builder.info.metadata`): `raw_root`,
`raw_signature`, `name`, `format`, `ndim`, `labels`, `channel_names`,
`splits` (split -> case ids in record order), `folds` (nnU-Net's 5-fold
split of the train + validation cases, `jaxseg.data.folds`; [] below 5
cases), `plan`, `fingerprint` and `class_voxels` (split -> per record, label value -> voxel count after
preprocessing, which the pipeline samples rare classes from).

Versions: the prepared format is `SegmentationBuilder.VERSION` (a directory
per version, RELEASE_NOTES say what changed). Data prepared by an older
version are never read by a newer one: the dataset is prepared again from
its raw files into the new version's directory, with a warning naming the
stale directory (which can be deleted); without the raw files that is a
`DataError` saying so.

Atomicity: TFDS writes into an `incomplete.*` directory and renames it to the
version directory when everything is written, so an interrupted preparation
is never taken for a complete one. Preparation holds an exclusive lock on the
config directory, so concurrent callers prepare once; under the lock, the
`incomplete.*` leftovers of killed runs are removed and the rerun prepares
the dataset again from the start.
"""

from __future__ import annotations

import abc
import hashlib
import os
import pathlib
import shutil
from typing import Iterator

from absl import logging
import numpy as np
import tensorflow_datasets as tfds

from jaxseg import paths
from jaxseg.data import folds, nifti, preprocess
from jaxseg.data.builders import workers
from jaxseg.errors import DataError

SPLITS = ("train", "validation", "test")
VALIDATION_FRACTION = 0.1
TEST_FRACTION = 0.2

FEATURES = {
  "image": ("float32 [Z, Y, X, C]: canonical, cropped, normalised, resampled to the plan's spacing"),
  "label": "uint8 [Z, Y, X]",
  "case_id": "the raw file name without extension",
  "spacing": "float32 [3]: (z, y, x) voxel size in mm",
  "meta": "JSON: geometry for preprocess.restore_to_original",
}


def default_splits(case_ids: list[str], seed: int = 0) -> dict[str, list[str]]:
  """A fixed random 70/10/20 train/validation/test split of labelled cases.

  Datasets of fewer than 3 cases train on every case and have no validation
  or test cases.
  """
  ids = sorted(case_ids)
  order = np.random.default_rng(seed).permutation(len(ids))
  n_test = max(1, round(TEST_FRACTION * len(ids))) if len(ids) >= 3 else 0
  n_val = max(1, round(VALIDATION_FRACTION * len(ids))) if len(ids) >= 3 else 0
  shuffled = [ids[i] for i in order]
  return {
    "test": sorted(shuffled[:n_test]),
    "validation": sorted(shuffled[n_test : n_test + n_val]),
    "train": sorted(shuffled[n_test + n_val :]),
  }


def raw_signature(raw: nifti.RawDataset, *, with_location: bool) -> str:
  """A short hash of a raw dataset's JSON files and its files' names and sizes.

  Args:
    raw: the raw dataset.
    with_location: also hash the directory's absolute path and the files'
      modification times, so that an edited or moved dataset gets a new hash.
  """
  digest = hashlib.sha256(str(raw.root.resolve()).encode() if with_location else b"")
  for name in ("dataset.json", "splits.json"):
    path = raw.root / name
    if path.exists():
      digest.update(path.read_bytes())
  for case in raw.training + raw.test:
    for path in case.image_paths + ((case.label_path,) if case.label_path else ()):
      stat = path.stat()
      digest.update(f"{path.name}:{stat.st_size}".encode())
      if with_location:
        digest.update(f":{stat.st_mtime_ns}".encode())
  return digest.hexdigest()[:12]


class SegmentationBuilder(tfds.core.GeneratorBasedBuilder, skip_registration=True):
  """Preprocessed volumes of one raw segmentation dataset, split train/validation/test.

  Subclasses say where the raw dataset is (`raw_dataset`) and describe it.
  """

  VERSION = tfds.core.Version("1.2.0")
  RELEASE_NOTES = {
    "1.0.0": "Canonical orientation, target spacing, normalisation, non-zero crop.",
    "1.1.0": "Records in split order; per-case class voxel counts in the metadata; preparation in processes.",
    "1.2.0": "nnU-Net's 5-fold split stored in the metadata ('folds'); z-score normalisation within the non-zero "
    "mask when cropping shrank the median case below 3/4 of its voxels (nnU-Net's use_mask_for_norm: "
    "other image values); the fingerprint records the cropped shapes (planning); each case's meta "
    "records the target spacing.",
  }

  def __init__(self, *, num_workers: int = 0, **kwargs):
    """See `tfds.core.GeneratorBasedBuilder`.

    Args:
      num_workers: processes that read and preprocess cases; 0 = one per CPU
        core, 1 = no worker process.
      **kwargs: `data_dir`, `config`, `version`, `file_format` (default
        array_record) as for any TFDS builder.
    """
    self.num_workers = num_workers if num_workers > 0 else (os.cpu_count() or 1)
    self._pool = None
    kwargs.setdefault("file_format", "array_record")
    super().__init__(**kwargs)

  @abc.abstractmethod
  def raw_dataset(self, dl_manager: tfds.download.DownloadManager) -> nifti.RawDataset:
    """The raw dataset that preparation reads (checked by `nifti.read_dataset`)."""

  def _info(self) -> tfds.core.DatasetInfo:
    return tfds.core.DatasetInfo(
      builder=self,
      description=self._description(),
      features=tfds.features.FeaturesDict(
        {
          "image": tfds.features.Tensor(
            shape=(None, None, None, None),
            dtype=np.float32,
            encoding=tfds.features.Encoding.ZLIB,
            doc=FEATURES["image"],
          ),
          "label": tfds.features.Tensor(
            shape=(None, None, None), dtype=np.uint8, encoding=tfds.features.Encoding.ZLIB, doc=FEATURES["label"]
          ),
          "case_id": tfds.features.Text(doc=FEATURES["case_id"]),
          "spacing": tfds.features.Tensor(shape=(3,), dtype=np.float32, doc=FEATURES["spacing"]),
          "meta": tfds.features.Text(doc=FEATURES["meta"]),
        }
      ),
      disable_shuffling=True,
      homepage=self._homepage(),
      citation=self._citation(),
      metadata=tfds.core.MetadataDict(),
    )

  def _description(self) -> str:
    return "A raw MSD / nnU-Net v2 segmentation dataset, preprocessed once by jaxseg."

  def _homepage(self) -> str | None:
    return None

  def _citation(self) -> str | None:
    return None

  @property
  def prepared_dir(self) -> pathlib.Path:
    """`<data_dir>/<builder name>/<config name>/<version>`, present once prepared."""
    return pathlib.Path(os.fspath(self.data_path))

  def stale_versions(self) -> list[pathlib.Path]:
    """Complete prepared directories of this dataset written by older builder versions (oldest first)."""
    config_dir = self.prepared_dir.parent
    if not config_dir.is_dir():
      return []
    stale = []
    for path in config_dir.iterdir():
      try:
        version = tfds.core.Version(path.name)
      except ValueError:
        continue
      if version < self.version and (path / "dataset_info.json").exists():
        stale.append((version, path))
    return [path for _, path in sorted(stale)]

  def download_and_prepare(self, *args, **kwargs) -> None:
    """Prepares the dataset unless it is complete (module doc: locking, leftovers, versions)."""
    config_dir = self.prepared_dir.parent
    config_dir.mkdir(parents=True, exist_ok=True)
    with paths.exclusive_lock(config_dir / ".prepare.lock"):
      stale = []
      if not self.prepared_dir.exists():
        for leftover in config_dir.glob(f"incomplete.*_{self.version}"):
          shutil.rmtree(leftover, ignore_errors=True)
        stale = self.stale_versions()
        if stale:
          logging.warning(
            "%s",
            self._stale_message(stale) + "; preparing it again from the raw files (delete "
            "the old directory to free its space)",
          )
      try:
        super().download_and_prepare(*args, **kwargs)
      except DataError as e:
        if stale:
          raise DataError(
            f"{e} ({self._stale_message(stale)} and cannot be used; the raw files are needed to prepare it again)"
          ) from e
        raise

  def _stale_message(self, stale: list[pathlib.Path]) -> str:
    newest = stale[-1]
    changes = "; ".join(
      f"{v}: {note}" for v, note in self.RELEASE_NOTES.items() if tfds.core.Version(v) > tfds.core.Version(newest.name)
    )
    return (
      f"{newest} holds this dataset prepared by builder version {newest.name}, older than the current "
      f"{self.version} ({changes})"
    )

  def _download_and_prepare(self, dl_manager, download_config=None):
    self._pool = workers.process_pool(self.num_workers)
    try:
      return super()._download_and_prepare(dl_manager, download_config)
    finally:
      if self._pool is not None:
        self._pool.shutdown(wait=True, cancel_futures=True)
      self._pool = None

  def _log_download_bytes(self) -> None:
    """TFDS prints "Downloading and preparing dataset Unknown size ..." to stdout here; jaxseg logs one line."""
    logging.info("Preparing dataset %s once into %s", self.builder_config.name, self.data_dir)

  def _log_download_done(self) -> None:
    logging.info("Prepared dataset %s in %s", self.builder_config.name, self.data_dir)

  def _split_generators(self, dl_manager):
    raw = self.raw_dataset(dl_manager)
    by_id = {case.case_id: case for case in raw.training}
    splits = raw.splits or default_splits(list(by_id))
    splits = {name: list(splits.get(name, [])) for name in SPLITS}
    if not splits["train"]:
      raise DataError(f"{raw.root / 'splits.json'}: the 'train' split is empty; nothing to train on")
    jobs = [(by_id[case_id], raw, index) for index, case_id in enumerate(splits["train"])]
    statistics = workers.ordered_map(workers.fingerprint_case, jobs, self._pool, 2 * self.num_workers)
    fingerprint = preprocess.merge_statistics(
      tfds.core.utils.tqdm(
        statistics, desc=f"Fingerprint of {len(jobs)} training cases", total=len(jobs), unit=" cases"
      )
    )
    plan = preprocess.make_plan(fingerprint, raw.channel_names, raw.labels)
    self.info.metadata.update(
      {
        "raw_root": str(raw.root.resolve()),
        "raw_signature": raw_signature(raw, with_location=False),
        "name": raw.name,
        "format": raw.format,
        "ndim": raw.ndim,
        "labels": dict(raw.labels),
        "channel_names": list(raw.channel_names),
        "splits": splits,
        "folds": folds.dataset_folds(splits),
        "plan": plan.to_dict(),
        "fingerprint": fingerprint.to_dict(),
        "class_voxels": {name: [] for name, ids in splits.items() if ids},
      }
    )
    return {
      name: self._generate_examples(name, [by_id[i] for i in ids], raw, plan) for name, ids in splits.items() if ids
    }

  def _generate_examples(
    self, split: str, cases: list[nifti.RawCase], raw: nifti.RawDataset, plan: preprocess.Plan
  ) -> Iterator[tuple[int, dict]]:
    """Records keyed by their position in `splits[split]` (the record order)."""
    class_voxels = self.info.metadata["class_voxels"][split]
    jobs = [(case, raw, plan) for case in cases]
    results = workers.ordered_map(workers.preprocess_example, jobs, self._pool, 2 * self.num_workers)
    for index, (example, counts) in enumerate(results):
      class_voxels.append(counts)
      yield index, example

"""TFDS builder that prepares any MSD / nnU-Net v2 raw directory once.

Preparation reads the raw NIfTI files, computes the dataset fingerprint on the
training split, plans the target spacing and normalisation, preprocesses every
case (canonical orientation, resampling, normalisation, crop) and writes
array_record files. The plan and fingerprint are stored in the dataset's
metadata; every record keeps the geometry needed to map predictions back.

TFDS writes into an `incomplete.*` directory and renames it when done, so an
interrupted preparation is never taken for a complete one, and a rerun starts
it again. The builder's config name is a hash of the raw directory's path,
its JSON files and the sizes and times of its files, so a changed raw dataset
is prepared anew.
"""

from __future__ import annotations

import concurrent.futures
import hashlib
import json
import os
import pathlib
import re
from typing import Iterator

import numpy as np
import tensorflow_datasets as tfds

from jaxseg.data import nifti, preprocess

SPLITS = ("train", "validation", "test")
VALIDATION_FRACTION = 0.1
TEST_FRACTION = 0.2


def default_splits(case_ids: list[str], seed: int = 0) -> dict[str, list[str]]:
  """A fixed random 70/10/20 train/validation/test split of labelled cases."""
  ids = sorted(case_ids)
  order = np.random.default_rng(seed).permutation(len(ids))
  n_test = max(1, round(TEST_FRACTION * len(ids))) if len(ids) >= 3 else 0
  n_val = max(1, round(VALIDATION_FRACTION * len(ids))) if len(ids) >= 3 else 0
  shuffled = [ids[i] for i in order]
  return {"test": sorted(shuffled[:n_test]), "validation": sorted(shuffled[n_test:n_test + n_val]),
          "train": sorted(shuffled[n_test + n_val:])}


def _signature(raw: nifti.RawDataset) -> str:
  digest = hashlib.sha256(str(raw.root.resolve()).encode())
  for name in ("dataset.json", "splits.json"):
    path = raw.root / name
    if path.exists():
      digest.update(path.read_bytes())
  for case in raw.training + raw.test:
    for path in case.image_paths + ((case.label_path,) if case.label_path else ()):
      stat = path.stat()
      digest.update(f"{path.name}:{stat.st_size}:{stat.st_mtime_ns}".encode())
  return digest.hexdigest()[:12]


def config_name(raw: nifti.RawDataset) -> str:
  slug = re.sub(r"[^a-z0-9]+", "_", raw.name.lower()).strip("_") or "dataset"
  return f"{slug}_{_signature(raw)}"


def _canonical(args) -> tuple[np.ndarray, np.ndarray, tuple[float, ...]]:
  case, raw = args
  loaded = nifti.load_case(case, raw)
  image, label, info = preprocess.to_canonical(loaded.image, loaded.label, loaded.affine)
  return image, label, info.spacing


def _preprocess(args) -> preprocess.PreprocessedCase:
  case, raw, plan = args
  return preprocess.preprocess_case(nifti.load_case(case, raw), plan)


class RawSegmentation(tfds.core.GeneratorBasedBuilder):
  """Preprocessed volumes of one raw segmentation dataset, split train/validation/test."""

  VERSION = tfds.core.Version("1.0.0")
  RELEASE_NOTES = {"1.0.0": "Canonical orientation, target spacing, normalisation, non-zero crop."}

  def __init__(self, *, raw_root: str | pathlib.Path, num_workers: int | None = None, **kwargs):
    self.raw = nifti.read_dataset(pathlib.Path(raw_root))
    self.num_workers = num_workers or os.cpu_count() or 1
    config = tfds.core.BuilderConfig(name=config_name(self.raw), description=self.raw.description[:500])
    super().__init__(config=config, file_format="array_record", **kwargs)

  def _info(self) -> tfds.core.DatasetInfo:
    channels = len(self.raw.channel_names)
    return tfds.core.DatasetInfo(
        builder=self,
        description=f"{self.raw.name} prepared by jaxseg from {self.raw.root}",
        features=tfds.features.FeaturesDict({
            "image": tfds.features.Tensor(shape=(None, None, None, channels), dtype=np.float32,
                                          encoding=tfds.features.Encoding.ZLIB),
            "label": tfds.features.Tensor(shape=(None, None, None), dtype=np.uint8,
                                          encoding=tfds.features.Encoding.ZLIB),
            "case_id": tfds.features.Text(),
            "spacing": tfds.features.Tensor(shape=(3,), dtype=np.float32),
            "meta": tfds.features.Text(),
        }),
        metadata=tfds.core.MetadataDict(),
    )

  def _splits(self) -> dict[str, list[str]]:
    ids = [case.case_id for case in self.raw.training]
    splits = self.raw.splits or default_splits(ids)
    return {name: list(splits.get(name, [])) for name in SPLITS}

  def _split_generators(self, dl_manager):
    del dl_manager  # Nothing is downloaded.
    by_id = {case.case_id: case for case in self.raw.training}
    splits = self._splits()
    with concurrent.futures.ThreadPoolExecutor(self.num_workers) as pool:
      canonical = pool.map(_canonical, [(by_id[i], self.raw) for i in splits["train"]])
      fingerprint = preprocess.compute_fingerprint(canonical)
    plan = preprocess.make_plan(fingerprint, self.raw.channel_names, self.raw.labels)
    self.info.metadata.update({
        "raw_root": str(self.raw.root.resolve()),
        "name": self.raw.name,
        "ndim": self.raw.ndim,
        "labels": dict(self.raw.labels),
        "channel_names": list(self.raw.channel_names),
        "splits": splits,
        "plan": plan.to_dict(),
        "fingerprint": fingerprint.to_dict(),
    })
    return {name: self._generate_examples([by_id[i] for i in ids], plan) for name, ids in splits.items() if ids}

  def _generate_examples(self, cases: list[nifti.RawCase], plan: preprocess.Plan) -> Iterator:
    with concurrent.futures.ThreadPoolExecutor(self.num_workers) as pool:
      for case in pool.map(_preprocess, [(c, self.raw, plan) for c in cases]):
        yield case.case_id, {
            "image": case.image.astype(np.float32),
            "label": case.label.astype(np.uint8),
            "case_id": case.case_id,
            "spacing": np.asarray(case.spacing, np.float32),
            "meta": json.dumps(case.meta),
        }

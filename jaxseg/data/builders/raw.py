"""TFDS builder for any MSD / nnU-Net v2 raw directory (`config.data.root`).

`RawSegmentation(raw_root=...)` checks the directory (`nifti.read_dataset`:
dataset.json, file list, paths inside the root) before anything is written.
Its config name is `<dataset name>_<hash>`, the hash covering the raw
directory's absolute path, its JSON files and the names, sizes and
modification times of its files, so a changed raw dataset is prepared anew
in `<data_dir>/raw_segmentation/<name>_<hash>/<version>/`. Preparation itself
is `segmentation.SegmentationBuilder`'s.
"""

from __future__ import annotations

import pathlib
import re

import tensorflow_datasets as tfds

from jaxseg.data import nifti
from jaxseg.data.builders import segmentation


def config_name(raw: nifti.RawDataset) -> str:
  """`<dataset name as a slug>_<hash of path, JSON files, file names, sizes and times>`."""
  slug = re.sub(r"[^a-z0-9]+", "_", raw.name.lower()).strip("_") or "dataset"
  return f"{slug}_{segmentation.raw_signature(raw, with_location=True)}"


class RawSegmentation(segmentation.SegmentationBuilder):
  """Preprocessed volumes of the raw segmentation dataset at `raw_root`."""

  def __init__(self, *, raw_root: str | pathlib.Path, **kwargs):
    """Checks the raw directory and names the builder config after it.

    Args:
      raw_root: the directory holding dataset.json.
      **kwargs: as for `SegmentationBuilder` (`data_dir`, `num_workers`).

    Raises:
      DataError: the raw directory is missing or malformed (names the file).
    """
    self.raw = nifti.read_dataset(pathlib.Path(raw_root))
    config = tfds.core.BuilderConfig(name=config_name(self.raw), description=self.raw.description[:500])
    super().__init__(config=config, **kwargs)

  def _description(self) -> str:
    return f"{self.raw.name} prepared by jaxseg from {self.raw.root}"

  def raw_dataset(self, dl_manager: tfds.download.DownloadManager) -> nifti.RawDataset:
    del dl_manager  # The raw directory is given; nothing is downloaded.
    return self.raw

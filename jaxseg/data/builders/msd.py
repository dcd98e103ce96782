"""TFDS builder for the ten Medical Segmentation Decathlon tasks, by name.

Download a task archive from http://medicaldecathlon.com (for example
`Task09_Spleen.tar`) and extract it into the manual directory:

  tar -xf Task09_Spleen.tar -C /data      # gives /data/Task09_Spleen/dataset.json

then `MsdTask(config="Task09_Spleen", data_dir=...).download_and_prepare(
download_config=tfds.download.DownloadConfig(manual_dir="/data"))` prepares it
into `<data_dir>/msd_task/Task09_Spleen/<version>/` (the manual directory may
also be the task directory itself). In jaxseg: `config.data.name='msd'`,
`config.data.task='Task09_Spleen'`, `config.data.root=/data`.

Before preparing, the task's dataset.json is checked against the published
dataset (channels, label values, number of training cases), so a wrong or
partial directory fails with a message instead of training on the wrong
data; a modified copy of a task is prepared with `RawSegmentation` instead
(`config.data.root` without `config.data.task`). Once prepared, the dataset
reads without the raw files. Preparation is `segmentation.SegmentationBuilder`'s.
"""

from __future__ import annotations

import dataclasses
import os
import pathlib

import tensorflow_datasets as tfds

from jaxseg.data import nifti
from jaxseg.data.builders import segmentation
from jaxseg.errors import DataError

HOMEPAGE = "http://medicaldecathlon.com"
CITATION = """@article{antonelli2022medical,
  title={The Medical Segmentation Decathlon},
  author={Antonelli, Michela and Reinke, Annika and Bakas, Spyridon and others},
  journal={Nature Communications},
  volume={13},
  pages={4128},
  year={2022}
}"""


@dataclasses.dataclass(frozen=True)
class TaskSpec:
  """A task as published (its dataset.json).

  Attributes:
    modality: channel names in channel order.
    labels: label value -> class name, background included.
    num_training: labelled cases (imagesTr / labelsTr).
    num_test: unlabelled cases (imagesTs).
    description: what is segmented in which images.
  """

  modality: tuple[str, ...]
  labels: dict[int, str]
  num_training: int
  num_test: int
  description: str


TASKS: dict[str, TaskSpec] = {
  "Task01_BrainTumour": TaskSpec(
    ("FLAIR", "T1w", "t1gd", "T2w"),
    {0: "background", 1: "edema", 2: "non-enhancing tumor", 3: "enhancing tumour"},
    484,
    266,
    "Glioma sub-regions in multi-parametric brain MRI (BraTS 2016/2017).",
  ),
  "Task02_Heart": TaskSpec(
    ("MRI",), {0: "background", 1: "left atrium"}, 20, 10, "Left atrium in mono-modal cardiac MRI."
  ),
  "Task03_Liver": TaskSpec(
    ("CT",),
    {0: "background", 1: "liver", 2: "cancer"},
    131,
    70,
    "Liver and liver tumours in portal venous phase CT (LiTS).",
  ),
  "Task04_Hippocampus": TaskSpec(
    ("MRI",),
    {0: "background", 1: "Anterior", 2: "Posterior"},
    260,
    130,
    "Anterior and posterior hippocampus in T1-weighted brain MRI crops.",
  ),
  "Task05_Prostate": TaskSpec(
    ("T2", "ADC"),
    {0: "background", 1: "PZ", 2: "TZ"},
    32,
    16,
    "Prostate peripheral and transition zones in T2 and ADC MRI.",
  ),
  "Task06_Lung": TaskSpec(
    ("CT",), {0: "background", 1: "cancer"}, 63, 32, "Non-small-cell lung tumours in thin-section CT."
  ),
  "Task07_Pancreas": TaskSpec(
    ("CT",),
    {0: "background", 1: "pancreas", 2: "cancer"},
    281,
    139,
    "Pancreas and pancreatic tumours in portal venous phase CT.",
  ),
  "Task08_HepaticVessel": TaskSpec(
    ("CT",), {0: "background", 1: "Vessel", 2: "Tumour"}, 303, 140, "Hepatic vessels and liver tumours in contrast CT."
  ),
  "Task09_Spleen": TaskSpec(("CT",), {0: "background", 1: "spleen"}, 41, 20, "Spleen in portal venous phase CT."),
  "Task10_Colon": TaskSpec(
    ("CT",),
    {0: "background", 1: "colon cancer primaries"},
    126,
    64,
    "Colon cancer primaries in portal venous phase CT.",
  ),
}

MANUAL_DOWNLOAD_INSTRUCTIONS = f"""Download a task archive (e.g. Task09_Spleen.tar) from {HOMEPAGE} and
extract it into the manual directory: `tar -xf Task09_Spleen.tar -C <manual_dir>`, which gives
<manual_dir>/Task09_Spleen/dataset.json, imagesTr/, labelsTr/ and imagesTs/."""


def task_root(manual_dir: str | os.PathLike[str], task: str) -> pathlib.Path:
  """The extracted task directory: `manual_dir/task`, or `manual_dir` itself if it is that directory.

  Raises:
    DataError: the task is not extracted there (says how to extract it).
  """
  manual_dir = pathlib.Path(manual_dir).expanduser()
  if manual_dir.name == task and (manual_dir / "dataset.json").is_file():
    return manual_dir
  root = manual_dir / task
  if (root / "dataset.json").is_file():
    return root
  if (manual_dir / f"{task}.tar").is_file():
    raise DataError(
      f"{manual_dir / (task + '.tar')}: the archive is not extracted; run "
      f"`tar -xf {manual_dir / (task + '.tar')} -C {manual_dir}`"
    )
  raise DataError(
    f"{root / 'dataset.json'}: file not found; download {task}.tar from {HOMEPAGE} and run "
    f"`tar -xf {task}.tar -C {manual_dir}`"
  )


def check_task(raw: nifti.RawDataset, task: str) -> None:
  """Checks a raw dataset against the published task.

  Raises:
    DataError: naming dataset.json, when the channels, label values or number
      of training cases differ from the published dataset.
  """
  spec = TASKS[task]
  json_path = raw.root / "dataset.json"
  hint = "; for a modified copy leave config.data.task empty and set config.data.root to it"
  if len(raw.channel_names) != len(spec.modality):
    raise DataError(
      f"{json_path}: {len(raw.channel_names)} channel(s) {list(raw.channel_names)} but {task} has "
      f"{len(spec.modality)} {list(spec.modality)}{hint}"
    )
  if sorted(raw.labels.values()) != sorted(spec.labels):
    raise DataError(
      f"{json_path}: label values {sorted(raw.labels.values())} but {task} has "
      f"{sorted(spec.labels)} ({', '.join(spec.labels.values())}){hint}"
    )
  if len(raw.training) != spec.num_training:
    raise DataError(f"{json_path}: lists {len(raw.training)} training cases but {task} has {spec.num_training}{hint}")


class MsdTask(segmentation.SegmentationBuilder):
  """One of the ten Medical Segmentation Decathlon tasks, preprocessed by jaxseg."""

  BUILDER_CONFIGS = [tfds.core.BuilderConfig(name=name, description=spec.description) for name, spec in TASKS.items()]
  MANUAL_DOWNLOAD_INSTRUCTIONS = MANUAL_DOWNLOAD_INSTRUCTIONS

  def _description(self) -> str:
    spec = TASKS[self.builder_config.name]
    return (
      f"Medical Segmentation Decathlon {self.builder_config.name}: {spec.description} "
      f"{spec.num_training} labelled cases, split 70/10/20 into train/validation/test."
    )

  def _homepage(self) -> str:
    return HOMEPAGE

  def _citation(self) -> str:
    return CITATION

  def raw_dataset(self, dl_manager: tfds.download.DownloadManager) -> nifti.RawDataset:
    task = self.builder_config.name
    try:
      manual_dir = pathlib.Path(os.fspath(dl_manager.manual_dir))
    except AssertionError as e:
      raise DataError(f"manual directory for {task}: {' '.join(str(e).split())}") from None
    raw = nifti.read_dataset(task_root(manual_dir, task))
    check_task(raw, task)
    return raw

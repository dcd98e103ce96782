"""grain pipelines over prepared datasets: batches as a pure function of (seed, step), foreground share,
readers, the MSD task route and one command on a raw directory."""

import json
import math
import os
import pathlib
import pickle
import subprocess
import sys

import nibabel as nib
import numpy as np
import pytest

from jaxseg.config import base_config
from jaxseg.data import pipeline, sampling
from jaxseg.data.builders import segmentation
from jaxseg.errors import ConfigError, DataError

ROOT = pathlib.Path(__file__).parent.parent


@pytest.fixture(scope="module")
def ct(tmp_path_factory):
  """A tiny prepared CT phantom and a config reading it."""
  config = base_config()
  config.data.data_dir = str(tmp_path_factory.mktemp("data"))
  config.data.num_cases = 4
  config.data.prepare_workers = 1
  config.data.patch_size = (48, 48)
  config.train.batch_size = 6
  config.train.num_steps = 6
  return config, pipeline.prepare(config)


def _batches(config, prepared, start_step=0, local_batch_size=None):
  source = pipeline.CaseSource(prepared, "train")
  local = local_batch_size or config.train.batch_size
  return list(pipeline.train_batches(config, source, start_step=start_step, local_batch_size=local))


def _assert_same(a, b):
  assert len(a) == len(b)
  for x, y in zip(a, b):
    np.testing.assert_array_equal(x["image"], y["image"])
    np.testing.assert_array_equal(x["label"], y["label"])


def test_prepared_dataset_describes_the_phantom(ct):
  config, prepared = ct
  assert prepared.name == "ct_phantom" and prepared.ndim == 3 and prepared.num_channels == 1
  assert prepared.labels == {"background": 0, "liver": 1, "spleen": 2, "kidney": 3, "tumour": 4}
  assert prepared.num_classes == 5 and "background" not in prepared.foreground
  assert prepared.builder.info.metadata["raw_root"] == str(
    (pathlib.Path(config.data.data_dir) / "ct_phantom").resolve()
  )
  assert prepared.plan.normalization[0]["scheme"] == "ct"
  assert pipeline.prepare(config).splits == prepared.splits  # Prepared once, then reused.


def test_case_source_reads_cases_in_split_order_and_pickles(ct):
  _, prepared = ct
  source = pipeline.CaseSource(prepared, "train", cache_size=2)
  assert [case.case_id for case in source] == source.case_ids == prepared.splits["train"]
  case = source[0]
  assert case.image.dtype == np.float32 and case.image.ndim == 4 and case.label.shape == case.image.shape[:3]
  copy = pickle.loads(pickle.dumps(source))
  np.testing.assert_array_equal(copy[0].image, case.image)
  assert len(pipeline.CaseSource(prepared, "nonexistent")) == 0


def test_batches_have_the_documented_shapes(ct):
  config, prepared = ct
  batches = _batches(config, prepared)
  assert len(batches) == config.train.num_steps
  assert batches[0]["image"].shape == (6, 48, 48, 1) and batches[0]["image"].dtype == np.float32
  assert batches[0]["label"].shape == (6, 48, 48) and batches[0]["label"].dtype == np.int32
  assert batches[0]["label"].max() <= 4


def test_batches_are_a_pure_function_of_seed_and_step(ct, monkeypatch):
  config, prepared = ct
  reference = _batches(config, prepared)
  _assert_same(_batches(config, prepared, start_step=4), reference[4:])  # Resume.
  threads = config.copy_and_resolve_references()
  threads.data.num_threads = 0
  _assert_same(_batches(threads, prepared), reference)
  # Two processes of 3 rows each hold the same global batch.
  halves = []
  for process in range(2):
    monkeypatch.setattr(pipeline.jax, "process_index", lambda p=process: p)
    halves.append(_batches(config, prepared, local_batch_size=3))
  monkeypatch.undo()
  for step, batch in enumerate(reference):
    np.testing.assert_array_equal(np.concatenate([halves[0][step]["image"], halves[1][step]["image"]]), batch["image"])
  other_seed = config.copy_and_resolve_references()
  other_seed.seed = 1
  assert not np.array_equal(_batches(other_seed, prepared)[0]["image"], reference[0]["image"])


def test_worker_processes_give_the_same_batches(ct):
  config, prepared = ct
  workers = config.copy_and_resolve_references()
  workers.data.num_workers = 1
  _assert_same(_batches(workers, prepared), _batches(config, prepared))


def _small_patches(config, fraction):
  config = config.copy_and_resolve_references()
  config.data.patch_size = (8, 8)
  config.data.foreground_fraction = fraction
  config.train.num_steps = 12
  for key in config.data.augment:
    if key.endswith("_prob"):
      config.data.augment[key] = 1.0
  config.data.augment.elastic_alpha = (30.0, 30.0)
  return config


def test_every_batch_has_the_configured_share_of_foreground(ct):
  config, prepared = ct
  batch = config.train.batch_size
  for fraction in (1 / 3, 0.5):
    forced = [i for i in range(batch) if sampling.is_forced_foreground(i, batch, fraction)]
    assert len(forced) == math.ceil(batch * fraction)
    for step in _batches(_small_patches(config, fraction), prepared):
      has_foreground = (step["label"] > 0).any(axis=(1, 2))
      assert has_foreground[forced].all()
  # Without oversampling, small patches often miss the organs: the check above can fail.
  counts = [(b["label"] > 0).any(axis=(1, 2)).sum() for b in _batches(_small_patches(config, 0.0), prepared)]
  assert min(counts) < math.ceil(batch / 3)


def test_three_dimensional_patches(ct):
  config, prepared = ct
  config = config.copy_and_resolve_references()
  config.model.name = "unet3d"
  config.data.patch_size = (8, 24, 24)
  config.train.num_steps = 2
  batches = _batches(config, prepared)
  assert batches[0]["image"].shape == (6, 8, 24, 24, 1) and batches[0]["label"].shape == (6, 8, 24, 24)


def _write(path, array, spacing=(0.8, 0.8, 1.0)):
  path.parent.mkdir(parents=True, exist_ok=True)
  nib.save(nib.Nifti1Image(array, np.diag([*spacing, 1.0])), path)


def make_raw(root, num_cases, shape, labels=None, channels=1):
  """An MSD-layout dataset of `num_cases` squares on noise ((X, Y) shapes make it 2D)."""
  training = []
  for i in range(num_cases):
    rng = np.random.default_rng(i)
    image = rng.normal(0.0, 1.0, shape + (channels,) * (channels > 1)).astype(np.float32)
    label = np.zeros(shape, np.uint8)
    label[4:12, 5:13] = 1
    image[4:12, 5:13] += 3.0
    _write(root / "imagesTr" / f"c{i}.nii.gz", image)
    _write(root / "labelsTr" / f"c{i}.nii.gz", label)
    training.append({"image": f"./imagesTr/c{i}.nii.gz", "label": f"./labelsTr/c{i}.nii.gz"})
  meta = {
    "name": "Squares",
    "tensorImageSize": "4D" if channels > 1 else "3D",
    "modality": {str(c): f"MR{c}" for c in range(channels)},
    "labels": labels or {"0": "background", "1": "square"},
    "numTraining": num_cases,
    "training": training,
    "test": [],
  }
  (root / "dataset.json").write_text(json.dumps(meta))
  return root


def _msd_config(tmp_path, root, model="unet", patch=(16, 16)):
  config = base_config()
  config.data.name = "msd"
  config.data.root = str(root)
  config.data.data_dir = str(tmp_path / "data")
  config.data.prepare_workers = 1
  config.model.name = model
  config.data.patch_size = patch
  return config


def test_three_dimensional_model_on_a_two_dimensional_dataset_is_refused(tmp_path):
  root = make_raw(tmp_path / "raw", 3, (20, 18))
  prepared = pipeline.prepare(_msd_config(tmp_path, root))
  assert prepared.ndim == 2
  with pytest.raises(ConfigError, match="'unet3d' is a 3D model but dataset 'Squares' is 2D"):
    pipeline.prepare(_msd_config(tmp_path, root, "unet3d", (1, 16, 16)))


def test_missing_root_is_named(tmp_path):
  with pytest.raises(DataError, match=f"config.data.root: {tmp_path / 'nope'} is not a directory"):
    pipeline.prepare(_msd_config(tmp_path, tmp_path / "nope"))


def test_msd_task_route_and_a_changed_copy(tmp_path):
  manual = tmp_path / "manual"
  make_raw(manual / "Task02_Heart", 20, (20, 18, 3), labels={"0": "background", "1": "left atrium"})
  config = _msd_config(tmp_path, manual)
  config.data.task = "Task02_Heart"
  prepared = pipeline.prepare(config)
  version = str(segmentation.SegmentationBuilder.VERSION)
  assert pathlib.Path(prepared.builder.data_dir).parts[-3:] == ("msd_task", "Task02_Heart", version)
  _write(manual / "Task02_Heart" / "labelsTr" / "c3.nii.gz", np.ones((20, 18, 3), np.uint8))
  with pytest.raises(DataError, match="prepared from other Task02_Heart files"):
    pipeline.prepare(config)
  config.data.root = str(tmp_path / "elsewhere")  # Once prepared, the raw files are not needed.
  assert pipeline.prepare(config).splits == prepared.splits


@pytest.mark.slow  # About 45 s on 2 loaded cores: start-up, compilation, evaluation reports.
def test_one_command_trains_on_a_raw_directory(tmp_path):
  root = make_raw(tmp_path / "Task99_Squares", 4, (24, 24, 6), channels=2)
  env = dict(os.environ, JAX_PLATFORMS="cpu", JAXSEG_DATA_DIR=str(tmp_path / "data"))
  result = subprocess.run(
    [
      sys.executable,
      "-m",
      "jaxseg.main",
      "--config=configs/msd.py:unet3d,quick",
      f"--config.data.root={root}",
      f"--workdir={tmp_path / 'run'}",
      "--config.data.patch_size=(4,16,16)",
      "--config.train.num_steps=2",
      "--config.train.eval_every_steps=2",
      "--config.train.checkpoint_every_steps=2",
      "--config.model.depth=1",
      "--config.eval.splits=('test',)",
    ],
    cwd=ROOT,
    env=env,
    capture_output=True,
    text=True,
    timeout=600,
  )
  assert result.returncode == 0, result.stderr[-3000:]
  summary = json.loads((tmp_path / "run" / "results" / "test" / "summary.json").read_text())
  assert summary["num_cases"] == 1 and "square" in summary

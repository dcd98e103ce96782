"""TFDS builders: what is prepared and recorded, idempotence, bad input, killed preparations, MSD tasks."""

import gzip
import json
import os
import pathlib
import signal
import subprocess
import sys

import nibabel as nib
import numpy as np
import pytest
import tensorflow_datasets as tfds

from jaxseg.data import nifti, preprocess
from jaxseg.data.builders import msd, raw, segmentation
from jaxseg.errors import DataError

ROOT = pathlib.Path(__file__).parent.parent
AFFINE = np.diag([1.5, 1.0, 2.0, 1.0])
SHAPE = (8, 7, 5)


def _write(path, array, affine=AFFINE):
  path.parent.mkdir(parents=True, exist_ok=True)
  nib.save(nib.Nifti1Image(np.asarray(array), affine), path)
  return path


def _case_arrays(index, shape=SHAPE, channels=0):
  rng = np.random.default_rng(index)
  image = rng.normal(100.0, 20.0, shape + ((channels,) if channels else ())).astype(np.float32)
  label = np.zeros(shape + (1,) * (3 - len(shape)), np.uint8)
  label[2:5, 2:5, 1:3] = 1
  label[5, 4, (2 + index % 2) % label.shape[2]] = 2
  return image, label.reshape(shape)


def make_msd(root, num_cases=4, channels=0, modality=None, labels=None, shape=SHAPE, prefix="case"):
  """A tiny MSD-layout dataset (one file per case, 4D when multi-channel)."""
  training = []
  for i in range(num_cases):
    image, label = _case_arrays(i, shape, channels)
    _write(root / "imagesTr" / f"{prefix}_{i}.nii.gz", image)
    _write(root / "labelsTr" / f"{prefix}_{i}.nii.gz", np.minimum(label, max(int(v) for v in labels or [2])))
    training.append({"image": f"./imagesTr/{prefix}_{i}.nii.gz", "label": f"./labelsTr/{prefix}_{i}.nii.gz"})
  modality = modality or ({"0": "CT"} if not channels else {str(c): f"MR{c}" for c in range(channels)})
  meta = {
    "name": "Toy",
    "description": "tiny",
    "tensorImageSize": "4D" if channels else "3D",
    "modality": modality,
    "labels": labels or {"0": "background", "1": "organ", "2": "lesion"},
    "numTraining": num_cases,
    "training": training,
    "test": [],
  }
  (root / "dataset.json").write_text(json.dumps(meta))
  return root


def make_nnunet(root, num_cases=4, channels=2, shape=SHAPE):
  """A tiny nnU-Net v2 dataset (one file per channel); shape (X, Y) makes it 2D."""
  for i in range(num_cases):
    image, label = _case_arrays(i, shape, channels)
    for c in range(channels):
      _write(root / "imagesTr" / f"img_{i:03d}_{c:04d}.nii.gz", image[..., c])
    _write(root / "labelsTr" / f"img_{i:03d}.nii.gz", label)
  meta = {
    "channel_names": {str(c): f"ch{c}" for c in range(channels)},
    "labels": {"background": 0, "organ": 1, "lesion": 2},
    "numTraining": num_cases,
    "file_ending": ".nii.gz",
  }
  (root / "dataset.json").write_text(json.dumps(meta))
  return root


def prepare(raw_root, data_dir, num_workers=1):
  builder = raw.RawSegmentation(raw_root=raw_root, data_dir=str(data_dir), num_workers=num_workers)
  builder.download_and_prepare()
  return builder


def assert_nothing_registered(data_dir):
  """No version directory, no dataset_info.json and no incomplete.* directory anywhere."""
  data_dir = pathlib.Path(data_dir)
  if not data_dir.exists():
    return
  assert not list(data_dir.rglob("dataset_info.json")), list(data_dir.rglob("*"))
  assert not list(data_dir.rglob("incomplete.*")), list(data_dir.rglob("*"))
  assert not list(data_dir.rglob(str(segmentation.SegmentationBuilder.VERSION)))


# What a preparation writes.


def test_prepared_records_equal_preprocessing_of_the_raw_cases(tmp_path):
  root = make_msd(tmp_path / "raw", num_cases=5)
  builder = prepare(root, tmp_path / "prepared")
  assert builder.prepared_dir == (
    tmp_path / "prepared" / "raw_segmentation" / raw.config_name(builder.raw) / str(builder.VERSION)
  )
  reader = tfds.builder_from_directory(str(builder.prepared_dir))
  meta = reader.info.metadata
  assert meta["raw_root"] == str(root.resolve()) and meta["name"] == "Toy" and meta["format"] == "msd"
  assert meta["labels"] == {"background": 0, "organ": 1, "lesion": 2} and meta["ndim"] == 3
  assert meta["splits"] == segmentation.default_splits([f"case_{i}" for i in range(5)])
  plan = preprocess.Plan.from_dict(meta["plan"])
  raw_dataset = nifti.read_dataset(root)
  by_id = {case.case_id: case for case in raw_dataset.training}
  train_stats = [nifti.load_case(by_id[i], raw_dataset) for i in meta["splits"]["train"]]
  canonical = [preprocess.to_canonical(c.image, c.label, c.affine) for c in train_stats]
  fingerprint = preprocess.compute_fingerprint([(im, lb, info.spacing) for im, lb, info in canonical])
  assert meta["fingerprint"] == json.loads(json.dumps(fingerprint.to_dict()))
  assert plan == preprocess.make_plan(fingerprint, ("CT",), raw_dataset.labels)
  for split, ids in meta["splits"].items():
    if not ids:
      continue
    source = reader.as_data_source(split=split)
    assert [source[i]["case_id"].decode() for i in range(len(source))] == ids  # Records in split order.
    for i, case_id in enumerate(ids):
      expected = preprocess.preprocess_case(nifti.load_case(by_id[case_id], raw_dataset), plan)
      record = source[i]
      np.testing.assert_array_equal(record["image"], expected.image)
      np.testing.assert_array_equal(record["label"], expected.label)
      assert json.loads(record["meta"]) == json.loads(json.dumps(expected.meta))
      counts = np.bincount(expected.label.ravel())
      assert meta["class_voxels"][split][i] == {str(v): int(n) for v, n in enumerate(counts) if n}


def test_worker_processes_write_the_same_records(tmp_path):
  root = make_nnunet(tmp_path / "raw", num_cases=4)
  inline = tfds.builder_from_directory(str(prepare(root, tmp_path / "one", num_workers=1).prepared_dir))
  pooled = tfds.builder_from_directory(str(prepare(root, tmp_path / "two", num_workers=2).prepared_dir))
  assert inline.info.metadata == pooled.info.metadata
  a, b = inline.as_data_source(split="train"), pooled.as_data_source(split="train")
  for i in range(len(a)):
    np.testing.assert_array_equal(a[i]["image"], b[i]["image"])
    np.testing.assert_array_equal(a[i]["label"], b[i]["label"])


def test_two_dimensional_multichannel_dataset(tmp_path):
  root = make_nnunet(tmp_path / "raw", num_cases=3, channels=3, shape=(9, 6))
  reader = tfds.builder_from_directory(str(prepare(root, tmp_path / "prepared").prepared_dir))
  assert reader.info.metadata["ndim"] == 2 and reader.info.metadata["channel_names"] == ["ch0", "ch1", "ch2"]
  record = reader.as_data_source(split="train")[0]
  assert record["image"].shape[0] == 1 and record["image"].shape[3] == 3


def test_preparation_is_idempotent_and_follows_raw_changes(tmp_path):
  root = make_msd(tmp_path / "raw")
  builder = prepare(root, tmp_path / "prepared")
  files = {p: p.stat().st_mtime_ns for p in builder.prepared_dir.iterdir()}
  again = prepare(root, tmp_path / "prepared")
  assert again.prepared_dir == builder.prepared_dir
  assert {p: p.stat().st_mtime_ns for p in builder.prepared_dir.iterdir()} == files
  image, _ = _case_arrays(7)
  _write(root / "imagesTr" / "case_0.nii.gz", image)  # An edited raw case is prepared anew.
  assert raw.RawSegmentation(raw_root=root, data_dir=str(tmp_path / "prepared")).prepared_dir != builder.prepared_dir


def _fake_prepared_version(builder, version):
  """A complete-looking directory of `builder`'s dataset as an older jaxseg would have left it."""
  old = builder.prepared_dir.parent / version
  old.mkdir(parents=True)
  (old / "dataset_info.json").write_text("{}")
  return old


def test_data_of_an_older_builder_version_are_prepared_again_not_read(tmp_path, caplog):
  """1.2.0 changed the prepared data (folds, masked z-score, cropped shapes): 1.1.0 directories are stale."""
  assert str(segmentation.SegmentationBuilder.VERSION) == "1.2.0"
  assert "1.2.0" in segmentation.SegmentationBuilder.RELEASE_NOTES
  root = make_msd(tmp_path / "raw", num_cases=3)
  builder = raw.RawSegmentation(raw_root=root, data_dir=str(tmp_path / "prepared"), num_workers=1)
  old = _fake_prepared_version(builder, "1.1.0")
  assert builder.stale_versions() == [old]
  with caplog.at_level("WARNING"):
    builder.download_and_prepare()
  assert (builder.prepared_dir / "dataset_info.json").read_text() != "{}"
  meta = tfds.builder_from_directory(str(builder.prepared_dir)).info.metadata
  assert "folds" in meta and meta["fingerprint"]["cropped_shapes"]  # What 1.1.0 lacked.
  message = " ".join(r.getMessage() for r in caplog.records)
  assert f"{old} holds this dataset prepared by builder version 1.1.0, older than the current 1.2.0" in message
  assert "use_mask_for_norm" in message and "preparing it again from the raw files" in message
  assert old.exists()  # Left for the user to delete; never read.


def test_older_msd_task_without_its_raw_files_is_refused_naming_the_version(tmp_path):
  builder = msd.MsdTask(config="Task02_Heart", data_dir=str(tmp_path / "prepared"), num_workers=1)
  old = _fake_prepared_version(builder, "1.1.0")
  (tmp_path / "manual").mkdir()
  with pytest.raises(
    DataError,
    match=rf"manual directory for Task02_Heart: .* \({old} holds this dataset prepared by "
    r"builder version 1.1.0, older than the current 1.2.0 .* and cannot be used; "
    r"the raw files are needed to prepare it again\)",
  ):
    _prepare_task(tmp_path / "manual", tmp_path / "prepared")
  assert not builder.prepared_dir.exists() and old.exists()


# Bad input: a one-line DataError naming the file, and nothing that looks prepared.


def _truncate(path):
  data = path.read_bytes()
  path.write_bytes(data[: len(data) // 2])


def _gzip_of(path, array):
  path.write_bytes(gzip.compress(nib.Nifti1Image(array, AFFINE).to_bytes()))


BAD_INPUTS = {
  "missing label": (
    lambda r: (r / "labelsTr" / "case_1.nii.gz").unlink(),
    "labelsTr/case_1.nii.gz",
    "missing label file",
  ),
  "shape mismatch": (
    lambda r: _write(r / "labelsTr" / "case_1.nii.gz", np.zeros((8, 7, 4), np.uint8)),
    "labelsTr/case_1.nii.gz",
    r"shape \(8, 7, 4\) differs from \(8, 7, 5\)",
  ),
  "affine mismatch": (
    lambda r: _write(r / "labelsTr" / "case_1.nii.gz", _case_arrays(1)[1], np.diag([1.5, 1.0, 2.5, 1.0])),
    "labelsTr/case_1.nii.gz",
    "affine differs",
  ),
  "undeclared label": (
    lambda r: _write(r / "labelsTr" / "case_2.nii.gz", np.full(SHAPE, 7, np.uint8)),
    "labelsTr/case_2.nii.gz",
    r"label values \[7\] are not declared",
  ),
  "truncated gzip": (
    lambda r: _truncate(r / "imagesTr" / "case_3.nii.gz"),
    "imagesTr/case_3.nii.gz",
    "cannot read NIfTI file",
  ),
  "nan voxel": (
    lambda r: _gzip_of(
      r / "imagesTr" / "case_2.nii.gz", np.where(np.arange(280).reshape(SHAPE) == 9, np.nan, 1.0).astype(np.float32)
    ),
    "imagesTr/case_2.nii.gz",
    "NaN or infinite",
  ),
  "inf voxel": (
    lambda r: _write(r / "imagesTr" / "case_0.nii.gz", np.full(SHAPE, np.inf, np.float32)),
    "imagesTr/case_0.nii.gz",
    "NaN or infinite",
  ),
  "4D image where 3D is declared": (
    lambda r: _write(r / "imagesTr" / "case_1.nii.gz", np.ones(SHAPE + (2,))),
    "imagesTr/case_1.nii.gz",
    "is 4D .* tensorImageSize '3D'",
  ),
  "dataset.json missing": (lambda r: (r / "dataset.json").unlink(), "dataset.json", "file not found"),
  "dataset.json not JSON": (lambda r: (r / "dataset.json").write_text("{'name': 1"), "dataset.json", "not valid JSON"),
  "dataset.json missing key": (lambda r: _edit_json(r, labels=None), "dataset.json", "missing required key 'labels'"),
  "path escaping the root": (
    lambda r: _edit_json(r, training=[{"image": "../../etc/passwd.nii.gz", "label": "./labelsTr/case_0.nii.gz"}]),
    "dataset.json",
    "outside the dataset root",
  ),
  "empty dataset": (lambda r: _edit_json(r, training=[]), "dataset.json", "no training cases"),
}


def _edit_json(root, **changes):
  meta = json.loads((root / "dataset.json").read_text())
  for key, value in changes.items():
    if value is None:
      del meta[key]
    else:
      meta[key] = value
  (root / "dataset.json").write_text(json.dumps(meta))


@pytest.mark.parametrize("problem", list(BAD_INPUTS))
def test_bad_input_names_the_file_and_registers_nothing(tmp_path, problem):
  root = make_msd(tmp_path / "raw", num_cases=5)
  break_dataset, file_name, message = BAD_INPUTS[problem]
  break_dataset(root)
  with pytest.raises(DataError, match=message) as error:
    prepare(root, tmp_path / "prepared")
  text = str(error.value)
  assert str(root / file_name) in text and "\n" not in text, text
  assert_nothing_registered(tmp_path / "prepared")


def test_bad_case_found_by_a_worker_process_is_the_same_error(tmp_path):
  root = make_msd(tmp_path / "raw", num_cases=5)
  _truncate(root / "imagesTr" / "case_3.nii.gz")
  with pytest.raises(DataError, match="case_3.nii.gz: cannot read NIfTI file"):
    prepare(root, tmp_path / "prepared", num_workers=2)
  assert_nothing_registered(tmp_path / "prepared")


KILLED_PREPARATION = """
import sys, time
from jaxseg.data.builders import raw, workers
original = workers.preprocess_example
def slow(job):
  result = original(job)
  print("case written", flush=True)
  time.sleep(0.5)
  return result
workers.preprocess_example = slow
if __name__ == "__main__":
  raw.RawSegmentation(raw_root=sys.argv[1], data_dir=sys.argv[2], num_workers=1).download_and_prepare()
  print("finished", flush=True)
"""


def test_killed_preparation_is_never_complete_and_a_rerun_redoes_it(tmp_path):
  root = make_msd(tmp_path / "raw", num_cases=6)
  data_dir = tmp_path / "prepared"
  script = tmp_path / "prepare.py"
  script.write_text(KILLED_PREPARATION)
  env = dict(os.environ, JAX_PLATFORMS="cpu", PYTHONPATH=str(ROOT))
  process = subprocess.Popen(
    [sys.executable, str(script), str(root), str(data_dir)],
    stdout=subprocess.PIPE,
    stderr=subprocess.DEVNULL,
    text=True,
    env=env,
    start_new_session=True,
  )
  try:
    for line in process.stdout:  # TFDS prints its own lines too.
      if line.strip() == "case written":
        break
    else:
      pytest.fail("the preparation ended before writing a case")
    os.killpg(process.pid, signal.SIGKILL)
  finally:
    process.wait(timeout=60)
  builder = raw.RawSegmentation(raw_root=root, data_dir=str(data_dir), num_workers=1)
  config_dir = builder.prepared_dir.parent
  assert list(config_dir.glob("incomplete.*"))  # The killed run's leftovers...
  assert not builder.prepared_dir.exists() and not builder.is_prepared()  # ...are not a dataset.
  builder.download_and_prepare()
  assert not list(config_dir.glob("incomplete.*"))
  reader = tfds.builder_from_directory(str(builder.prepared_dir))
  splits = reader.info.metadata["splits"]
  assert sum(len(reader.as_data_source(split=s)) for s, ids in splits.items() if ids) == 6


def test_concurrent_preparations_prepare_once(tmp_path):
  root = make_msd(tmp_path / "raw", num_cases=4)
  data_dir = tmp_path / "prepared"
  script = tmp_path / "prepare.py"
  script.write_text(KILLED_PREPARATION)
  env = dict(os.environ, JAX_PLATFORMS="cpu", PYTHONPATH=str(ROOT))
  processes = [
    subprocess.Popen(
      [sys.executable, str(script), str(root), str(data_dir)],
      stdout=subprocess.PIPE,
      stderr=subprocess.PIPE,
      text=True,
      env=env,
    )
    for _ in range(2)
  ]
  outputs = [p.communicate(timeout=240) for p in processes]
  assert all(p.returncode == 0 for p in processes), [err[-2000:] for _, err in outputs]
  written = [out.count("case written") for out, _ in outputs]
  assert sorted(written) == [0, 4]  # The second waited for the lock, then reused the dataset.


# Medical Segmentation Decathlon tasks.


def make_task(manual_dir, task="Task02_Heart", **kwargs):
  spec = msd.TASKS[task]
  return make_msd(
    manual_dir / task,
    num_cases=spec.num_training,
    shape=(6, 5, 4),
    modality={str(i): m for i, m in enumerate(spec.modality)},
    labels={str(v): n for v, n in spec.labels.items()},
    prefix="la",
    **kwargs,
  )


def _prepare_task(manual_dir, data_dir, task="Task02_Heart"):
  builder = msd.MsdTask(config=task, data_dir=str(data_dir), num_workers=1)
  builder.download_and_prepare(download_config=tfds.download.DownloadConfig(manual_dir=str(manual_dir)))
  return builder


def test_msd_task_builder_prepares_a_task_by_name(tmp_path):
  task_dir = make_task(tmp_path / "manual")
  builder = _prepare_task(tmp_path / "manual", tmp_path / "prepared")
  assert builder.prepared_dir == tmp_path / "prepared" / "msd_task" / "Task02_Heart" / str(builder.VERSION)
  meta = tfds.builder_from_directory(str(builder.prepared_dir)).info.metadata
  assert meta["raw_root"] == str(task_dir.resolve())
  assert sum(len(ids) for ids in meta["splits"].values()) == 20
  assert builder.info.homepage == msd.HOMEPAGE and "Decathlon" in builder.info.citation
  # The task directory itself also works as the manual directory; prepared data needs no raw files.
  assert _prepare_task(task_dir, tmp_path / "prepared").prepared_dir == builder.prepared_dir
  assert sorted(msd.TASKS) == [
    f"Task{i:02d}_{n}"
    for i, n in enumerate(
      [
        "BrainTumour",
        "Heart",
        "Liver",
        "Hippocampus",
        "Prostate",
        "Lung",
        "Pancreas",
        "HepaticVessel",
        "Spleen",
        "Colon",
      ],
      start=1,
    )
  ]


@pytest.mark.parametrize(
  "change,message",
  [
    ({"modality": {"0": "MRI", "1": "T2"}}, r"2 channel\(s\) \['MRI', 'T2'\] but Task02_Heart has 1"),
    ({"labels": {"0": "background", "1": "left atrium", "2": "ventricle"}}, r"label values \[0, 1, 2\]"),
  ],
)
def test_msd_task_must_match_the_published_dataset(tmp_path, change, message):
  task_dir = make_task(tmp_path / "manual")
  _edit_json(task_dir, **change)
  with pytest.raises(DataError, match=message) as error:
    _prepare_task(tmp_path / "manual", tmp_path / "prepared")
  assert str(task_dir / "dataset.json") in str(error.value)
  assert_nothing_registered(tmp_path / "prepared")


def test_msd_task_with_missing_cases_is_refused(tmp_path):
  task_dir = make_task(tmp_path / "manual")
  meta = json.loads((task_dir / "dataset.json").read_text())
  _edit_json(task_dir, training=meta["training"][:5])
  with pytest.raises(DataError, match="lists 5 training cases but Task02_Heart has 20"):
    _prepare_task(tmp_path / "manual", tmp_path / "prepared")


def test_msd_task_not_extracted(tmp_path):
  manual = tmp_path / "manual"
  manual.mkdir()
  (manual / "Task09_Spleen.tar").write_bytes(b"archive")
  with pytest.raises(DataError, match=r"Task09_Spleen.tar: the archive is not extracted; run `tar -xf"):
    _prepare_task(manual, tmp_path / "prepared", task="Task09_Spleen")
  (manual / "Task09_Spleen.tar").unlink()
  (manual / "notes.txt").write_text("")
  with pytest.raises(DataError, match=r"Task09_Spleen/dataset.json: file not found; download Task09_Spleen.tar"):
    _prepare_task(manual, tmp_path / "prepared", task="Task09_Spleen")
  assert_nothing_registered(tmp_path / "prepared")


def test_builders_are_registered_with_tfds():
  assert "msd_task" in tfds.list_builders(with_community_datasets=False)
  assert "raw_segmentation" in tfds.list_builders(with_community_datasets=False)
  assert [c.name for c in msd.MsdTask.BUILDER_CONFIGS] == list(msd.TASKS)

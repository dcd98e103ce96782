"""Tests for jaxseg.data.nifti: raw MSD / nnU-Net v2 directories, NIfTI I/O."""

import json
import os
import pathlib

import nibabel as nib
import numpy as np
import pytest

from jaxseg.data import nifti
from jaxseg.errors import DataError
from jaxseg.errors import WorkdirError

SPACING = (1.5, 2.0, 3.0)
AFFINE = np.array([[1.5, 0, 0, -10.0], [0, 2.0, 0, 20.0], [0, 0, 3.0, 5.0], [0, 0, 0, 1]])
SHAPE = (5, 4, 3)
LABELS_MSD = {"0": "background", "1": "liver", "2": "tumour"}
LABELS = {"background": 0, "liver": 1, "tumour": 2}


def _write(path, array, affine=AFFINE, **kwargs):
  path.parent.mkdir(parents=True, exist_ok=True)
  image = nib.Nifti1Image(np.asarray(array), affine, **kwargs)
  nib.save(image, path)
  return path


def _image(seed, channels=0):
  """Random HU-like int16 volume [5, 4, 3] (or [5, 4, 3, channels])."""
  rng = np.random.default_rng(seed)
  shape = SHAPE + ((channels,) if channels else ())
  return rng.integers(-1000, 1000, shape).astype(np.int16)


def _label(seed):
  rng = np.random.default_rng(seed + 100)
  return rng.integers(0, 3, SHAPE).astype(np.uint8)


def _make_msd(root, num_cases=2, channels=0, with_test=True, splits=None):
  """MSD layout with `num_cases` labelled cases; returns the root."""
  training = []
  for i in range(num_cases):
    _write(root / "imagesTr" / f"case_{i}.nii.gz", _image(i, channels))
    _write(root / "labelsTr" / f"case_{i}.nii.gz", _label(i))
    training.append({"image": f"./imagesTr/case_{i}.nii.gz", "label": f"./labelsTr/case_{i}.nii.gz"})
  test = []
  if with_test:
    _write(root / "imagesTs" / "case_9.nii.gz", _image(9, channels))
    test = ["./imagesTs/case_9.nii.gz"]
  modality = {"0": "CT"} if not channels else {str(c): f"MR{c}" for c in range(channels)}
  meta = {
    "name": "Toy",
    "description": "tiny test set",
    "tensorImageSize": "4D" if channels else "3D",
    "modality": modality,
    "labels": LABELS_MSD,
    "numTraining": num_cases,
    "training": training,
    "test": test,
  }
  (root / "dataset.json").write_text(json.dumps(meta))
  if splits is not None:
    (root / "splits.json").write_text(json.dumps(splits))
  return root


def _make_nnunet(root, num_cases=2, channels=2, shape=SHAPE):
  """nnU-Net v2 layout, one file per channel; returns the root."""
  rng = np.random.default_rng(0)
  for i in range(num_cases):
    for c in range(channels):
      _write(root / "imagesTr" / f"brain_{i:03d}_{c:04d}.nii.gz", rng.normal(size=shape).astype(np.float32))
    _write(root / "labelsTr" / f"brain_{i:03d}.nii.gz", rng.integers(0, 3, shape).astype(np.uint8))
  for c in range(channels):
    _write(root / "imagesTs" / f"brain_100_{c:04d}.nii.gz", rng.normal(size=shape).astype(np.float32))
  meta = {
    "channel_names": {str(c): f"ch{c}" for c in range(channels)},
    "labels": LABELS,
    "numTraining": num_cases,
    "file_ending": ".nii.gz",
  }
  (root / "dataset.json").write_text(json.dumps(meta))
  return root


def _edit_json(root, **changes):
  path = root / "dataset.json"
  meta = json.loads(path.read_text())
  for key, value in changes.items():
    if value is None:
      del meta[key]
    else:
      meta[key] = value
  path.write_text(json.dumps(meta))


def _raises_naming(path, fn, *args, match=None):
  """Asserts fn(*args) raises a one-line DataError naming `path`."""
  with pytest.raises(DataError, match=match) as excinfo:
    fn(*args)
  message = str(excinfo.value)
  assert str(path) in message, message
  assert "\n" not in message
  return message


# Reading valid datasets.


def test_read_msd(tmp_path):
  splits = {"train": ["case_0"], "validation": [], "test": ["case_1"]}
  root = _make_msd(tmp_path, splits=splits)
  ds = nifti.read_dataset(root)
  assert ds.format == "msd"
  assert ds.name == "Toy"
  assert ds.description == "tiny test set"
  assert ds.channel_names == ("CT",)
  assert ds.labels == LABELS
  assert ds.ndim == 3
  assert [c.case_id for c in ds.training] == ["case_0", "case_1"]
  assert ds.training[1].image_paths == (root / "imagesTr/case_1.nii.gz",)
  assert ds.training[1].label_path == root / "labelsTr/case_1.nii.gz"
  assert [(c.case_id, c.label_path) for c in ds.test] == [("case_9", None)]
  assert ds.splits == splits


def test_load_msd_case_applies_scaling(tmp_path):
  root = _make_msd(tmp_path, num_cases=1, with_test=False)
  raw = _image(0)
  image = nib.Nifti1Image(raw, AFFINE)
  image.header.set_slope_inter(2.0, -1024.0)
  nib.save(image, root / "imagesTr/case_0.nii.gz")
  case = nifti.load_case(nifti.read_dataset(root).training[0], nifti.read_dataset(root))
  assert case.case_id == "case_0"
  assert case.image.dtype == np.float32 and case.image.shape == SHAPE + (1,)
  np.testing.assert_array_equal(case.image[..., 0], raw * 2.0 - 1024.0)
  assert case.label.dtype == np.uint8
  np.testing.assert_array_equal(case.label, _label(0))
  np.testing.assert_allclose(case.affine, AFFINE)
  assert case.spacing == pytest.approx(SPACING)


def test_load_msd_two_channel_4d(tmp_path):
  root = _make_msd(tmp_path, channels=2)
  ds = nifti.read_dataset(root)
  assert ds.channel_names == ("MR0", "MR1") and ds.ndim == 3
  case = nifti.load_case(ds.training[1], ds)
  assert case.image.shape == SHAPE + (2,)
  np.testing.assert_array_equal(case.image, _image(1, 2).astype(np.float32))
  test_case = nifti.load_case(ds.test[0], ds)
  assert test_case.label is None and test_case.image.shape == SHAPE + (2,)


def test_read_and_load_nnunet_two_channels(tmp_path):
  root = _make_nnunet(tmp_path)
  ds = nifti.read_dataset(root)
  assert ds.format == "nnunetv2"
  assert ds.name == tmp_path.name  # no 'name' key: the directory name
  assert ds.channel_names == ("ch0", "ch1")
  assert ds.labels == LABELS and ds.ndim == 3 and ds.splits is None
  assert [c.case_id for c in ds.training] == ["brain_000", "brain_001"]
  assert ds.training[0].image_paths == (
    root / "imagesTr/brain_000_0000.nii.gz",
    root / "imagesTr/brain_000_0001.nii.gz",
  )
  assert ds.training[0].label_path == root / "labelsTr/brain_000.nii.gz"
  assert [(c.case_id, c.label_path) for c in ds.test] == [("brain_100", None)]
  case = nifti.load_case(ds.training[1], ds)
  assert case.image.shape == SHAPE + (2,)
  for c in range(2):
    expected = nib.load(root / f"imagesTr/brain_001_{c:04d}.nii.gz").get_fdata()
    np.testing.assert_array_equal(case.image[..., c], expected)


@pytest.mark.parametrize("shape", [(6, 5), (6, 5, 1)])
def test_2d_nnunet(tmp_path, shape):
  root = _make_nnunet(tmp_path, num_cases=1, channels=1, shape=shape)
  ds = nifti.read_dataset(root)
  assert ds.ndim == 2
  case = nifti.load_case(ds.training[0], ds)
  assert case.image.shape == (6, 5, 1, 1)
  assert case.label.shape == (6, 5, 1)


def test_3d_case_in_2d_dataset(tmp_path):
  root = _make_nnunet(tmp_path, num_cases=2, channels=1, shape=(6, 5, 1))
  path = root / "imagesTr/brain_001_0000.nii.gz"
  _write(path, np.zeros((6, 5, 4), np.float32))
  _write(root / "labelsTr/brain_001.nii.gz", np.zeros((6, 5, 4), np.uint8))
  ds = nifti.read_dataset(root)
  _raises_naming(path, nifti.load_case, ds.training[1], ds, match="2D")


def test_2d_msd_singleton_z(tmp_path):
  _write(tmp_path / "imagesTr/cell_0.nii.gz", np.ones((6, 5, 1), np.float32))
  _write(tmp_path / "labelsTr/cell_0.nii.gz", np.zeros((6, 5, 1), np.uint8))
  (tmp_path / "dataset.json").write_text(
    json.dumps(
      {
        "name": "cells",
        "modality": {"0": "fluorescence"},
        "labels": {"0": "background", "1": "nucleus"},
        "training": [{"image": "imagesTr/cell_0.nii.gz", "label": "labelsTr/cell_0.nii.gz"}],
      }
    )
  )
  ds = nifti.read_dataset(tmp_path)
  assert ds.ndim == 2 and ds.test == ()
  assert nifti.load_case(ds.training[0], ds).image.shape == (6, 5, 1, 1)


def test_read_dataset_reads_no_voxels(tmp_path):
  root = _make_msd(tmp_path, num_cases=1)
  path = root / "imagesTr/case_0.nii.gz"
  rng = np.random.default_rng(0)
  _write(path, rng.normal(size=(20, 20, 20)).astype(np.float32))
  data = path.read_bytes()
  path.write_bytes(data[: len(data) // 2])  # header intact, voxels truncated
  ds = nifti.read_dataset(root)
  _raises_naming(path, nifti.load_case, ds.training[0], ds)


# Bad dataset.json and directory layout.


def test_missing_dataset_json(tmp_path):
  _raises_naming(tmp_path / "dataset.json", nifti.read_dataset, tmp_path, match="not found")


def test_dataset_json_not_json(tmp_path):
  (tmp_path / "dataset.json").write_text('{"name": "x",')
  _raises_naming(tmp_path / "dataset.json", nifti.read_dataset, tmp_path, match="not valid JSON")


@pytest.mark.parametrize(
  "make,key",
  [
    (_make_msd, "labels"),
    (_make_msd, "modality"),
    (_make_msd, "training"),
    (_make_msd, "name"),
    (_make_nnunet, "file_ending"),
    (_make_nnunet, "labels"),
  ],
)
def test_dataset_json_missing_key(tmp_path, make, key):
  root = make(tmp_path)
  _edit_json(root, **{key: None})
  _raises_naming(root / "dataset.json", nifti.read_dataset, root, match=f"'{key}'")


def test_dataset_json_of_unknown_format(tmp_path):
  (tmp_path / "dataset.json").write_text('{"name": "x"}')
  _raises_naming(tmp_path / "dataset.json", nifti.read_dataset, tmp_path, match="neither")


@pytest.mark.parametrize(
  "labels", [{"0": "bg", "1": "liver"}, {"1": "liver"}, {"zero": "background"}, {"0": "background", "300": "x"}]
)
def test_bad_msd_labels(tmp_path, labels):
  root = _make_msd(tmp_path)
  _edit_json(root, labels=labels)
  _raises_naming(root / "dataset.json", nifti.read_dataset, root)


def test_region_labels_rejected(tmp_path):
  root = _make_nnunet(tmp_path)
  _edit_json(root, labels={"background": 0, "whole": [1, 2]})
  _raises_naming(root / "dataset.json", nifti.read_dataset, root, match="region")


def _escape_outside(root):
  return "../outside.nii.gz"


def _escape_absolute(root):
  return str(root.parent / "outside.nii.gz")


def _escape_symlink(root):
  (root / "imagesTr/link.nii.gz").symlink_to(root.parent / "outside.nii.gz")
  return "./imagesTr/link.nii.gz"


@pytest.mark.parametrize("escape", [_escape_outside, _escape_absolute, _escape_symlink])
def test_path_escaping_root(tmp_path, escape):
  root = _make_msd(tmp_path / "ds")
  _write(tmp_path / "outside.nii.gz", _image(0))
  meta = json.loads((root / "dataset.json").read_text())
  meta["training"][0]["image"] = escape(root)
  (root / "dataset.json").write_text(json.dumps(meta))
  _raises_naming(root / "dataset.json", nifti.read_dataset, root, match="outside the dataset root")


@pytest.mark.parametrize("folder", ["imagesTr", "labelsTr"])
def test_nnunet_symlink_escaping_root(tmp_path, folder):
  root = _make_nnunet(tmp_path / "ds")
  name = "brain_001_0000.nii.gz" if folder == "imagesTr" else "brain_001.nii.gz"
  outside = _write(tmp_path / "outside.nii.gz", _label(0))
  (root / folder / name).unlink()
  (root / folder / name).symlink_to(outside)
  _raises_naming(root / folder / name, nifti.read_dataset, root, match="outside the dataset root")


@pytest.mark.parametrize("folder", ["imagesTr", "labelsTr", "imagesTs"])
def test_msd_missing_file(tmp_path, folder):
  root = _make_msd(tmp_path)
  missing = root / folder / ("case_9.nii.gz" if folder == "imagesTs" else "case_1.nii.gz")
  missing.unlink()
  _raises_naming(missing, nifti.read_dataset, root, match="missing")


def test_msd_training_image_without_label(tmp_path):
  root = _make_msd(tmp_path)
  meta = json.loads((root / "dataset.json").read_text())
  del meta["training"][1]["label"]
  (root / "dataset.json").write_text(json.dumps(meta))
  message = _raises_naming(root / "dataset.json", nifti.read_dataset, root)
  assert "case_1.nii.gz" in message and "no" in message


def test_nnunet_image_without_label(tmp_path):
  root = _make_nnunet(tmp_path)
  (root / "labelsTr/brain_001.nii.gz").unlink()
  _raises_naming(root / "imagesTr/brain_001_0000.nii.gz", nifti.read_dataset, root, match="no label")


def test_nnunet_label_without_image(tmp_path):
  root = _make_nnunet(tmp_path)
  _write(root / "labelsTr/brain_777.nii.gz", _label(0))
  _raises_naming(root / "labelsTr/brain_777.nii.gz", nifti.read_dataset, root)


def test_nnunet_missing_channel_file(tmp_path):
  root = _make_nnunet(tmp_path)
  (root / "imagesTr/brain_001_0001.nii.gz").unlink()
  _raises_naming(root / "imagesTr/brain_001_0001.nii.gz", nifti.read_dataset, root, match="missing channel")


def test_nnunet_extra_channel_file(tmp_path):
  root = _make_nnunet(tmp_path)
  _write(root / "imagesTr/brain_001_0002.nii.gz", _image(0))
  _raises_naming(root / "imagesTr/brain_001_0002.nii.gz", nifti.read_dataset, root, match="2 channel")


def test_empty_dataset(tmp_path):
  root = _make_msd(tmp_path)
  _edit_json(root, training=[])
  _raises_naming(root / "dataset.json", nifti.read_dataset, root, match="no training cases")


@pytest.mark.parametrize("bad_id", ["case_5", "case_9"])  # unknown, unlabelled
def test_splits_with_unknown_case(tmp_path, bad_id):
  root = _make_msd(tmp_path, splits={"train": ["case_0", bad_id]})
  _raises_naming(root / "splits.json", nifti.read_dataset, root, match=bad_id)


def test_splits_overlapping(tmp_path):
  root = _make_msd(tmp_path, splits={"train": ["case_0"], "test": ["case_0"]})
  _raises_naming(root / "splits.json", nifti.read_dataset, root, match="both")


# Bad voxel data (load_case).


def _load_first(root):
  ds = nifti.read_dataset(root)
  return nifti.load_case(ds.training[0], ds)


def test_label_shape_mismatch(tmp_path):
  root = _make_msd(tmp_path)
  _write(root / "labelsTr/case_0.nii.gz", np.zeros((5, 4, 2), np.uint8))
  _raises_naming(root / "labelsTr/case_0.nii.gz", _load_first, root, match="shape")


def test_label_affine_mismatch(tmp_path):
  root = _make_msd(tmp_path)
  shifted = AFFINE.copy()
  shifted[0, 3] += 0.01  # 10 micrometres: more than the tolerance
  _write(root / "labelsTr/case_0.nii.gz", _label(0), shifted)
  _raises_naming(root / "labelsTr/case_0.nii.gz", _load_first, root, match="affine")


def test_label_affine_within_tolerance(tmp_path):
  root = _make_msd(tmp_path)
  shifted = AFFINE.copy()
  shifted[0, 3] += 1e-4
  _write(root / "labelsTr/case_0.nii.gz", _label(0), shifted)
  np.testing.assert_array_equal(_load_first(root).label, _label(0))


def test_nnunet_channel_affine_mismatch(tmp_path):
  root = _make_nnunet(tmp_path)
  path = root / "imagesTr/brain_000_0001.nii.gz"
  _write(path, np.zeros(SHAPE, np.float32), np.diag([1.0, 1.0, 1.0, 1.0]))
  _raises_naming(path, _load_first, root, match="affine")


@pytest.mark.parametrize("column,match", [(np.zeros(4), "zero"), (AFFINE[:, 0], "singular")])
def test_degenerate_affine(tmp_path, column, match):
  root = _make_msd(tmp_path)
  bad = AFFINE.copy()
  bad[:, 1] = column
  image = nib.Nifti1Image(_image(0), None)  # no qform
  image.header.set_sform(bad, code=1)
  nib.save(image, root / "imagesTr/case_0.nii.gz")
  assert np.array_equal(nib.load(root / "imagesTr/case_0.nii.gz").affine, bad)
  _raises_naming(root / "imagesTr/case_0.nii.gz", _load_first, root, match=match)


def test_undeclared_label_values(tmp_path):
  root = _make_msd(tmp_path)
  label = _label(0)
  label[0, 0, 0] = 7
  label[1, 0, 0] = 3
  _write(root / "labelsTr/case_0.nii.gz", label)
  _raises_naming(root / "labelsTr/case_0.nii.gz", _load_first, root, match=r"\[3, 7\]")


def test_fractional_label_values(tmp_path):
  root = _make_msd(tmp_path)
  label = _label(0).astype(np.float32)
  label[0, 0, 0] = 0.5
  _write(root / "labelsTr/case_0.nii.gz", label)
  _raises_naming(root / "labelsTr/case_0.nii.gz", _load_first, root, match="integers")


def test_float_label_with_integer_values_is_accepted(tmp_path):
  root = _make_msd(tmp_path)
  _write(root / "labelsTr/case_0.nii.gz", _label(0).astype(np.float32))
  np.testing.assert_array_equal(_load_first(root).label, _label(0))


@pytest.mark.parametrize("value", [np.nan, np.inf])
def test_non_finite_image(tmp_path, value):
  root = _make_msd(tmp_path)
  image = _image(0).astype(np.float32)
  image[2, 1, 0] = value
  _write(root / "imagesTr/case_0.nii.gz", image)
  _raises_naming(root / "imagesTr/case_0.nii.gz", _load_first, root, match=r"NaN or infinite .* \(2, 1, 0")


def test_4d_image_where_3d_is_declared(tmp_path):
  root = _make_msd(tmp_path)
  _write(root / "imagesTr/case_0.nii.gz", _image(0, channels=2))
  _raises_naming(
    root / "imagesTr/case_0.nii.gz",
    _load_first,
    root,
    match=r"is 4D \(shape \(5, 4, 3, 2\)\) but dataset.json "
    r"declares tensorImageSize '3D'",
  )


def test_4d_image_for_single_channel_dataset(tmp_path):
  root = _make_msd(tmp_path)
  _edit_json(root, tensorImageSize=None)
  _write(root / "imagesTr/case_0.nii.gz", _image(0, channels=2))
  _raises_naming(root / "imagesTr/case_0.nii.gz", _load_first, root, match="2 channel")


def test_bad_tensor_image_size(tmp_path):
  root = _make_msd(tmp_path)
  _edit_json(root, tensorImageSize="5D")
  _raises_naming(root / "dataset.json", nifti.read_dataset, root, match="'tensorImageSize' must be '3D' or '4D'")


def test_nnunet_channel_file_with_two_channels(tmp_path):
  root = _make_nnunet(tmp_path)
  path = root / "imagesTr/brain_000_0001.nii.gz"
  _write(path, _image(0, channels=2))
  _raises_naming(path, _load_first, root, match="single channel")


def test_channel_count_differs_from_modalities(tmp_path):
  root = _make_msd(tmp_path, channels=2)
  _write(root / "imagesTr/case_0.nii.gz", _image(0, channels=3))
  _raises_naming(root / "imagesTr/case_0.nii.gz", _load_first, root, match="3 channel")


def _truncate(path):
  data = path.read_bytes()
  path.write_bytes(data[: len(data) - 40])


def _garbage(path):
  path.write_bytes(b"not a nifti file" * 20)


def _flip_byte(path):
  """Flips one byte of the compressed voxel data (header stays readable)."""
  data = bytearray(path.read_bytes())
  data[len(data) // 2] ^= 0xFF
  path.write_bytes(bytes(data))


@pytest.mark.parametrize("corrupt", [_truncate, _garbage, _flip_byte])
@pytest.mark.parametrize("which", ["imagesTr", "labelsTr"])
def test_corrupt_nifti(tmp_path, corrupt, which):
  root = _make_msd(tmp_path)
  # Random voxels compress badly, so the middle of the file is voxel data.
  # nibabel alone often returns wrong voxels for a flipped byte: the gzip
  # CRC is only checked when the stream is read to its end.
  rng = np.random.default_rng(2)
  shape = (20, 20, 20)
  _write(root / "imagesTr/case_0.nii.gz", rng.random(shape).astype(np.float32))
  _write(root / "labelsTr/case_0.nii.gz", rng.integers(0, 3, shape).astype(np.uint8))
  path = root / which / "case_0.nii.gz"
  corrupt(path)
  if which == "imagesTr" and corrupt is _garbage:
    # read_dataset reads the first image's header.
    _raises_naming(path, nifti.read_dataset, root, match="cannot read")
  else:
    _raises_naming(path, _load_first, root, match="cannot read")


def test_truncated_uncompressed_nifti(tmp_path):
  root = _make_msd(tmp_path)
  path = root / "imagesTr/case_0.nii"
  _write(path, _image(0))
  _truncate(path)
  meta = json.loads((root / "dataset.json").read_text())
  meta["training"][0]["image"] = "imagesTr/case_0.nii"
  (root / "dataset.json").write_text(json.dumps(meta))
  _raises_naming(path, _load_first, root, match="cannot read")


# save_nifti.


@pytest.mark.parametrize("name", ["pred.nii.gz", "pred.nii"])
def test_save_nifti_round_trip(tmp_path, name):
  path = tmp_path / "out" / name
  label = _label(3)
  nifti.save_nifti(path, label, AFFINE, dtype=np.uint8)
  image = nib.load(path)
  assert image.get_data_dtype() == np.uint8
  np.testing.assert_array_equal(np.asarray(image.dataobj), label)
  np.testing.assert_allclose(image.affine, AFFINE)
  np.testing.assert_allclose(image.header.get_qform(), AFFINE, atol=1e-6)
  assert image.header.get_zooms() == pytest.approx(SPACING)
  assert os.listdir(path.parent) == [name]  # no temporary file left


def test_save_nifti_int64_and_probabilities(tmp_path):
  nifti.save_nifti(tmp_path / "a.nii.gz", np.arange(60).reshape(5, 4, 3), AFFINE)
  np.testing.assert_array_equal(np.asarray(nib.load(tmp_path / "a.nii.gz").dataobj), np.arange(60).reshape(5, 4, 3))
  probs = np.random.default_rng(0).random(SHAPE + (3,)).astype(np.float32)
  nifti.save_nifti(tmp_path / "p.nii.gz", probs, AFFINE)
  np.testing.assert_array_equal(nib.load(tmp_path / "p.nii.gz").get_fdata(), probs)


def test_save_nifti_failure_leaves_no_partial_file(tmp_path):
  target = tmp_path / "pred.nii.gz"
  target.mkdir()  # os.replace cannot overwrite a directory
  with pytest.raises(WorkdirError, match="pred.nii.gz"):
    nifti.save_nifti(target, _label(0), AFFINE)
  assert sorted(p.name for p in tmp_path.iterdir()) == ["pred.nii.gz"]
  assert target.is_dir()


def test_save_nifti_bad_extension(tmp_path):
  with pytest.raises(WorkdirError, match="pred.png"):
    nifti.save_nifti(tmp_path / "pred.png", _label(0), AFFINE)


def test_save_then_load_through_dataset(tmp_path):
  """save_nifti output is readable by load_case with the same geometry."""
  root = _make_msd(tmp_path, num_cases=1, with_test=False)
  nifti.save_nifti(root / "imagesTr/case_0.nii.gz", _image(5), AFFINE)
  case = _load_first(root)
  np.testing.assert_array_equal(case.image[..., 0], _image(5))
  assert pathlib.Path(root / "imagesTr/case_0.nii.gz").is_file()

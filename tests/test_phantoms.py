"""Tests for the synthetic phantom datasets (jaxseg.data.phantoms)."""

import dataclasses
import json
import os
import pathlib
import signal
import subprocess
import sys
import time

import nibabel as nib
import numpy as np
import pytest
from scipy import ndimage

from jaxseg import errors
from jaxseg.data import phantoms
from jaxseg.data.phantoms import ct
from jaxseg.data.phantoms import microscopy
from jaxseg.data.phantoms import mr

NUM_CASES = 3
NAMES = ("ct_phantom", "mr_phantom", "microscopy_phantom")
REPO_ROOT = pathlib.Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def datasets(tmp_path_factory):
  """name -> (root, [(case_id, image nifti, label nifti, image, label)])."""
  data_dir = tmp_path_factory.mktemp("phantoms")
  out = {}
  for name in NAMES:
    root = phantoms.ensure_phantom(name, data_dir, num_cases=NUM_CASES)
    meta = json.loads((root / "dataset.json").read_text())
    cases = []
    for entry in meta["training"]:
      image = nib.load(root / entry["image"])
      label = nib.load(root / entry["label"])
      cases.append(
        (
          pathlib.Path(entry["image"]).name.removesuffix(".nii.gz"),
          image,
          label,
          np.asarray(image.dataobj),
          np.asarray(label.dataobj),
        )
      )
    out[name] = (root, cases)
  return out


def _mtimes(root: pathlib.Path) -> dict[str, int]:
  return {str(p): p.stat().st_mtime_ns for p in root.rglob("*")}


def _world_centroid(label: np.ndarray, value: int, affine: np.ndarray) -> np.ndarray:
  """Mean world position (mm) of the voxels labelled `value`."""
  index = np.argwhere(label == value).mean(axis=0)
  return affine[:3, :3] @ index + affine[:3, 3]


@pytest.mark.parametrize("name", NAMES)
def test_dataset_json_lists_existing_files(datasets, name):
  root, _ = datasets[name]
  meta = json.loads((root / "dataset.json").read_text())
  spec = phantoms.PHANTOMS[name]
  assert root.name == name
  assert "SYNTHETIC" in meta["description"] and "jaxseg" in meta["description"]
  for key in ("name", "reference", "licence", "tensorImageSize"):
    assert isinstance(meta[key], str) and meta[key]
  assert (
    meta["modality"]
    == {"ct_phantom": {"0": "CT"}, "mr_phantom": {"0": "T1", "1": "T2"}, "microscopy_phantom": {"0": "fluorescence"}}[
      name
    ]
  )
  assert meta["labels"] == {str(v): k for k, v in spec.labels.items()}
  assert meta["labels"]["0"] == "background"
  assert meta["numTraining"] == NUM_CASES == len(meta["training"])
  assert meta["numTest"] == 0 and meta["test"] == []
  assert meta[phantoms.PARAMS_KEY] == {"generator": name, "version": spec.version, "num_cases": NUM_CASES, "seed": 0}
  for entry in meta["training"]:
    assert entry["image"].startswith("./imagesTr/")
    assert entry["label"] == entry["image"].replace("imagesTr", "labelsTr")
    assert (root / entry["image"]).is_file()
    assert (root / entry["label"]).is_file()
  assert sorted(p.name for p in (root / "imagesTr").iterdir()) == sorted(
    pathlib.Path(e["image"]).name for e in meta["training"]
  )


@pytest.mark.parametrize("name", NAMES)
def test_splits_are_disjoint_and_cover_all_cases(datasets, name):
  root, cases = datasets[name]
  splits = json.loads((root / "splits.json").read_text())
  assert set(splits) == {"train", "validation", "test"}
  ids = [i for part in splits.values() for i in part]
  assert len(ids) == len(set(ids))
  assert sorted(ids) == sorted(case_id for case_id, *_ in cases)
  assert all(len(part) >= 1 for part in splits.values())


def test_split_sizes():
  ids = [f"ct_{i:03d}" for i in range(30)]
  splits = phantoms.split_case_ids(ids)
  assert [len(splits[k]) for k in ("train", "validation", "test")] == [20, 4, 6]
  assert splits["test"] == ids[24:]
  small = phantoms.split_case_ids(ids[:3])
  assert [len(v) for v in small.values()] == [1, 1, 1]


@pytest.mark.parametrize("name", NAMES)
def test_nifti_geometry_matches_spacing(datasets, name):
  _, cases = datasets[name]
  for _, image, label, image_data, label_data in cases:
    zooms = np.array(image.header.get_zooms()[:3], np.float64)
    np.testing.assert_allclose(image.affine[:3, :3], np.diag(zooms), rtol=1e-6)
    np.testing.assert_allclose(label.affine, image.affine, atol=1e-4)
    assert nib.aff2axcodes(image.affine) == ("R", "A", "S")
    assert image.header["qform_code"] == image.header["sform_code"] == 1
    assert label_data.dtype == np.uint8
    assert label_data.shape == image_data.shape[:3]
    unit = image.header.get_xyzt_units()[0]
    if name == "ct_phantom":
      assert image_data.dtype == np.int16 and image_data.shape == (128, 128, 40)
      assert (image.dataobj.slope, image.dataobj.inter) == (1.0, 0.0)
      assert 3.0 <= zooms[0] == zooms[1] <= 3.4 and zooms[2] == 5.0
      assert unit == "mm"
      assert 384 <= 128 * zooms[0] <= 436  # Field of view (mm).
    elif name == "mr_phantom":
      assert image_data.dtype == np.float32
      assert image_data.shape == (96, 96, 48, 2)
      np.testing.assert_allclose(zooms, (2.0, 2.0, 3.0))
      assert unit == "mm"
    else:
      assert image_data.dtype == np.uint16 and image_data.shape == (256, 256, 1)
      np.testing.assert_allclose(zooms, (0.5, 0.5, 1.0))
      assert unit == "micron"


@pytest.mark.parametrize(
  "name,always_present",
  [
    ("ct_phantom", ("liver", "spleen", "kidney")),
    ("mr_phantom", ("grey_matter", "white_matter", "csf")),
    ("microscopy_phantom", ("nucleus", "boundary")),
  ],
)
def test_labels_are_declared_and_present(datasets, name, always_present):
  _, cases = datasets[name]
  labels = phantoms.PHANTOMS[name].labels
  for _, _, _, _, label in cases:
    values = set(np.unique(label).tolist())
    assert values <= set(labels.values())
    for class_name in always_present:
      assert labels[class_name] in values, class_name


def test_ct_anatomy_and_hounsfield_units(datasets):
  _, cases = datasets["ct_phantom"]
  tumour_cases = 0
  for _, image, _, hu, label in cases:
    liver_hu = np.median(hu[label == 1])
    assert 80 <= liver_hu <= 120
    assert 95 <= np.median(hu[label == 2]) <= 135
    assert 100 <= np.median(hu[label == 3]) <= 180
    if (label == 4).any():
      tumour_cases += 1
      assert 15 <= np.median(hu[label == 4]) <= liver_hu - 20
    corner = hu[:10, :10]
    assert abs(np.median(corner) + 1000) < 30 and 5 < corner.std() < 30
    assert hu.max() > 500  # Bone.
    assert np.mean((hu > -150) & (hu < -50)) > 0.02  # Fat.
    # Patient frame (RAS, mm): liver right, spleen left and posterior to it,
    # kidneys below the liver on both sides of the spine.
    liver = _world_centroid(label, 1, image.affine)
    spleen = _world_centroid(label, 2, image.affine)
    kidney = _world_centroid(label, 3, image.affine)
    assert liver[0] > spleen[0] + 50 and spleen[1] < liver[1]
    assert kidney[2] < liver[2] - 20
    kidney_components, count = ndimage.label(label == 3)
    sizes = np.bincount(kidney_components.ravel())[1:]
    assert count >= 2 and np.sort(sizes)[-2] > 0.3 * sizes.max()
  assert tumour_cases >= 1


def test_mr_contrast(datasets):
  _, cases = datasets["mr_phantom"]
  lesion_t1, lesion_t2, wm_t1, wm_t2 = [], [], [], []
  for _, _, _, image, label in cases:
    t1 = {v: np.median(image[..., 0][label == v]) for v in (1, 2, 3)}
    t2 = {v: np.median(image[..., 1][label == v]) for v in (1, 2, 3)}
    assert t1[2] > t1[1] > t1[3]  # T1: WM > GM > CSF.
    assert t2[3] > t2[1] > t2[2]  # T2: CSF > GM > WM.
    assert np.median(image[label == 0]) < 0.1 * t1[2]  # Mostly air.
    lesion_t1.append(image[..., 0][label == 4])
    lesion_t2.append(image[..., 1][label == 4])
    wm_t1.append(t1[2])
    wm_t2.append(t2[2])
  lesion_t1, lesion_t2 = np.concatenate(lesion_t1), np.concatenate(lesion_t2)
  assert lesion_t2.size > 0
  assert np.median(lesion_t2) > np.mean(wm_t2) * 1.2
  assert np.median(lesion_t1) < np.mean(wm_t1) * 0.9


def test_microscopy_nuclei_and_boundaries(datasets):
  _, cases = datasets["microscopy_phantom"]
  interfaces = 0
  for _, _, _, image, label in cases:
    image, label = image[..., 0], label[..., 0]
    assert np.median(image[label == 1]) > np.median(image[label == 0]) + 30
    # The boundary ring is closed: interior never touches background.
    padded = np.pad(label, 1, mode="edge")
    for shifted in (padded[:-2, 1:-1], padded[2:, 1:-1], padded[1:-1, :-2], padded[1:-1, 2:]):
      assert not ((label == 1) & (shifted == 0)).any()
    # Every nucleus blob has a boundary; boundaries are thin.
    blobs, count = ndimage.label(label > 0)
    assert count >= 5
    assert set(np.unique(blobs[label == 2])) == set(range(1, count + 1))
    assert (label == 2).sum() < 0.5 * (label > 0).sum()
    # Touching nuclei: boundary pixels with no background around them.
    near_background = ndimage.binary_dilation(label == 0, structure=np.ones((3, 3)))
    interfaces += int(((label == 2) & ~near_background).sum())
  assert interfaces > 0


@pytest.mark.parametrize("name,module", [("ct_phantom", ct), ("mr_phantom", mr), ("microscopy_phantom", microscopy)])
def test_generation_is_deterministic(datasets, name, module):
  _, cases = datasets[name]
  _, image, _, image_data, label_data = cases[1]
  again = module.generate_case(np.random.default_rng([0, 1]))
  np.testing.assert_array_equal(again.image, image_data)
  np.testing.assert_array_equal(again.label, label_data)
  np.testing.assert_allclose(again.affine, image.affine, atol=1e-4)
  other = module.generate_case(np.random.default_rng([1, 1]))
  assert not np.array_equal(other.label, label_data)


def test_two_generations_are_identical(tmp_path):
  roots = [phantoms.ensure_phantom("microscopy_phantom", tmp_path / d, num_cases=NUM_CASES) for d in ("a", "b")]
  files = sorted(p.relative_to(roots[0]) for p in roots[0].rglob("*.nii.gz"))
  assert len(files) == 2 * NUM_CASES
  for f in files:
    a, b = (nib.load(r / f) for r in roots)
    np.testing.assert_array_equal(np.asarray(a.dataobj), np.asarray(b.dataobj))
    np.testing.assert_array_equal(a.affine, b.affine)


def test_second_call_reuses_the_dataset(datasets, monkeypatch):
  root, _ = datasets["ct_phantom"]
  before = _mtimes(root)
  spec = phantoms.PHANTOMS["ct_phantom"]

  def fail(rng):
    raise AssertionError("generated again")

  monkeypatch.setitem(phantoms.PHANTOMS, "ct_phantom", dataclasses.replace(spec, generate_case=fail))
  start = time.perf_counter()
  again = phantoms.ensure_phantom("ct_phantom", root.parent, num_cases=NUM_CASES)
  assert time.perf_counter() - start < 1.0
  assert again == root
  assert _mtimes(root) == before


def test_changed_parameters_regenerate(tmp_path):
  root = phantoms.ensure_phantom("microscopy_phantom", tmp_path, num_cases=3)
  first = np.asarray(nib.load(root / "labelsTr/microscopy_000.nii.gz").dataobj)
  root = phantoms.ensure_phantom("microscopy_phantom", tmp_path, num_cases=4, seed=1)
  meta = json.loads((root / "dataset.json").read_text())
  assert meta[phantoms.PARAMS_KEY]["seed"] == 1 and meta["numTraining"] == 4
  assert len(list((root / "imagesTr").iterdir())) == 4
  second = np.asarray(nib.load(root / "labelsTr/microscopy_000.nii.gz").dataobj)
  assert not np.array_equal(first, second)
  assert sorted(p.name for p in tmp_path.iterdir()) == [".microscopy_phantom.lock", "microscopy_phantom"]


def test_incomplete_dataset_is_regenerated(tmp_path):
  root = phantoms.ensure_phantom("microscopy_phantom", tmp_path, num_cases=3)
  (root / phantoms.MARKER_NAME).unlink()
  (root / "labelsTr/microscopy_002.nii.gz").unlink()
  root = phantoms.ensure_phantom("microscopy_phantom", tmp_path, num_cases=3)
  assert (root / phantoms.MARKER_NAME).is_file()
  assert (root / "labelsTr/microscopy_002.nii.gz").is_file()


def test_killed_generation_is_never_complete(tmp_path):
  """SIGKILL a generating run: nothing in place, the next call redoes it."""
  code = (
    "import pathlib, sys; from jaxseg.data import phantoms; "
    'phantoms.ensure_phantom("ct_phantom", pathlib.Path(sys.argv[1]), '
    "num_cases=20)"
  )
  env = dict(os.environ, PYTHONPATH=str(REPO_ROOT))
  proc = subprocess.Popen([sys.executable, "-c", code, str(tmp_path)], env=env)
  try:
    deadline = time.monotonic() + 60
    while not list(tmp_path.glob(".ct_phantom.tmp-*/imagesTr/*.nii.gz")):
      assert proc.poll() is None and time.monotonic() < deadline
      time.sleep(0.05)
  finally:
    proc.send_signal(signal.SIGKILL)
    proc.wait()
  assert not (tmp_path / "ct_phantom").exists()
  assert list(tmp_path.glob(".ct_phantom.tmp-*"))
  root = phantoms.ensure_phantom("ct_phantom", tmp_path, num_cases=NUM_CASES)
  assert (root / phantoms.MARKER_NAME).is_file()
  assert not list(tmp_path.glob(".ct_phantom.tmp-*"))


def test_unknown_name_raises_config_error(tmp_path):
  with pytest.raises(errors.ConfigError) as info:
    phantoms.ensure_phantom("liver_phantom", tmp_path)
  message = str(info.value)
  assert "config.data.name" in message and "liver_phantom" in message
  assert all(name in message for name in NAMES)
  assert "\n" not in message


def test_too_few_cases_raises_config_error(tmp_path):
  with pytest.raises(errors.ConfigError, match="num_cases"):
    phantoms.ensure_phantom("ct_phantom", tmp_path, num_cases=2)


def test_unwritable_data_dir_raises_workdir_error(tmp_path):
  blocker = tmp_path / "not_a_directory"
  blocker.write_text("")
  with pytest.raises(errors.WorkdirError, match="not_a_directory"):
    phantoms.ensure_phantom("microscopy_phantom", blocker / "data")


def test_foreign_directory_is_left_alone(tmp_path):
  (tmp_path / "ct_phantom").mkdir()
  (tmp_path / "ct_phantom" / "notes.txt").write_text("mine")
  with pytest.raises(errors.WorkdirError, match="ct_phantom"):
    phantoms.ensure_phantom("ct_phantom", tmp_path, num_cases=NUM_CASES)
  assert (tmp_path / "ct_phantom" / "notes.txt").read_text() == "mine"


@pytest.mark.slow
def test_default_ct_phantom(tmp_path):
  start = time.perf_counter()
  root = phantoms.ensure_phantom("ct_phantom", tmp_path)
  seconds = time.perf_counter() - start
  print(f"default ct_phantom (30 cases) generated in {seconds:.1f} s")
  splits = json.loads((root / "splits.json").read_text())
  assert [len(splits[k]) for k in ("train", "validation", "test")] == [20, 4, 6]
  assert seconds < 60

"""Raw MSD and nnU-Net v2 dataset directories, NIfTI read and write.

Two raw layouts are read, detected from `dataset.json`:

* Medical Segmentation Decathlon (`format='msd'`): `dataset.json` lists the
  files (`training: [{"image": "./imagesTr/x.nii.gz", "label": ...}]`,
  `test: ["./imagesTs/y.nii.gz"]`), `modality` names the channels and
  `labels` maps label value (string) -> class name. A multi-channel image is
  one 4D file `(x, y, z, channel)`; `tensorImageSize` ('3D' or '4D'), when
  present, says whether image files may be 4D.
* nnU-Net v2 (`format='nnunetv2'`): `channel_names`, `labels` (class name ->
  value) and `file_ending`; files are found by name, one per channel:
  `imagesTr/CASE_0000.nii.gz`, `imagesTr/CASE_0001.nii.gz`, ...,
  `labelsTr/CASE.nii.gz`, `imagesTs/CASE_0000.nii.gz`.

An optional `splits.json` at the root holds `{"train": [...], "validation":
[...], "test": [...]}` lists of case ids.

Every file read must resolve (symlinks followed) inside the dataset root, so
a `dataset.json` cannot point at files elsewhere. `read_dataset` reads at most
one NIfTI header (to tell 2D from 3D data); voxel data is read one case at a
time by `load_case`, which checks everything that needs the voxels. A
`.nii.gz` file is decompressed to its end so that its gzip CRC is verified:
a corrupt file is an error, never silently wrong voxels.

Array conventions: images are float32 `[X, Y, Z, C]` in the file's voxel order
(2D data `[X, Y, 1, C]`), labels uint8 `[X, Y, Z]`, affines float64 `[4, 4]`
mapping voxel indices to world coordinates in mm.
"""

import dataclasses
import gzip
import json
import os
import pathlib
import re
import zlib
from collections.abc import Mapping
from typing import Any

import nibabel as nib
import numpy as np

from jaxseg import paths
from jaxseg.errors import DataError
from jaxseg.errors import WorkdirError

NIFTI_ENDINGS = (".nii.gz", ".nii")
# Largest difference (mm) allowed between the affines of an image, its label
# and its other channel files.
AFFINE_TOLERANCE_MM = 1e-3

_NIFTI_READ_ERRORS = (
  nib.filebasedimages.ImageFileError,
  nib.spatialimages.HeaderDataError,
  OSError,  # includes gzip.BadGzipFile and truncated uncompressed files
  EOFError,
  zlib.error,
  ValueError,
)


@dataclasses.dataclass(frozen=True)
class RawCase:
  """One case of a raw dataset.

  Attributes:
    case_id: file name without extension or channel suffix, e.g. 'spleen_12'.
    image_paths: MSD: one file (3D, or 4D with channels last); nnU-Net: one
      file per channel, in channel order (`_0000`, `_0001`, ...).
    label_path: label file, or None for unlabelled (test) cases.
  """

  case_id: str
  image_paths: tuple[pathlib.Path, ...]
  label_path: pathlib.Path | None


@dataclasses.dataclass(frozen=True)
class RawDataset:
  """A raw dataset directory as described by its `dataset.json`.

  Attributes:
    root: the dataset directory.
    name: dataset name (nnU-Net: the directory name when `name` is absent).
    description: free text from `dataset.json` ('' when absent).
    format: 'msd' or 'nnunetv2'.
    channel_names: channel (modality) names in channel order.
    labels: class name -> label value, including 'background': 0.
    ndim: number of spatial dimensions, 2 or 3, from the first training
      image's header (a singleton third axis means 2D).
    training: labelled cases.
    test: unlabelled cases (label_path None).
    splits: lists of training case ids from `root/splits.json` (e.g. 'train',
      'validation', 'test'), or None without that file.
    tensor_image_size: MSD `tensorImageSize` ('3D': every image file holds
      one channel; '4D': channels last), or None (nnU-Net, or key absent).
  """

  root: pathlib.Path
  name: str
  description: str
  format: str
  channel_names: tuple[str, ...]
  labels: dict[str, int]
  ndim: int
  training: tuple[RawCase, ...]
  test: tuple[RawCase, ...]
  splits: dict[str, list[str]] | None
  tensor_image_size: str | None = None


@dataclasses.dataclass(frozen=True)
class LoadedCase:
  """The voxels and geometry of one case.

  Attributes:
    case_id: as in RawCase.
    image: float32 [X, Y, Z, C] in the file's voxel order, NIfTI scaling
      (scl_slope, scl_inter) applied, e.g. HU for CT; 2D data [X, Y, 1, C].
    label: uint8 [X, Y, Z], or None for an unlabelled case.
    affine: float64 [4, 4], voxel index -> world coordinate (mm).
    spacing: voxel size (mm) along X, Y, Z: the affine's column norms.
  """

  case_id: str
  image: np.ndarray
  label: np.ndarray | None
  affine: np.ndarray
  spacing: tuple[float, ...]


def read_dataset(root: str | os.PathLike[str]) -> RawDataset:
  """Lists and checks a raw MSD or nnU-Net v2 dataset directory.

  Reads `dataset.json`, `splits.json` and the header of the first training
  image; no voxel data.

  Args:
    root: the dataset directory (the one holding `dataset.json`).

  Returns:
    The dataset description with its training and test cases.

  Raises:
    DataError: naming the file and the problem, for a missing or malformed
      `dataset.json` or `splits.json`, a file path escaping the root, a
      missing image, label or channel file, a training image without label,
      or a dataset without training cases.
  """
  root = pathlib.Path(root)
  if not root.is_dir():
    raise DataError(f"{root}: dataset directory does not exist or is not a directory")
  json_path = root / "dataset.json"
  meta = _read_json(json_path)
  if not isinstance(meta, dict):
    raise DataError(f"{json_path}: expected a JSON object")
  tensor_image_size = None
  if "channel_names" in meta:
    fmt = "nnunetv2"
    channel_names = _channel_names(meta, "channel_names", json_path)
    labels = _nnunet_labels(_require(meta, "labels", json_path), json_path)
    training, test = _nnunet_cases(root, meta, len(channel_names), json_path)
    name = str(meta.get("name", root.name))
  elif "modality" in meta or "training" in meta:
    fmt = "msd"
    tensor_image_size = meta.get("tensorImageSize")
    if tensor_image_size not in (None, "3D", "4D"):
      raise DataError(f"{json_path}: 'tensorImageSize' must be '3D' or '4D', got {tensor_image_size!r}")
    channel_names = _channel_names(meta, "modality", json_path)
    labels = _msd_labels(_require(meta, "labels", json_path), json_path)
    training, test = _msd_cases(root, meta, json_path)
    name = str(_require(meta, "name", json_path))
  else:
    raise DataError(
      f"{json_path}: neither an MSD dataset.json (keys 'modality', "
      "'training') nor an nnU-Net v2 one (keys 'channel_names', 'labels', "
      "'file_ending')"
    )
  if not training:
    raise DataError(f"{json_path}: the dataset has no training cases")
  _check_unique_ids(training + test, json_path)
  splits = _read_splits(root / "splits.json", training)
  return RawDataset(
    root=root,
    name=name,
    description=str(meta.get("description", "")),
    format=fmt,
    channel_names=channel_names,
    labels=labels,
    ndim=_spatial_ndim(training[0].image_paths[0]),
    training=training,
    test=test,
    splits=splits,
    tensor_image_size=tensor_image_size,
  )


def load_case(case: RawCase, dataset: RawDataset) -> LoadedCase:
  """Reads and checks the voxels of one case.

  Args:
    case: a case of `dataset`.
    dataset: the dataset from `read_dataset`.

  Returns:
    The image (float32 [X, Y, Z, C]), label (uint8 [X, Y, Z] or None),
    affine and spacing (mm).

  Raises:
    DataError: naming the file, for an unreadable or corrupt NIfTI file,
      NaN or infinite image voxels, a channel count that differs from
      `dataset.json`, a 4D image where `tensorImageSize` is '3D', a 3D image
      in a 2D dataset, image and label (or
      channel files) of different shape or affine, fractional label values
      or label values not declared in `dataset.json`.
  """
  num_channels = len(dataset.channel_names)
  first_path = case.image_paths[0]
  channels = []
  affine = None
  for path in case.image_paths:
    data, file_affine = _read_nifti(path, integer=False)
    data = _as_xyzc(data, path)
    if dataset.tensor_image_size == "3D" and data.shape[3] > 1:
      raise DataError(
        f"{path}: image is 4D (shape {data.shape}) but dataset.json declares "
        "tensorImageSize '3D' (one channel per image file)"
      )
    if dataset.format == "msd" and data.shape[3] != num_channels:
      raise DataError(
        f"{path}: image has {data.shape[3]} channel(s) (shape "
        f"{data.shape}) but dataset.json declares {num_channels} "
        f"({', '.join(dataset.channel_names)})"
      )
    if dataset.format == "nnunetv2" and data.shape[3] != 1:
      raise DataError(f"{path}: image has shape {data.shape}; an nnU-Net channel file must hold a single channel")
    if affine is None:
      affine = file_affine
    else:
      _check_same_geometry(path, data.shape[:3], file_affine, first_path, channels[0].shape[:3], affine)
    _check_finite(data, path)
    channels.append(data)
  image = np.concatenate(channels, axis=3) if len(channels) > 1 else channels[0]
  if dataset.ndim == 2 and image.shape[2] != 1:
    raise DataError(
      f"{first_path}: image of shape {image.shape[:3]} is 3D but the dataset is 2D (its first image has a single slice)"
    )
  spacing = _spacing(affine, first_path)
  label = None
  if case.label_path is not None:
    label, label_affine = _read_nifti(case.label_path, integer=True)
    if label.ndim == 2:
      label = label[:, :, np.newaxis]
    _check_same_geometry(case.label_path, label.shape, label_affine, first_path, image.shape[:3], affine)
    label = _check_label_values(label, dataset.labels, case.label_path)
  return LoadedCase(case_id=case.case_id, image=image, label=label, affine=affine, spacing=spacing)


def save_nifti(path: str | os.PathLike[str], array: np.ndarray, affine: np.ndarray, *, dtype: Any = None) -> None:
  """Writes an array as a NIfTI-1 file, atomically.

  The file is written under a temporary name in the same directory and
  renamed into place, so readers never see a partial file. Both qform and
  sform are set to `affine` (code 1, scanner), units mm.

  Args:
    path: destination ending in '.nii.gz' (compressed) or '.nii'; parent
      directories are created.
    array: [X, Y, Z] or [X, Y, Z, C] in the voxel order of `affine`.
    affine: [4, 4] voxel index -> world (mm).
    dtype: on-disk data type; None keeps the array's type, except that
      64-bit integers, which many tools cannot read, are stored as int32
      (nibabel's 'compat' choice) when their values fit, else ValueError.

  Raises:
    WorkdirError: the path does not end in a NIfTI extension or cannot be
      written.
  """
  path = pathlib.Path(path)
  ending = _nifti_ending(path.name)
  if ending is None:
    raise WorkdirError(f"{path}: output file name must end with .nii.gz or .nii")
  array = np.asarray(array)
  if dtype is not None:
    array = array.astype(dtype)
  elif array.dtype in (np.int64, np.uint64):
    dtype = "compat"
  affine = np.asarray(affine, np.float64)
  image = nib.Nifti1Image(array, affine, dtype=dtype)
  image.set_qform(affine, code=1)
  image.set_sform(affine, code=1)
  image.header.set_xyzt_units("mm")
  try:
    path.parent.mkdir(parents=True, exist_ok=True)
    paths.replace_atomically(path, lambda tmp: nib.save(image, tmp), ending)
  except OSError as e:
    raise WorkdirError(f"{path}: cannot write NIfTI file ({_one_line(e)})") from e


# dataset.json parsing.


def _read_json(path: pathlib.Path) -> Any:
  try:
    text = path.read_text()
  except FileNotFoundError:
    raise DataError(f"{path}: file not found") from None
  except OSError as e:
    raise DataError(f"{path}: cannot read ({_one_line(e)})") from e
  try:
    return json.loads(text)
  except json.JSONDecodeError as e:
    raise DataError(f"{path}: not valid JSON ({e})") from e


def _require(meta: Mapping[str, Any], key: str, json_path: pathlib.Path) -> Any:
  if key not in meta:
    raise DataError(f"{json_path}: missing required key '{key}'")
  return meta[key]


def _channel_names(meta: Mapping[str, Any], key: str, json_path: pathlib.Path) -> tuple[str, ...]:
  """Parses {"0": "CT", "1": ...} into names in channel order."""
  channels = _require(meta, key, json_path)
  bad = DataError(f"{json_path}: '{key}' must map channel indices '0', '1', ... to names, got {channels!r}")
  if not isinstance(channels, dict) or not channels:
    raise bad
  try:
    by_index = {int(index): str(name) for index, name in channels.items()}
  except ValueError:
    raise bad from None
  if sorted(by_index) != list(range(len(by_index))):
    raise bad
  return tuple(by_index[i] for i in range(len(by_index)))


def _msd_labels(labels: Any, json_path: pathlib.Path) -> dict[str, int]:
  """Parses MSD labels {"0": "background", "1": "spleen"}."""
  if not isinstance(labels, dict):
    raise DataError(f"{json_path}: 'labels' must map label values to names")
  try:
    pairs = [(str(name), int(value)) for value, name in labels.items()]
  except ValueError:
    raise DataError(f"{json_path}: 'labels' keys must be integer label values, got {list(labels)}") from None
  names = [name for name, _ in pairs]
  if len(set(names)) != len(names):
    raise DataError(f"{json_path}: 'labels' has duplicate class names {names}")
  return _check_label_map(dict(sorted(pairs, key=lambda p: p[1])), json_path)


def _nnunet_labels(labels: Any, json_path: pathlib.Path) -> dict[str, int]:
  """Parses nnU-Net v2 labels {"background": 0, "spleen": 1}."""
  if not isinstance(labels, dict):
    raise DataError(f"{json_path}: 'labels' must map class names to values")
  for name, value in labels.items():
    if isinstance(value, (list, tuple)):
      raise DataError(
        f"{json_path}: region-based label '{name}': {value} is not supported; give each class one integer value"
      )
    if not isinstance(value, int) or isinstance(value, bool):
      raise DataError(f"{json_path}: label '{name}' must be an integer, got {value!r}")
  if len(set(labels.values())) != len(labels):
    raise DataError(f"{json_path}: 'labels' has duplicate values {labels}")
  return _check_label_map(dict(sorted(labels.items(), key=lambda p: p[1])), json_path)


def _check_label_map(labels: dict[str, int], json_path: pathlib.Path) -> dict[str, int]:
  if labels.get("background") != 0:
    raise DataError(f"{json_path}: 'labels' must name label 0 'background', got {labels}")
  out_of_range = [v for v in labels.values() if not 0 <= v <= 255]
  if out_of_range:
    raise DataError(f"{json_path}: label values {out_of_range} are outside 0..255")
  return labels


def _msd_cases(
  root: pathlib.Path, meta: Mapping[str, Any], json_path: pathlib.Path
) -> tuple[tuple[RawCase, ...], tuple[RawCase, ...]]:
  training_entries = _require(meta, "training", json_path)
  if not isinstance(training_entries, list):
    raise DataError(f"{json_path}: 'training' must be a list")
  training = []
  for i, entry in enumerate(training_entries):
    key = f"training[{i}]"
    if not isinstance(entry, dict) or not isinstance(entry.get("image"), str):
      raise DataError(f"{json_path}: {key} must be an object with an 'image' path")
    image = _inside_root(root, entry["image"], json_path, f"{key}.image")
    if not isinstance(entry.get("label"), str):
      raise DataError(f"{json_path}: {key}: training image {image} has no 'label'")
    label = _inside_root(root, entry["label"], json_path, f"{key}.label")
    _check_exists(image, "image", json_path)
    _check_exists(label, "label", json_path)
    training.append(RawCase(_case_id(image, json_path), (image,), label))
  test_entries = meta.get("test", [])
  if not isinstance(test_entries, list):
    raise DataError(f"{json_path}: 'test' must be a list")
  test = []
  for i, entry in enumerate(test_entries):
    if isinstance(entry, dict):
      entry = entry.get("image")
    if not isinstance(entry, str):
      raise DataError(f"{json_path}: test[{i}] must be an image path")
    image = _inside_root(root, entry, json_path, f"test[{i}]")
    _check_exists(image, "image", json_path)
    test.append(RawCase(_case_id(image, json_path), (image,), None))
  return tuple(training), tuple(test)


def _nnunet_cases(
  root: pathlib.Path, meta: Mapping[str, Any], num_channels: int, json_path: pathlib.Path
) -> tuple[tuple[RawCase, ...], tuple[RawCase, ...]]:
  ending = _require(meta, "file_ending", json_path)
  if ending not in NIFTI_ENDINGS:
    raise DataError(f"{json_path}: 'file_ending' {ending!r} is not supported; use one of {list(NIFTI_ENDINGS)}")
  if "dataset" in meta:
    raise DataError(
      f"{json_path}: explicit file lists ('dataset' key) are not supported; put the files in imagesTr/labelsTr/imagesTs"
    )
  training = _nnunet_folder(root, root / "imagesTr", root / "labelsTr", ending, num_channels)
  test = _nnunet_folder(root, root / "imagesTs", None, ending, num_channels)
  return training, test


def _nnunet_folder(
  root: pathlib.Path, images_dir: pathlib.Path, labels_dir: pathlib.Path | None, ending: str, num_channels: int
) -> tuple[RawCase, ...]:
  """Groups CASE_cccc files (cccc: channel index) by case; checks channel and label files."""
  if not images_dir.is_dir():
    return ()
  pattern = re.compile(r"(.+)_(\d{4})" + re.escape(ending))
  channels: dict[str, set[int]] = {}
  for path in sorted(images_dir.iterdir()):
    if path.name.startswith(".") or not path.name.endswith(ending):
      continue
    match = pattern.fullmatch(path.name)
    if match is None:
      raise DataError(f"{path}: image file name must be CASE_cccc{ending} (cccc the 4-digit channel index)")
    channel = int(match.group(2))
    if channel >= num_channels:
      raise DataError(f"{path}: channel {channel} but dataset.json declares {num_channels} channel(s)")
    channels.setdefault(match.group(1), set()).add(channel)
  cases = []
  for case_id, present in channels.items():
    paths = tuple(images_dir / f"{case_id}_{c:04d}{ending}" for c in range(num_channels))
    for c, path in enumerate(paths):
      if c not in present:
        raise DataError(f"{path}: missing channel file (dataset.json declares {num_channels} channels)")
      _inside_root(root, path, path, "image file")
    label = None
    if labels_dir is not None:
      label = labels_dir / f"{case_id}{ending}"
      if not label.is_file():
        raise DataError(f"{paths[0]}: training image has no label file {label}")
      _inside_root(root, label, label, "label file")
    cases.append(RawCase(case_id, paths, label))
  if labels_dir is not None and labels_dir.is_dir():
    for path in sorted(labels_dir.iterdir()):
      if path.name.startswith(".") or not path.name.endswith(ending):
        continue
      if path.name[: -len(ending)] not in channels:
        raise DataError(f"{path}: label file has no image in {images_dir}")
  return tuple(cases)


def _inside_root(root: pathlib.Path, relative: str | os.PathLike[str], source: pathlib.Path, what: str) -> pathlib.Path:
  """Joins a path to the root; raises if it resolves outside the root.

  Args:
    root: the dataset directory.
    relative: a path relative to the root (or absolute).
    source: the file that named the path (for the error message).
    what: what the path is, e.g. 'training[3].image'.
  """
  path = root / relative
  resolved = path.resolve()
  if not resolved.is_relative_to(root.resolve()):
    raise DataError(f"{source}: {what} {str(relative)!r} resolves to {resolved}, outside the dataset root {root}")
  return path


def _check_exists(path: pathlib.Path, kind: str, json_path: pathlib.Path) -> None:
  if not path.is_file():
    raise DataError(f"{path}: missing {kind} file (listed in {json_path})")


def _nifti_ending(name: str) -> str | None:
  return next((e for e in NIFTI_ENDINGS if name.endswith(e)), None)


def _case_id(path: pathlib.Path, json_path: pathlib.Path) -> str:
  ending = _nifti_ending(path.name)
  if ending is None:
    raise DataError(f"{json_path}: {path} is not a NIfTI file (.nii.gz or .nii)")
  return path.name[: -len(ending)]


def _check_unique_ids(cases: tuple[RawCase, ...], json_path: pathlib.Path) -> None:
  seen = set()
  for case in cases:
    if case.case_id in seen:
      raise DataError(f"{json_path}: case id '{case.case_id}' occurs twice")
    seen.add(case.case_id)


def _read_splits(path: pathlib.Path, training: tuple[RawCase, ...]) -> dict[str, list[str]] | None:
  """Reads splits.json; checks it lists labelled cases, each at most once."""
  if not path.exists():
    return None
  splits = _read_json(path)
  if not isinstance(splits, dict) or not all(
    isinstance(ids, list) and all(isinstance(i, str) for i in ids) for ids in splits.values()
  ):
    raise DataError(f"{path}: expected an object mapping split names to lists of case ids")
  known = {case.case_id for case in training}
  seen: dict[str, str] = {}
  for split, ids in splits.items():
    unknown = sorted(set(ids) - known)
    if unknown:
      raise DataError(f"{path}: split '{split}' lists case ids {unknown} that are not labelled training cases")
    for case_id in ids:
      if case_id in seen:
        raise DataError(f"{path}: case '{case_id}' is in both split '{seen[case_id]}' and split '{split}'")
      seen[case_id] = split
  return splits


def _spatial_ndim(path: pathlib.Path) -> int:
  """2 or 3, from a header: 2D when the shape has no or a singleton z axis."""
  try:
    shape = nib.load(path).shape
  except _NIFTI_READ_ERRORS as e:
    raise DataError(f"{path}: cannot read NIfTI header ({_one_line(e)})") from e
  return 2 if len(shape) == 2 or shape[2] == 1 else 3


# Voxel data.


def _read_nifti(path: pathlib.Path, *, integer: bool) -> tuple[np.ndarray, np.ndarray]:
  """Returns (scaled voxel array, float64 [4, 4] affine) of a NIfTI file.

  Images come back as float32 with scl_slope/scl_inter applied; labels
  (`integer=True`) as stored, or as floats when the file is scaled.
  """
  try:
    image = nib.load(path, mmap=False)
    if path.name.endswith(".gz"):
      # Reading to the end of the stream checks the gzip CRC and length.
      with gzip.open(path, "rb") as f:
        image = type(image).from_bytes(f.read())
    if integer:
      data = np.asarray(image.dataobj)
    else:
      data = image.get_fdata(dtype=np.float32)
    affine = np.asarray(image.affine, np.float64)
  except _NIFTI_READ_ERRORS as e:
    raise DataError(f"{path}: cannot read NIfTI file ({_one_line(e)})") from e
  return data, affine


def _as_xyzc(data: np.ndarray, path: pathlib.Path) -> np.ndarray:
  """[X, Y], [X, Y, Z] or [X, Y, Z, C] -> [X, Y, Z, C]."""
  if data.ndim == 2:
    return data[:, :, np.newaxis, np.newaxis]
  if data.ndim == 3:
    return data[..., np.newaxis]
  if data.ndim == 4:
    return data
  raise DataError(f"{path}: image has shape {data.shape}; expected (x, y), (x, y, z) or (x, y, z, channel)")


def _check_same_geometry(
  path: pathlib.Path,
  shape: tuple[int, ...],
  affine: np.ndarray,
  ref_path: pathlib.Path,
  ref_shape: tuple[int, ...],
  ref_affine: np.ndarray,
) -> None:
  if tuple(shape) != tuple(ref_shape):
    raise DataError(f"{path}: shape {tuple(shape)} differs from {tuple(ref_shape)} of {ref_path}")
  difference = float(np.max(np.abs(affine - ref_affine)))
  if not difference <= AFFINE_TOLERANCE_MM:
    raise DataError(
      f"{path}: affine differs from that of {ref_path} by {difference:.4g} mm (tolerance {AFFINE_TOLERANCE_MM} mm)"
    )


def _check_finite(data: np.ndarray, path: pathlib.Path) -> None:
  finite = np.isfinite(data)
  if not finite.all():
    bad = np.argwhere(~finite)
    raise DataError(f"{path}: {len(bad)} voxel(s) are NaN or infinite (first at index {tuple(int(i) for i in bad[0])})")


def _check_label_values(label: np.ndarray, labels: dict[str, int], path: pathlib.Path) -> np.ndarray:
  """Checks integer, declared label values; returns uint8 [X, Y, Z]."""
  values = np.unique(label)
  if not np.all(np.isfinite(values)) or not np.all(values == np.round(values)):
    fractional = [float(v) for v in values if not float(v).is_integer()]
    raise DataError(f"{path}: label values must be integers, found {fractional[:10]}")
  undeclared = sorted(set(int(v) for v in values) - set(labels.values()))
  if undeclared:
    raise DataError(f"{path}: label values {undeclared} are not declared in dataset.json labels {labels}")
  return label.astype(np.uint8)


def _spacing(affine: np.ndarray, path: pathlib.Path) -> tuple[float, ...]:
  """Voxel size (mm) along the array axes: the affine's column norms."""
  spacing = np.linalg.norm(affine[:3, :3], axis=0)
  if not np.all(np.isfinite(spacing)) or np.any(spacing <= 0):
    raise DataError(f"{path}: affine has zero or invalid voxel spacing {spacing.tolist()}")
  # |det| / product of column norms is 1 for orthogonal axes, 0 for parallel.
  if abs(np.linalg.det(affine[:3, :3])) < 1e-6 * np.prod(spacing):
    raise DataError(f"{path}: affine {affine[:3, :3].tolist()} is singular (voxel axes are parallel)")
  return tuple(float(s) for s in spacing)


def _one_line(error: Exception) -> str:
  return " ".join(str(error).split())

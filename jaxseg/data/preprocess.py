"""nnU-Net-style preprocessing, done once when a dataset is prepared.

Per case (`preprocess_case`), in nnU-Net's order:

1. Canonical orientation (`to_canonical`): the voxel axes are permuted and
   flipped, without resampling, to the closest RAS orientation (nibabel's
   `as_closest_canonical`), then transposed so that the array is
   `[Z, Y, X, C]`: indices increase towards the patient's superior (axis 0,
   the slice axis of axial scans), anterior (axis 1) and right (axis 2).
2. Crop to the bounding box of the non-zero region: voxels where any channel
   is non-zero, or the label is foreground (so no labelled voxel is ever
   cropped away). Like nnU-Net's `create_nonzero_mask`, this uses the raw
   image being non-zero: it trims the zero background of skull-stripped MR
   or microscopy, while for CT, where air is -1000 HU, it keeps everything.
3. Intensity normalisation per channel (`Plan.normalization`): scheme 'ct'
   clips to the dataset's foreground 0.5 / 99.5 percentiles then subtracts
   the foreground mean and divides by the foreground std (fixed numbers for
   the dataset); scheme 'zscore' subtracts the mean and divides by the std of
   that channel of that cropped image. With 'use_mask' (nnU-Net's
   `use_mask_for_norm`, chosen by `make_plan` for 'zscore' channels when
   cropping to the non-zero region shrank the median case to less than 3/4
   of its voxels, as for skull-stripped brain MRI) mean and std are those of
   the non-zero mask (voxels where any channel is non-zero, holes filled) and
   the voxels outside it are set to 0.
4. Resampling to `Plan.target_spacing` with scipy.ndimage (voxel-centre grid
   keeping the field of view: new size = round(size * spacing / target)):
   cubic (order 3) for images; labels one-hot linear (each class mask
   resampled with order 1, each voxel takes the class of highest value),
   which gives smoother boundaries than nearest neighbour. When the spacing
   of the case or of the target is anisotropic (largest / smallest > 3) with
   one coarsest axis, that axis is resampled separately with nearest
   neighbour (order 0) and the other two as above, nnU-Net's "separate z"
   rule, so that thick slices are not blended by cubic interpolation. An
   axis of size 1 (2D data) or whose spacing already matches the target
   within 1e-3 (relative) keeps its size; a case whose shape stays the same
   is not interpolated at all.

`restore_to_original` undoes all of this for a prediction, and `meta` holds
the geometry it needs. Class probabilities go back to the original grid the
way nnU-Net exports them: linear interpolation of every class's probability
(with the separate-z rule above: nearest neighbour along the thick axis),
background probability 1 in the cropped-away border; the label map is their
argmax (`jaxseg.inference.to_original_labels`).

Dataset-level numbers come from a `Fingerprint` of the training cases and
are turned into a `Plan` by `make_plan`; both are JSON-serialisable.
"""

import dataclasses
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import nibabel as nib
import numpy as np
import scipy.ndimage

from jaxseg.data.nifti import LoadedCase
from jaxseg.errors import ConfigError
from jaxseg.errors import DataError

# nnU-Net: an axis is anisotropic when its spacing is more than this many
# times that of the finest axis.
ANISOTROPY_THRESHOLD = 3.0
# Relative spacing difference below which an axis is not resampled.
SPACING_RTOL = 1e-3
# Foreground voxels sampled per case for the intensity percentiles (nnU-Net's
# number); mean, std, min and max use every foreground voxel.
PERCENTILE_SAMPLES_PER_CASE = 10_000
# Seed of that sample (nnU-Net's), combined with the case index.
PERCENTILE_SAMPLE_SEED = 1234
# Floor on the std that divides intensities (nnU-Net's value).
MIN_STD = 1e-8
# 'zscore' normalises within the non-zero mask when cropping left the median
# case less than this share of its voxels (nnU-Net's use_mask_for_norm rule).
USE_MASK_MAX_RELATIVE_SIZE = 0.75

_RAS = nib.orientations.axcodes2ornt("RAS")


@dataclasses.dataclass(frozen=True)
class CanonicalInfo:
  """What `to_canonical` did, enough to undo it.

  Attributes:
    original_shape: spatial shape (X, Y, Z) of the array as stored in the file.
    original_affine: float64 [4, 4] voxel -> world (mm) of the file.
    ornt: float [3, 2] nibabel orientation: file axis i became RAS axis
      ornt[i, 0], flipped when ornt[i, 1] == -1.
    spacing: voxel size (mm) along the canonical axes (z, y, x).
  """

  original_shape: tuple[int, int, int]
  original_affine: np.ndarray
  ornt: np.ndarray
  spacing: tuple[float, float, float]

  def to_dict(self) -> dict[str, Any]:
    """JSON-serialisable; `spacing` is stored as 'canonical_spacing'."""
    return {
      "original_shape": list(self.original_shape),
      "original_affine": self.original_affine.tolist(),
      "ornt": self.ornt.tolist(),
      "canonical_spacing": list(self.spacing),
    }

  @classmethod
  def from_dict(cls, d: Mapping[str, Any]) -> "CanonicalInfo":
    return cls(
      original_shape=tuple(int(s) for s in _get(d, "original_shape")),
      original_affine=np.asarray(_get(d, "original_affine"), np.float64),
      ornt=np.asarray(_get(d, "ornt"), np.float64),
      spacing=tuple(float(s) for s in _get(d, "canonical_spacing")),
    )


def to_canonical(
  image: np.ndarray, label: np.ndarray | None, affine: np.ndarray
) -> tuple[np.ndarray, np.ndarray | None, CanonicalInfo]:
  """Reorients a case to the canonical [Z, Y, X] layout, without resampling.

  Args:
    image: [X, Y, Z, C] in the file's voxel order.
    label: [X, Y, Z] or None.
    affine: [4, 4] voxel -> world (mm) of the file.

  Returns:
    image_zyx: float32 [Z, Y, X, C], indices increasing towards superior
      (axis 0), anterior (axis 1) and the patient's right (axis 2).
    label_zyx: uint8 [Z, Y, X] or None.
    info: what is needed to undo it (`from_canonical`).

  Raises:
    DataError: the affine has no well-defined orientation (singular).
  """
  image = np.asarray(image, np.float32)
  affine = np.asarray(affine, np.float64)
  if image.ndim != 4:
    raise ValueError(f"image must be [X, Y, Z, C], got shape {image.shape}")
  ornt = nib.orientations.io_orientation(affine)
  if np.isnan(ornt).any():
    raise DataError(f"affine {affine.tolist()} has no well-defined orientation (singular)")
  spacing_xyz = np.linalg.norm(affine[:3, :3], axis=0)
  spacing_ras = np.empty(3)
  spacing_ras[ornt[:, 0].astype(int)] = spacing_xyz
  info = CanonicalInfo(
    original_shape=tuple(int(s) for s in image.shape[:3]),
    original_affine=affine,
    ornt=ornt,
    spacing=tuple(float(s) for s in spacing_ras[::-1]),
  )
  image_zyx = _ras_to_zyx(nib.orientations.apply_orientation(image, ornt))
  label_zyx = None
  if label is not None:
    label_zyx = _ras_to_zyx(nib.orientations.apply_orientation(np.asarray(label, np.uint8), ornt))
  return image_zyx, label_zyx, info


def from_canonical(array_zyx: np.ndarray, info: CanonicalInfo) -> np.ndarray:
  """Inverse of `to_canonical`: [Z, Y, X, ...] -> the file's [X, Y, Z, ...]."""
  array_ras = np.swapaxes(np.asarray(array_zyx), 0, 2)
  inverse = nib.orientations.ornt_transform(_RAS, info.ornt)
  array = np.ascontiguousarray(nib.orientations.apply_orientation(array_ras, inverse))
  if array.shape[:3] != info.original_shape:
    raise ValueError(
      f"canonical array of shape {np.shape(array_zyx)} does not match original shape {info.original_shape}"
    )
  return array


@dataclasses.dataclass(frozen=True)
class Fingerprint:
  """Dataset statistics that the plan is made from.

  Attributes:
    spacings: (z, y, x) voxel size (mm) per training case, canonical order.
    shapes: canonical (Z, Y, X) per training case, before cropping and resampling.
    intensity: per channel, statistics of the foreground (label > 0) voxels
      of all training cases: 'mean', 'std' (population), 'min', 'max' over
      every foreground voxel; 'p00_5', 'p99_5' percentiles (linear
      interpolation) of up to PERCENTILE_SAMPLES_PER_CASE voxels per case
      drawn without replacement with a fixed seed (all voxels when fewer).
    cropped_shapes: canonical (Z, Y, X) per training case after cropping to
      the non-zero region (None in fingerprints of jaxseg < 1.2 datasets).
  """

  spacings: list[tuple[float, float, float]]
  shapes: list[tuple[int, int, int]]
  intensity: list[dict[str, float]]
  cropped_shapes: list[tuple[int, int, int]] | None = None

  @property
  def median_relative_size_after_cropping(self) -> float:
    """Median over cases of (voxels after cropping) / (voxels before); 1 without cropped shapes."""
    if not self.cropped_shapes:
      return 1.0
    return float(
      np.median(
        [np.prod(c, dtype=np.float64) / np.prod(s, dtype=np.float64) for c, s in zip(self.cropped_shapes, self.shapes)]
      )
    )

  def to_dict(self) -> dict[str, Any]:
    d = {
      "spacings": [list(s) for s in self.spacings],
      "shapes": [list(s) for s in self.shapes],
      "intensity": [dict(c) for c in self.intensity],
    }
    if self.cropped_shapes is not None:
      d["cropped_shapes"] = [list(s) for s in self.cropped_shapes]
    return d

  @classmethod
  def from_dict(cls, d: Mapping[str, Any]) -> "Fingerprint":
    cropped = d.get("cropped_shapes")
    return cls(
      spacings=[tuple(float(v) for v in s) for s in _get(d, "spacings")],
      shapes=[tuple(int(v) for v in s) for s in _get(d, "shapes")],
      intensity=[{k: float(v) for k, v in c.items()} for c in _get(d, "intensity")],
      cropped_shapes=None if cropped is None else [tuple(int(v) for v in s) for s in cropped],
    )


@dataclasses.dataclass(frozen=True)
class CaseStatistics:
  """What one training case contributes to the `Fingerprint`.

  Small (at most PERCENTILE_SAMPLES_PER_CASE voxels per channel), so worker
  processes can compute it next to the voxels and send it to the parent.

  Attributes:
    spacing: (z, y, x) voxel size (mm), canonical order.
    shape: canonical (Z, Y, X) before cropping and resampling.
    channels: per channel, running statistics of every foreground voxel.
    samples: float64 [N, C], the voxels drawn for the percentiles.
    cropped_shape: (Z, Y, X) after cropping to the non-zero region.
  """

  spacing: tuple[float, float, float]
  shape: tuple[int, int, int]
  channels: list["_RunningStats"]
  samples: np.ndarray
  cropped_shape: tuple[int, int, int] | None = None


def case_statistics(image: np.ndarray, label: np.ndarray, spacing: Sequence[float], index: int) -> CaseStatistics:
  """Foreground statistics of one canonical training case.

  Args:
    image: float [Z, Y, X, C], canonical as from `to_canonical`.
    label: int [Z, Y, X].
    spacing: (z, y, x) mm.
    index: the case's position among the training cases; seeds its
      percentile sample, so the fingerprint does not depend on which process
      computed which case.

  Returns:
    The case's statistics, merged over cases by `merge_statistics`.
  """
  image = np.asarray(image)
  values = image[np.asarray(label) > 0].astype(np.float64)  # [N, C]
  rng = np.random.default_rng([PERCENTILE_SAMPLE_SEED, index])
  if len(values) > PERCENTILE_SAMPLES_PER_CASE:
    sampled = values[rng.choice(len(values), PERCENTILE_SAMPLES_PER_CASE, replace=False)]
  else:
    sampled = values
  channels = []
  for c in range(image.shape[3]):
    stats = _RunningStats()
    stats.add(values[:, c])
    channels.append(stats)
  bbox = _nonzero_bbox(image, np.asarray(label))
  return CaseStatistics(
    spacing=tuple(float(s) for s in spacing),
    shape=tuple(int(s) for s in image.shape[:3]),
    channels=channels,
    samples=sampled,
    cropped_shape=tuple(stop - start for start, stop in bbox),
  )


def merge_statistics(cases: Iterable[CaseStatistics]) -> Fingerprint:
  """The dataset fingerprint from per-case statistics in training order.

  Raises:
    DataError: no training case has a foreground voxel, or the cases have
      different numbers of channels.
  """
  spacings, shapes, stats, samples, cropped = [], [], [], [], []
  for index, case in enumerate(cases):
    if stats and len(case.channels) != len(stats):
      raise DataError(f"training case {index} has {len(case.channels)} channels, earlier cases {len(stats)}")
    if not stats:
      stats = [_RunningStats() for _ in case.channels]
    spacings.append(case.spacing)
    shapes.append(case.shape)
    cropped.append(case.cropped_shape or case.shape)
    for total, channel in zip(stats, case.channels):
      total.merge(channel)
    samples.append(case.samples)
  if not stats or stats[0].count == 0:
    raise DataError("no foreground (label > 0) voxel in any training case: cannot compute intensity statistics")
  pooled = np.concatenate(samples)
  intensity = []
  for c, channel_stats in enumerate(stats):
    intensity.append(
      {
        "mean": channel_stats.mean,
        "std": channel_stats.std,
        "p00_5": float(np.percentile(pooled[:, c], 0.5)),
        "p99_5": float(np.percentile(pooled[:, c], 99.5)),
        "min": channel_stats.minimum,
        "max": channel_stats.maximum,
      }
    )
  return Fingerprint(spacings=spacings, shapes=shapes, intensity=intensity, cropped_shapes=cropped)


def compute_fingerprint(cases: Iterable[tuple[np.ndarray, np.ndarray, Sequence[float]]]) -> Fingerprint:
  """Collects spacings, shapes and foreground intensity statistics.

  Equal to `merge_statistics` of `case_statistics` of every case.

  Args:
    cases: per training case (image_zyx float [Z, Y, X, C], label_zyx int
      [Z, Y, X], spacing_zyx (mm)), canonical as from `to_canonical`.

  Returns:
    The fingerprint.

  Raises:
    DataError: no training case has a foreground voxel, or the cases have
      different numbers of channels.
  """
  return merge_statistics(
    case_statistics(image, label, spacing, index) for index, (image, label, spacing) in enumerate(cases)
  )


@dataclasses.dataclass(frozen=True)
class Plan:
  """How every case of a dataset is preprocessed.

  Attributes:
    target_spacing: (z, y, x) voxel size (mm) after resampling.
    normalization: per channel, {'scheme': 'ct', 'clip': [lo, hi], 'mean': m,
      'std': s} (intensities in the image's units, e.g. HU) or
      {'scheme': 'zscore'}.
    channel_names: channel names in channel order.
    labels: class name -> label value.
  """

  target_spacing: tuple[float, float, float]
  normalization: list[dict[str, Any]]
  channel_names: list[str]
  labels: dict[str, int]

  def to_dict(self) -> dict[str, Any]:
    return {
      "target_spacing": list(self.target_spacing),
      "normalization": [dict(n) for n in self.normalization],
      "channel_names": list(self.channel_names),
      "labels": dict(self.labels),
    }

  @classmethod
  def from_dict(cls, d: Mapping[str, Any]) -> "Plan":
    return cls(
      target_spacing=tuple(float(s) for s in _get(d, "target_spacing")),
      normalization=[dict(n) for n in _get(d, "normalization")],
      channel_names=[str(n) for n in _get(d, "channel_names")],
      labels={str(k): int(v) for k, v in _get(d, "labels").items()},
    )


def make_plan(
  fingerprint: Fingerprint,
  channel_names: Sequence[str],
  labels: Mapping[str, int],
  *,
  target_spacing: Sequence[float] | None = None,
) -> Plan:
  """Chooses target spacing and normalisation from the fingerprint.

  Target spacing (nnU-Net's rule, `ExperimentPlanner.
  determine_fullres_target_spacing`): the median spacing per axis, except on
  the coarsest axis when it is anisotropic in both spacing (median spacing
  more than 3x the largest other median spacing) and voxel count (median size
  times 3 below the smallest other median size): there the 10th percentile
  of that axis's spacings, but no finer than the largest other spacing
  (+1e-5 mm, which keeps that axis the coarsest).

  Normalisation: a channel named 'CT' (any case) gets scheme 'ct' with the
  foreground 0.5 / 99.5 percentiles as clip range and the foreground mean
  and std; any other channel per-image 'zscore', with 'use_mask': True when
  cropping to the non-zero region left the median case less than 3/4 of its
  voxels (`Fingerprint.median_relative_size_after_cropping`, nnU-Net's
  rule for `use_mask_for_norm`).

  Args:
    fingerprint: from `compute_fingerprint` over the training cases.
    channel_names: one name per channel.
    labels: class name -> label value.
    target_spacing: (z, y, x) mm to use instead of the rule.

  Returns:
    The plan.

  Raises:
    ConfigError: `target_spacing` is not three positive numbers.
    DataError: the number of channel names differs from the fingerprint's.
  """
  if len(channel_names) != len(fingerprint.intensity):
    raise DataError(
      f"{len(channel_names)} channel names {list(channel_names)} "
      f"but the fingerprint has {len(fingerprint.intensity)} "
      "channels"
    )
  if target_spacing is None:
    spacing = _nnunet_target_spacing(np.asarray(fingerprint.spacings), np.asarray(fingerprint.shapes))
  else:
    spacing = tuple(float(s) for s in target_spacing)
    if len(spacing) != 3 or not all(np.isfinite(s) and s > 0 for s in spacing):
      raise ConfigError(f"target_spacing must be three positive numbers (z, y, x) in mm, got {list(target_spacing)}")
  normalization = []
  for name, stats in zip(channel_names, fingerprint.intensity):
    if name.lower() == "ct":
      normalization.append(
        {
          "scheme": "ct",
          "clip": [stats["p00_5"], stats["p99_5"]],
          "mean": stats["mean"],
          "std": stats["std"],
        }
      )
    else:
      normalization.append(
        {
          "scheme": "zscore",
          "use_mask": bool(fingerprint.median_relative_size_after_cropping < USE_MASK_MAX_RELATIVE_SIZE),
        }
      )
  return Plan(
    target_spacing=spacing, normalization=normalization, channel_names=list(channel_names), labels=dict(labels)
  )


@dataclasses.dataclass(frozen=True)
class PreprocessedCase:
  """A case ready for training or inference.

  Attributes:
    case_id: as in the raw dataset.
    image: float32 [Z, Y, X, C], canonical, cropped, normalised, resampled.
    label: uint8 [Z, Y, X] (one-hot linear resampling) or None.
    spacing: (z, y, x) mm, the plan's target spacing.
    meta: JSON-serialisable geometry for `restore_to_original`: the
      `CanonicalInfo.to_dict()` ('original_shape', 'original_affine', 'ornt',
      'canonical_spacing'), 'shape_before_crop' (canonical, original spacing),
      'crop_bbox' ([[start, stop]] per canonical axis in that array),
      'shape_after_crop' and 'shape_after_resampling'.
  """

  case_id: str
  image: np.ndarray
  label: np.ndarray | None
  spacing: tuple[float, float, float]
  meta: dict[str, Any]


def preprocess_case(loaded: LoadedCase, plan: Plan) -> PreprocessedCase:
  """Canonicalises, crops, normalises and resamples one case (module doc).

  Args:
    loaded: from `jaxseg.data.nifti.load_case`.
    plan: from `make_plan`.

  Returns:
    The preprocessed case.

  Raises:
    DataError: the case's channel count differs from the plan's.
  """
  image, label, info = to_canonical(loaded.image, loaded.label, loaded.affine)
  if image.shape[3] != len(plan.normalization):
    raise DataError(f"case '{loaded.case_id}' has {image.shape[3]} channels, the plan {len(plan.normalization)}")
  bbox = _nonzero_bbox(image, label)
  crop = tuple(slice(start, stop) for start, stop in bbox)
  cropped_image = _normalize(image[crop], plan.normalization)
  new_shape = resampled_shape(cropped_image.shape[:3], info.spacing, plan.target_spacing)
  separate_axis = _separate_axis(info.spacing, plan.target_spacing)
  resampled_image = np.stack(
    [_resample(cropped_image[..., c], new_shape, 3, separate_axis) for c in range(cropped_image.shape[3])], axis=-1
  )
  resampled_label = None
  if label is not None:
    resampled_label = _resample_label(label[crop], new_shape, separate_axis)
  meta = {
    **info.to_dict(),
    "shape_before_crop": list(image.shape[:3]),
    "crop_bbox": [list(b) for b in bbox],
    "shape_after_crop": list(cropped_image.shape[:3]),
    "shape_after_resampling": list(new_shape),
    "target_spacing": list(plan.target_spacing),
  }
  return PreprocessedCase(
    case_id=loaded.case_id,
    image=resampled_image.astype(np.float32),
    label=resampled_label,
    spacing=tuple(plan.target_spacing),
    meta=meta,
  )


def restore_to_original(array_zyx: np.ndarray, meta: Mapping[str, Any], *, is_label: bool) -> np.ndarray:
  """Maps a prediction on a preprocessed case back to the original file grid.

  Resamples back to the cropped shape (nearest neighbour for labels; for
  probabilities, linear per class with nnU-Net's separate-z rule: nearest
  neighbour along the one coarse axis of an anisotropic grid), pads the cropped-away region with background (label 0,
  or probability 1 for class 0 and 0 for the others) and undoes the canonical
  reorientation. Save the result with `meta['original_affine']`.

  Args:
    array_zyx: labels [Z, Y, X] or probabilities [Z, Y, X, K] on the grid of
      `PreprocessedCase.image`.
    meta: `PreprocessedCase.meta` of that case.
    is_label: whether `array_zyx` holds labels (else probabilities).

  Returns:
    [X, Y, Z] labels (dtype kept) or float32 [X, Y, Z, K] probabilities in
    the original file's voxel order and shape.
  """
  array = np.asarray(array_zyx)
  expected = tuple(_get(meta, "shape_after_resampling"))
  if array.shape[:3] != expected or array.ndim != (3 if is_label else 4):
    kind = "[Z, Y, X]" if is_label else "[Z, Y, X, K]"
    raise ValueError(f"expected a {kind} array with spatial shape {expected}, got {array.shape}")
  cropped_shape = tuple(_get(meta, "shape_after_crop"))
  crop = tuple(slice(start, stop) for start, stop in _get(meta, "crop_bbox"))
  full_shape = tuple(_get(meta, "shape_before_crop"))
  if is_label:
    full = np.zeros(full_shape, array.dtype)
    full[crop] = _resample(array, cropped_shape, 0, None)
  else:
    array = array.astype(np.float32)
    full = np.zeros(full_shape + array.shape[3:], np.float32)
    full[..., 0] = 1.0
    separate_axis = _separate_axis(_get(meta, "canonical_spacing"), _target_spacing(meta))
    full[crop] = np.stack(
      [_resample(array[..., k], cropped_shape, 1, separate_axis) for k in range(array.shape[3])], axis=-1
    )
  return from_canonical(full, CanonicalInfo.from_dict(meta))


# Helpers.


class _RunningStats:
  """Count, mean, M2, min and max merged case by case (Chan et al.)."""

  def __init__(self):
    self.count = 0
    self.mean = 0.0
    self.m2 = 0.0
    self.minimum = np.inf
    self.maximum = -np.inf

  def add(self, values: np.ndarray) -> None:
    if values.size == 0:
      return
    other = _RunningStats()
    other.count = values.size
    other.mean = float(values.mean())
    other.m2 = float(np.sum((values - other.mean) ** 2))
    other.minimum = float(values.min())
    other.maximum = float(values.max())
    self.merge(other)

  def merge(self, other: "_RunningStats") -> None:
    if other.count == 0:
      return
    n = other.count
    total = self.count + n
    delta = other.mean - self.mean
    self.m2 += other.m2 + delta * delta * self.count * n / total
    self.mean += delta * n / total
    self.count = total
    self.minimum = min(self.minimum, other.minimum)
    self.maximum = max(self.maximum, other.maximum)

  @property
  def std(self) -> float:
    return float(np.sqrt(self.m2 / self.count))


def _get(d: Mapping[str, Any], key: str) -> Any:
  if key not in d:
    raise DataError(f"preprocessing metadata is missing key '{key}'")
  return d[key]


def _target_spacing(meta: Mapping[str, Any]) -> list[float]:
  """The plan's spacing of a case (derived from the shapes for metadata written before it was stored)."""
  if "target_spacing" in meta:
    return [float(s) for s in meta["target_spacing"]]
  return [
    float(s) * c / r
    for s, c, r in zip(
      _get(meta, "canonical_spacing"), _get(meta, "shape_after_crop"), _get(meta, "shape_after_resampling")
    )
  ]


def _ras_to_zyx(array_ras: np.ndarray) -> np.ndarray:
  return np.ascontiguousarray(np.swapaxes(array_ras, 0, 2))


def _nnunet_target_spacing(spacings: np.ndarray, shapes: np.ndarray) -> tuple[float, float, float]:
  target = np.percentile(spacings, 50, axis=0)
  median_shape = np.percentile(shapes, 50, axis=0)
  worst = int(np.argmax(target))
  others = [i for i in range(3) if i != worst]
  max_other_spacing = max(target[i] for i in others)
  aniso_spacing = target[worst] > ANISOTROPY_THRESHOLD * max_other_spacing
  aniso_voxels = median_shape[worst] * ANISOTROPY_THRESHOLD < min(median_shape[i] for i in others)
  if aniso_spacing and aniso_voxels:
    worst_spacing = np.percentile(spacings[:, worst], 10)
    if worst_spacing < max_other_spacing:
      worst_spacing = max_other_spacing + 1e-5
    target[worst] = worst_spacing
  return tuple(float(s) for s in target)


def _nonzero_bbox(image: np.ndarray, label: np.ndarray | None) -> list[tuple[int, int]]:
  """[start, stop) per axis of voxels with a non-zero channel or label."""
  mask = np.any(image != 0, axis=-1)
  if label is not None:
    mask |= label > 0
  if not mask.any():
    return [(0, s) for s in mask.shape]
  bbox = []
  for axis in range(3):
    other = tuple(a for a in range(3) if a != axis)
    indices = np.flatnonzero(mask.any(axis=other))
    bbox.append((int(indices[0]), int(indices[-1]) + 1))
  return bbox


def _normalize(image: np.ndarray, normalization: Sequence[Mapping[str, Any]]) -> np.ndarray:
  """Per-channel intensity normalisation of [Z, Y, X, C] (module doc)."""
  out = np.empty(image.shape, np.float32)
  nonzero = None
  for c, norm in enumerate(normalization):
    x = image[..., c].astype(np.float64)
    scheme = norm.get("scheme")
    if scheme == "ct":
      low, high = norm["clip"]
      x = np.clip(x, low, high)
      mean, std = norm["mean"], norm["std"]
    elif scheme == "zscore" and norm.get("use_mask"):
      if nonzero is None:
        nonzero = nonzero_mask(image)
      values = x[nonzero]
      mean, std = (values.mean(), values.std()) if values.size else (0.0, 1.0)
      out[..., c] = np.where(nonzero, (x - mean) / max(std, MIN_STD), 0.0)
      continue
    elif scheme == "zscore":
      mean, std = x.mean(), x.std()
    else:
      raise DataError(f"unknown normalization scheme {scheme!r} for channel {c}; expected 'ct' or 'zscore'")
    out[..., c] = (x - mean) / max(std, MIN_STD)
  return out


def nonzero_mask(image: np.ndarray) -> np.ndarray:
  """bool [Z, Y, X]: voxels where any channel of [Z, Y, X, C] is non-zero, holes filled (nnU-Net's mask)."""
  return scipy.ndimage.binary_fill_holes(np.any(np.asarray(image) != 0, axis=-1))


def resampled_shape(shape: Sequence[int], spacing: Sequence[float], target: Sequence[float]) -> tuple[int, int, int]:
  """Shape after resampling from `spacing` to `target` (mm), as `preprocess_case` resamples."""
  new_shape = []
  for size, current, wanted in zip(shape, spacing, target):
    if size == 1 or abs(current - wanted) <= SPACING_RTOL * wanted:
      new_shape.append(int(size))
    else:
      new_shape.append(max(1, int(round(size * current / wanted))))
  return tuple(new_shape)


def _separate_axis(spacing: Sequence[float], target: Sequence[float]) -> int | None:
  """nnU-Net's separate-z axis: the one coarsest axis of an anisotropic grid."""
  for s in (np.asarray(spacing), np.asarray(target)):
    if s.max() / s.min() > ANISOTROPY_THRESHOLD:
      coarsest = np.flatnonzero(s == s.max())
      return int(coarsest[0]) if len(coarsest) == 1 else None
  return None


def _resample(array: np.ndarray, new_shape: Sequence[int], order: int, separate_axis: int | None) -> np.ndarray:
  """Resamples a [Z, Y, X] array on voxel centres to `new_shape`.

  With `separate_axis`, the other axes use `order` and that axis nearest
  neighbour.
  """
  new_shape = tuple(new_shape)
  if array.shape == new_shape:
    return array
  factors = [n / s for n, s in zip(new_shape, array.shape)]
  if separate_axis is None:
    return _zoom(array, factors, order, new_shape)
  in_plane = list(factors)
  in_plane[separate_axis] = 1.0
  partial_shape = list(new_shape)
  partial_shape[separate_axis] = array.shape[separate_axis]
  array = _zoom(array, in_plane, order, tuple(partial_shape))
  through_plane = [1.0, 1.0, 1.0]
  through_plane[separate_axis] = factors[separate_axis]
  return _zoom(array, through_plane, 0, new_shape)


def _zoom(array: np.ndarray, factors: Sequence[float], order: int, new_shape: tuple[int, ...]) -> np.ndarray:
  if array.shape == new_shape:
    return array
  out = scipy.ndimage.zoom(array, factors, order=order, mode="nearest", grid_mode=True)
  assert out.shape == new_shape, (out.shape, new_shape)
  return out


def _resample_label(label: np.ndarray, new_shape: Sequence[int], separate_axis: int | None) -> np.ndarray:
  """One-hot linear resampling of uint8 [Z, Y, X] labels."""
  if label.shape == tuple(new_shape):
    return label
  out = np.zeros(new_shape, np.uint8)
  best = np.full(new_shape, -1.0, np.float32)
  for value in np.unique(label):
    membership = _resample((label == value).astype(np.float32), new_shape, 1, separate_axis)
    better = membership > best
    out[better] = value
    best[better] = membership[better]
  return out

"""Training-sample selection and patch extraction, as seeded numpy functions for grain.

A *case* is one preprocessed volume: `image` `[Z, Y, X, C]` float32 and
`label` `[Z, Y, X]` uint8 (2D datasets have Z = 1). Training samples are axial
slices `[H, W, C]` for 2D models or patches `[D, H, W, C]` for 3D models.

Foreground oversampling (nnU-Net): `is_forced_foreground` marks
ceil(batch * foreground_fraction) positions of every batch; a forced sample
is drawn from a case that holds foreground and centred on a voxel of one of
its foreground classes, so it contains foreground whatever the augmentation
(`augment` keeps the centre voxel). `CaseIndex.choose` picks the case (and,
with class-balanced sampling, the class first: every foreground class of the
split equally often, however few cases hold it).

Every function takes an explicit `np.random.Generator`, so a sample is a pure
function of (case, seed, sample index).
"""

from __future__ import annotations

import dataclasses
import math
from typing import Mapping, Sequence

import numpy as np
from scipy import ndimage

from jaxseg.data import augment as augment_lib

MAX_LOCATIONS_PER_CLASS = 10_000


@dataclasses.dataclass(frozen=True)
class Case:
  """One preprocessed case held in memory.

  Attributes:
    case_id: the case's identifier (file stem).
    image: float32 `[Z, Y, X, C]`, normalised.
    label: uint8 `[Z, Y, X]`, or None for unlabelled cases.
    spacing: voxel size (z, y, x) in mm.
    meta: geometry needed to map predictions back to the raw file (see preprocess).
    locations: class value -> int32 `[N, 3]` (z, y, x) voxel coordinates of that
      class (a random subset of at most MAX_LOCATIONS_PER_CLASS), for foreground
      oversampling.
    pad_value: float32 `[C]`, the image minimum, used outside the volume.
  """

  case_id: str
  image: np.ndarray
  label: np.ndarray | None
  spacing: tuple[float, float, float]
  meta: dict
  locations: dict[int, np.ndarray]
  pad_value: np.ndarray


def class_locations(label: np.ndarray, seed: int = 0) -> dict[int, np.ndarray]:
  """Voxel coordinates of each foreground class (subsampled, deterministic)."""
  rng = np.random.default_rng(seed)
  locations = {}
  for value in np.unique(label):
    if value == 0:
      continue
    coords = np.argwhere(label == value).astype(np.int32)
    if len(coords) > MAX_LOCATIONS_PER_CLASS:
      coords = coords[rng.choice(len(coords), MAX_LOCATIONS_PER_CLASS, replace=False)]
    locations[int(value)] = coords
  return locations


def make_case(case_id: str, image: np.ndarray, label: np.ndarray | None, spacing, meta: dict) -> Case:
  locations = class_locations(label) if label is not None else {}
  pad_value = image.reshape(-1, image.shape[-1]).min(axis=0).astype(np.float32)
  return Case(case_id, image, label, tuple(float(s) for s in spacing), meta, locations, pad_value)


def is_forced_foreground(position: int, batch_size: int, fraction: float) -> bool:
  """Whether batch position `position` must be centred on foreground.

  Exactly ceil(batch_size * fraction) positions per batch are, spread evenly.
  """
  del batch_size  # The count follows from the positions 0..batch_size-1.
  return math.ceil((position + 1) * fraction - 1e-9) - math.ceil(position * fraction - 1e-9) == 1


@dataclasses.dataclass(frozen=True)
class CaseIndex:
  """Which cases of a split hold which foreground classes, without decoding them.

  Attributes:
    num_cases: records in the split.
    cases_with_class: foreground class value -> int `[N]` indices of the cases
      holding at least one voxel of it.
    cases_with_foreground: int `[N]` indices of the cases holding any foreground.
  """

  num_cases: int
  cases_with_class: dict[int, np.ndarray]
  cases_with_foreground: np.ndarray

  @classmethod
  def from_class_voxels(cls, class_voxels: Sequence[Mapping[str, int]]) -> CaseIndex:
    """From the prepared dataset's `class_voxels` of a split (label value -> voxel count per case)."""
    by_class: dict[int, list[int]] = {}
    for index, counts in enumerate(class_voxels):
      for value, count in counts.items():
        if int(value) != 0 and count > 0:
          by_class.setdefault(int(value), []).append(index)
    foreground = sorted({i for cases in by_class.values() for i in cases})
    return cls(
      len(class_voxels), {k: np.asarray(v) for k, v in sorted(by_class.items())}, np.asarray(foreground, np.int64)
    )

  def choose(self, rng: np.random.Generator, *, force_foreground: bool, class_balanced: bool) -> tuple[int, int | None]:
    """(case index, foreground class to centre on or None for any present class).

    Unforced samples take any case uniformly. Forced ones take a case holding
    foreground uniformly, or with `class_balanced` a foreground class
    uniformly and then a case holding it.
    """
    if not force_foreground or not len(self.cases_with_foreground):
      return int(rng.integers(self.num_cases)), None
    if class_balanced:
      classes = list(self.cases_with_class)
      value = classes[int(rng.integers(len(classes)))]
      cases = self.cases_with_class[value]
      return int(cases[rng.integers(len(cases))]), value
    return int(self.cases_with_foreground[rng.integers(len(self.cases_with_foreground))]), None


def choose_center(
  case: Case,
  patch_size: Sequence[int],
  rng: np.random.Generator,
  force_foreground: bool,
  class_value: int | None = None,
) -> np.ndarray:
  """The (z, y, x) voxel a sample is centred on.

  Foreground samples take `class_value` if the case holds it, else a class
  uniformly among those present, then one of its voxels; other samples pick
  a centre uniformly such that the patch lies inside the volume where it fits.
  """
  shape = np.asarray(case.image.shape[:3])
  if force_foreground and case.locations:
    if class_value not in case.locations:
      classes = sorted(case.locations)
      class_value = classes[rng.integers(len(classes))]
    coords = case.locations[class_value]
    return coords[rng.integers(len(coords))].astype(np.float64)
  full = np.ones(3, np.int64)
  full[3 - len(patch_size) :] = patch_size
  center = np.empty(3)
  for axis in range(3):
    if len(patch_size) == 2 and axis == 0:
      center[0] = rng.integers(shape[0])
      continue
    half = full[axis] / 2
    low, high = half, shape[axis] - half
    center[axis] = rng.uniform(low, high) if high > low else shape[axis] / 2
  return np.floor(center)


def _crop(array: np.ndarray, start: np.ndarray, size: Sequence[int], pad_value) -> np.ndarray:
  """array[start:start+size] over the leading len(size) axes, padding outside."""
  pad, slices = [], []
  for axis, (s, n) in enumerate(zip(start, size)):
    lo, hi = int(s), int(s) + int(n)
    clip_lo, clip_hi = max(lo, 0), min(hi, array.shape[axis])
    slices.append(slice(clip_lo, max(clip_hi, clip_lo)))
    pad.append((clip_lo - lo, hi - max(clip_hi, clip_lo)))
  out = array[tuple(slices)]
  pad += [(0, 0)] * (array.ndim - len(size))
  if not any(p for pair in pad for p in pair):
    return out
  if np.ndim(pad_value) == 0:
    return np.pad(out, pad, constant_values=pad_value)
  channels = [np.pad(out[..., c], pad[:-1], constant_values=pad_value[c]) for c in range(out.shape[-1])]
  return np.stack(channels, axis=-1)


def extract_patch(
  case: Case, center: np.ndarray, patch_size: Sequence[int], transform: augment_lib.SpatialTransform | None = None
) -> tuple[np.ndarray, np.ndarray]:
  """Image `[*patch, C]` and label `[*patch]` around `center`, optionally rotated/zoomed/deformed.

  2D patches come from the axial slice `center[0]` (2D rotation is about the
  z axis). Patch voxel `patch_size // 2` is the case voxel `center`. Image
  voxels are interpolated linearly, labels by nearest neighbour; outside the
  volume the image is `case.pad_value`, the label 0.
  """
  ndim = len(patch_size)
  image, label = case.image, case.label
  if ndim == 2:
    image, label = image[int(center[0])], label[int(center[0])]
  center = center[3 - ndim :]
  if transform is None or transform.is_identity:
    start = center - np.asarray(patch_size) // 2
    return (_crop(image, start, patch_size, case.pad_value), _crop(label, start, patch_size, 0))
  coords = augment_lib.source_coordinates(center, patch_size, transform)
  out_image = np.stack(
    [
      ndimage.map_coordinates(image[..., c], coords, order=1, mode="constant", cval=case.pad_value[c])
      for c in range(image.shape[-1])
    ],
    axis=-1,
  ).astype(np.float32)
  out_label = ndimage.map_coordinates(label, coords, order=0, mode="constant", cval=0)
  return out_image, out_label


def training_sample(
  case: Case,
  patch_size: Sequence[int],
  rng: np.random.Generator,
  *,
  force_foreground: bool,
  augment: augment_lib.Augmentation,
  class_value: int | None = None,
) -> dict[str, np.ndarray]:
  """One augmented training sample: `image` `[*patch, C]` float32, `label` `[*patch]` int32."""
  center = choose_center(case, patch_size, rng, force_foreground, class_value)
  spatial = augment_lib.sample_spatial(rng, augment, patch_size)
  image, label = extract_patch(case, center, patch_size, spatial)
  image = augment_lib.intensity(np.asarray(image, np.float32), rng, augment)
  image, label = augment_lib.mirror(image, label, rng, augment.flip_axes, augment.flip_prob)
  return {"image": np.ascontiguousarray(image, np.float32), "label": np.ascontiguousarray(label, np.int32)}


def training_crop(
  case: Case,
  patch_size: Sequence[int],
  crop_size: Sequence[int],
  rng: np.random.Generator,
  *,
  force_foreground: bool,
  class_value: int | None = None,
) -> dict[str, np.ndarray]:
  """An unaugmented crop for device augmentation (`jaxseg.data.device_augment.augment_batch`).

  The centre is drawn exactly as `training_sample` draws it (same `rng`
  calls), and crop voxel `crop_size // 2` is that centre; `crop_size` holds
  the margin rotation and zoom need (`device_augment.crop_size`).

  Returns:
    `image` `[*crop, C]` float32 (the case minimum outside the volume),
    `label` `[*crop]` uint8 (0 outside), `pad_value` `[C]` float32, and
    `low` / `high` `[ndim]` int32: the case's first / last voxel in crop
    coordinates (scipy's constant mode: a point outside them reads the pad value).
  """
  center = choose_center(case, patch_size, rng, force_foreground, class_value)
  ndim = len(patch_size)
  image, label = case.image, case.label
  if ndim == 2:
    image, label = image[int(center[0])], label[int(center[0])]
  start = (center[3 - ndim :] - np.asarray(crop_size) // 2).astype(np.int64)
  return {
    "low": (-start).astype(np.int32),
    "high": (np.asarray(image.shape[:ndim]) - 1 - start).astype(np.int32),
    "image": np.ascontiguousarray(_crop(image, start, crop_size, case.pad_value), np.float32),
    "label": np.ascontiguousarray(_crop(label, start, crop_size, 0), np.uint8),
    "pad_value": np.asarray(case.pad_value, np.float32),
  }

"""Training augmentation as seeded numpy / scipy functions (run in grain workers).

nnU-Net v2's default pipeline (`nnUNetTrainer.get_training_transforms`),
applied to every training sample in this order, each step with its own
probability from `config.data.augment`:

  spatial     rotation (2D: in-plane, up to +-180 deg; 3D: about each axis, up
              to +-30 deg), isotropic zoom (0.7..1.4, > 1 magnifies) and
              elastic deformation (off by default, as in nnU-Net v2), one
              resampling of the patch: image linear, label nearest neighbour,
              outside the volume the case's minimum / background.
  noise       additive Gaussian, std U(0, 0.1), all channels.
  blur        Gaussian, each channel with probability 0.5, sigma U(0.5, 1) per axis.
  brightness  each channel times U(0.75, 1.25).
  contrast    each channel: (x - mean) * factor + mean, clipped to its old range.
  low-res     each channel with probability 0.5: nearest-neighbour downsampling
              by U(0.5, 1), then cubic (2D) / linear (3D) upsampling back.
  gamma       inverted with probability 0.1, plain with 0.3: x -> x ** gamma on
              the channel's range, mean and std restored.
  mirror      each axis of `flip_axes` with probability `flip_prob`.

Contrast and gamma factors are drawn as in batchgenerators: half the time
below 1 (from `lo..1`), half the time above (from `1..hi`). Units: images
are normalised intensities (preprocess.py), distances in voxels of the patch.

Every function takes an explicit `np.random.Generator`, so a sample is a pure
function of its seed. The spatial transform maps the patch centre onto the
sampled centre voxel exactly (the elastic field is shifted to vanish there),
so a sample centred on foreground keeps that foreground voxel.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Sequence

import ml_collections
import numpy as np
from scipy import ndimage

# nnU-Net's maximum rotation when `rotate_max_deg` is None, by patch dimension.
NNUNET_ROTATION_DEG = {2: 180.0, 3: 30.0}
# nnU-Net's per-channel probabilities of blur and low-resolution simulation.
BLUR_CHANNEL_PROB = 0.5
LOWRES_CHANNEL_PROB = 0.5
# Floor on a channel's std / range before dividing (batchgenerators' value).
EPSILON = 1e-7


@dataclasses.dataclass(frozen=True)
class Augmentation:
  """Augmentation settings resolved for patches of `ndim` spatial axes (module doc).

  Probabilities are per sample; ranges are (low, high) of a uniform draw.
  """

  ndim: int
  flip_axes: tuple[int, ...]
  flip_prob: float
  rotate_prob: float
  rotate_max_deg: float
  scale_prob: float
  scale_range: tuple[float, float]
  elastic_prob: float
  elastic_alpha: tuple[float, float]
  elastic_sigma: tuple[float, float]
  noise_prob: float
  noise_std: tuple[float, float]
  blur_prob: float
  blur_sigma: tuple[float, float]
  brightness_prob: float
  brightness_range: tuple[float, float]
  contrast_prob: float
  contrast_range: tuple[float, float]
  lowres_prob: float
  lowres_range: tuple[float, float]
  inverted_gamma_prob: float
  gamma_prob: float
  gamma_range: tuple[float, float]

  @classmethod
  def from_config(cls, augment: ml_collections.ConfigDict, ndim: int) -> Augmentation:
    """From `config.data.augment`; None flip axes / rotation take nnU-Net's choice for `ndim`."""
    values = {field.name: augment[field.name] for field in dataclasses.fields(cls) if field.name != "ndim"}
    values = {k: tuple(float(x) for x in v) if isinstance(v, (list, tuple)) else v for k, v in values.items()}
    flip_axes = augment.flip_axes
    values["flip_axes"] = tuple(range(ndim)) if flip_axes is None else tuple(int(a) for a in flip_axes)
    if augment.rotate_max_deg is None:
      values["rotate_max_deg"] = NNUNET_ROTATION_DEG[ndim]
    return cls(ndim=ndim, **values)

  @classmethod
  def none(cls, ndim: int) -> Augmentation:
    """No augmentation at all (every probability 0)."""
    unit = (1.0, 1.0)
    return cls(
      ndim=ndim,
      flip_axes=(),
      flip_prob=0.0,
      rotate_prob=0.0,
      rotate_max_deg=0.0,
      scale_prob=0.0,
      scale_range=unit,
      elastic_prob=0.0,
      elastic_alpha=(0.0, 0.0),
      elastic_sigma=unit,
      noise_prob=0.0,
      noise_std=(0.0, 0.0),
      blur_prob=0.0,
      blur_sigma=unit,
      brightness_prob=0.0,
      brightness_range=unit,
      contrast_prob=0.0,
      contrast_range=unit,
      lowres_prob=0.0,
      lowres_range=unit,
      inverted_gamma_prob=0.0,
      gamma_prob=0.0,
      gamma_range=unit,
    )


@dataclasses.dataclass(frozen=True)
class SpatialTransform:
  """One sample's spatial augmentation.

  Attributes:
    angles: radians; 2D: one in-plane angle; 3D: rotations about axes 0, 1, 2.
    scale: zoom factor, > 1 magnifies.
    elastic: float32 `[ndim, *patch]` displacement (voxels) added to the patch
      grid before zoom and rotation, zero at the patch centre; or None.
  """

  angles: tuple[float, ...]
  scale: float = 1.0
  elastic: np.ndarray | None = None

  @property
  def is_identity(self) -> bool:
    return not any(self.angles) and self.scale == 1.0 and self.elastic is None


def sample_spatial(rng: np.random.Generator, aug: Augmentation, patch_size: Sequence[int]) -> SpatialTransform:
  """Draws rotation, zoom and elastic deformation for one sample of `patch_size`."""
  num_angles = 1 if aug.ndim == 2 else 3
  angles = (0.0,) * num_angles
  if rng.uniform() < aug.rotate_prob:
    limit = math.radians(aug.rotate_max_deg)
    angles = tuple(float(a) for a in rng.uniform(-limit, limit, num_angles))
  scale = float(rng.uniform(*aug.scale_range)) if rng.uniform() < aug.scale_prob else 1.0
  elastic = None
  if rng.uniform() < aug.elastic_prob:
    elastic = elastic_displacement(
      rng, patch_size, alpha=rng.uniform(*aug.elastic_alpha), sigma=rng.uniform(*aug.elastic_sigma)
    )
  return SpatialTransform(angles, scale, elastic)


def elastic_displacement(
  rng: np.random.Generator, patch_size: Sequence[int], *, alpha: float, sigma: float
) -> np.ndarray:
  """Smooth random displacement `[ndim, *patch]` in voxels (batchgenerators' elastic field).

  Per axis: uniform(-1, 1) noise, Gaussian-filtered with `sigma` voxels and
  scaled by `alpha`, then shifted so that the patch centre does not move.
  """
  centre = tuple(n // 2 for n in patch_size)
  fields = []
  for _ in patch_size:
    field = ndimage.gaussian_filter(rng.uniform(-1.0, 1.0, tuple(patch_size)), sigma, mode="constant") * alpha
    fields.append(field - field[centre])
  return np.stack(fields).astype(np.float32)


def rotation_matrix(angles: Sequence[float]) -> np.ndarray:
  """`[ndim, ndim]` rotation: 2D by one angle; 3D about axis 0, then 1, then 2."""
  if len(angles) == 1:
    c, s = math.cos(angles[0]), math.sin(angles[0])
    return np.array([[c, -s], [s, c]])
  matrix = np.eye(3)
  for axis, angle in enumerate(angles):
    c, s = math.cos(angle), math.sin(angle)
    i, j = [a for a in range(3) if a != axis]
    rotation = np.eye(3)
    rotation[i, i], rotation[i, j], rotation[j, i], rotation[j, j] = c, -s, s, c
    matrix = matrix @ rotation
  return matrix


def source_coordinates(center: np.ndarray, patch_size: Sequence[int], transform: SpatialTransform) -> np.ndarray:
  """Voxel coordinates `[ndim, *patch]` in the volume that each patch voxel samples.

  Patch voxel `patch_size // 2` samples `center` exactly.
  """
  grid = np.stack(np.meshgrid(*[np.arange(n, dtype=np.float64) - n // 2 for n in patch_size], indexing="ij"))
  if transform.elastic is not None:
    grid = grid + transform.elastic
  grid = grid / transform.scale
  rotated = np.tensordot(rotation_matrix(transform.angles), grid, axes=1)
  return rotated + np.asarray(center, np.float64).reshape(-1, *([1] * len(patch_size)))


def intensity(image: np.ndarray, rng: np.random.Generator, aug: Augmentation) -> np.ndarray:
  """Noise, blur, brightness, contrast, low resolution and gamma on `[*patch, C]` float32."""
  if rng.uniform() < aug.noise_prob:
    image = gaussian_noise(image, rng, aug.noise_std)
  if rng.uniform() < aug.blur_prob:
    image = gaussian_blur(image, rng, aug.blur_sigma)
  if rng.uniform() < aug.brightness_prob:
    image = image * rng.uniform(*aug.brightness_range, image.shape[-1]).astype(np.float32)
  if rng.uniform() < aug.contrast_prob:
    image = contrast(image, rng, aug.contrast_range)
  if rng.uniform() < aug.lowres_prob:
    image = low_resolution(image, rng, aug.lowres_range)
  if rng.uniform() < aug.inverted_gamma_prob:
    image = gamma(image, rng, aug.gamma_range, invert=True)
  if rng.uniform() < aug.gamma_prob:
    image = gamma(image, rng, aug.gamma_range, invert=False)
  return image


def gaussian_noise(image: np.ndarray, rng: np.random.Generator, std_range: tuple[float, float]) -> np.ndarray:
  """Adds zero-mean Gaussian noise of one std U(std_range) to every channel."""
  std = rng.uniform(*std_range)
  return image + (std * rng.standard_normal(image.shape, dtype=np.float32)).astype(np.float32)


def gaussian_blur(image: np.ndarray, rng: np.random.Generator, sigma_range: tuple[float, float]) -> np.ndarray:
  """Blurs each channel with probability BLUR_CHANNEL_PROB, sigma U(sigma_range) per axis (voxels)."""
  out = image.copy()
  for c in range(image.shape[-1]):
    if rng.uniform() < BLUR_CHANNEL_PROB:
      sigma = rng.uniform(*sigma_range, image.ndim - 1)
      out[..., c] = ndimage.gaussian_filter(image[..., c], sigma)
  return out


def below_or_above_one(rng: np.random.Generator, value_range: tuple[float, float]) -> float:
  """batchgenerators' factor draw: U(lo, 1) half the time (if lo < 1), else U(max(lo, 1), hi)."""
  low, high = value_range
  if rng.uniform() < 0.5 and low < 1:
    return float(rng.uniform(low, 1.0))
  return float(rng.uniform(max(low, 1.0), high))


def contrast(image: np.ndarray, rng: np.random.Generator, factor_range: tuple[float, float]) -> np.ndarray:
  """Scales each channel about its mean, keeping its [min, max] range."""
  out = np.empty_like(image)
  for c in range(image.shape[-1]):
    x = image[..., c]
    factor = below_or_above_one(rng, factor_range)
    mean = x.mean()
    out[..., c] = np.clip((x - mean) * factor + mean, x.min(), x.max())
  return out


def low_resolution(image: np.ndarray, rng: np.random.Generator, zoom_range: tuple[float, float]) -> np.ndarray:
  """Each channel with probability LOWRES_CHANNEL_PROB: downsample by U(zoom_range), upsample back."""
  out = image.copy()
  shape = image.shape[:-1]
  order_up = 3 if len(shape) == 2 else 1
  for c in range(image.shape[-1]):
    if rng.uniform() < LOWRES_CHANNEL_PROB:
      zoom = rng.uniform(*zoom_range)
      small = tuple(max(1, round(n * zoom)) for n in shape)
      out[..., c] = resize(resize(image[..., c], small, order=0), shape, order=order_up)
  return out


def resize(array: np.ndarray, shape: Sequence[int], *, order: int) -> np.ndarray:
  """Resamples `array` to `shape` on voxel centres (scipy zoom, grid mode, edge values repeated)."""
  shape = tuple(int(n) for n in shape)
  if array.shape == shape:
    return array
  factors = [n / m for n, m in zip(shape, array.shape)]
  out = ndimage.zoom(array, factors, order=order, mode="nearest", grid_mode=True)
  assert out.shape == shape, (out.shape, shape)
  return out


def gamma(image: np.ndarray, rng: np.random.Generator, gamma_range: tuple[float, float], *, invert: bool) -> np.ndarray:
  """Per channel: x -> ((x - min) / range) ** gamma * range + min, then its mean and std restored.

  With `invert`, applied to -x and negated back (brightens dark regions).
  """
  out = np.empty_like(image)
  sign = -1.0 if invert else 1.0
  for c in range(image.shape[-1]):
    x = sign * image[..., c].astype(np.float64)
    mean, std = x.mean(), x.std()
    g = below_or_above_one(rng, gamma_range)
    low = x.min()
    span = x.max() - low
    x = ((x - low) / max(span, EPSILON)) ** g * span + low
    x = (x - x.mean()) / (x.std() + 1e-8) * std + mean
    out[..., c] = sign * x
  return out


def mirror(
  image: np.ndarray, label: np.ndarray, rng: np.random.Generator, axes: Sequence[int], prob: float
) -> tuple[np.ndarray, np.ndarray]:
  """Mirrors each of the spatial `axes` of image `[*patch, C]` and label `[*patch]` with probability `prob`."""
  for axis in axes:
    if rng.uniform() < prob:
      image, label = np.flip(image, axis), np.flip(label, axis)
  return image, label

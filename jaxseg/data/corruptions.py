"""Graded image-quality shifts applied to a raw image, as a scanner would produce them.

Every corruption is a pure numpy function of an image in its ORIGINAL
intensity units and voxel geometry, as `jaxseg.data.nifti.load_case` returns
it: float `[X, Y, Z, C]` in the file's voxel order (2D data `[X, Y, 1, C]`),
with `spacing` the voxel size (mm) along X, Y, Z. It is applied before any
preprocessing (orientation, cropping, normalisation, resampling), so the
model's normalisation statistics stay those of the clean training data.
Labels are never touched; shape and dtype are kept.

Shifts (`SHIFTS`), their parameter and its unit:

- `noise`: additive white Gaussian noise of std sigma; in HU for a CT
  channel, else a fraction of the channel's reference intensity (below).
- `blur`: Gaussian blur of std sigma in mm along every axis
  (`scipy.ndimage.gaussian_filter` with sigma / spacing voxels, 'nearest'
  border).
- `contrast`: intensities scaled by a factor c about a reference level r:
  r + c (I - r); r = 0 HU (water) for CT, the channel mean otherwise.
- `intensity_shift`: an offset added to every voxel; HU for CT, else a
  fraction of the channel's reference intensity.
- `low_resolution`: the in-plane axes (X, Y) downsampled by a factor f
  (Gaussian anti-aliasing of std (f - 1) / 2 voxels, as skimage's `resize`,
  then linear interpolation to round(n / f) voxels), then upsampled back to
  the original grid (linear interpolation): an acquisition with f times
  coarser in-plane resolution reconstructed on the same grid.
- `ghosting`: motion-like ghosts: along the phase-encoding axis (default
  the second voxel axis, Y), the k-space lines whose (signed) frequency index
  is not a multiple of `GHOSTS` are scaled by (1 - a), a the ghost
  intensity. Since those lines hold image - mean of its `GHOSTS` circular
  shifts by multiples of N / GHOSTS, the result is (1 - a) I + a * (the mean
  of the shifted copies, the image itself included): ghosts of intensity
  a / GHOSTS at multiples of N / GHOSTS, the image mean kept (the DC line is
  untouched). The mask is symmetric in the frequency index, so the result is
  real. The CT table is 4x gentler than the MR one: in CT the ghosts of the
  air (-1000 HU) around the body land on the organs (on the CT phantom,
  a = 0.2 lowers the liver by 121 HU on average).
- `bias_field`: a smooth multiplicative field exp(alpha * b(x)), b a random
  combination of Legendre polynomials of total degree <= 3 in the physical
  (mm) coordinates scaled to [-1, 1] by the largest half field of view, the
  constant term left out, normalised to max |b| = 1 over the voxels: the
  field lies in [exp(-alpha), exp(alpha)]. For MR.

The reference intensity of a non-CT channel (arbitrary scanner units) is its
99th percentile over the image. Each shift has a severity table
(`Shift.levels`, five levels for CT and five for other modalities): level 0
is the identity, higher levels are stronger. Random shifts (noise, bias
field) are deterministic given `seed`, and one seed gives the same noise
pattern or field shape at every level, scaled by it.
"""

from __future__ import annotations

import dataclasses
from typing import Sequence

import numpy as np
from numpy.polynomial import legendre
from scipy import ndimage

GHOSTS = 4  # Ghost copies (image included) along the phase-encoding axis.
BIAS_DEGREE = 3  # Total degree of the bias field's Legendre polynomials.
REFERENCE_PERCENTILE = 99.0  # Reference intensity of a non-CT channel.


@dataclasses.dataclass(frozen=True)
class Shift:
  """One image-quality shift and its severity table.

  Attributes:
    name: key of `SHIFTS`.
    parameter: what a level sets.
    unit_ct, unit_other: its unit for a CT channel and for other channels ('' for a plain number).
    levels_ct: parameter per severity level (level 0 first, the identity) for a CT channel, in HU or mm
      or as a factor.
    levels_other: the same for other channels; for `intensity_scaled` shifts, fractions of the channel's
      reference intensity.
    intensity_scaled: whether a non-CT channel's parameter is multiplied by its reference intensity.
    modalities: channel kinds the shift is meant for ('ct', 'mr'); others still run it.
  """

  name: str
  parameter: str
  unit_ct: str
  unit_other: str
  levels_ct: tuple[float, ...]
  levels_other: tuple[float, ...]
  intensity_scaled: bool = False
  modalities: tuple[str, ...] = ("ct", "mr")

  @property
  def num_levels(self) -> int:
    return len(self.levels_ct)

  def label(self, is_ct: bool) -> str:
    """'parameter (unit)' for a CT channel or another one."""
    unit = self.unit_ct if is_ct else self.unit_other
    return f"{self.parameter} ({unit})" if unit else self.parameter

  def value(self, level: int, is_ct: bool) -> float:
    """The table's parameter at `level` (before scaling by a reference intensity)."""
    levels = self.levels_ct if is_ct else self.levels_other
    if not 0 <= level < len(levels):
      raise ValueError(f"shift {self.name!r} has severity levels 0..{len(levels) - 1}, got {level}")
    return levels[level]


SHIFTS: dict[str, Shift] = {
  s.name: s
  for s in (
    Shift(
      "noise",
      "Gaussian noise std",
      "HU",
      "x reference intensity",
      (0.0, 20.0, 40.0, 80.0, 160.0),
      (0.0, 0.025, 0.05, 0.1, 0.2),
      intensity_scaled=True,
    ),
    Shift("blur", "Gaussian blur std", "mm", "mm", (0.0, 1.5, 3.0, 4.5, 6.0), (0.0, 1.5, 3.0, 4.5, 6.0)),
    Shift(
      "contrast",
      "contrast factor",
      "about 0 HU",
      "about the channel mean",
      (1.0, 0.8, 0.6, 0.4, 0.2),
      (1.0, 0.8, 0.6, 0.4, 0.2),
    ),
    Shift(
      "intensity_shift",
      "intensity offset",
      "HU",
      "x reference intensity",
      (0.0, 25.0, 50.0, 100.0, 200.0),
      (0.0, 0.05, 0.1, 0.2, 0.4),
      intensity_scaled=True,
    ),
    Shift(
      "low_resolution", "in-plane downsampling factor", "", "", (1.0, 1.5, 2.0, 3.0, 4.0), (1.0, 1.5, 2.0, 3.0, 4.0)
    ),
    Shift(
      "ghosting",
      "ghost intensity a",
      f"{GHOSTS} copies along Y",
      f"{GHOSTS} copies along Y",
      (0.0, 0.025, 0.05, 0.1, 0.2),
      (0.0, 0.2, 0.4, 0.6, 0.8),
    ),
    Shift(
      "bias_field",
      "bias field log-amplitude alpha",
      "",
      "",
      (0.0, 0.15, 0.3, 0.5, 0.8),
      (0.0, 0.15, 0.3, 0.5, 0.8),
      modalities=("mr",),
    ),
  )
}


def is_ct(channel_name: str) -> bool:
  """A channel in HU: named 'CT' (any case), the rule of `preprocess.make_plan`."""
  return channel_name.lower() == "ct"


def reference_intensity(channel: np.ndarray) -> float:
  """The `REFERENCE_PERCENTILE`th percentile of a channel (its scale in arbitrary units)."""
  return float(np.percentile(channel, REFERENCE_PERCENTILE))


# The corruptions, on one channel [X, Y, Z] (float) unless stated otherwise.


def gaussian_noise(channel: np.ndarray, std: float, rng: np.random.Generator) -> np.ndarray:
  """channel + std * N(0, 1) per voxel (std in the channel's units)."""
  return channel + std * rng.standard_normal(channel.shape)


def gaussian_blur(channel: np.ndarray, sigma_mm: float, spacing: Sequence[float]) -> np.ndarray:
  """Gaussian blur of std `sigma_mm` mm: sigma_mm / spacing voxels along each axis, 'nearest' border."""
  sigma = [sigma_mm / float(s) for s in spacing]
  return ndimage.gaussian_filter(channel.astype(np.float64), sigma, mode="nearest")


def contrast(channel: np.ndarray, factor: float, reference: float) -> np.ndarray:
  """reference + factor * (channel - reference)."""
  return reference + factor * (channel - reference)


def intensity_shift(channel: np.ndarray, offset: float) -> np.ndarray:
  return channel + offset


def low_resolution(channel: np.ndarray, factor: float, axes: Sequence[int] = (0, 1)) -> np.ndarray:
  """Anti-aliased linear downsampling of `axes` by `factor` (to max(1, round(n / factor)) voxels), linear
  upsampling back."""
  if factor == 1.0:
    return channel.astype(np.float64)
  low_shape = [max(1, round(n / factor)) if a in axes else n for a, n in enumerate(channel.shape)]
  sigma = [(factor - 1) / 2 if a in axes else 0.0 for a in range(channel.ndim)]
  smooth = ndimage.gaussian_filter(channel.astype(np.float64), sigma, mode="nearest")
  low = ndimage.zoom(smooth, [m / n for m, n in zip(low_shape, channel.shape)], order=1, mode="nearest")
  back = ndimage.zoom(low, [n / m for m, n in zip(low.shape, channel.shape)], order=1, mode="nearest")
  if back.shape != channel.shape:  # zoom rounds output sizes; it returns the requested ones here.
    raise AssertionError(f"low_resolution: upsampled shape {back.shape} != {channel.shape}")
  return back


def ghosting(channel: np.ndarray, intensity: float, axis: int = 1, ghosts: int = GHOSTS) -> np.ndarray:
  """Scales the k-space lines along `axis` whose signed frequency index is not a multiple of `ghosts`
  by (1 - intensity) (module doc)."""
  n = channel.shape[axis]
  index = np.rint(np.fft.fftfreq(n) * n).astype(int)  # 0, 1, ..., -1: symmetric in k -> -k.
  scale = np.where(index % ghosts == 0, 1.0, 1.0 - intensity)
  shape = [1] * channel.ndim
  shape[axis] = n
  spectrum = np.fft.fft(channel.astype(np.float64), axis=axis) * scale.reshape(shape)
  return np.fft.ifft(spectrum, axis=axis).real


def bias_field(
  shape: Sequence[int], spacing: Sequence[float], rng: np.random.Generator, degree: int = BIAS_DEGREE
) -> np.ndarray:
  """b(x) of the module doc on a grid `shape` (X, Y, Z) of `spacing` mm: a smooth field with max |b| = 1
  (all zeros when the grid has one voxel)."""
  extents = [(n - 1) * float(s) / 2 for n, s in zip(shape, spacing)]
  half = max(max(extents), 1e-12)
  coords = [(np.arange(n) - (n - 1) / 2) * float(s) / half for n, s in zip(shape, spacing)]
  field = np.zeros(tuple(shape))
  for i in range(degree + 1):
    for j in range(degree + 1 - i):
      for k in range(degree + 1 - i - j):
        coefficient = rng.uniform(-1.0, 1.0)
        if i + j + k == 0:
          continue  # The constant term would only scale the image.
        px, py, pz = (legendre.legval(c, np.eye(degree + 1)[d]) for c, d in zip(coords, (i, j, k)))
        field += coefficient * px[:, None, None] * py[None, :, None] * pz[None, None, :]
  peak = np.abs(field).max()
  return field / peak if peak > 0 else field


def apply_bias_field(channel: np.ndarray, alpha: float, field: np.ndarray) -> np.ndarray:
  """channel * exp(alpha * field)."""
  return channel * np.exp(alpha * field)


def corrupt(
  image: np.ndarray,
  spacing: Sequence[float],
  shift: str,
  level: int,
  *,
  channel_names: Sequence[str],
  seed: int = 0,
  phase_axis: int = 1,
) -> np.ndarray:
  """`image` `[X, Y, Z, C]` (original units) under `shift` at severity `level`, same shape and dtype.

  Args:
    image: float `[X, Y, Z, C]` as `nifti.load_case` returns it.
    spacing: voxel size (mm) along X, Y, Z.
    shift: a key of `SHIFTS`.
    level: 0 (the identity: an unchanged copy) .. `SHIFTS[shift].num_levels - 1`.
    channel_names: the dataset's channel names; 'CT' channels use the HU table.
    seed: seeds the noise and the bias field (one generator per channel: `default_rng([seed, c])`).
    phase_axis: the ghosting's phase-encoding axis (0, 1 or 2).

  Raises:
    ValueError: an unknown shift, a level outside its table, or an image that is not `[X, Y, Z, C]`
      with one name per channel.
  """
  if shift not in SHIFTS:
    raise ValueError(f"unknown image-quality shift {shift!r}; choose from {', '.join(SHIFTS)}")
  spec = SHIFTS[shift]
  image = np.asarray(image)
  if image.ndim != 4 or image.shape[3] != len(channel_names) or len(spacing) != 3:
    raise ValueError(
      f"expected an image [X, Y, Z, C] with C = {len(channel_names)} channel names and 3 "
      f"spacings, got shape {image.shape} and spacing {tuple(spacing)}"
    )
  spec.value(level, True)  # Checks the level.
  if level == 0:
    return image.copy()
  out = np.empty_like(image)
  for c, name in enumerate(channel_names):
    ct = is_ct(name)
    channel = image[..., c].astype(np.float64)
    value = spec.value(level, ct)
    if spec.intensity_scaled and not ct:
      value *= reference_intensity(channel)
    rng = np.random.default_rng([seed, c])
    if shift == "noise":
      result = gaussian_noise(channel, value, rng)
    elif shift == "blur":
      result = gaussian_blur(channel, value, spacing)
    elif shift == "contrast":
      result = contrast(channel, value, 0.0 if ct else float(channel.mean()))
    elif shift == "intensity_shift":
      result = intensity_shift(channel, value)
    elif shift == "low_resolution":
      result = low_resolution(channel, value)
    elif shift == "ghosting":
      result = ghosting(channel, value, axis=phase_axis)
    else:  # bias_field
      result = apply_bias_field(channel, value, bias_field(channel.shape, spacing, rng))
    out[..., c] = result.astype(image.dtype) if np.issubdtype(image.dtype, np.floating) else np.rint(result)
  return out


def parameters(shift: str, channel_names: Sequence[str]) -> list[dict]:
  """The severity table of `shift` as it applies to these channels: one {level, channel: value} per level
  (for intensity-scaled shifts on non-CT channels, the fraction of the reference intensity)."""
  spec = SHIFTS[shift]
  return [
    {"level": level, **{name: spec.value(level, is_ct(name)) for name in channel_names}}
    for level in range(spec.num_levels)
  ]

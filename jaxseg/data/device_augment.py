"""nnU-Net augmentation as jittable, batched JAX functions (run inside the train step).

The same transforms, order, probabilities and ranges as the host pipeline
(`jaxseg.data.augment`, whose docstring states them), drawn inside `jit`:

  spatial     rotation, isotropic zoom and elastic deformation make ONE
              coordinate map `[ndim, *patch]`; image and label are resampled
              from it once (image: linear, label: nearest neighbour; outside
              the source: the case's minimum / background, exactly scipy's
              `map_coordinates(..., mode="constant")`).
  intensity   noise, blur, brightness, contrast, low resolution, inverted
              gamma, gamma; then mirroring.

Randomness: example `i` of the global batch of step `s` draws everything from
`fold_in(fold_in(seed_key, s), i)`, so a batch is a pure function of (seed,
step): the same on any number of devices and hosts, and a resumed run sees the
batches an uninterrupted one would. Each transform takes its own `fold_in`
sub-stream of that key, so turning one transform off does not change the
others' draws.

Sources: `augment_batch` resamples from host crops `[B, *crop, C]` that carry
the margin rotation and zoom need (`crop_size`); `jaxseg.data.device_cache`
resamples from whole cases resident on the device. Both go through
`transform_example`.

Shapes: images `[*patch, C]` float32, labels `[*patch]` int32, coordinates in
voxels (z, y, x order of the patch axes).
"""

from __future__ import annotations

import itertools
import math
from typing import Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from jaxseg.data import augment as augment_lib
from jaxseg.data.augment import Augmentation

# fold_in tags: the augmentation stream of `config.seed`, and one sub-stream per transform.
AUGMENT_STREAM = 0x61756731
_STREAMS = {
  name: i
  for i, name in enumerate(
    (
      "rotate",
      "scale",
      "elastic",
      "noise",
      "blur",
      "brightness",
      "contrast",
      "lowres",
      "inverted_gamma",
      "gamma",
      "mirror",
      "sample",
    )
  )
}
# scipy.ndimage.gaussian_filter's default truncation (radius = int(truncate * sigma + 0.5)).
TRUNCATE = 4.0
# Padding scipy's spline zoom adds before its prefilter (`_prepad_for_spline_filter`).
_SPLINE_PAD = 12
# Tolerance on "inside the source" for float32 coordinates (scipy's test is 0 <= c <= n - 1).
_INSIDE_EPS = 1e-4


def augment_key(seed: int) -> jax.Array:
  """The key every device augmentation of `config.seed` derives from."""
  return jax.random.fold_in(jax.random.key(seed), AUGMENT_STREAM)


def example_keys(seed_key: jax.Array, step: jax.Array, batch_size: int, offset: int | jax.Array = 0) -> jax.Array:
  """`[B]` keys: row r is global example `offset + r` of step `step`."""
  step_key = jax.random.fold_in(seed_key, step)
  return jax.vmap(lambda i: jax.random.fold_in(step_key, i))(offset + jnp.arange(batch_size))


def _stream(key: jax.Array, name: str) -> jax.Array:
  return jax.random.fold_in(key, _STREAMS[name])


# ----------------------------------------------------------------------------------------------------------
# Random parameters (one example).


def _uniform(key, low, high, shape=()):
  return jax.random.uniform(key, shape, jnp.float32, low, high) if low != high else jnp.full(shape, low, jnp.float32)


def _happens(key, prob: float, shape=()) -> jax.Array:
  return jax.random.uniform(key, shape) < prob


def below_or_above_one(key: jax.Array, value_range: tuple[float, float], shape=()) -> jax.Array:
  """batchgenerators' factor draw (`augment.below_or_above_one`).

  U(lo, 1) half the time if lo < 1, else U(max(lo, 1), hi).
  """
  low, high = value_range
  k_side, k_below, k_above = jax.random.split(key, 3)
  above = _uniform(k_above, max(low, 1.0), high, shape)
  if low >= 1:
    return above
  return jnp.where(jax.random.uniform(k_side, shape) < 0.5, _uniform(k_below, low, 1.0, shape), above)


def sample_params(key: jax.Array, aug: Augmentation, num_channels: int) -> dict[str, jax.Array]:
  """Every random parameter of one example (flags are bool, values float32).

  Keys: `rotate` (bool), `angles` `[1 | 3]` radians, `scale_on`, `scale`,
  `elastic_on`, `elastic_alpha`, `elastic_sigma`, `elastic_key`, `noise_on`,
  `noise_std`, `noise_key`, `blur_on`, `blur_channels` `[C]`, `blur_sigma`
  `[C, ndim]`, `brightness_on`, `brightness` `[C]`, `contrast_on`, `contrast`
  `[C]`, `lowres_on`, `lowres_channels` `[C]`, `lowres_zoom` `[C]`,
  `inverted_gamma_on`, `inverted_gamma` `[C]`, `gamma_on`, `gamma` `[C]`,
  `mirror` `[len(flip_axes)]`. Parameters of a transform that does not happen
  are drawn anyway (and ignored).
  """
  c = num_channels
  p = {}
  k = jax.random.split(_stream(key, "rotate"))
  limit = math.radians(aug.rotate_max_deg)
  p["rotate"] = _happens(k[0], aug.rotate_prob)
  p["angles"] = _uniform(k[1], -limit, limit, (1 if aug.ndim == 2 else 3,))
  k = jax.random.split(_stream(key, "scale"))
  p["scale_on"], p["scale"] = _happens(k[0], aug.scale_prob), _uniform(k[1], *aug.scale_range)
  k = jax.random.split(_stream(key, "elastic"), 4)
  p["elastic_on"] = _happens(k[0], aug.elastic_prob)
  p["elastic_alpha"], p["elastic_sigma"] = _uniform(k[1], *aug.elastic_alpha), _uniform(k[2], *aug.elastic_sigma)
  p["elastic_key"] = k[3]
  k = jax.random.split(_stream(key, "noise"), 3)
  p["noise_on"], p["noise_std"], p["noise_key"] = _happens(k[0], aug.noise_prob), _uniform(k[1], *aug.noise_std), k[2]
  k = jax.random.split(_stream(key, "blur"), 3)
  p["blur_on"], p["blur_channels"] = _happens(k[0], aug.blur_prob), _happens(k[1], augment_lib.BLUR_CHANNEL_PROB, (c,))
  p["blur_sigma"] = _uniform(k[2], *aug.blur_sigma, (c, aug.ndim))
  k = jax.random.split(_stream(key, "brightness"))
  p["brightness_on"] = _happens(k[0], aug.brightness_prob)
  p["brightness"] = _uniform(k[1], *aug.brightness_range, (c,))
  k = jax.random.split(_stream(key, "contrast"))
  p["contrast_on"] = _happens(k[0], aug.contrast_prob)
  p["contrast"] = below_or_above_one(k[1], aug.contrast_range, (c,))
  k = jax.random.split(_stream(key, "lowres"), 3)
  p["lowres_on"] = _happens(k[0], aug.lowres_prob)
  p["lowres_channels"] = _happens(k[1], augment_lib.LOWRES_CHANNEL_PROB, (c,))
  p["lowres_zoom"] = _uniform(k[2], *aug.lowres_range, (c,))
  for name, prob in (("inverted_gamma", aug.inverted_gamma_prob), ("gamma", aug.gamma_prob)):
    k = jax.random.split(_stream(key, name))
    p[f"{name}_on"], p[name] = _happens(k[0], prob), below_or_above_one(k[1], aug.gamma_range, (c,))
  p["mirror"] = _happens(_stream(key, "mirror"), aug.flip_prob, (len(aug.flip_axes),))
  return p


# ----------------------------------------------------------------------------------------------------------
# Spatial transforms.


def rotation_matrix(angles: jax.Array) -> jax.Array:
  """`[ndim, ndim]` as `augment.rotation_matrix`: 2D by one angle; 3D about axis 0, then 1, then 2."""
  if angles.shape[0] == 1:
    c, s = jnp.cos(angles[0]), jnp.sin(angles[0])
    return jnp.stack([jnp.stack([c, -s]), jnp.stack([s, c])])
  matrix = jnp.eye(3, dtype=angles.dtype)
  for axis in range(3):
    c, s = jnp.cos(angles[axis]), jnp.sin(angles[axis])
    i, j = [a for a in range(3) if a != axis]
    rotation = jnp.eye(3, dtype=angles.dtype).at[i, i].set(c).at[i, j].set(-s).at[j, i].set(s).at[j, j].set(c)
    matrix = matrix @ rotation
  return matrix


def gaussian_kernel(sigma: jax.Array, radius: int) -> jax.Array:
  """`[2 * radius + 1]` normalised Gaussian of `sigma` voxels, cut where scipy's would end.

  scipy's kernel has radius int(TRUNCATE * sigma + 0.5); taps beyond it are 0
  here, so a static `radius` (from the largest sigma) serves every sigma.
  sigma 0 is the identity.
  """
  x = jnp.arange(-radius, radius + 1, dtype=jnp.float32)
  own_radius = jnp.floor(TRUNCATE * sigma + 0.5)
  safe = jnp.maximum(sigma, 1e-6)
  weights = jnp.where(jnp.abs(x) <= own_radius, jnp.exp(-0.5 * (x / safe) ** 2), 0.0)
  return jnp.where(sigma > 0, weights / jnp.sum(weights), (x == 0).astype(jnp.float32))


def kernel_radius(max_sigma: float) -> int:
  return int(TRUNCATE * float(max_sigma) + 0.5)


def filter_axis(x: jax.Array, weights: jax.Array, axis: int, mode: str) -> jax.Array:
  """Correlates `x` along `axis` with odd `weights`; mode "reflect" (scipy's default) or "constant" (zeros)."""
  radius = (weights.shape[0] - 1) // 2
  if radius == 0:
    return x * weights[0]
  pad = [(0, 0)] * x.ndim
  pad[axis] = (radius, radius)
  padded = jnp.pad(x, pad, mode="symmetric") if mode == "reflect" else jnp.pad(x, pad)
  n = x.shape[axis]
  return sum(weights[k] * jax.lax.slice_in_dim(padded, k, k + n, axis=axis) for k in range(weights.shape[0]))


def gaussian_filter(x: jax.Array, sigmas: jax.Array, radius: int, mode: str = "reflect") -> jax.Array:
  """scipy.ndimage.gaussian_filter of `x` `[*spatial]` with per-axis `sigmas` `[ndim]` (traced)."""
  for axis in range(x.ndim):
    x = filter_axis(x, gaussian_kernel(sigmas[axis], radius), axis, mode)
  return x


def elastic_field(noise: jax.Array, alpha: jax.Array, sigma: jax.Array, radius: int) -> jax.Array:
  """`augment.elastic_displacement` from its uniform(-1, 1) noise `[ndim, *patch]`.

  Smoothed with `sigma` voxels (zeros outside), scaled by `alpha`, shifted to vanish at the patch centre.
  """
  patch = noise.shape[1:]
  centre = tuple(n // 2 for n in patch)
  sigmas = jnp.full((len(patch),), sigma)
  fields = jnp.stack([gaussian_filter(noise[a], sigmas, radius, mode="constant") * alpha for a in range(len(patch))])
  return fields - fields[(slice(None), *centre)][(slice(None), *([None] * len(patch)))]


def coordinate_map(
  center: jax.Array, patch_size: Sequence[int], angles: jax.Array, scale: jax.Array, elastic: jax.Array | None = None
) -> jax.Array:
  """`augment.source_coordinates`: `[ndim, *patch]` source voxel of each patch voxel (float32)."""
  grid = jnp.stack(jnp.meshgrid(*[jnp.arange(n, dtype=jnp.float32) - n // 2 for n in patch_size], indexing="ij"))
  if elastic is not None:
    grid = grid + elastic
  grid = grid / scale
  rotated = jnp.tensordot(rotation_matrix(angles), grid, axes=1)
  return rotated + center.astype(jnp.float32).reshape(-1, *([1] * len(patch_size)))


def _inside(coords: jax.Array, shape: jax.Array, bounds: tuple[jax.Array, jax.Array] | None) -> jax.Array:
  """`[*patch]`: all coordinates within [0, shape - 1], or [low, high] of `bounds` (scipy's constant-mode test)."""
  low, high = bounds if bounds is not None else (jnp.zeros_like(shape), shape - 1)
  expand = lambda v: v.astype(jnp.float32).reshape(-1, *([1] * (coords.ndim - 1)))
  return jnp.all((coords >= expand(low) - _INSIDE_EPS) & (coords <= expand(high) + _INSIDE_EPS), axis=0)


def interpolate_linear(
  volume: jax.Array,
  lead: tuple,
  coords: jax.Array,
  shape: jax.Array,
  cval: jax.Array,
  bounds: tuple[jax.Array, jax.Array] | None = None,
) -> jax.Array:
  """Multilinear samples `[*patch, C]` of `volume[*lead]` `[*spatial, C]` at `coords` `[ndim, *patch]`.

  scipy's `map_coordinates(order=1, mode="constant")` per channel (what
  `jax.scipy.ndimage.map_coordinates` does, but gathering every channel at
  once, from a stacked volume (`lead` = integer indices of leading axes) and
  with scipy's rule that a point outside [0, shape - 1] is `cval` `[C]`).
  `shape` `[ndim]` is the extent held (cases may be padded to a common
  shape); `bounds` (low, high) `[ndim]`, if given, is the case's own extent
  inside a host crop (a crop may reach past the case, padded there).
  """
  ndim = coords.shape[0]
  limit = (shape - 1).reshape(-1, *([1] * ndim))
  clamped = jnp.clip(coords, 0.0, limit.astype(jnp.float32))
  lower = jnp.floor(clamped)
  frac = clamped - lower
  lower = lower.astype(jnp.int32)
  out = 0.0
  for corner in itertools.product((0, 1), repeat=ndim):
    index = tuple(jnp.minimum(lower[a] + corner[a], limit[a]) for a in range(ndim))
    weight = math.prod(frac[a] if corner[a] else 1.0 - frac[a] for a in range(ndim))
    out = out + weight[..., None] * volume[(*lead, *index)].astype(jnp.float32)
  return jnp.where(_inside(coords, shape, bounds)[..., None], out, cval.astype(jnp.float32))


def interpolate_nearest(
  volume: jax.Array,
  lead: tuple,
  coords: jax.Array,
  shape: jax.Array,
  cval=0,
  bounds: tuple[jax.Array, jax.Array] | None = None,
) -> jax.Array:
  """scipy's `map_coordinates(order=0, mode="constant")`: the voxel floor(c + 0.5), `cval` outside."""
  ndim = coords.shape[0]
  limit = (shape - 1).reshape(-1, *([1] * ndim))
  index = jnp.clip(jnp.floor(coords + 0.5).astype(jnp.int32), 0, limit)
  values = volume[(*lead, *(index[a] for a in range(ndim)))]
  return jnp.where(_inside(coords, shape, bounds), values, jnp.asarray(cval, values.dtype))


# ----------------------------------------------------------------------------------------------------------
# Intensity transforms (one example, `[*patch, C]`).


def gaussian_noise(image: jax.Array, std: jax.Array, key: jax.Array) -> jax.Array:
  return image + std * jax.random.normal(key, image.shape, jnp.float32)


def gaussian_blur(image: jax.Array, sigmas: jax.Array, channels: jax.Array, radius: int) -> jax.Array:
  """Blurs channel c (where `channels[c]`) with per-axis `sigmas[c]` `[ndim]` (scipy's reflect mode)."""
  blurred = jax.vmap(lambda x, s: gaussian_filter(x, s, radius), in_axes=(-1, 0), out_axes=-1)(image, sigmas)
  return jnp.where(channels, blurred, image)


def brightness(image: jax.Array, factors: jax.Array) -> jax.Array:
  return image * factors


def contrast(image: jax.Array, factors: jax.Array) -> jax.Array:
  """Each channel scaled about its mean by `factors[c]`, clipped to its old [min, max]."""
  axes = tuple(range(image.ndim - 1))
  mean = jnp.mean(image, axes)
  return jnp.clip((image - mean) * factors + mean, jnp.min(image, axes), jnp.max(image, axes))


def lowres_operator(n: int, zoom: jax.Array, order: int) -> jax.Array:
  """`[n, n]` matrix of `augment.resize(resize(x, m, order=0), n, order=order)` along one axis.

  m = max(1, round(n * zoom)) is traced, so the small axis is held in n slots
  (rows >= m unused). order 1: linear; order 3: scipy's cubic spline with its
  12-voxel edge padding and mirror-boundary prefilter (solved exactly).
  """
  m = jnp.maximum(1, jnp.round(n * zoom)).astype(jnp.int32)
  mf = m.astype(jnp.float32)
  j = jnp.arange(n)
  # Nearest-neighbour downsampling (grid mode, edge mode): small[j] = x[floor((j + 0.5) n / m - 0.5 + 0.5)]
  # (at an exact tie scipy's float64 product may land on either side; float32 here may differ there).
  source = jnp.clip(jnp.floor((j + 0.5) * (n / mf)), 0, n - 1).astype(jnp.int32)
  down = ((j[None, :] == source[:, None]) & (j[:, None] < m)).astype(jnp.float32)  # [small slot, n]
  up_coords = (jnp.arange(n, dtype=jnp.float32) + 0.5) * (mf / n) - 0.5  # in small voxels
  if order == 1:
    c = jnp.clip(up_coords, 0.0, mf - 1)
    low = jnp.floor(c)
    frac = c - low
    low = low.astype(jnp.int32)
    high = jnp.minimum(low + 1, m - 1)
    up = (j[None, :] == low[:, None]) * (1 - frac)[:, None] + (j[None, :] == high[:, None]) * frac[:, None]
    return up @ down
  size = n + 2 * _SPLINE_PAD
  p = jnp.arange(size)
  length = m + 2 * _SPLINE_PAD
  # Edge padding: padded[p] = small[clip(p - 12, 0, m - 1)] for p < m + 24.
  extend = ((j[None, :] == jnp.clip(p - _SPLINE_PAD, 0, m - 1)[:, None]) & (p[:, None] < length)).astype(jnp.float32)
  # Cubic B-spline prefilter with mirror boundaries on the first `length` slots, identity beyond.
  active = p < length
  diag = jnp.where(active, 4.0 / 6.0, 1.0)
  off = jnp.where(active[:-1] & active[1:], 1.0 / 6.0, 0.0)
  system = jnp.diag(diag) + jnp.diag(off, 1) + jnp.diag(off, -1)
  system = system.at[0, 1].set(2.0 / 6.0)
  last = length - 1
  system = system.at[last, last - 1].set(2.0 / 6.0)
  coefficients = jnp.linalg.solve(system, extend @ down)  # [size, n]
  t = up_coords + _SPLINE_PAD
  base = jnp.floor(t).astype(jnp.int32)
  weights = 0.0
  for offset in (-1, 0, 1, 2):
    k = base + offset
    d = jnp.abs(t - k)
    beta = jnp.where(d < 1, 2.0 / 3.0 - d**2 + d**3 / 2, jnp.where(d < 2, (2 - d) ** 3 / 6, 0.0))
    weights = weights + (p[None, :] == k[:, None]) * beta[:, None]
  return weights @ coefficients


def low_resolution(image: jax.Array, zooms: jax.Array, channels: jax.Array) -> jax.Array:
  """Channel c (where `channels[c]`): nearest downsampling by `zooms[c]`, then cubic (2D) / linear (3D) back."""
  shape = image.shape[:-1]
  order = 3 if len(shape) == 2 else 1

  def one_channel(x, zoom):
    for axis, n in enumerate(shape):
      x = jnp.moveaxis(jnp.tensordot(lowres_operator(n, zoom, order), x, axes=[[1], [axis]]), 0, axis)
    return x

  low = jax.vmap(one_channel, in_axes=(-1, 0), out_axes=-1)(image, zooms)
  return jnp.where(channels, low, image)


def gamma(image: jax.Array, gammas: jax.Array, *, invert: bool) -> jax.Array:
  """`augment.gamma`: per channel x -> ((x - min) / range) ** g * range + min, mean and std restored."""
  axes = tuple(range(image.ndim - 1))
  sign = -1.0 if invert else 1.0
  x = sign * image
  mean, std = jnp.mean(x, axes), jnp.std(x, axes)
  low = jnp.min(x, axes)
  span = jnp.max(x, axes) - low
  x = ((x - low) / jnp.maximum(span, augment_lib.EPSILON)) ** gammas * span + low
  x = (x - jnp.mean(x, axes)) / (jnp.std(x, axes) + 1e-8) * std + mean
  return sign * x


def mirror(image: jax.Array, label: jax.Array, flags: jax.Array, axes: Sequence[int]) -> tuple[jax.Array, jax.Array]:
  """Flips spatial axis `axes[i]` of image `[*patch, C]` and label `[*patch]` where `flags[i]`."""
  for flag, axis in zip(flags, axes):
    image = jnp.where(flag, jnp.flip(image, axis), image)
    label = jnp.where(flag, jnp.flip(label, axis), label)
  return image, label


# ----------------------------------------------------------------------------------------------------------
# Whole examples and batches.

Sampler = Callable[[jax.Array], tuple[jax.Array, jax.Array]]  # coords [ndim, *patch] -> (image, label)


def spatial_coordinates(
  params: dict[str, jax.Array], aug: Augmentation, center: jax.Array, patch_size: Sequence[int]
) -> jax.Array:
  """The one coordinate map of an example (rotation, zoom and elastic deformation where they happen)."""
  angles = jnp.where(params["rotate"], params["angles"], 0.0)
  scale = jnp.where(params["scale_on"], params["scale"], 1.0)
  elastic = None
  if aug.elastic_prob > 0:
    noise = jax.random.uniform(params["elastic_key"], (len(patch_size), *patch_size), jnp.float32, -1.0, 1.0)
    field = elastic_field(noise, params["elastic_alpha"], params["elastic_sigma"], kernel_radius(aug.elastic_sigma[1]))
    elastic = jnp.where(params["elastic_on"], field, 0.0)
  return coordinate_map(center, patch_size, angles, scale, elastic)


def intensity(image: jax.Array, params: dict[str, jax.Array], aug: Augmentation) -> jax.Array:
  """`augment.intensity` with drawn parameters; transforms of probability 0 are not even traced."""

  def maybe(prob, flag, fn):
    nonlocal image
    if prob > 0:
      image = jnp.where(flag, fn(image), image)

  maybe(aug.noise_prob, params["noise_on"], lambda x: gaussian_noise(x, params["noise_std"], params["noise_key"]))
  maybe(
    aug.blur_prob,
    params["blur_on"],
    lambda x: gaussian_blur(x, params["blur_sigma"], params["blur_channels"], kernel_radius(aug.blur_sigma[1])),
  )
  maybe(aug.brightness_prob, params["brightness_on"], lambda x: brightness(x, params["brightness"]))
  maybe(aug.contrast_prob, params["contrast_on"], lambda x: contrast(x, params["contrast"]))
  maybe(
    aug.lowres_prob, params["lowres_on"], lambda x: low_resolution(x, params["lowres_zoom"], params["lowres_channels"])
  )
  maybe(aug.inverted_gamma_prob, params["inverted_gamma_on"], lambda x: gamma(x, params["inverted_gamma"], invert=True))
  maybe(aug.gamma_prob, params["gamma_on"], lambda x: gamma(x, params["gamma"], invert=False))
  return image


def transform_example(
  key: jax.Array, aug: Augmentation, patch_size: Sequence[int], center: jax.Array, sampler: Sampler, num_channels: int
) -> tuple[jax.Array, jax.Array]:
  """One augmented example: image `[*patch, C]` float32, label `[*patch]` int32.

  `sampler(coords)` resamples the source (image linear, label nearest) at a
  coordinate map whose patch centre is `center`.
  """
  params = sample_params(key, aug, num_channels)
  image, label = sampler(spatial_coordinates(params, aug, center, patch_size))
  image = intensity(image, params, aug)
  image, label = mirror(image, label, params["mirror"], aug.flip_axes)
  return image, label.astype(jnp.int32)


def augment_batch(
  seed_key: jax.Array,
  step: jax.Array,
  batch: dict[str, jax.Array],
  aug: Augmentation,
  patch_size: Sequence[int],
  offset: int | jax.Array = 0,
) -> dict[str, jax.Array]:
  """Augments host crops (`crop_size` around each sample's centre) into training patches.

  Args:
    seed_key: `augment_key(config.seed)`.
    step: the train step (0-based) whose batch this is.
    batch: `image` `[B, *crop, C]`, `label` `[B, *crop]`, `pad_value` `[B, C]`
      (the case minimum, used outside the case) and, optionally, `low` /
      `high` `[B, ndim]` int32: the case's first / last voxel in crop
      coordinates (`sampling.training_crop`); without them the crop is the case.
    aug: resolved augmentation settings.
    patch_size: the output patch.
    offset: global index of row 0 (rows of one global batch split over hosts).

  Returns:
    `image` `[B, *patch, C]` float32 and `label` `[B, *patch]` int32.
  """
  images, labels, pads = batch["image"], batch["label"], batch["pad_value"]
  num, *crop, channels = images.shape
  center = jnp.asarray([n // 2 for n in crop], jnp.float32)
  shape = jnp.asarray(crop, jnp.int32)
  low = batch.get("low", jnp.zeros((num, len(crop)), jnp.int32))
  high = batch.get("high", jnp.broadcast_to(shape - 1, (num, len(crop))))

  def one(key, image, label, pad, low, high):
    def sampler(coords):
      return (
        interpolate_linear(image, (), coords, shape, pad, (low, high)),
        interpolate_nearest(label, (), coords, shape, 0, (low, high)),
      )

    return transform_example(key, aug, patch_size, center, sampler, channels)

  out_image, out_label = jax.vmap(one)(example_keys(seed_key, step, num, offset), images, labels, pads, low, high)
  return {"image": out_image, "label": out_label}


# ----------------------------------------------------------------------------------------------------------
# The host crop that holds every source voxel of a rotated / zoomed patch.


def _unit_field_std(sigma: float, ndim: int) -> float:
  """Std of uniform(-1, 1) noise after a Gaussian filter of `sigma` voxels (continuous approximation)."""
  if sigma <= 0:
    return 1.0
  return math.sqrt(1.0 / 3.0) * (2.0 * math.sqrt(math.pi) * sigma) ** (-ndim / 2)


def elastic_margin(aug: Augmentation) -> float:
  """Displacement [voxels] the crop allows for elastic deformation (0 when off).

  The field is bounded by 2 alpha; beyond 8 standard deviations of the
  smoothed noise (probability far below 1e-9 per voxel) it is cut: such a
  voxel would read the crop's edge padding.
  """
  if aug.elastic_prob <= 0 or aug.elastic_alpha[1] <= 0:
    return 0.0
  alpha = aug.elastic_alpha[1]
  return min(2.0 * alpha, 8.0 * alpha * _unit_field_std(aug.elastic_sigma[0], aug.ndim))


def _rotation_reach(half: np.ndarray, max_rad: float) -> np.ndarray:
  """Per axis, max over rotations within +-max_rad (per angle) of sum_b |R_ab| half_b, bounded from above."""
  radius = float(np.linalg.norm(half))
  if max_rad <= 0:
    return half
  if len(half) == 2:
    theta = np.linspace(0.0, min(max_rad, math.pi), 2001)
    c, s = np.abs(np.cos(theta)), np.abs(np.sin(theta))
    reach = np.array([np.max(c * half[0] + s * half[1]), np.max(s * half[0] + c * half[1])])
    step = theta[1] - theta[0]
    return np.minimum(reach + step * half.sum(), radius)
  grid = np.linspace(-min(max_rad, math.pi), min(max_rad, math.pi), 25)
  angles = np.stack(np.meshgrid(grid, grid, grid, indexing="ij"), -1).reshape(-1, 3)
  reach = np.zeros(3)
  for chunk in np.array_split(angles, 8):
    matrices = np.stack([augment_lib.rotation_matrix(a) for a in chunk])
    reach = np.maximum(reach, np.max(np.abs(matrices) @ half, axis=0))
  # Each entry of R moves by at most 1 per radian of each angle: bound the grid's gap.
  step = grid[1] - grid[0]
  return np.minimum(reach + 1.5 * step * half.sum(), radius)


def crop_size(aug: Augmentation, patch_size: Sequence[int]) -> tuple[int, ...]:
  """Host crop `[*crop]` centred like the patch, holding every voxel rotation, zoom and elastic may read.

  Linear interpolation reads one voxel past a coordinate, hence +2; the
  crop's centre voxel (crop // 2) is the sample's centre.
  """
  patch = np.asarray(patch_size, np.float64)
  half = np.maximum(patch // 2, patch - 1 - patch // 2) + elastic_margin(aug)
  if aug.scale_prob > 0:
    half = half / min(aug.scale_range[0], 1.0)
  if aug.rotate_prob > 0:
    half = _rotation_reach(half, math.radians(aug.rotate_max_deg))
  if aug.elastic_prob <= 0 and aug.scale_prob <= 0 and aug.rotate_prob <= 0:
    return tuple(int(n) for n in patch_size)
  return tuple(max(int(n), 2 * int(math.ceil(h)) + 3) for n, h in zip(patch_size, half))


def make_batch_fn(config) -> Callable[[dict[str, jax.Array], jax.Array], dict[str, jax.Array]]:
  """`batch_fn(crops, step) -> batch` for `steps.make_train_step`: host crops of the global batch, augmented."""
  patch = tuple(int(p) for p in config.data.patch_size)
  aug = Augmentation.from_config(config.data.augment, len(patch))
  seed = int(config.seed)

  def batch_fn(batch, step):
    return augment_batch(augment_key(seed), step, batch, aug, patch)

  return batch_fn

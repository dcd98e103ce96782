"""Sliding-window inference: Gaussian weighting, mirror test-time augmentation.

A model that sees fixed windows (e.g. 128^3 voxels) predicts a whole image by
tiling it with overlapping windows, following nnU-Net:

- Window starts along each axis follow nnU-Net's
  `compute_steps_for_sliding_window`: n = ceil((size - window) /
  (step_fraction * window)) + 1 windows, evenly spread from 0 to
  size - window and rounded (half to even).
- Each window's softmax probabilities are weighted by a Gaussian importance
  map (sigma = sigma_scale * window size along each axis, peak 1 at voxel
  window // 2, no weight below GAUSSIAN_FLOOR) and the weighted sums are
  divided by the summed weights.
- Mirror test-time augmentation averages the softmax over every combination
  of flips of the chosen window axes: flip the input, predict, flip back.
- An image smaller than the window along an axis is padded on both sides
  (nnU-Net's split: the extra voxel after) with `pad_value` and cropped back.
- A 2D model on a 3D volume [D, H, W, C] predicts every axial slice (axis 0)
  as a 2D image; windows of different slices share batches.

Memory: the host holds one float32 [*spatial, K] probability sum and one
float32 [*spatial] weight sum, i.e. (K + 1) * 4 bytes per voxel, besides the
input image (and its padded copy only where the image is smaller than the
window); windows are cut one batch at a time. A 512 x 512 x 300 CT (78.6 M
voxels) with K = 14 classes needs 4.7 GB for the sums plus 0.3 GB for a
float32 image. The device holds one batch of windows and its logits.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
import functools
import itertools
import math

import jax
import jax.numpy as jnp
import numpy as np

from jaxseg.errors import ConfigError
from jaxseg.errors import DataError

# Importance weights below this value are raised to it, so that none underflows
# to 0 in float32 (0 / 0 where only window edges cover a voxel). With the
# default sigma_scale = 1/8 the smallest weight is exp(-8 * ndim) >= 4e-11 and
# the floor changes nothing; it is a normal float32, as are its products with
# probabilities above 1e-8.
GAUSSIAN_FLOOR = 1e-30

PredictFn = Callable[[jax.Array], jax.Array]


def window_starts(size: int, window: int, step_fraction: float) -> list[int]:
  """Start indices of the windows along one axis (nnU-Net's formula).

  Args:
    size: image size along the axis, >= window.
    window: window size along the axis.
    step_fraction: target step as a fraction of the window, in (0, 1].

  Returns:
    Sorted start indices; the first is 0 and the last is size - window.
  """
  num_steps = int(math.ceil((size - window) / (window * step_fraction))) + 1
  if num_steps == 1:
    return [0]
  step = (size - window) / (num_steps - 1)
  return [int(np.round(step * i)) for i in range(num_steps)]


def gaussian_importance_map(window: Sequence[int],
                            sigma_scale: float = 1.0 / 8) -> np.ndarray:
  """Gaussian weights of one window, [*window] float32 with peak 1."""
  weights = np.ones((), np.float64)
  for axis, size in enumerate(window):
    offsets = (np.arange(size) - size // 2) / (sigma_scale * size)
    profile = np.exp(-0.5 * offsets**2)
    weights = np.multiply.outer(weights, profile) if axis else profile
  return np.maximum(weights, GAUSSIAN_FLOOR).astype(np.float32)


@functools.partial(jax.jit, static_argnames='flip_axes')
def _weighted_softmax(logits, weights, flip_axes):
  """softmax(logits [N, *window, K]), flipped back, times weights [*window]."""
  probs = jax.nn.softmax(logits.astype(jnp.float32), axis=-1)
  if flip_axes:
    probs = jnp.flip(probs, axis=flip_axes)
  return probs * weights[None, ..., None]


def _check_args(image, window, num_classes, step_fraction, sigma_scale,
                batch_size, mirror_axes):
  if image.ndim not in (3, 4):
    raise DataError(f'image must be [H, W, C] or [D, H, W, C], got shape '
                    f'{image.shape}')
  finite = np.isfinite(image)
  if not finite.all():
    raise DataError(f'image has {finite.size - np.count_nonzero(finite)} NaN '
                    f'or infinite voxels (first at index '
                    f'{tuple(int(i) for i in np.argwhere(~finite)[0])})')
  spatial = image.ndim - 1
  if len(window) not in (2, 3) or len(window) > spatial:
    raise ConfigError(f'window {tuple(window)} does not fit an image with '
                      f'{spatial} spatial axes')
  if min(window) < 1 or num_classes < 1 or batch_size < 1:
    raise ConfigError(f'window {tuple(window)}, num_classes {num_classes} and '
                      f'batch_size {batch_size} must be positive')
  if not 0 < step_fraction <= 1:
    raise ConfigError(f'step_fraction must be in (0, 1], got {step_fraction}')
  if not sigma_scale > 0:
    raise ConfigError(f'sigma_scale must be > 0, got {sigma_scale}')
  if (len(set(mirror_axes)) != len(mirror_axes) or
      any(a not in range(len(window)) for a in mirror_axes)):
    raise ConfigError(f'mirror_axes {tuple(mirror_axes)} must be distinct '
                      f'window axes in 0..{len(window) - 1}')


def sliding_window_predict(
    predict_fn: PredictFn,
    image: np.ndarray,
    *,
    window: Sequence[int],
    num_classes: int,
    step_fraction: float = 0.5,
    sigma_scale: float = 1.0 / 8,
    batch_size: int = 2,
    mirror_axes: Sequence[int] = (),
    pad_value: float = 0.0,
    dtype=np.float32,
) -> np.ndarray:
  """Softmax probabilities of a whole image from a windowed model.

  Args:
    predict_fn: maps a batch [batch_size, *window, C] to logits
      [batch_size, *window, K]; typically jitted with the parameters closed
      over. It is always called with the same batch shape (the last batch is
      padded with zeros), so it compiles once.
    image: [H, W, C] or [D, H, W, C] intensities (already normalised).
    window: the model's window, (h, w) for a 2D model or (d, h, w) for a 3D
      model; a 2D model on a [D, H, W, C] volume predicts slice by slice.
    num_classes: K, the number of logits per voxel.
    step_fraction: target step between windows as a fraction of the window.
    sigma_scale: Gaussian sigma as a fraction of the window size.
    batch_size: windows per predict_fn call.
    mirror_axes: window axes to mirror for test-time augmentation ((0, 1) are
      H, W of a 2D model; (0, 1, 2) are D, H, W of a 3D model); 2**len calls
      per batch.
    pad_value: intensity used where the image is smaller than the window.
    dtype: dtype of the batches given to predict_fn.

  Returns:
    [*spatial, K] float32 probabilities (summing to 1 over K).

  Raises:
    DataError: the image is not [H, W, C] or [D, H, W, C], or has NaN or
      infinite voxels.
    ConfigError: bad window or settings, or logits of the wrong shape.
  """
  image = np.asarray(image)
  window = tuple(int(w) for w in window)
  mirror_axes = tuple(int(a) for a in mirror_axes)
  _check_args(image, window, num_classes, step_fraction, sigma_scale,
              batch_size, mirror_axes)
  spatial = image.shape[:-1]
  by_slice = len(window) < len(spatial)
  full_window = (1,) + window if by_slice else window

  pads = [(max(w - s, 0) // 2, max(w - s, 0) - max(w - s, 0) // 2)
          for s, w in zip(spatial, full_window)]
  if any(sum(p) for p in pads):
    image = np.pad(image, pads + [(0, 0)], constant_values=pad_value)
  grid = image.shape[:-1]
  starts = [window_starts(s, w, step_fraction)
            for s, w in zip(grid, full_window)]
  if by_slice:
    starts[0] = list(range(grid[0]))
  coords = list(itertools.product(*starts))

  importance = gaussian_importance_map(window, sigma_scale)
  flips = [combo for r in range(len(mirror_axes) + 1)
           for combo in itertools.combinations(mirror_axes, r)]
  device_weights = jnp.asarray(importance / len(flips))
  prob_sum = np.zeros(grid + (num_classes,), np.float32)
  weight_sum = np.zeros(grid, np.float32)
  window_weight = importance.reshape(full_window)
  expected = (batch_size,) + window + (num_classes,)

  def predict(batch):
    total = None
    for axes in flips:
      batch_axes = tuple(a + 1 for a in axes)
      logits = predict_fn(np.flip(batch, batch_axes) if axes else batch)
      if tuple(logits.shape) != expected:
        raise ConfigError(f'predict_fn returned logits of shape '
                          f'{tuple(logits.shape)}, expected {expected}')
      probs = _weighted_softmax(logits, device_weights, batch_axes)
      total = probs if total is None else total + probs
    return total

  def accumulate(batch_coords, probs):
    probs = np.asarray(probs)
    for i, start in enumerate(batch_coords):
      region = tuple(slice(s, s + w) for s, w in zip(start, full_window))
      prob_sum[region] += probs[i].reshape(full_window + (num_classes,))
      weight_sum[region] += window_weight

  pending = None
  for first in range(0, len(coords), batch_size):
    batch_coords = coords[first:first + batch_size]
    batch = np.zeros((batch_size,) + window + image.shape[-1:], dtype)
    for i, start in enumerate(batch_coords):
      region = tuple(slice(s, s + w) for s, w in zip(start, full_window))
      batch[i] = image[region].reshape(window + image.shape[-1:])
    # Dispatch this batch before copying back the previous one, so that the
    # host accumulates while the device computes.
    current = (batch_coords, predict(batch))
    if pending is not None:
      accumulate(*pending)
    pending = current
  accumulate(*pending)

  prob_sum /= weight_sum[..., None]
  crop = tuple(slice(lo, lo + s) for (lo, _), s in zip(pads, spatial))
  return prob_sum[crop]

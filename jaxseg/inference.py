"""Sliding-window inference: Gaussian weighting, mirror test-time augmentation.

`predict_probabilities` runs it on a preprocessed case with the config's
window settings, and `to_original_labels` maps the result back to the raw
file's voxel grid; evaluation, validation and prediction share both.

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

Two paths, same results (equal up to float rounding of fused kernels):

- Device path, for a `DevicePredictor` (a jittable `apply(variables,
  images)` and its variables): the image is copied to the device once;
  a few small jitted programs cut each batch of windows, run the model with
  the flips, softmax and Gaussian weights, and add the weighted
  probabilities into an on-device float32 accumulator (dynamic-update-slice
  adds, in the same window order as the host path); only the final
  probabilities are copied back. With a mesh of several devices each window
  batch is split over its data axis. Chosen on accelerators when the sums
  fit the device (`device_bytes_needed` below half of the free device
  memory), unless the predictor's `placement` says "host" or "device".
- Host path, for any `predict_fn` returning logits (numpy or jax): windows
  are cut on the host, logits come back per batch and are stitched there.

Memory: the path that stitches holds one float32 [*spatial, K] probability
sum and one float32 [*spatial] weight sum, i.e. (K + 1) * 4 bytes per voxel,
besides the input image (and its padded copy only where the image is smaller
than the window); windows are cut one batch at a time. A 512 x 512 x 300 CT
(78.6 M voxels) with K = 14 classes needs 4.7 GB for the sums plus 0.3 GB for
a float32 image. On the host path the device holds one batch of windows and
its logits.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
import dataclasses
import functools
import itertools
import math
import os
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from jaxseg import parallel
from jaxseg.data import preprocess
from jaxseg.errors import ConfigError
from jaxseg.errors import DataError

# Importance weights below this value are raised to it, so that none underflows
# to 0 in float32 (0 / 0 where only window edges cover a voxel). With the
# default sigma_scale = 1/8 the smallest weight is exp(-8 * ndim) >= 4e-11 and
# the floor changes nothing; it is a normal float32, as are its products with
# probabilities above 1e-8.
GAUSSIAN_FLOOR = 1e-30

PredictFn = Callable[[jax.Array], jax.Array]
PLACEMENTS = ("auto", "device", "host")


@dataclasses.dataclass(frozen=True, eq=False)
class DevicePredictor:
  """A model the sliding window can run inside its own jitted programs.

  Attributes:
    apply: pure, jittable `apply(*variables, images [N, *window, C]) ->
      logits [N, *window, K]`, e.g. `steps.make_predict_fn(model)` (or its
      jitted form) with `variables = (params, batch_stats)`; hashable (a
      function), and the same object from call to call so that its
      programs are compiled once.
    variables: tuple of pytrees of arrays, `apply`'s leading arguments.
    placement: "auto" (device path on GPU/TPU when the sums fit the device,
      see `device_bytes_needed`; host path on the CPU backend), "device" or
      "host" (`config.eval.placement`).
    mesh: optional mesh; with more than one device on its batch axes, each
      window batch is split over them (`parallel.batch_sharding`) when the
      batch size divides evenly, else it runs replicated.

  Calling it, `predictor(images)`, returns numpy logits, so it also serves
  as a plain `predict_fn` (the host path).
  """

  apply: Callable[..., jax.Array]
  variables: tuple[Any, ...]
  placement: str = "auto"
  mesh: jax.sharding.Mesh | None = None

  def __post_init__(self):
    if not isinstance(self.variables, tuple):
      raise TypeError("DevicePredictor.variables must be a tuple of apply's leading arguments")
    if self.placement not in PLACEMENTS:
      raise ConfigError(f"config.eval.placement={self.placement!r} is not one of {', '.join(PLACEMENTS)}")

  def __call__(self, images) -> np.ndarray:
    return np.asarray(_jitted_apply(self.apply)(*self.variables, images))


@functools.lru_cache(maxsize=None)
def _jitted_apply(apply):
  return jax.jit(apply)


def device_bytes_needed(
  spatial: Sequence[int], channels: int, num_classes: int, window: Sequence[int], batch_size: int
) -> int:
  """Device bytes of the device path's own arrays (not the model's).

  The image as float32, the probability and weight sums ((K + 1) x 4 bytes
  per voxel), the normalised result, and a few batches of windows and
  probabilities.
  """
  voxels = int(np.prod(spatial))
  window_voxels = int(np.prod(window)) * batch_size
  return 4 * (voxels * (channels + 2 * num_classes + 1) + 4 * window_voxels * (channels + num_classes))


def device_free_bytes(device: jax.Device | None = None) -> int | None:
  """Free memory of `device` (default: the first local one), or None.

  From `memory_stats()` (GPU, TPU); on the CPU backend, the host's available
  physical memory.
  """
  device = device or jax.local_devices()[0]
  stats = None
  try:
    stats = device.memory_stats()
  except Exception:  # pylint: disable=broad-except
    pass
  if stats and "bytes_limit" in stats:
    return int(stats["bytes_limit"]) - int(stats.get("bytes_in_use", 0))
  if device.platform == "cpu":
    try:
      return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError):
      return None
  return None


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


def num_forward_calls(
  spatial: Sequence[int], window: Sequence[int], step_fraction: float, batch_size: int, num_mirror_axes: int = 0
) -> int:
  """Model calls of one sliding_window_predict (batches x mirror flips).

  `spatial` is the image's spatial shape; a 2D window on a 3D volume counts
  every slice.
  """
  spatial, window = tuple(spatial), tuple(window)
  counts = [
    len(window_starts(max(s, w), w, step_fraction)) for s, w in zip(spatial[len(spatial) - len(window) :], window)
  ]
  windows = int(np.prod(counts)) * int(np.prod(spatial[: len(spatial) - len(window)]))
  return -(-windows // batch_size) * 2**num_mirror_axes


def gaussian_importance_map(window: Sequence[int], sigma_scale: float = 1.0 / 8) -> np.ndarray:
  """Gaussian weights of one window, [*window] float32 with peak 1."""
  weights = np.ones((), np.float64)
  for axis, size in enumerate(window):
    offsets = (np.arange(size) - size // 2) / (sigma_scale * size)
    profile = np.exp(-0.5 * offsets**2)
    weights = np.multiply.outer(weights, profile) if axis else profile
  return np.maximum(weights, GAUSSIAN_FLOOR).astype(np.float32)


@functools.partial(jax.jit, static_argnames="flip_axes")
def _weighted_softmax(logits, weights, flip_axes):
  """softmax(logits [N, *window, K]), flipped back, times weights [*window]."""
  probs = jax.nn.softmax(logits.astype(jnp.float32), axis=-1)
  if flip_axes:
    probs = jnp.flip(probs, axis=flip_axes)
  return probs * weights[None, ..., None]


def _check_args(image, window, num_classes, step_fraction, sigma_scale, batch_size, mirror_axes):
  if image.ndim not in (3, 4):
    raise DataError(f"image must be [H, W, C] or [D, H, W, C], got shape {image.shape}")
  finite = np.isfinite(image)
  if not finite.all():
    raise DataError(
      f"image has {finite.size - np.count_nonzero(finite)} NaN "
      f"or infinite voxels (first at index "
      f"{tuple(int(i) for i in np.argwhere(~finite)[0])})"
    )
  spatial = image.ndim - 1
  if len(window) not in (2, 3) or len(window) > spatial:
    raise ConfigError(f"window {tuple(window)} does not fit an image with {spatial} spatial axes")
  if min(window) < 1 or num_classes < 1 or batch_size < 1:
    raise ConfigError(f"window {tuple(window)}, num_classes {num_classes} and batch_size {batch_size} must be positive")
  if not 0 < step_fraction <= 1:
    raise ConfigError(f"step_fraction must be in (0, 1], got {step_fraction}")
  if not sigma_scale > 0:
    raise ConfigError(f"sigma_scale must be > 0, got {sigma_scale}")
  if len(set(mirror_axes)) != len(mirror_axes) or any(a not in range(len(window)) for a in mirror_axes):
    raise ConfigError(f"mirror_axes {tuple(mirror_axes)} must be distinct window axes in 0..{len(window) - 1}")


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
  _check_args(image, window, num_classes, step_fraction, sigma_scale, batch_size, mirror_axes)
  spatial = image.shape[:-1]
  by_slice = len(window) < len(spatial)
  full_window = (1,) + window if by_slice else window

  pads = [(max(w - s, 0) // 2, max(w - s, 0) - max(w - s, 0) // 2) for s, w in zip(spatial, full_window)]
  if any(sum(p) for p in pads):
    image = np.pad(image, pads + [(0, 0)], constant_values=pad_value)
  grid = image.shape[:-1]
  starts = [window_starts(s, w, step_fraction) for s, w in zip(grid, full_window)]
  if by_slice:
    starts[0] = list(range(grid[0]))
  coords = list(itertools.product(*starts))

  importance = gaussian_importance_map(window, sigma_scale)
  flips = [combo for r in range(len(mirror_axes) + 1) for combo in itertools.combinations(mirror_axes, r)]
  crop = tuple(slice(lo, lo + s) for (lo, _), s in zip(pads, spatial))
  if _use_device(predict_fn, grid, image.shape[-1], num_classes, window, batch_size):
    return _device_predict(
      predict_fn, image, coords, full_window, window, num_classes, batch_size, importance, tuple(flips), crop, dtype
    )
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
        raise ConfigError(f"predict_fn returned logits of shape {tuple(logits.shape)}, expected {expected}")
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
    batch_coords = coords[first : first + batch_size]
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
  return prob_sum[crop]


def predict_probabilities(
  predict: PredictFn, image: np.ndarray, config: ml_collections.ConfigDict, num_classes: int
) -> np.ndarray:
  """Softmax `[Z, Y, X, K]` of a preprocessed image `[Z, Y, X, C]`.

  `sliding_window_predict` with the window `config.data.patch_size` and the
  `config.eval` settings (step_fraction, batch_size, mirror_axes). Z = 1 for
  2D data; a 2D window on a volume with Z > 1 predicts slice by slice.
  """
  window = tuple(config.data.patch_size)
  settings = dict(
    window=window,
    num_classes=num_classes,
    step_fraction=config.eval.step_fraction,
    batch_size=config.eval.batch_size,
    mirror_axes=tuple(config.eval.mirror_axes),
  )
  if len(window) == 3 or image.shape[0] > 1:
    return sliding_window_predict(predict, image, **settings)
  return sliding_window_predict(predict, image[0], **settings)[None]


def label_dtype(num_classes: int) -> type:
  """The smallest unsigned integer type holding labels 0 .. num_classes - 1."""
  return np.uint8 if num_classes <= 256 else np.uint16


def to_original_labels(
  probabilities: np.ndarray, meta: Mapping[str, Any], num_classes: int, resample: str, keep_probabilities: bool = False
) -> tuple[np.ndarray, np.ndarray | None]:
  """Labels `[X, Y, Z]` on the raw file's grid from softmax `[Z, Y, X, K]`.

  `probabilities` are on the preprocessed grid of a case whose `meta` is
  `jaxseg.data.preprocess`'s record of its cropping, resampling and
  orientation. `resample`: 'probabilities' (resample every class's
  probability, then argmax; nnU-Net) or 'labels' (argmax, then
  nearest-neighbour resampling).

  Returns:
    (labels of `label_dtype(num_classes)`, the restored float32
    probabilities `[X, Y, Z, K]` when `keep_probabilities`, else None).
  """
  dtype = label_dtype(num_classes)
  if resample == "labels":
    labels = preprocess.restore_to_original(probabilities.argmax(-1).astype(dtype), meta, is_label=True)
    restored = preprocess.restore_to_original(probabilities, meta, is_label=False) if keep_probabilities else None
    return labels, restored
  restored = preprocess.restore_to_original(probabilities, meta, is_label=False)
  labels = restored.argmax(-1).astype(dtype)
  return labels, (restored if keep_probabilities else None)


def _use_device(predict_fn, grid, channels, num_classes, window, batch_size) -> bool:
  """Whether sliding_window_predict takes the device path (module doc)."""
  if not isinstance(predict_fn, DevicePredictor):
    return False
  if predict_fn.placement != "auto":
    return predict_fn.placement == "device"
  if jax.default_backend() == "cpu":
    # Host and device memory are the same there, and the measured overhead
    # ratios of the two paths are within noise (README, Performance).
    return False
  free = device_free_bytes()
  needed = device_bytes_needed(grid, channels, num_classes, window, batch_size)
  return free is not None and needed <= free // 2


def _device_predict(
  predictor, image, coords, full_window, window, num_classes, batch_size, importance, flips, crop, dtype
):
  """The device path of sliding_window_predict: see the module docstring."""
  mesh = predictor.mesh
  if mesh is not None and (parallel.data_parallel_size(mesh) == 1 or batch_size % parallel.data_parallel_size(mesh)):
    mesh = None
  replicated = jax.sharding.SingleDeviceSharding(jax.local_devices()[0]) if mesh is None else parallel.replicated(mesh)
  batches = parallel.batch_sharding(mesh) if mesh is not None else replicated
  # Host (numpy) variables would otherwise be copied to the device per batch.
  variables = jax.device_put(predictor.variables, replicated)
  device_image = jax.device_put(np.asarray(image, dtype), replicated)
  weights = jax.device_put(importance / len(flips), replicated)
  window_weight = jax.device_put(importance.reshape(full_window), replicated)
  grid = image.shape[:-1]
  prob_sum = jax.device_put(np.zeros(grid + (num_classes,), np.float32), replicated)
  weight_sum = jax.device_put(np.zeros(grid, np.float32), replicated)
  cut = _cut_program(full_window, window, batches)
  forward = _forward_program(predictor.apply, flips)
  expected = (batch_size,) + window + (num_classes,)
  checked = False
  for first in range(0, len(coords), batch_size):
    batch_coords = coords[first : first + batch_size]
    valid = np.zeros(batch_size, np.float32)
    valid[: len(batch_coords)] = 1
    # Padding windows repeat the first start; their weight is 0.
    starts = np.asarray(batch_coords + [batch_coords[0]] * (batch_size - len(batch_coords)), np.int32)
    probs = forward(variables, cut(device_image, starts), weights)
    if not checked:
      if tuple(probs.shape) != expected:
        raise ConfigError(f"predict_fn returned logits of shape {tuple(probs.shape)}, expected {expected}")
      checked = True
    prob_sum, weight_sum = _accumulate(prob_sum, weight_sum, probs, starts, valid, window_weight)
  bounds = tuple((c.start, c.stop) for c in crop)
  return np.asarray(_normalize(prob_sum, weight_sum, bounds))


@functools.lru_cache(maxsize=64)
def _cut_program(full_window, window, sharding):
  """jit: (image [*grid, C], starts [N, ndim]) -> windows [N, *window, C]."""

  def cut(image, starts):
    def one(start):
      return jax.lax.dynamic_slice(image, (*start, 0), full_window + image.shape[-1:])

    windows = jax.vmap(one)(starts)
    return windows.reshape((starts.shape[0],) + window + image.shape[-1:])

  return jax.jit(cut, out_shardings=sharding)


@functools.lru_cache(maxsize=64)
def _forward_program(apply, flips):
  """jit: summed weighted softmax over the flips of one window batch."""

  def forward(variables, windows, weights):
    total = None
    for axes in flips:
      batch_axes = tuple(a + 1 for a in axes)
      logits = apply(*variables, jnp.flip(windows, batch_axes) if axes else windows)
      probs = _weighted_softmax(logits, weights, batch_axes)
      total = probs if total is None else total + probs
    return total

  return jax.jit(forward)


@functools.partial(jax.jit, donate_argnums=(0, 1))
def _accumulate(prob_sum, weight_sum, probs, starts, valid, window_weight):
  """Adds each window's probabilities and weights, in order, into the sums."""
  full_window = window_weight.shape
  for i in range(probs.shape[0]):
    start = tuple(starts[i])
    region = full_window + prob_sum.shape[-1:]
    current = jax.lax.dynamic_slice(prob_sum, (*start, 0), region)
    prob_sum = jax.lax.dynamic_update_slice(prob_sum, current + valid[i] * probs[i].reshape(region), (*start, 0))
    current = jax.lax.dynamic_slice(weight_sum, start, full_window)
    weight_sum = jax.lax.dynamic_update_slice(weight_sum, current + valid[i] * window_weight, start)
  return prob_sum, weight_sum


@functools.partial(jax.jit, static_argnames="bounds")
def _normalize(prob_sum, weight_sum, bounds):
  """prob_sum / weight_sum, cropped to `bounds` ((start, stop) per axis)."""
  return (prob_sum / weight_sum[..., None])[tuple(slice(lo, hi) for lo, hi in bounds)]

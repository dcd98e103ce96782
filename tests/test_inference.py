"""Tests for jaxseg.inference (sliding-window prediction)."""

import itertools
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxseg import inference
from jaxseg.errors import ConfigError
from jaxseg.errors import DataError


def _softmax(logits):
  logits = np.asarray(logits, np.float64)
  e = np.exp(logits - logits.max(-1, keepdims=True))
  return e / e.sum(-1, keepdims=True)


def _sigmoid(x):
  return 1 / (1 + math.exp(-x))


def pointwise_logits(x):
  """Logits that depend on each voxel alone: [N, *w, C] -> [N, *w, 3]."""
  a, b = x[..., 0], x[..., -1]
  return jnp.stack([2 * a, a * b - 1, -a], axis=-1)


def window_mean_logits(x):
  """Logits that depend on the whole window: its mean of channel 0."""
  mean = jnp.mean(x[..., 0], axis=tuple(range(1, x.ndim - 1)), keepdims=True)
  mean = jnp.broadcast_to(mean, x.shape[:-1])
  return jnp.stack([mean, jnp.zeros_like(mean)], axis=-1)


def _reference_predict(fn, image, window, step_fraction, mirror_axes=()):
  """Float64 window-by-window loop for images at least as large as window."""
  spatial = image.shape[:-1]
  starts = [inference.window_starts(s, w, step_fraction) for s, w in zip(spatial, window)]
  weight = inference.gaussian_importance_map(window).astype(np.float64)
  flips = [c for r in range(len(mirror_axes) + 1) for c in itertools.combinations(mirror_axes, r)]
  prob_sum, weight_sum = 0.0, np.zeros(spatial)
  for start in itertools.product(*starts):
    region = tuple(slice(s, s + w) for s, w in zip(start, window))
    crop = image[region]
    mean_probs = sum(np.flip(_softmax(fn(np.flip(crop, axes)[None])[0]), axes) for axes in flips) / len(flips)
    probs = np.zeros(spatial + (2,))
    probs[region] = mean_probs * weight[..., None]
    prob_sum = prob_sum + probs
    weight_sum[region] += weight
  return prob_sum / weight_sum[..., None]


@pytest.mark.parametrize(
  "size,window,step,want",
  [
    (110, 64, 0.5, [0, 23, 46]),  # The example in nnU-Net's source.
    (10, 4, 0.5, [0, 2, 4, 6]),
    (11, 4, 0.5, [0, 2, 4, 5, 7]),  # Steps 1.75: 3.5 rounds to 4 (even).
    (64, 64, 0.5, [0]),
    (65, 64, 0.5, [0, 1]),
    (100, 32, 1.0, [0, 23, 45, 68]),
    (20, 8, 0.25, [0, 2, 4, 6, 8, 10, 12]),
  ],
)
def test_window_starts_follow_nnunet(size, window, step, want):
  assert inference.window_starts(size, window, step) == want


def test_gaussian_importance_map():
  weights = inference.gaussian_importance_map((16, 8), sigma_scale=0.25)
  assert weights.shape == (16, 8) and weights.dtype == np.float32
  assert weights.max() == weights[8, 4] == 1.0
  # sigma = 4 voxels along axis 0, 2 voxels along axis 1.
  np.testing.assert_allclose(weights[12, 4], math.exp(-0.5), rtol=1e-6)
  np.testing.assert_allclose(weights[8, 6], math.exp(-0.5), rtol=1e-6)
  np.testing.assert_allclose(weights[12, 6], math.exp(-1.0), rtol=1e-6)
  tiny = inference.gaussian_importance_map((16,), sigma_scale=0.01)
  assert tiny.min() == np.float32(inference.GAUSSIAN_FLOOR)


@pytest.mark.parametrize(
  "shape,window",
  [
    ((3, 5, 2), (4, 8)),  # Smaller than the window: padded.
    ((8, 8, 2), (8, 8)),  # Equal to the window.
    ((11, 13, 2), (4, 6)),  # Not a multiple of the window.
    ((5, 7, 9, 2), (4, 4, 4)),  # 3D model.
    ((3, 9, 5, 2), (4, 4, 4)),  # 3D, padded along two axes.
  ],
)
def test_pointwise_model_is_stitched_exactly(shape, window):
  rng = np.random.default_rng(0)
  image = rng.normal(size=shape).astype(np.float32)
  probs = inference.sliding_window_predict(pointwise_logits, image, window=window, num_classes=3, batch_size=3)
  assert probs.shape == shape[:-1] + (3,) and probs.dtype == np.float32
  np.testing.assert_allclose(probs, _softmax(pointwise_logits(image)), atol=2e-6)


def test_gaussian_weighting_by_hand():
  # Windows of 4 x 4 on a 4 x 6 image start at columns 0 and 2; channel 0
  # holds the column index, so the window means are 1.5 and 3.5 and the
  # foreground probability of a window is sigmoid(mean).
  image = np.broadcast_to(np.arange(6.0), (4, 6))[..., None]
  probs = inference.sliding_window_predict(window_mean_logits, image, window=(4, 4), num_classes=2)[..., 0]
  first, second = _sigmoid(1.5), _sigmoid(3.5)
  # Gaussian profile of a 4-voxel window: sigma 0.5, peak at index 2:
  # (e^-8, e^-2, 1, e^-2). Column 2 is index 2 of the first window and
  # index 0 of the second; column 3 is index 3 and index 1.
  want = [first, first, (first + math.exp(-8) * second) / (1 + math.exp(-8)), (first + second) / 2, second, second]
  np.testing.assert_allclose(probs, np.broadcast_to(want, (4, 6)), rtol=1e-6)


@pytest.mark.parametrize(
  "shape,window,step",
  [
    ((9, 11, 1), (4, 6), 0.5),
    ((7, 6, 9, 1), (4, 4, 5), 0.5),
    ((10, 10, 1), (4, 4), 0.25),
  ],
)
def test_window_dependent_model_matches_float64_loop(shape, window, step):
  rng = np.random.default_rng(1)
  image = rng.normal(size=shape).astype(np.float32)
  probs = inference.sliding_window_predict(
    window_mean_logits, image, window=window, num_classes=2, step_fraction=step, batch_size=4
  )
  want = _reference_predict(window_mean_logits, image, window, step)
  np.testing.assert_allclose(probs, want, atol=1e-6)


def test_mirroring_a_position_dependent_model_matches_float64_loop():
  # Logits depend on the window mean and on the position in the window, so
  # mirrored predictions differ and the weights must apply after flipping
  # back (the Gaussian peak of an even window is off centre).
  ramp = np.linspace(-2.0, 2.0, 6)[None, :]

  def fn(x):
    mean = window_mean_logits(x)
    return mean.at[..., 1].add(jnp.asarray(ramp, jnp.float32))

  rng = np.random.default_rng(5)
  image = rng.normal(size=(7, 11, 1)).astype(np.float32)
  probs = inference.sliding_window_predict(fn, image, window=(4, 6), num_classes=2, batch_size=3, mirror_axes=(0, 1))
  want = _reference_predict(fn, image, (4, 6), 0.5, mirror_axes=(0, 1))
  np.testing.assert_allclose(probs, want, atol=1e-6)


def test_2d_model_on_3d_volume_predicts_each_slice():
  rng = np.random.default_rng(2)
  volume = rng.normal(size=(3, 6, 7, 2)).astype(np.float32)
  shapes = []

  def fn(x):
    shapes.append(x.shape)
    return window_mean_logits(x)

  probs = inference.sliding_window_predict(fn, volume, window=(4, 4), num_classes=2, batch_size=5)
  assert set(shapes) == {(5, 4, 4, 2)}
  # 3 slices x 2 x 3 windows = 18 windows in ceil(18 / 5) = 4 calls.
  assert len(shapes) == 4
  for d in range(3):
    want = inference.sliding_window_predict(window_mean_logits, volume[d], window=(4, 4), num_classes=2)
    np.testing.assert_allclose(probs[d], want, atol=1e-6)


def test_mirroring_an_equivariant_model_changes_nothing():
  rng = np.random.default_rng(3)
  image = rng.normal(size=(9, 10, 2)).astype(np.float32)
  plain = inference.sliding_window_predict(pointwise_logits, image, window=(4, 4), num_classes=3)
  mirrored = inference.sliding_window_predict(pointwise_logits, image, window=(4, 4), num_classes=3, mirror_axes=(0, 1))
  np.testing.assert_allclose(mirrored, plain, atol=1e-6)


def test_mirroring_averages_flipped_predictions():
  # Logits depend on the position inside the window, not on the input: the
  # prediction flipped back differs, and TTA averages the flips.
  rows, cols = np.meshgrid(np.arange(4.0), np.arange(5.0), indexing="ij")
  ramp = 0.5 * rows + cols

  def fn(x):
    r = jnp.broadcast_to(jnp.asarray(ramp, jnp.float32), x.shape[:-1])
    return jnp.stack([r, jnp.zeros_like(r)], axis=-1)

  image = np.zeros((4, 5, 1), np.float32)
  sig = 1 / (1 + np.exp(-ramp))
  one_axis = inference.sliding_window_predict(fn, image, window=(4, 5), num_classes=2, mirror_axes=(1,))[..., 0]
  np.testing.assert_allclose(one_axis, (sig + sig[:, ::-1]) / 2, rtol=1e-6)
  both = inference.sliding_window_predict(fn, image, window=(4, 5), num_classes=2, mirror_axes=(0, 1))[..., 0]
  np.testing.assert_allclose(both, (sig + sig[::-1] + sig[:, ::-1] + sig[::-1, ::-1]) / 4, rtol=1e-6)


def test_jitted_model_sees_one_batch_shape_and_compiles_once():
  traces = []

  @jax.jit
  def fn(x):
    traces.append(x.shape)
    return pointwise_logits(x)

  calls = []

  def counted(x):
    calls.append(x.shape)
    return fn(x)

  image = np.ones((10, 11, 2), np.float32)
  inference.sliding_window_predict(counted, image, window=(4, 4), num_classes=3, batch_size=3, mirror_axes=(0,))
  # 4 x 5 = 20 windows -> 7 batches (the last padded), 2 flips each.
  assert calls == [(3, 4, 4, 2)] * 14
  assert traces == [(3, 4, 4, 2)]


@pytest.mark.parametrize(
  "image_shape,kwargs,error,message",
  [
    ((6, 6), {}, DataError, r"\[H, W, C\]"),
    ((6, 6, 1), {"window": (4, 4, 4)}, ConfigError, "does not fit"),
    ((6, 6, 1), {"mirror_axes": (2,)}, ConfigError, "mirror_axes"),
    ((6, 6, 1), {"step_fraction": 0.0}, ConfigError, "step_fraction"),
    ((6, 6, 1), {"num_classes": 2}, ConfigError, "expected"),
  ],
)
def test_bad_arguments_raise(image_shape, kwargs, error, message):
  args = {"window": (4, 4), "num_classes": 3, **kwargs}
  with pytest.raises(error, match=message):
    inference.sliding_window_predict(pointwise_logits, np.zeros(image_shape, np.float32), **args)


def test_non_finite_image_raises():
  image = np.zeros((6, 7, 1), np.float32)
  image[2, 3, 0] = np.nan
  image[5, 0, 0] = -np.inf
  with pytest.raises(
    DataError,
    match=r"2 NaN or infinite voxels \(first at "
    r"index \(2, 3, 0\)\)",
  ):
    inference.sliding_window_predict(pointwise_logits, image, window=(4, 4), num_classes=3)


# The device path: accumulation in jitted programs on the device.


def _scaled_pointwise(scale, x):
  return pointwise_logits(x) * scale


def _both_paths(image, **kwargs):
  results = []
  for placement in ("host", "device"):
    predictor = inference.DevicePredictor(_scaled_pointwise, (jnp.float32(1.5),), placement=placement)
    results.append(inference.sliding_window_predict(predictor, image, num_classes=3, **kwargs))
  return results


@pytest.mark.parametrize(
  "shape,kwargs",
  [
    ((20, 23, 2), dict(window=(8, 8), batch_size=3)),
    ((5, 20, 23, 2), dict(window=(8, 8), batch_size=4, mirror_axes=(0, 1))),
    ((9, 13, 12, 1), dict(window=(4, 6, 8), batch_size=3, mirror_axes=(0, 2), step_fraction=0.3)),
    ((3, 5, 2), dict(window=(8, 8), batch_size=2)),
  ],
)
def test_device_path_equals_host_path(shape, kwargs):
  image = np.random.default_rng(0).normal(size=shape).astype(np.float32)
  host, device = _both_paths(image, **kwargs)
  assert device.shape == host.shape == shape[:-1] + (3,)
  assert device.dtype == np.float32
  # Same windows, same order of additions; only the fused softmax may round
  # differently.
  np.testing.assert_allclose(device, host, rtol=1e-6, atol=1e-7)


def test_device_path_matches_float64_loop():
  image = np.random.default_rng(1).normal(size=(12, 13, 2)).astype(np.float32)
  predictor = inference.DevicePredictor(window_mean_logits, (), placement="device")
  got = inference.sliding_window_predict(predictor, image, window=(5, 6), num_classes=2, step_fraction=0.5)
  want = _reference_predict(window_mean_logits, image, (5, 6), 0.5)
  np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)


def test_auto_placement_decides_by_memory(monkeypatch):
  predictor = inference.DevicePredictor(_scaled_pointwise, (jnp.float32(1.0),))
  image = np.ones((10, 11, 2), np.float32)
  paths = []
  real = inference._device_predict
  monkeypatch.setattr(inference, "_device_predict", lambda *a: paths.append("device") or real(*a))
  needed = inference.device_bytes_needed((10, 11), 2, 3, (4, 4), 2)
  monkeypatch.setattr(inference.jax, "default_backend", lambda: "cpu")
  inference.sliding_window_predict(predictor, image, window=(4, 4), num_classes=3)
  assert not paths  # "auto" keeps the host path on the CPU backend.
  monkeypatch.setattr(inference.jax, "default_backend", lambda: "gpu")
  for free in (2 * needed, 2 * needed - 1, None):
    monkeypatch.setattr(inference, "device_free_bytes", lambda free=free: free)
    inference.sliding_window_predict(predictor, image, window=(4, 4), num_classes=3)
  # Fits in half the free memory; one byte less; unknown free memory.
  assert paths == ["device"]


def test_device_path_wrong_logits_and_bad_placement():
  predictor = inference.DevicePredictor(_scaled_pointwise, (jnp.float32(1.0),), placement="device")
  with pytest.raises(ConfigError, match="expected"):
    inference.sliding_window_predict(predictor, np.zeros((6, 6, 1)), window=(4, 4), num_classes=2)
  with pytest.raises(ConfigError, match=r"config\.eval\.placement"):
    inference.DevicePredictor(_scaled_pointwise, (), placement="gpu")


_TWO_DEVICES = """
import numpy as np, jax, jax.numpy as jnp
from jaxseg import inference, parallel
assert jax.device_count() == 2
mesh = jax.sharding.Mesh(np.asarray(jax.devices()), (parallel.DATA_AXIS,))
apply = lambda s, x: jnp.stack([2 * x[..., 0] * s, x[..., 0] * x[..., 1] - 1,
                                -x[..., 1]], -1)
image = np.random.default_rng(0).normal(size=(6, 18, 21, 2)).astype(np.float32)
out = {}
for placement, m in (("host", None), ("device", mesh)):
  predictor = inference.DevicePredictor(apply, (jnp.float32(1.5),),
                                        placement=placement, mesh=m)
  out[placement] = inference.sliding_window_predict(
      predictor, image, window=(4, 8, 8), num_classes=3, batch_size=4,
      mirror_axes=(1,))
np.testing.assert_allclose(out["device"], out["host"], rtol=1e-6, atol=1e-7)
# The windows were split over both devices.
cut = inference._cut_program((4, 8, 8), (4, 8, 8), parallel.batch_sharding(mesh))
windows = cut(jnp.asarray(image), np.zeros((4, 3), np.int32))
assert len(windows.sharding.device_set) == 2 and not windows.sharding.is_fully_replicated
print("ok")
"""


def test_device_path_shards_window_batches_over_the_mesh(tmp_path):
  import os
  import subprocess
  import sys

  env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=2", JAX_PLATFORMS="cpu")
  result = subprocess.run(
    [sys.executable, "-c", _TWO_DEVICES], env=env, capture_output=True, text=True, timeout=300, cwd=tmp_path
  )
  assert result.returncode == 0, result.stderr[-2000:]
  assert result.stdout.strip().endswith("ok")


@pytest.mark.parametrize(
  "shape,window,mirror",
  [
    ((10, 11, 2), (4, 4), (0,)),
    ((5, 10, 11, 1), (4, 4), ()),
    ((3, 9, 13, 1), (4, 4, 4), (0, 1, 2)),
  ],
)
def test_num_forward_calls_counts_calls(shape, window, mirror):
  calls = []

  def counted(x):
    calls.append(1)
    return pointwise_logits(x)

  inference.sliding_window_predict(
    counted, np.ones(shape, np.float32), window=window, num_classes=3, batch_size=3, mirror_axes=mirror
  )
  assert inference.num_forward_calls(shape[:-1], window, 0.5, 3, len(mirror)) == len(calls)

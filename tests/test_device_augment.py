"""Device augmentation: each transform against the numpy one with the same parameters, draws, determinism."""

import math
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import ndimage

from jaxseg import config as config_lib
from jaxseg import train
from jaxseg.config import base_config
from jaxseg.data import augment, device_augment as da, device_cache, sampling
from jaxseg.errors import ConfigError


class FixedRng:
  """Stands in for `np.random.Generator`: `uniform` returns the queued values in order (draws are the results)."""

  def __init__(self, values, normal=None):
    self.values = list(values)
    self.normal = normal

  def uniform(self, low=0.0, high=1.0, size=None):
    del low, high
    if size is None:
      return self.values.pop(0)
    count = int(np.prod(size))
    out = np.asarray([self.values.pop(0) for _ in range(count)], np.float64)
    return out.reshape(size)

  def standard_normal(self, shape, dtype=np.float64):
    assert tuple(shape) == self.normal.shape
    return self.normal.astype(dtype)


def _aug(ndim, **changes):
  config = base_config()
  config.data.augment.update(**changes)
  return augment.Augmentation.from_config(config.data.augment, ndim)


def _case(shape, channels=2, seed=0):
  rng = np.random.default_rng(seed)
  # Smooth image (interpolation differences stay small) and blob labels with values 0, 3, 7.
  image = ndimage.gaussian_filter(rng.normal(size=(*shape, channels)), (2, 2, 2, 0)).astype(np.float32) * 10
  zz, yy, xx = np.indices(shape)
  label = np.zeros(shape, np.uint8)
  label[(yy - shape[1] / 2) ** 2 + (xx - shape[2] / 2) ** 2 < (shape[2] / 4) ** 2] = 3
  label[(yy - shape[1] / 3) ** 2 + (xx - shape[2] / 3) ** 2 < (shape[2] / 8) ** 2] = 7
  del zz
  return sampling.make_case("c", image, label, (1.0, 1.0, 1.0), {})


def _device_patch(case, center, patch, aug, angles, scale, elastic=None):
  """Crops like the host pipeline (`training_crop`'s geometry) and resamples on the device."""
  ndim = len(patch)
  crop = da.crop_size(aug, patch)
  image, label = case.image, case.label
  if ndim == 2:
    image, label = image[int(center[0])], label[int(center[0])]
  start = center[3 - ndim :] - np.asarray(crop) // 2
  coords = da.coordinate_map(
    jnp.asarray([n // 2 for n in crop], jnp.float32),
    patch,
    jnp.asarray(angles, jnp.float32),
    jnp.float32(scale),
    None if elastic is None else jnp.asarray(elastic),
  )
  shape = jnp.asarray(crop)
  bounds = (jnp.asarray(-start, jnp.int32), jnp.asarray(np.asarray(image.shape[:ndim]) - 1 - start, jnp.int32))
  image = sampling._crop(image, start, crop, case.pad_value)  # pylint: disable=protected-access
  label = sampling._crop(label, start, crop, 0)  # pylint: disable=protected-access
  return (
    np.asarray(da.interpolate_linear(jnp.asarray(image), (), coords, shape, jnp.asarray(case.pad_value), bounds)),
    np.asarray(da.interpolate_nearest(jnp.asarray(label), (), coords, shape, 0, bounds)),
  )


def _assert_close_patches(host, device):
  (host_image, host_label), (device_image, device_label) = host, device
  assert device_image.shape == host_image.shape and device_label.shape == host_label.shape
  # float32 coordinates against scipy's float64: only voxels whose coordinate sits on a rounding or
  # volume-edge boundary may differ.
  close = np.abs(device_image - host_image) <= 1e-3 * (1 + np.abs(host_image))
  assert close.mean() > 0.995, close.mean()
  assert (device_label == host_label).mean() > 0.995
  assert set(np.unique(device_label)) <= {0, 3, 7}


@pytest.mark.parametrize("angles,scale", [((0.0,), 1.0), ((0.7,), 1.0), ((-2.5,), 0.75), ((1.2,), 1.3)])
def test_2d_rotation_and_zoom_match_the_host(angles, scale):
  case = _case((5, 40, 48))
  center = np.array([2.0, 17.0, 30.0])
  patch = (24, 20)
  transform = augment.SpatialTransform(angles, scale)
  host = sampling.extract_patch(case, center, patch, transform)
  aug = _aug(2, rotate_prob=1.0, scale_prob=1.0, scale_range=(0.7, 1.4))
  _assert_close_patches(host, _device_patch(case, center, patch, aug, angles, scale))


@pytest.mark.parametrize("angles,scale", [((0.3, -0.2, 0.5), 0.8), ((-0.5, 0.5, -0.4), 1.25)])
def test_3d_rotation_and_zoom_match_the_host(angles, scale):
  case = _case((30, 32, 36))
  center = np.array([14.0, 16.0, 20.0])
  patch = (12, 16, 14)
  host = sampling.extract_patch(case, center, patch, augment.SpatialTransform(angles, scale))
  aug = _aug(3, rotate_prob=1.0, scale_prob=1.0)
  _assert_close_patches(host, _device_patch(case, center, patch, aug, angles, scale))


def test_elastic_field_and_deformed_patch_match_the_host():
  patch = (20, 24)
  noise = np.random.default_rng(3).uniform(-1, 1, (2, *patch))
  host_field = augment.elastic_displacement(FixedRng(noise.ravel()), patch, alpha=60.0, sigma=4.0)
  smooth = jax.jit(lambda x: da.elastic_field(x, 60.0, 4.0, da.kernel_radius(5.0)))
  device_field = smooth(jnp.asarray(noise, jnp.float32))
  np.testing.assert_allclose(device_field, host_field, atol=1e-4)
  case = _case((3, 40, 44))
  center = np.array([1.0, 20.0, 22.0])
  transform = augment.SpatialTransform((0.4,), 0.9, host_field)
  host = sampling.extract_patch(case, center, patch, transform)
  aug = _aug(2, rotate_prob=1.0, scale_prob=1.0, elastic_prob=1.0, elastic_alpha=(0.0, 60.0), elastic_sigma=(4.0, 5.0))
  _assert_close_patches(host, _device_patch(case, center, patch, aug, (0.4,), 0.9, host_field))


def test_outside_the_volume_is_the_case_minimum_and_background():
  case = _case((1, 10, 10), channels=1)
  coords = jnp.asarray(np.stack(np.meshgrid(np.arange(-3.0, 13.0), np.arange(-3.0, 13.0), indexing="ij")), jnp.float32)
  image = da.interpolate_linear(
    jnp.asarray(case.image[0]), (), coords, jnp.asarray([10, 10]), jnp.asarray(case.pad_value)
  )
  reference = ndimage.map_coordinates(
    case.image[0, ..., 0], np.asarray(coords), order=1, mode="constant", cval=float(case.pad_value[0])
  )
  np.testing.assert_allclose(image[..., 0], reference, atol=1e-5)
  label = da.interpolate_nearest(jnp.asarray(case.label[0]), (), coords + 0.3, jnp.asarray([10, 10]))
  np.testing.assert_array_equal(
    label, ndimage.map_coordinates(case.label[0], np.asarray(coords) + 0.3, order=0, mode="constant", cval=0)
  )
  # The same through jax.scipy's map_coordinates inside the volume.
  inside = coords[:, 3:12, 3:12] + 0.25
  np.testing.assert_allclose(
    da.interpolate_linear(jnp.asarray(case.image[0]), (), inside, jnp.asarray([10, 10]), jnp.asarray([0.0]))[..., 0],
    jax.scipy.ndimage.map_coordinates(jnp.asarray(case.image[0, ..., 0]), list(inside), order=1),
    atol=1e-5,
  )


@pytest.mark.parametrize("shape,zoom", [((20, 20), 0.6), ((8, 12, 16), 0.5)])
def test_intensity_chain_matches_the_host_draw_for_draw(shape, zoom):
  """Noise, blur, brightness, contrast, low resolution, inverted gamma and gamma, in the host's order."""
  channels = 3
  ndim = len(shape)
  image = _case((1, *shape) if ndim == 2 else shape, channels).image
  image = image[0] if ndim == 2 else image
  key = jax.random.key(5)
  normal = np.asarray(jax.random.normal(key, image.shape, jnp.float32))
  blur_channels = np.array([True, False, True])
  blur_sigma = np.array([[0.6] * ndim, [0.9] * ndim, [0.95, 0.55, 0.7][:ndim]])
  brightness = np.array([0.8, 1.2, 1.05])
  contrast_side, contrast = [0.1, 0.9, 0.2], [0.8, 1.2, 0.76]
  lowres_channels = np.array([False, True, True])
  inv_side, inv = [0.9, 0.1, 0.2], [1.4, 0.8, 0.75]
  gam_side, gam = [0.1, 0.6, 0.7], [0.85, 1.3, 1.1]
  values = [0.0, 0.05]  # noise: happens, std
  values += [0.0]  # blur happens
  for c in range(channels):
    values += [0.0 if blur_channels[c] else 0.9] + (list(blur_sigma[c]) if blur_channels[c] else [])
  values += [0.0, *brightness]  # brightness
  values += [0.0] + [v for pair in zip(contrast_side, contrast) for v in pair]
  values += [0.0]
  for c in range(channels):
    values += [0.0, zoom] if lowres_channels[c] else [0.9]
  values += [0.0] + [v for pair in zip(inv_side, inv) for v in pair]
  values += [0.0] + [v for pair in zip(gam_side, gam) for v in pair]
  aug = _aug(
    ndim,
    **{k: 1.0 for k in config_lib.INTENSITY_AUGMENT_KEYS},
  )
  host = augment.intensity(image, FixedRng(values, normal), aug)
  params = {
    "noise_on": True,
    "noise_std": 0.05,
    "noise_key": key,
    "blur_on": True,
    "blur_channels": blur_channels,
    "blur_sigma": blur_sigma,
    "brightness_on": True,
    "brightness": brightness,
    "contrast_on": True,
    "contrast": contrast,
    "lowres_on": True,
    "lowres_channels": lowres_channels,
    "lowres_zoom": np.full(channels, zoom),
    "inverted_gamma_on": True,
    "inverted_gamma": inv,
    "gamma_on": True,
    "gamma": gam,
  }
  params = {
    k: v if k == "noise_key" else jnp.asarray(v, jnp.float32 if np.asarray(v).dtype.kind == "f" else None)
    for k, v in params.items()
  }
  device = np.asarray(jax.jit(lambda x, p: da.intensity(x, p, aug))(jnp.asarray(image), params))
  np.testing.assert_allclose(device, host, rtol=2e-4, atol=2e-4 * np.abs(host).max())


@pytest.mark.parametrize("invert", [False, True])
def test_gamma_alone_matches_the_host(invert):
  image = np.random.default_rng(0).gamma(2.0, size=(9, 11, 2)).astype(np.float32)
  host = augment.gamma(image, FixedRng([0.1, 0.8, 0.9, 1.3]), (0.7, 1.5), invert=invert)
  device = da.gamma(jnp.asarray(image), jnp.asarray([0.8, 1.3]), invert=invert)
  np.testing.assert_allclose(device, host, rtol=1e-4, atol=1e-4)


_lowres_operator = jax.jit(da.lowres_operator, static_argnums=(0, 2))


@pytest.mark.parametrize("n,order", [(20, 3), (17, 3), (13, 1), (32, 1), (24, 3)])
def test_low_resolution_operator_is_scipys_zoom_pair(n, order):
  for zoom in (0.5, 0.55, 0.7, 0.83, 0.95, 1.0):
    m = max(1, round(n * float(np.float32(zoom))))
    reference = np.stack(
      [augment.resize(augment.resize(np.eye(n)[k], (m,), order=0), (n,), order=order) for k in range(n)], axis=1
    )
    operator = np.asarray(_lowres_operator(n, jnp.float32(zoom), order))
    # An exact tie in the nearest-neighbour downsampling may round the other way in float32 than in
    # scipy's float64: at most a few rows then differ.
    rows_ok = np.abs(operator - reference).max(axis=1) < 1e-4
    assert rows_ok.mean() >= 1 - 3 / n, (zoom, np.nonzero(~rows_ok))


def test_blur_and_contrast_by_hand_sigmas():
  image = np.random.default_rng(2).normal(size=(15, 13, 1)).astype(np.float32)
  blur = jax.jit(lambda x, s: da.gaussian_blur(x, s, jnp.asarray([True]), da.kernel_radius(1.0)))
  for sigma in ((0.5, 1.0), (0.8, 0.6), (0.0, 0.7)):
    device = blur(jnp.asarray(image), jnp.asarray([sigma], jnp.float32))
    np.testing.assert_allclose(
      device[..., 0], ndimage.gaussian_filter(image[..., 0].astype(np.float64), sigma), atol=1e-5
    )
  small = jnp.asarray([[0.0, 1.0], [2.0, 5.0]])[..., None]
  np.testing.assert_allclose(da.contrast(small, jnp.asarray([2.0]))[..., 0], [[0.0, 0.0], [2.0, 5.0]])


def test_mirror_flips_image_and_label_together():
  image = jnp.arange(20.0).reshape(4, 5, 1)
  label = jnp.arange(20).reshape(4, 5)
  out_image, out_label = da.mirror(image, label, jnp.asarray([True, False]), (0, 1))
  np.testing.assert_array_equal(out_label, np.asarray(label)[::-1])
  np.testing.assert_array_equal(out_image, np.asarray(image)[::-1])
  out_image, out_label = da.mirror(image, label, jnp.asarray([True]), (1,))
  np.testing.assert_array_equal(out_label, np.asarray(label)[:, ::-1])


def _binomial_ok(flags, prob):
  n = flags.size
  return abs(flags.mean() - prob) <= 4.5 * math.sqrt(prob * (1 - prob) / n) + 1e-9


@pytest.mark.parametrize("ndim", [2, 3])
def test_parameter_draws_have_the_configured_probabilities_and_ranges(ndim):
  aug = _aug(ndim, elastic_prob=0.3)
  keys = da.example_keys(da.augment_key(0), jnp.int32(7), 4000)
  params = jax.device_get(jax.jit(jax.vmap(lambda k: da.sample_params(k, aug, 2)))(keys))
  for flag, prob in (
    ("rotate", aug.rotate_prob),
    ("scale_on", aug.scale_prob),
    ("elastic_on", aug.elastic_prob),
    ("noise_on", aug.noise_prob),
    ("blur_on", aug.blur_prob),
    ("brightness_on", aug.brightness_prob),
    ("contrast_on", aug.contrast_prob),
    ("lowres_on", aug.lowres_prob),
    ("inverted_gamma_on", aug.inverted_gamma_prob),
    ("gamma_on", aug.gamma_prob),
    ("mirror", aug.flip_prob),
    ("blur_channels", 0.5),
    ("lowres_channels", 0.5),
  ):
    assert _binomial_ok(params[flag], prob), (flag, params[flag].mean(), prob)
  assert params["mirror"].shape == (4000, ndim)
  limit = math.radians(aug.rotate_max_deg)
  assert params["angles"].shape == (4000, 1 if ndim == 2 else 3)
  for name, (low, high) in (
    ("angles", (-limit, limit)),
    ("scale", aug.scale_range),
    ("noise_std", aug.noise_std),
    ("blur_sigma", aug.blur_sigma),
    ("brightness", aug.brightness_range),
    ("lowres_zoom", aug.lowres_range),
    ("contrast", aug.contrast_range),
    ("gamma", aug.gamma_range),
    ("inverted_gamma", aug.gamma_range),
    ("elastic_alpha", aug.elastic_alpha),
    ("elastic_sigma", aug.elastic_sigma),
  ):
    values = params[name]
    assert values.min() >= low - 1e-6 and values.max() <= high + 1e-6, name
    # Uniform: each quarter of the range holds about a quarter of the draws (factor draws: per side).
    if name not in ("contrast", "gamma", "inverted_gamma"):
      quarters = np.histogram(values, bins=4, range=(low, high))[0] / values.size
      np.testing.assert_allclose(quarters, 0.25, atol=0.03)
  for name in ("contrast", "gamma", "inverted_gamma"):
    assert _binomial_ok(params[name] < 1, 0.5), name


def test_probability_zero_and_one_and_unit_ranges():
  aug = _aug(
    2,
    **{k: 0.0 for k in ("rotate_prob", "scale_prob", *config_lib.INTENSITY_AUGMENT_KEYS, "flip_prob")},
  )
  batch = _crop_batch((12, 10), channels=2)
  out = jax.jit(lambda b: da.augment_batch(da.augment_key(0), jnp.int32(0), b, aug, (12, 10)))(batch)
  np.testing.assert_allclose(out["image"], batch["image"], atol=1e-6)  # Identity when nothing happens.
  np.testing.assert_array_equal(out["label"], batch["label"])


def _crop_batch(crop, channels=2, batch=4, seed=0):
  rng = np.random.default_rng(seed)
  image = ndimage.gaussian_filter(rng.normal(size=(batch, *crop, channels)), (0, *[1.5] * len(crop), 0))
  label = rng.choice(np.array([0, 3, 7], np.uint8), size=(batch, *crop))
  return {
    "image": jnp.asarray(image, jnp.float32),
    "label": jnp.asarray(label),
    "pad_value": jnp.asarray(image.reshape(batch, -1, channels).min(1), jnp.float32),
  }


@pytest.mark.parametrize("ndim", [2, 3])
def test_batches_are_seeded_by_step_and_global_index_and_keep_label_values(ndim):
  patch = (16, 12) if ndim == 2 else (8, 10, 6)
  # Blur and low resolution have their own tests above (and cost compile time here).
  aug = _aug(
    ndim,
    blur_prob=0.0,
    lowres_prob=0.0,
    **{k: 1.0 for k in ("rotate_prob", "scale_prob", "noise_prob", "contrast_prob", "gamma_prob")},
  )
  batch = _crop_batch(da.crop_size(aug, patch))
  run = jax.jit(lambda step, b, offset: da.augment_batch(da.augment_key(3), step, b, aug, patch, offset))
  a = jax.device_get(run(jnp.int32(4), batch, 0))
  b = jax.device_get(run(jnp.int32(4), batch, 0))
  for k in a:
    np.testing.assert_array_equal(a[k], b[k])
  assert a["image"].shape == (4, *patch, 2) and a["label"].shape == (4, *patch)
  assert a["label"].dtype == np.int32 and set(np.unique(a["label"])) <= {0, 3, 7}
  # Rows 2, 3 given as rows 0, 1 with offset 2 (another host's share of the global batch) come out the same.
  rolled = jax.device_get(run(jnp.int32(4), {k: jnp.roll(v, -2, axis=0) for k, v in batch.items()}, 2))
  for k in a:
    np.testing.assert_allclose(rolled[k][:2], a[k][2:], atol=1e-6)
  other_step = jax.device_get(run(jnp.int32(5), batch, 0))
  assert not np.allclose(other_step["image"], a["image"])


def test_crop_holds_every_voxel_the_transform_reads():
  for ndim, patch, changes in (
    (2, (64, 48), {}),
    (2, (40, 40), {"rotate_max_deg": 15.0, "scale_range": (0.85, 1.15)}),
    (3, (16, 16, 16), {"elastic_prob": 0.5, "elastic_alpha": (0.0, 200.0), "elastic_sigma": (3.0, 4.0)}),
  ):
    aug = _aug(ndim, rotate_prob=1.0, scale_prob=1.0, **changes)
    crop = np.asarray(da.crop_size(aug, patch))
    assert np.all(crop >= patch)
    keys = da.example_keys(da.augment_key(0), jnp.int32(0), 200)
    center = jnp.asarray(crop // 2, jnp.float32)
    reach = jax.jit(
      jax.vmap(
        lambda k: da.spatial_coordinates(
          dict(da.sample_params(k, aug, 1), rotate=True, scale_on=True, elastic_on=True), aug, center, patch
        )
      )
    )(keys)
    low = np.asarray(reach).reshape(200, ndim, -1).min(axis=(0, 2))
    high = np.asarray(reach).reshape(200, ndim, -1).max(axis=(0, 2))
    assert np.all(low >= 0) and np.all(high <= crop - 1), (ndim, patch, low, high, crop)
  assert da.crop_size(_aug(2, rotate_prob=0.0, scale_prob=0.0), (30, 20)) == (30, 20)


def _cache(cases, patch):
  arrays = device_cache.cache_arrays(cases)
  layout = device_cache.Layout(len(cases), tuple(sorted({v for c in cases for v in c.locations})), patch)
  return {k: jnp.asarray(v) for k, v in arrays.items()}, layout


@pytest.mark.parametrize("patch,class_balanced", [((12, 10), False), ((6, 12, 10), True)])
def test_device_cache_samples_foreground_as_the_host_does(patch, class_balanced):
  cases = [_case((8, 30, 26), seed=0), _case((6, 24, 30), seed=1)]
  empty = sampling.make_case("e", cases[0].image[:5], np.zeros((5, 30, 26), np.uint8), (1, 1, 1), {})
  cache, layout = _cache(cases + [empty], patch)
  assert cache["image"].shape == (3, 8, 30, 30, 2) and layout.classes == (3, 7)
  # Without mirroring the forced centre voxel stays the patch centre; intensity transforms (tested above) off.
  aug = _aug(
    len(patch),
    flip_prob=0.0,
    **{k: 0.0 for k in config_lib.INTENSITY_AUGMENT_KEYS},
  )
  sample = jax.jit(
    lambda c, s: device_cache.sample_batch(
      c, s, seed=1, layout=layout, aug=aug, batch_size=6, foreground_fraction=0.5, class_balanced=class_balanced
    )
  )
  centre = tuple(n // 2 for n in patch)
  forced_hits, classes = 0, []
  for step in range(8):
    batch = jax.device_get(sample(cache, jnp.int32(step)))
    assert batch["image"].shape == (6, *patch, 2) and batch["label"].shape == (6, *patch)
    assert set(np.unique(batch["label"])) <= {0, 3, 7}
    for row in range(6):
      if sampling.is_forced_foreground(row, 6, 0.5):
        forced_hits += batch["label"][(row, *centre)] > 0
        classes.append(batch["label"][(row, *centre)])
  assert forced_hits == 8 * 3  # Every forced row is centred on foreground.
  assert {3, 7} <= set(classes)
  again = jax.device_get(sample(cache, jnp.int32(7)))
  np.testing.assert_array_equal(again["label"], batch["label"])


def test_device_cache_that_does_not_fit_names_size_and_memory(monkeypatch):
  cases = [_case((4, 16, 16))]
  monkeypatch.setattr(device_cache, "device_memory", lambda device: (1000, "0.00 GiB free of 80 GiB on gpu:0"))
  with pytest.raises(
    ConfigError,
    match=r"config.data.device_cache: the training split \(1 cases, .* GiB .*does not "
    r"fit in device memory \(0.00 GiB free of 80 GiB on gpu:0.*device_cache=False",
  ):
    device_cache.check_fits(device_cache.cache_arrays(cases), 1, jax.devices()[0])


@pytest.mark.parametrize(
  "key,value,message",
  [
    ("lowres_range", (0.5, 1.5), "at most 1"),
    ("blur_sigma", (1.0, 0.5), "low <= high"),
  ],
)
def test_bad_augment_values_name_the_key(key, value, message):
  config = base_config()
  config.data.augment[key] = value
  with pytest.raises(ConfigError, match=f"config.data.augment.{key}: .*{message}"):
    config_lib.validate(config)


def test_device_cache_needs_device_augment():
  config = base_config()
  config.data.device_cache = True
  with pytest.raises(ConfigError, match="config.data.device_cache: needs data.device_augment=True"):
    config_lib.validate(config)


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
  return tmp_path_factory.mktemp("data")


# Without the cache it is the same step fed by the host pipeline: slow-marked to keep the suite under 15 minutes.
@pytest.mark.parametrize("device_cache_on", [pytest.param(False, marks=pytest.mark.slow), True])
def test_short_training_with_device_augmentation(data_dir, phantom_config, tmp_path, device_cache_on):
  config = phantom_config(
    data_dir,
    data=dict(
      patch_size=(32, 32),
      device_augment=True,
      device_cache=device_cache_on,
      augment=dict(rotate_prob=0.5, scale_prob=0.5, noise_prob=0.5, gamma_prob=0.5),
    ),
    train=dict(num_steps=3, log_every_steps=3, eval_every_steps=3, checkpoint_every_steps=3),
  )
  results = train.train_and_evaluate(config, tmp_path)
  assert results["test"]["num_cases"] >= 1 and results["test"]["step"] == 3
  assert set(results["test"]["mean_foreground"]) >= {"dice", "iou"}  # Trained (a NaN loss would have raised).


_SHARDED_SCRIPT = """
import jax, jax.numpy as jnp, numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P
from jaxseg.config import base_config
from jaxseg.data import augment, device_augment as da
config = base_config()
config.data.augment.update(rotate_prob=1.0, scale_prob=1.0, noise_prob=1.0, gamma_prob=1.0, blur_prob=0.0,
                           lowres_prob=0.0)
aug = augment.Augmentation.from_config(config.data.augment, 2)
rng = np.random.default_rng(0)
batch = {"image": rng.normal(size=(4, 30, 26, 1)).astype(np.float32),
         "label": rng.integers(0, 3, (4, 30, 26)).astype(np.uint8),
         "pad_value": np.full((4, 1), -1.0, np.float32)}
fn = jax.jit(lambda b, s: da.augment_batch(da.augment_key(0), s, b, aug, (16, 12)))
one = jax.device_get(fn(jax.device_put(batch, jax.devices()[0]), jnp.int32(3)))
mesh = Mesh(np.asarray(jax.devices()), ("data",))
sharded = jax.device_put(batch, NamedSharding(mesh, P("data")))
four = jax.device_get(fn(sharded, jnp.int32(3)))
assert len(jax.devices()) == 4
for k in one:
  np.testing.assert_array_equal(one[k], four[k])
print("same")
"""


@pytest.mark.slow  # A subprocess with 4 virtual devices: about a minute of compilation on 2 loaded cores.
def test_batch_is_the_same_on_one_and_on_four_devices():
  env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=4", JAX_PLATFORMS="cpu")
  result = subprocess.run(
    [sys.executable, "-c", _SHARDED_SCRIPT], env=env, capture_output=True, text=True, timeout=900, check=False
  )
  assert result.returncode == 0 and "same" in result.stdout, result.stderr[-2000:]


@pytest.mark.slow  # Three training runs (2-3 min on 2 loaded cores); the fast batch tests prove keys by step.
def test_killed_device_augmented_run_resumes_to_identical_params(
  data_dir, phantom_config, tmp_path, interrupt_training, restore_latest
):
  """The step's augmentation keys come from (seed, step): a resumed run trains on the same batches."""
  config = phantom_config(
    data_dir,
    data=dict(patch_size=(32, 32), device_augment=True, augment=dict(rotate_prob=0.5, scale_prob=0.5, noise_prob=0.5)),
    train=dict(eval_every_steps=100),
  )
  train.train_and_evaluate(config, tmp_path / "uninterrupted")
  # Step 3 is computed but its checkpoint (step 4) never written.
  interrupt_training(config, tmp_path / "resumed", after_batches=3)
  train.train_and_evaluate(config, tmp_path / "resumed")
  params = []
  for name in ("uninterrupted", "resumed"):
    state, step = restore_latest(config, tmp_path / name)
    assert step == 4
    params.append(state.params)
  for x, y in zip(jax.tree.leaves(params[0]), jax.tree.leaves(params[1])):
    np.testing.assert_array_equal(x, y)

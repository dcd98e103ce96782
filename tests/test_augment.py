"""Augmentation: nnU-Net defaults, hand-computed transforms, seeding, config checks."""

import math

import numpy as np
import pytest
from scipy import ndimage

from jaxseg import config as config_lib
from jaxseg.config import base_config
from jaxseg.data import augment
from jaxseg.errors import ConfigError


def _image(shape=(12, 10), channels=2, seed=0):
  return np.random.default_rng(seed).normal(size=(*shape, channels)).astype(np.float32)


def test_base_config_has_nnunet_v2_defaults():
  aug = augment.Augmentation.from_config(base_config().data.augment, 3)
  # nnUNetTrainer.get_training_transforms (nnU-Net v2) probabilities and ranges.
  assert (aug.rotate_prob, aug.scale_prob, aug.elastic_prob) == (0.2, 0.2, 0.0)
  assert aug.scale_range == (0.7, 1.4)
  assert (aug.noise_prob, aug.noise_std) == (0.1, (0.0, 0.1))
  assert (aug.blur_prob, aug.blur_sigma) == (0.2, (0.5, 1.0))
  assert (aug.brightness_prob, aug.brightness_range) == (0.15, (0.75, 1.25))
  assert (aug.contrast_prob, aug.contrast_range) == (0.15, (0.75, 1.25))
  assert (aug.lowres_prob, aug.lowres_range) == (0.25, (0.5, 1.0))
  assert (aug.inverted_gamma_prob, aug.gamma_prob, aug.gamma_range) == (0.1, 0.3, (0.7, 1.5))
  assert (aug.flip_axes, aug.flip_prob) == ((0, 1, 2), 0.5)
  assert aug.rotate_max_deg == 30.0
  aug_2d = augment.Augmentation.from_config(base_config().data.augment, 2)
  assert aug_2d.flip_axes == (0, 1) and aug_2d.rotate_max_deg == 180.0


def test_explicit_flip_axes_and_rotation_are_kept():
  config = base_config()
  config.data.augment.flip_axes = ()
  config.data.augment.rotate_max_deg = 15.0
  aug = augment.Augmentation.from_config(config.data.augment, 2)
  assert aug.flip_axes == () and aug.rotate_max_deg == 15.0


@pytest.mark.parametrize(
  "key,value,message",
  [
    ("noise_prob", 1.5, "not a probability"),
    ("scale_range", (1.2, 0.8), "low <= high"),
    ("gamma_range", (0.0, 1.5), "positive factors"),
    ("flip_axes", (0, 2), "axis 2 is not a spatial axis of a 2D model"),
    ("rotate_max_deg", -5.0, "must be >= 0"),
  ],
)
def test_bad_augment_values_name_the_key(key, value, message):
  config = base_config()
  config.data.augment[key] = value
  with pytest.raises(ConfigError, match=f"config.data.augment.{key}: .*{message}"):
    config_lib.validate(config)


def test_rotation_matrices_are_rotations():
  for angles in [(0.3,), (0.3, -1.0, 2.0)]:
    matrix = augment.rotation_matrix(angles)
    np.testing.assert_allclose(matrix @ matrix.T, np.eye(len(matrix)), atol=1e-12)
    assert np.linalg.det(matrix) == pytest.approx(1.0)
  # A quarter turn about axis 0 turns the h axis into the w axis.
  np.testing.assert_allclose(augment.rotation_matrix((math.pi / 2, 0, 0)) @ [0, 1, 0], [0, 0, 1], atol=1e-12)


def test_source_coordinates_by_hand():
  center = np.array([5.0, 7.0])
  identity = augment.source_coordinates(center, (4, 3), augment.SpatialTransform((0.0,)))
  np.testing.assert_allclose(identity[:, 2, 1], center)
  np.testing.assert_allclose(identity[:, 0, 0], center - [2, 1])
  quarter = augment.source_coordinates(center, (4, 3), augment.SpatialTransform((math.pi / 2,), scale=2.0))
  # Patch offset (dy, dx) = (-2, -1) -> zoomed (-1, -0.5) -> rotated (0.5, -1).
  np.testing.assert_allclose(quarter[:, 0, 0], center + [0.5, -1.0], atol=1e-12)


def test_elastic_field_is_smooth_seeded_and_still_at_the_centre():
  field = augment.elastic_displacement(np.random.default_rng(0), (16, 20), alpha=200.0, sigma=4.0)
  again = augment.elastic_displacement(np.random.default_rng(0), (16, 20), alpha=200.0, sigma=4.0)
  assert field.shape == (2, 16, 20)
  np.testing.assert_array_equal(field, again)
  np.testing.assert_array_equal(field[:, 8, 10], 0.0)
  assert np.abs(field).max() > 0.5
  # Smooth: neighbouring displacements differ far less than the field varies.
  assert np.abs(np.diff(field, axis=2)).mean() < 0.3 * field.std()
  double = augment.elastic_displacement(np.random.default_rng(0), (16, 20), alpha=400.0, sigma=4.0)
  np.testing.assert_allclose(double, 2 * field, rtol=1e-5, atol=1e-5)


def test_gaussian_noise_has_the_drawn_std():
  image = np.zeros((200, 200, 1), np.float32)
  out = augment.gaussian_noise(image, np.random.default_rng(0), (0.05, 0.05))
  assert out.dtype == np.float32
  assert out.std() == pytest.approx(0.05, rel=0.02)
  assert abs(out.mean()) < 0.002


def test_gaussian_blur_blurs_some_channels_with_scipy_sigma():
  image = _image(channels=6)
  out = augment.gaussian_blur(image, np.random.default_rng(1), (0.8, 0.8))
  blurred = 0
  for c in range(6):
    if np.array_equal(out[..., c], image[..., c]):
      continue
    np.testing.assert_allclose(out[..., c], ndimage.gaussian_filter(image[..., c].astype(np.float64), 0.8), atol=1e-5)
    blurred += 1
  assert 0 < blurred < 6  # Each channel with probability 0.5.


def test_contrast_by_hand():
  image = np.array([[0.0, 1.0], [2.0, 5.0]], np.float32)[..., None]
  out = augment.contrast(image, np.random.default_rng(0), (2.0, 2.0))
  # mean 2: (x - 2) * 2 + 2 = [-2, 0, 2, 8], clipped to the old range [0, 5].
  np.testing.assert_allclose(out[..., 0], [[0.0, 0.0], [2.0, 5.0]])


def test_factor_draws_are_below_one_half_the_time():
  rng = np.random.default_rng(0)
  draws = np.array([augment.below_or_above_one(rng, (0.7, 1.5)) for _ in range(4000)])
  assert draws.min() >= 0.7 and draws.max() <= 1.5
  assert abs((draws < 1).mean() - 0.5) < 0.03


def test_gamma_by_hand_keeps_mean_and_std():
  x = np.linspace(-1.0, 3.0, 9)
  image = x.reshape(3, 3, 1).astype(np.float32)
  out = augment.gamma(image, np.random.default_rng(0), (2.0, 2.0), invert=False)[..., 0].ravel()
  expected = ((x + 1) / 4) ** 2 * 4 - 1
  expected = (expected - expected.mean()) / expected.std() * x.std() + x.mean()
  np.testing.assert_allclose(out, expected, rtol=1e-5, atol=1e-5)
  inverted = augment.gamma(image, np.random.default_rng(0), (2.0, 2.0), invert=True)[..., 0].ravel()
  np.testing.assert_allclose(
    inverted, -augment.gamma(-image, np.random.default_rng(0), (2.0, 2.0), invert=False)[..., 0].ravel(), rtol=1e-6
  )
  assert inverted.mean() == pytest.approx(x.mean(), abs=1e-5)


def test_low_resolution_keeps_shape_and_constants_and_removes_detail():
  checker = (np.indices((16, 16)).sum(0) % 2).astype(np.float32)[..., None]
  image = np.concatenate([checker] * 8, axis=-1)
  out = augment.low_resolution(image, np.random.default_rng(0), (0.5, 0.5))
  assert out.shape == image.shape
  changed = [c for c in range(8) if not np.array_equal(out[..., c], image[..., c])]
  assert 0 < len(changed) < 8
  for c in changed:  # Nearest-neighbour halving of a checkerboard keeps one colour.
    assert out[..., c].std() < 0.1 * image[..., c].std()
  constant = np.full((10, 12, 6, 1), 3.0, np.float32)
  np.testing.assert_allclose(augment.low_resolution(constant, np.random.default_rng(0), (0.5, 0.5)), 3.0, atol=1e-5)


def test_resize_to_the_same_shape_is_identity():
  image = _image()[..., 0]
  assert augment.resize(image, image.shape, order=3) is image
  assert augment.resize(image, (6, 5), order=1).shape == (6, 5)


def test_mirror_flips_image_and_label_together():
  image = _image((4, 5), channels=1)
  label = np.arange(20).reshape(4, 5)
  flipped_image, flipped_label = augment.mirror(image, label, np.random.default_rng(0), (0, 1), 1.0)
  np.testing.assert_array_equal(flipped_label, label[::-1, ::-1])
  np.testing.assert_array_equal(flipped_image, image[::-1, ::-1])
  same_image, same_label = augment.mirror(image, label, np.random.default_rng(0), (0, 1), 0.0)
  assert same_image is image and same_label is label


def test_intensity_pipeline_is_seeded_and_off_when_probabilities_are_zero():
  config = base_config()
  for key in config.data.augment:
    if key.endswith("_prob"):
      config.data.augment[key] = 1.0
  aug = augment.Augmentation.from_config(config.data.augment, 2)
  image = _image()
  a = augment.intensity(image, np.random.default_rng([1, 2]), aug)
  b = augment.intensity(image, np.random.default_rng([1, 2]), aug)
  np.testing.assert_array_equal(a, b)
  assert a.dtype == np.float32 and not np.array_equal(a, image)
  assert augment.intensity(image, np.random.default_rng(0), augment.Augmentation.none(2)) is image


def test_brightness_multiplies_each_channel():
  config = base_config()
  for key in config.data.augment:
    if key.endswith("_prob"):
      config.data.augment[key] = 0.0
  config.data.augment.brightness_prob = 1.0
  config.data.augment.brightness_range = (2.0, 2.0)
  aug = augment.Augmentation.from_config(config.data.augment, 2)
  image = _image()
  np.testing.assert_allclose(augment.intensity(image, np.random.default_rng(0), aug), 2 * image)

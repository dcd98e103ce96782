"""Sample selection and patch extraction: shapes, padding, foreground share, class balance, seeding."""

import math

import numpy as np
import pytest

from jaxseg.config import base_config
from jaxseg.data import augment, sampling


def _case(shape=(6, 20, 24), channels=2):
  rng = np.random.default_rng(0)
  image = rng.normal(size=(*shape, channels)).astype(np.float32)
  label = np.zeros(shape, np.uint8)
  label[2, 5:8, 6:9] = 1
  label[4, 15:17, 18:20] = 2
  return sampling.make_case("c0", image, label, (5.0, 1.0, 1.0), {})


def test_class_locations_lists_every_foreground_voxel():
  case = _case()
  assert sorted(case.locations) == [1, 2]
  assert len(case.locations[1]) == 9 and len(case.locations[2]) == 4
  for value, coords in case.locations.items():
    assert np.all(case.label[tuple(coords.T)] == value)


@pytest.mark.parametrize("batch,fraction", [(8, 1 / 3), (2, 1 / 3), (5, 0.5), (4, 0.0), (4, 1.0)])
def test_forced_foreground_count_is_ceil_of_fraction(batch, fraction):
  forced = sum(sampling.is_forced_foreground(i, batch, fraction) for i in range(batch))
  assert forced == math.ceil(batch * fraction - 1e-9)


def test_forced_sample_is_centred_on_foreground():
  case = _case()
  rng = np.random.default_rng(1)
  for _ in range(20):
    center = sampling.choose_center(case, (8, 8), rng, force_foreground=True)
    assert case.label[tuple(center.astype(int))] > 0


def test_extract_patch_pads_with_case_minimum_and_background():
  case = _case()
  image, label = sampling.extract_patch(case, np.array([2.0, 0.0, 0.0]), (8, 8))
  assert image.shape == (8, 8, 2) and label.shape == (8, 8)
  np.testing.assert_array_equal(image[:4, :, 0], case.pad_value[0])  # Above the volume.
  np.testing.assert_array_equal(image[4:, 4:], case.image[2, :4, :4])
  np.testing.assert_array_equal(label[:4], 0)


def test_identity_transform_equals_plain_crop():
  case = _case()
  center = np.array([2.0, 6.0, 7.0])
  crop = sampling.extract_patch(case, center, (8, 8))
  # A zoom of exactly 1 and no rotation through the interpolating path:
  warped = sampling.extract_patch(case, center, (8, 8), augment.SpatialTransform((1e-12,)))
  np.testing.assert_allclose(warped[0][1:-1, 1:-1], crop[0][1:-1, 1:-1], atol=1e-5)
  np.testing.assert_array_equal(warped[1], crop[1])


def test_rotation_by_90_degrees_rotates_the_label():
  case = _case()
  center = np.array([2.0, 6.0, 7.0])
  _, label = sampling.extract_patch(case, center, (9, 9))
  _, rotated = sampling.extract_patch(case, center, (9, 9), augment.SpatialTransform((math.pi / 2,)))
  assert sorted(map(tuple, np.argwhere(rotated == 1))) == sorted(map(tuple, np.argwhere(np.rot90(label, k=-1) == 1)))


def test_3d_patch_shape_and_padding():
  case = _case()
  image, label = sampling.extract_patch(case, np.array([1.0, 10.0, 12.0]), (4, 8, 8))
  assert image.shape == (4, 8, 8, 2) and label.shape == (4, 8, 8)
  np.testing.assert_array_equal(label[0], 0)  # Slice -1 is outside the volume.


def test_training_sample_is_seeded():
  config = base_config()
  config.data.augment.flip_axes = (0, 1)
  config.data.augment.rotate_prob = 1.0
  aug = augment.Augmentation.from_config(config.data.augment, 2)
  case = _case()
  a = sampling.training_sample(case, (8, 8), np.random.default_rng([3, 7]), force_foreground=True, augment=aug)
  b = sampling.training_sample(case, (8, 8), np.random.default_rng([3, 7]), force_foreground=True, augment=aug)
  c = sampling.training_sample(case, (8, 8), np.random.default_rng([3, 8]), force_foreground=True, augment=aug)
  np.testing.assert_array_equal(a["image"], b["image"])
  assert a["image"].dtype == np.float32 and a["label"].dtype == np.int32
  assert not np.array_equal(a["image"], c["image"])


def test_rotation_about_axis_0_of_a_3d_patch_rotates_each_slice():
  case = _case(shape=(6, 20, 24))
  center = np.array([2.0, 6.0, 7.0])
  _, label = sampling.extract_patch(case, center, (3, 9, 9))
  _, rotated = sampling.extract_patch(case, center, (3, 9, 9), augment.SpatialTransform((math.pi / 2, 0.0, 0.0)))
  np.testing.assert_array_equal(rotated, np.rot90(label, k=-1, axes=(1, 2)))


def test_zoom_by_two_samples_every_half_voxel():
  case = _case()
  case.image[2, :, :, 0] = np.arange(24)[None, :]  # Intensity = x index.
  image, _ = sampling.extract_patch(
    case, np.array([2.0, 10.0, 12.0]), (8, 8), augment.SpatialTransform((0.0,), scale=2.0)
  )
  np.testing.assert_allclose(image[4, :, 0], 12 + (np.arange(8) - 4) / 2, atol=1e-5)


def _all_on(**overrides):
  config = base_config()
  for key in config.data.augment:
    if key.endswith("_prob"):
      config.data.augment[key] = 1.0
  config.data.augment.elastic_alpha = (50.0, 50.0)
  config.data.augment.update(**overrides)
  return config.data.augment


@pytest.mark.parametrize("patch", [(8, 8), (3, 8, 8)])
def test_forced_samples_keep_their_foreground_under_every_augmentation(patch):
  aug = augment.Augmentation.from_config(_all_on(), len(patch))
  case = _case()
  for seed in range(15):
    sample = sampling.training_sample(case, patch, np.random.default_rng(seed), force_foreground=True, augment=aug)
    assert sample["image"].shape == (*patch, 2) and sample["label"].shape == patch
    assert (sample["label"] > 0).any(), seed


def test_requested_class_is_the_centre_class():
  case = _case()
  rng = np.random.default_rng(0)
  for _ in range(10):
    center = sampling.choose_center(case, (8, 8), rng, force_foreground=True, class_value=2)
    assert case.label[tuple(center.astype(int))] == 2


CLASS_VOXELS = [{"0": 90, "1": 10}] * 8 + [{"0": 100}, {"0": 95, "1": 4, "2": 1}]


def test_case_index_lists_cases_by_class():
  index = sampling.CaseIndex.from_class_voxels(CLASS_VOXELS)
  assert index.num_cases == 10
  assert sorted(index.cases_with_class) == [1, 2]
  np.testing.assert_array_equal(index.cases_with_class[1], [0, 1, 2, 3, 4, 5, 6, 7, 9])
  np.testing.assert_array_equal(index.cases_with_class[2], [9])
  np.testing.assert_array_equal(index.cases_with_foreground, [0, 1, 2, 3, 4, 5, 6, 7, 9])


def test_forced_samples_skip_cases_without_foreground():
  index = sampling.CaseIndex.from_class_voxels(CLASS_VOXELS)
  rng = np.random.default_rng(0)
  forced = [index.choose(rng, force_foreground=True, class_balanced=False) for _ in range(300)]
  assert all(case != 8 and value is None for case, value in forced)
  unforced = [index.choose(rng, force_foreground=False, class_balanced=False)[0] for _ in range(300)]
  assert 8 in unforced


def test_class_balanced_sampling_draws_rare_classes_as_often_as_common_ones():
  index = sampling.CaseIndex.from_class_voxels(CLASS_VOXELS)
  rng = np.random.default_rng(0)
  n = 2000
  balanced = [index.choose(rng, force_foreground=True, class_balanced=True) for _ in range(n)]
  rare = sum(value == 2 for _, value in balanced)
  assert all(case == 9 for case, value in balanced if value == 2)
  # Class 2 is half of the draws (binomial std 22); without balancing, case 9 (the
  # only one holding it) is 1 of 9 foreground cases and class 2 one of its 2 classes.
  assert abs(rare - n / 2) < 100
  plain = [index.choose(rng, force_foreground=True, class_balanced=False)[0] for _ in range(n)]
  assert abs(sum(case == 9 for case in plain) - n / 9) < 60

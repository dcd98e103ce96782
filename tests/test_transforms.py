"""Patch sampling and augmentation: shapes, padding, foreground share, seeding."""

import math

import numpy as np
import pytest

from jaxseg.config import base_config
from jaxseg.data import transforms


def _case(shape=(6, 20, 24), channels=2):
  rng = np.random.default_rng(0)
  image = rng.normal(size=(*shape, channels)).astype(np.float32)
  label = np.zeros(shape, np.uint8)
  label[2, 5:8, 6:9] = 1
  label[4, 15:17, 18:20] = 2
  return transforms.make_case("c0", image, label, (5.0, 1.0, 1.0), {})


def test_class_locations_lists_every_foreground_voxel():
  case = _case()
  assert sorted(case.locations) == [1, 2]
  assert len(case.locations[1]) == 9 and len(case.locations[2]) == 4
  for value, coords in case.locations.items():
    assert np.all(case.label[tuple(coords.T)] == value)


@pytest.mark.parametrize("batch,fraction", [(8, 1 / 3), (2, 1 / 3), (5, 0.5), (4, 0.0), (4, 1.0)])
def test_forced_foreground_count_is_ceil_of_fraction(batch, fraction):
  forced = sum(transforms.is_forced_foreground(i, batch, fraction) for i in range(batch))
  assert forced == math.ceil(batch * fraction - 1e-9)


def test_forced_sample_is_centred_on_foreground():
  case = _case()
  rng = np.random.default_rng(1)
  for _ in range(20):
    center = transforms.choose_center(case, (8, 8), rng, force_foreground=True)
    assert case.label[tuple(center.astype(int))] > 0


def test_extract_patch_pads_with_case_minimum_and_background():
  case = _case()
  image, label = transforms.extract_patch(case, np.array([2.0, 0.0, 0.0]), (8, 8))
  assert image.shape == (8, 8, 2) and label.shape == (8, 8)
  np.testing.assert_array_equal(image[:4, :, 0], case.pad_value[0])  # Above the volume.
  np.testing.assert_array_equal(image[4:, 4:], case.image[2, :4, :4])
  np.testing.assert_array_equal(label[:4], 0)


def test_identity_transform_equals_plain_crop():
  case = _case()
  center = np.array([2.0, 6.0, 7.0])
  crop = transforms.extract_patch(case, center, (8, 8))
  # A zoom of exactly 1 and no rotation through the interpolating path:
  warped = transforms.extract_patch(case, center, (8, 8), angle=1e-12, scale=1.0)
  np.testing.assert_allclose(warped[0][1:-1, 1:-1], crop[0][1:-1, 1:-1], atol=1e-5)
  np.testing.assert_array_equal(warped[1], crop[1])


def test_rotation_by_90_degrees_rotates_the_label():
  case = _case()
  center = np.array([2.0, 6.0, 7.0])
  _, label = transforms.extract_patch(case, center, (9, 9))
  _, rotated = transforms.extract_patch(case, center, (9, 9), angle=math.pi / 2)
  assert sorted(map(tuple, np.argwhere(rotated == 1))) == sorted(
      map(tuple, np.argwhere(np.rot90(label, k=-1) == 1)))


def test_3d_patch_shape_and_padding():
  case = _case()
  image, label = transforms.extract_patch(case, np.array([1.0, 10.0, 12.0]), (4, 8, 8))
  assert image.shape == (4, 8, 8, 2) and label.shape == (4, 8, 8)
  np.testing.assert_array_equal(label[0], 0)  # Slice -1 is outside the volume.


def test_training_sample_is_seeded():
  config = base_config()
  config.data.augment.flip_axes = (0, 1)
  config.data.augment.rotate_prob = 1.0
  case = _case()
  a = transforms.training_sample(case, (8, 8), np.random.default_rng([3, 7]), force_foreground=True,
                                 augment=config.data.augment)
  b = transforms.training_sample(case, (8, 8), np.random.default_rng([3, 7]), force_foreground=True,
                                 augment=config.data.augment)
  c = transforms.training_sample(case, (8, 8), np.random.default_rng([3, 8]), force_foreground=True,
                                 augment=config.data.augment)
  np.testing.assert_array_equal(a["image"], b["image"])
  assert a["image"].dtype == np.float32 and a["label"].dtype == np.int32
  assert not np.array_equal(a["image"], c["image"])

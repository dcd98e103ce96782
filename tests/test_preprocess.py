"""Tests for jaxseg.data.preprocess: orientation, plans, resampling."""

import json
import math

import numpy as np
import pytest

from jaxseg.data import preprocess
from jaxseg.data.nifti import LoadedCase
from jaxseg.errors import ConfigError
from jaxseg.errors import DataError

LABELS = {"background": 0, "liver": 1, "tumour": 2}


def _affine(spacing_xyz, origin=(-20.0, 10.0, 5.0)):
  affine = np.diag(list(spacing_xyz) + [1.0])
  affine[:3, 3] = origin
  return affine


def _volume(shape=(6, 5, 4), channels=2, seed=0):
  """Random [X, Y, Z, C] image and [X, Y, Z] label."""
  rng = np.random.default_rng(seed)
  image = rng.normal(size=shape + (channels,)).astype(np.float32)
  label = rng.integers(0, 3, shape).astype(np.uint8)
  return image, label


def _flip(array, affine, axis):
  """Same world content with voxel axis `axis` stored in reverse order."""
  n = array.shape[axis]
  flip = np.eye(4)
  flip[axis, axis] = -1.0
  flip[axis, 3] = n - 1
  return np.flip(array, axis), affine @ flip


def _permute(array, affine, order):
  """Same world content with voxel axes stored in `order` (new axis k = old
  axis order[k])."""
  perm = np.zeros((4, 4))
  for new, old in enumerate(order):
    perm[old, new] = 1.0
  perm[3, 3] = 1.0
  full_order = tuple(order) + tuple(range(3, array.ndim))
  return np.transpose(array, full_order), affine @ perm


def _zscore(x):
  x = x.astype(np.float64)
  return (x - x.mean()) / x.std()


def _dice(a, b):
  return 2.0 * np.logical_and(a, b).sum() / (a.sum() + b.sum())


def _sphere(shape, spacing, center_mm, radius_mm):
  grids = np.meshgrid(*[np.arange(n) * s for n, s in zip(shape, spacing)], indexing="ij")
  d2 = sum((g - c) ** 2 for g, c in zip(grids, center_mm))
  return d2 <= radius_mm**2


def _plan(target_zyx, channel_names=("MR", "T2"), labels=None):
  return preprocess.Plan(
    target_spacing=tuple(target_zyx),
    normalization=[{"scheme": "zscore"} for _ in channel_names],
    channel_names=list(channel_names),
    labels=labels or LABELS,
  )


# Canonical orientation.


def test_to_canonical_of_ras_is_a_transpose():
  image, label = _volume()
  image_zyx, label_zyx, info = preprocess.to_canonical(image, label, _affine((2.0, 3.0, 4.0)))
  np.testing.assert_array_equal(image_zyx, image.transpose(2, 1, 0, 3))
  np.testing.assert_array_equal(label_zyx, label.transpose(2, 1, 0))
  assert image_zyx.dtype == np.float32 and label_zyx.dtype == np.uint8
  assert info.spacing == pytest.approx((4.0, 3.0, 2.0))
  assert info.original_shape == (6, 5, 4)


def _las(image, label, affine):
  image_f, affine_f = _flip(image, affine, 0)
  return image_f, np.flip(label, 0), affine_f


def _lpi(image, label, affine):
  for axis in range(3):
    image, new_affine = _flip(image, affine, axis)
    label = np.flip(label, axis)
    affine = new_affine
  return image, label, affine


def _permuted(image, label, affine):
  image_p, affine_p = _permute(image, affine, (2, 0, 1))
  return image_p, np.transpose(label, (2, 0, 1)), affine_p


def _permuted_and_flipped(image, label, affine):
  image, label, affine = _permuted(image, label, affine)
  image, affine_f = _flip(image, affine, 1)
  return image, np.flip(label, 1), affine_f


def _oblique(image, label, affine):
  """10 degrees about z: the closest canonical orientation is still RAS."""
  angle = math.radians(10.0)
  rotation = np.eye(4)
  rotation[:2, :2] = [[math.cos(angle), -math.sin(angle)], [math.sin(angle), math.cos(angle)]]
  return image, label, rotation @ affine


@pytest.mark.parametrize("variant", [_las, _lpi, _permuted, _permuted_and_flipped, _oblique])
def test_to_canonical_is_independent_of_storage_order(variant):
  image, label = _volume()
  affine = _affine((2.0, 3.0, 4.0))
  ref_image, ref_label, ref_info = preprocess.to_canonical(image, label, affine)
  var_image, var_label, var_affine = variant(image, label, affine)
  image_zyx, label_zyx, info = preprocess.to_canonical(var_image, var_label, var_affine)
  np.testing.assert_array_equal(image_zyx, ref_image)
  np.testing.assert_array_equal(label_zyx, ref_label)
  assert info.spacing == pytest.approx(ref_info.spacing)
  # And back to the storage order of the file.
  np.testing.assert_array_equal(preprocess.from_canonical(image_zyx, info), var_image)
  np.testing.assert_array_equal(preprocess.from_canonical(label_zyx, info), var_label)


def test_singular_affine_is_rejected():
  image, label = _volume()
  affine = _affine((2.0, 3.0, 4.0))
  affine[:3, 1] = affine[:3, 0]
  with pytest.raises(DataError, match="orientation"):
    preprocess.to_canonical(image, label, affine)


# Fingerprint and plan.


def _ct_cases():
  """Two cases whose foreground voxels are 0..99 and 100..199 HU."""
  cases = []
  for start, spacing in ((0, (2.0, 0.5, 0.5)), (100, (3.0, 0.7, 0.7))):
    image = np.full((2, 10, 10, 1), -1000.0, np.float32)
    label = np.zeros((2, 10, 10), np.uint8)
    image[0, :, :, 0] = np.arange(start, start + 100).reshape(10, 10)
    label[0] = 1 + (start // 100)
    cases.append((image, label, spacing))
  return cases


def test_fingerprint_hand_computed():
  fp = preprocess.compute_fingerprint(_ct_cases())
  assert fp.spacings == [(2.0, 0.5, 0.5), (3.0, 0.7, 0.7)]
  assert fp.shapes == [(2, 10, 10), (2, 10, 10)]
  (stats,) = fp.intensity
  # Foreground voxels are 0, 1, ..., 199 (background -1000 never enters).
  assert stats["mean"] == pytest.approx(99.5)
  assert stats["std"] == pytest.approx(math.sqrt((200**2 - 1) / 12))
  assert stats["min"] == 0.0 and stats["max"] == 199.0
  # Linear interpolation at positions 0.005 * 199 and 0.995 * 199.
  assert stats["p00_5"] == pytest.approx(0.995)
  assert stats["p99_5"] == pytest.approx(198.005)
  restored = preprocess.Fingerprint.from_dict(json.loads(json.dumps(fp.to_dict())))
  assert restored == fp


def test_fingerprint_samples_percentiles_but_not_mean():
  n = preprocess.PERCENTILE_SAMPLES_PER_CASE + 2000
  values = np.arange(n, dtype=np.float32)
  image = values.reshape(1, 1, n, 1)
  label = np.ones((1, 1, n), np.uint8)
  fp = preprocess.compute_fingerprint([(image, label, (1.0, 1.0, 1.0))])
  (stats,) = fp.intensity
  assert stats["mean"] == pytest.approx((n - 1) / 2)
  assert stats["min"] == 0 and stats["max"] == n - 1
  assert stats["p00_5"] == pytest.approx(0.005 * (n - 1), abs=0.01 * n)
  assert stats["p99_5"] == pytest.approx(0.995 * (n - 1), abs=0.01 * n)
  again = preprocess.compute_fingerprint([(image, label, (1.0, 1.0, 1.0))])
  assert again == fp  # the sample is seeded


def test_per_case_statistics_merge_to_the_pooled_float64_statistics():
  rng = np.random.default_rng(0)
  cases = []
  for size in (50, 7, 300):
    image = rng.normal(40.0, 9.0, (1, 2, size, 2)).astype(np.float32)
    label = (rng.uniform(size=(1, 2, size)) < 0.6).astype(np.uint8)
    cases.append((image, label, (2.0, 1.0, 1.0)))
  # What worker processes send: per-case statistics, in training order.
  parts = [preprocess.case_statistics(im, lb, sp, i) for i, (im, lb, sp) in enumerate(cases)]
  assert preprocess.merge_statistics(parts) == preprocess.compute_fingerprint(cases)
  pooled = np.concatenate([im[lb > 0].astype(np.float64) for im, lb, _ in cases])
  for c, stats in enumerate(preprocess.merge_statistics(parts).intensity):
    assert stats["mean"] == pytest.approx(pooled[:, c].mean(), rel=1e-12)
    assert stats["std"] == pytest.approx(pooled[:, c].std(), rel=1e-12)
    assert (stats["min"], stats["max"]) == (pooled[:, c].min(), pooled[:, c].max())
    assert stats["p00_5"] == pytest.approx(np.percentile(pooled[:, c], 0.5))


def test_fingerprint_without_foreground():
  image = np.ones((2, 3, 4, 1), np.float32)
  with pytest.raises(DataError, match="foreground"):
    preprocess.compute_fingerprint([(image, np.zeros((2, 3, 4), np.uint8), (1.0, 1.0, 1.0))])


def test_ct_plan_and_normalisation_hand_computed():
  fp = preprocess.compute_fingerprint(_ct_cases())
  plan = preprocess.make_plan(fp, ["ct"], {"background": 0, "liver": 1, "spleen": 2}, target_spacing=(2.0, 1.0, 1.0))
  std = math.sqrt(3333.25)  # 57.7343...
  (norm,) = plan.normalization
  assert norm["scheme"] == "ct"
  assert norm["clip"] == pytest.approx([0.995, 198.005])
  assert norm["mean"] == pytest.approx(99.5)
  assert norm["std"] == pytest.approx(std)
  # -1000 HU and 250 HU are clipped, 50 HU is inside the clip range.
  image = np.array([-1000.0, 50.0, 250.0], np.float32).reshape(3, 1, 1, 1)
  loaded = LoadedCase("c", image, None, _affine((1.0, 1.0, 2.0)), (1.0, 1.0, 2.0))
  out = preprocess.preprocess_case(loaded, plan).image[0, 0, :, 0]
  np.testing.assert_allclose(out, [(0.995 - 99.5) / std, (50 - 99.5) / std, (198.005 - 99.5) / std], rtol=1e-6)


def test_plan_zscore_channel_and_json_round_trip():
  image = np.zeros((2, 4, 4, 2), np.float32)
  image[..., 0] = 10.0
  image[0, 0, 0, :] = 20.0
  label = np.zeros((2, 4, 4), np.uint8)
  label[0, 0, 0] = 1
  fp = preprocess.compute_fingerprint([(image, label, (1.0, 1.0, 1.0))])
  plan = preprocess.make_plan(fp, ["CT", "T2w"], LABELS)
  assert plan.normalization[1] == {"scheme": "zscore", "use_mask": False}
  assert plan.target_spacing == (1.0, 1.0, 1.0)
  assert plan.channel_names == ["CT", "T2w"] and plan.labels == LABELS
  restored = preprocess.Plan.from_dict(json.loads(json.dumps(plan.to_dict())))
  assert restored == plan


@pytest.mark.parametrize(
  "spacings,shapes,expected",
  [
    # Not anisotropic: the median per axis.
    ([(1.0, 0.8, 0.8), (2.0, 0.9, 0.9), (1.5, 0.7, 0.7)], [(100, 256, 256)], (1.5, 0.8, 0.8)),
    # z median 3.0 > 3 * 0.8 and 40 * 3 < 256 voxels: 10th percentile of
    # [2.5, 3.0, 5.0] = 2.5 + 0.2 * (3.0 - 2.5) = 2.6.
    ([(2.5, 0.8, 0.8), (3.0, 0.7, 0.7), (5.0, 0.9, 0.9)], [(40, 256, 256)], (2.6, 0.8, 0.8)),
    # Same spacings but 100 * 3 >= 256 voxels: the median.
    ([(2.5, 0.8, 0.8), (3.0, 0.7, 0.7), (5.0, 0.9, 0.9)], [(100, 256, 256)], (3.0, 0.8, 0.8)),
    # Coarsest axis x (e.g. sagittal): 10th percentile of [4, 5, 6] = 4.2.
    ([(0.9, 0.9, 4.0), (1.0, 1.0, 5.0), (1.1, 1.1, 6.0)], [(200, 200, 30)], (1.0, 1.0, 4.2)),
    # 10th percentile of [0.5, 0.5, 5, 5, 5, 5, 5] is 0.5, finer than the
    # in-plane 1.0: raised to 1.0 + 1e-5.
    ([(0.5, 1.0, 1.0)] * 2 + [(5.0, 1.0, 1.0)] * 5, [(20, 256, 256)], (1.00001, 1.0, 1.0)),
  ],
)
def test_target_spacing_rule(spacings, shapes, expected):
  fp = preprocess.Fingerprint(
    spacings=spacings,
    shapes=shapes * (len(spacings) // len(shapes)),
    intensity=[{"mean": 0.0, "std": 1.0, "p00_5": 0.0, "p99_5": 1.0, "min": 0.0, "max": 1.0}],
  )
  plan = preprocess.make_plan(fp, ["MR"], LABELS)
  assert plan.target_spacing == pytest.approx(expected, rel=1e-9)


def test_target_spacing_override_and_bad_override():
  fp = preprocess.compute_fingerprint(_ct_cases())
  plan = preprocess.make_plan(fp, ["CT"], LABELS, target_spacing=[3, 1, 1])
  assert plan.target_spacing == (3.0, 1.0, 1.0)
  for bad in ([1.0, 1.0], [1.0, 0.0, 1.0], [1.0, float("nan"), 1.0]):
    with pytest.raises(ConfigError, match="target_spacing"):
      preprocess.make_plan(fp, ["CT"], LABELS, target_spacing=bad)
  with pytest.raises(DataError, match="channel"):
    preprocess.make_plan(fp, ["CT", "PET"], LABELS)


# preprocess_case and restore_to_original.


def _boxed_case(variant=None):
  """A LoadedCase that is zero outside a box, with a label sphere inside it
  and one labelled voxel outside it; spacing (x, y, z) = (1, 1, 2) mm."""
  shape = (16, 14, 10)
  image = np.zeros(shape + (2,), np.float32)
  rng = np.random.default_rng(1)
  image[3:13, 2:12, 1:8] = rng.uniform(1.0, 2.0, (10, 10, 7, 2))
  label = _sphere(shape, (1.0, 1.0, 2.0), (8.0, 7.0, 8.0), 4.0).astype(np.uint8)
  label[7:9, 6:8, 4] = 2
  label[14, 12, 9] = 1  # outside the non-zero image: kept by the crop
  affine = _affine((1.0, 1.0, 2.0))
  if variant is not None:
    image, label, affine = variant(image, label, affine)
  spacing = tuple(np.linalg.norm(affine[:3, :3], axis=0))
  return LoadedCase("box", image, label, affine, spacing)


@pytest.mark.parametrize("variant", [None, _las, _permuted_and_flipped])
def test_round_trip_is_exact_when_spacing_matches(variant):
  loaded = _boxed_case(variant)
  pp = preprocess.preprocess_case(loaded, _plan((2.0, 1.0, 1.0)))
  # Canonical [Z, Y, X] bounding box of the box and the extra label voxel.
  assert pp.meta["crop_bbox"] == [[1, 10], [2, 13], [3, 15]]
  assert pp.image.shape == (9, 11, 12, 2) and pp.image.dtype == np.float32
  assert pp.label.shape == (9, 11, 12) and pp.label.dtype == np.uint8
  assert pp.spacing == (2.0, 1.0, 1.0)
  meta = json.loads(json.dumps(pp.meta))  # survives JSON
  restored = preprocess.restore_to_original(pp.label, meta, is_label=True)
  np.testing.assert_array_equal(restored, loaded.label)
  # Probabilities: one-hot of the label; background probability 1 outside.
  probs = np.eye(3, dtype=np.float32)[pp.label]
  restored_probs = preprocess.restore_to_original(probs, meta, is_label=False)
  assert restored_probs.shape == loaded.label.shape + (3,)
  np.testing.assert_array_equal(restored_probs.argmax(-1), loaded.label)
  np.testing.assert_allclose(restored_probs.sum(-1), 1.0)


def test_zscore_over_cropped_region():
  loaded = _boxed_case()
  pp = preprocess.preprocess_case(loaded, _plan((2.0, 1.0, 1.0)))
  cropped = loaded.image[3:15, 2:13, 1:10].transpose(2, 1, 0, 3)
  for c in range(2):
    np.testing.assert_allclose(pp.image[..., c], _zscore(cropped[..., c]), rtol=1e-5, atol=1e-5)


def test_spacing_within_tolerance_is_not_resampled():
  loaded = _boxed_case()
  pp = preprocess.preprocess_case(loaded, _plan((2.001, 0.9995, 1.0008)))
  assert pp.image.shape == (9, 11, 12, 2)
  assert pp.spacing == (2.001, 0.9995, 1.0008)
  np.testing.assert_array_equal(preprocess.restore_to_original(pp.label, pp.meta, is_label=True), loaded.label)


@pytest.mark.parametrize("variant", [None, _permuted_and_flipped])
def test_round_trip_after_resampling_keeps_a_sphere(variant):
  shape, spacing = (28, 26, 12), (0.8, 0.8, 2.0)
  label = _sphere(shape, spacing, (11.0, 10.0, 11.0), 7.0).astype(np.uint8)
  image = np.where(label > 0, 100.0, 20.0).astype(np.float32)[..., None]
  image, label, affine = (image, label, _affine(spacing))
  if variant is not None:
    image, label, affine = variant(image, label, affine)
  loaded = LoadedCase("s", image, label, affine, tuple(np.linalg.norm(affine[:3, :3], axis=0)))
  pp = preprocess.preprocess_case(loaded, _plan((1.2, 1.2, 1.2), ["MR"]))
  # round(12 * 2 / 1.2), round(26 * 0.8 / 1.2), round(28 * 0.8 / 1.2)
  assert pp.image.shape == (20, 17, 19, 1)
  volume_mm3 = pp.label.sum() * 1.2**3
  assert volume_mm3 == pytest.approx(4 / 3 * math.pi * 7.0**3, rel=0.1)
  restored = preprocess.restore_to_original(pp.label, pp.meta, is_label=True)
  assert restored.shape == label.shape
  assert _dice(restored > 0, label > 0) > 0.95
  probs = np.stack([pp.label == 0, pp.label == 1], -1).astype(np.float32)
  restored_probs = preprocess.restore_to_original(probs, pp.meta, is_label=False)
  assert _dice(restored_probs[..., 1] > 0.5, label > 0) > 0.95
  np.testing.assert_allclose(restored_probs.sum(-1), 1.0, rtol=1e-6)


def test_anisotropic_axis_is_resampled_with_nearest_neighbour():
  # z spacing 2.5 mm vs 0.5 mm in-plane (ratio 5): z is the separate axis.
  shape, spacing = (8, 8, 4), (0.5, 0.5, 2.5)
  rng = np.random.default_rng(3)
  image = rng.uniform(1.0, 2.0, shape + (1,)).astype(np.float32)
  loaded = LoadedCase("a", image, None, _affine(spacing), spacing)
  pp = preprocess.preprocess_case(loaded, _plan((1.25, 0.5, 0.5), ["MR"]))
  assert pp.image.shape == (8, 8, 8, 1) and pp.label is None
  expected = _zscore(image[..., 0]).transpose(2, 1, 0)
  # Each slice is copied twice, not interpolated.
  np.testing.assert_allclose(pp.image[0::2, ..., 0], expected, rtol=1e-5, atol=1e-6)
  np.testing.assert_array_equal(pp.image[0::2], pp.image[1::2])


def test_2d_case_keeps_a_single_slice():
  shape, spacing = (12, 10, 1), (0.5, 0.5, 1.0)
  label = _sphere(shape, spacing, (3.0, 2.5, 0.0), 1.6).astype(np.uint8)
  image = np.stack([label * 5.0 + 1.0, label * -2.0 + 3.0], -1).astype(np.float32)
  loaded = LoadedCase("cell", image, label, _affine(spacing), spacing)
  pp = preprocess.preprocess_case(loaded, _plan((4.0, 0.25, 0.25)))
  assert pp.image.shape == (1, 20, 24, 2)
  assert pp.label.shape == (1, 20, 24)
  restored = preprocess.restore_to_original(pp.label, pp.meta, is_label=True)
  assert restored.shape == (12, 10, 1)
  np.testing.assert_array_equal(restored, label)


def test_restore_checks_shape():
  pp = preprocess.preprocess_case(_boxed_case(), _plan((2.0, 1.0, 1.0)))
  with pytest.raises(ValueError, match="shape"):
    preprocess.restore_to_original(pp.label[1:], pp.meta, is_label=True)
  with pytest.raises(ValueError, match="K"):
    preprocess.restore_to_original(pp.label, pp.meta, is_label=False)


def test_channel_count_must_match_plan():
  with pytest.raises(DataError, match="channels"):
    preprocess.preprocess_case(_boxed_case(), _plan((2.0, 1.0, 1.0), ["CT"]))


# nnU-Net's use_mask_for_norm and probability export.


def _framed_case(frame):
  """[Z, Y, X, C] = [4, 8, 8, 2]: intensities inside a box, zeros in a frame of `frame` voxels."""
  image = np.zeros((4, 8, 8, 2), np.float32)
  inner = (slice(None), slice(frame, 8 - frame), slice(frame, 8 - frame))
  image[inner] = np.random.default_rng(frame).uniform(1.0, 2.0, image[inner].shape)
  label = np.zeros((4, 8, 8), np.uint8)
  label[1:3, 3:5, 3:5] = 1
  return image, label, (1.0, 1.0, 1.0)


def test_use_mask_for_norm_when_cropping_shrinks_the_median_case_by_a_quarter():
  # Frame 2: 4 x 4 x 4 of 4 x 8 x 8 voxels remain (1/4); frame 1: 6 x 6 of 8 x 8 (9/16).
  for frame, relative, use_mask in ((2, 0.25, True), (1, 36 / 64, True)):
    fp = preprocess.compute_fingerprint([_framed_case(frame)] * 3)
    assert fp.median_relative_size_after_cropping == pytest.approx(relative)
    plan = preprocess.make_plan(fp, ["CT", "T1"], LABELS)
    assert plan.normalization[0]["scheme"] == "ct" and "use_mask" not in plan.normalization[0]
    assert plan.normalization[1] == {"scheme": "zscore", "use_mask": use_mask}
  # Cropping that keeps more than 3/4 of the voxels: per-image z-score over everything.
  image, label, spacing = _framed_case(2)
  image[:, :, 1:7] = 1.5  # Non-zero except two columns: 6/8 of the voxels are kept.
  fp = preprocess.compute_fingerprint([(image, label, spacing)])
  assert fp.median_relative_size_after_cropping == pytest.approx(0.75)
  assert preprocess.make_plan(fp, ["T1", "T2"], LABELS).normalization[0] == {"scheme": "zscore", "use_mask": False}


def test_zscore_within_the_nonzero_mask_fills_holes_and_zeroes_the_outside():
  image = np.zeros((3, 7, 7, 1), np.float32)
  image[:, 1:6, 1:6, 0] = np.arange(1, 76, dtype=np.float32).reshape(3, 5, 5)
  image[1, 3, 3, 0] = 0.0  # An enclosed hole: part of the mask (binary_fill_holes), as in nnU-Net.
  out = preprocess._normalize(image, [{"scheme": "zscore", "use_mask": True}])
  inside = np.zeros((3, 7, 7), bool)
  inside[:, 1:6, 1:6] = True
  values = image[..., 0][inside].astype(np.float64)  # 74 values and the hole's 0.
  expected = (image[..., 0] - values.mean()) / values.std()
  np.testing.assert_allclose(out[..., 0][inside], expected[inside], rtol=1e-5, atol=1e-6)
  assert np.all(out[..., 0][~inside] == 0.0)
  plain = preprocess._normalize(image, [{"scheme": "zscore"}])
  np.testing.assert_allclose(plain[..., 0], (image[..., 0] - image.mean()) / image.std(), rtol=1e-5, atol=1e-6)


def test_probabilities_go_back_with_nearest_neighbour_along_the_thick_axis():
  # z 2.5 mm vs 0.5 mm in-plane: preprocessing doubled the slices; going back picks slices, never blends them.
  shape, spacing = (8, 8, 4), (0.5, 0.5, 2.5)
  image = np.random.default_rng(3).uniform(1.0, 2.0, shape + (1,)).astype(np.float32)
  loaded = LoadedCase("a", image, None, _affine(spacing), spacing)
  pp = preprocess.preprocess_case(loaded, _plan((1.25, 0.5, 0.5), ["MR"]))
  assert pp.meta["target_spacing"] == [1.25, 0.5, 0.5]
  z = np.arange(8, dtype=np.float32) / 7
  probs = np.zeros((8, 8, 8, 2), np.float32)
  probs[..., 1] = z[:, None, None]
  probs[..., 0] = 1 - probs[..., 1]
  restored = preprocess.restore_to_original(probs, pp.meta, is_label=False)  # [X, Y, Z, K]
  assert restored.shape == (8, 8, 4, 2)
  for value in np.unique(restored[..., 1]):
    assert np.isclose(z, value).any(), value  # One of the preprocessed slices' values.
  # Metadata written before 'target_spacing' was stored gives the same result.
  old = {k: v for k, v in pp.meta.items() if k != "target_spacing"}
  np.testing.assert_array_equal(preprocess.restore_to_original(probs, old, is_label=False), restored)


def test_probability_export_beats_nearest_labels_on_a_downsampled_sphere():
  """A sphere segmented on a 2x coarser grid: resampling probabilities and taking the argmax (nnU-Net) is
  closer to the fine reference than resampling the argmax labels with nearest neighbour."""
  from jaxseg import inference

  shape, spacing = (40, 40, 40), (1.0, 1.0, 1.0)
  label = _sphere(shape, spacing, (19.3, 20.1, 19.7), 9.0).astype(np.uint8)
  image = np.where(label > 0, 100.0, 20.0).astype(np.float32)[..., None]
  loaded = LoadedCase("s", image, label, _affine(spacing), spacing)
  pp = preprocess.preprocess_case(loaded, _plan((2.0, 2.0, 2.0), ["MR"]))
  probs = np.eye(2, dtype=np.float32)[pp.label]
  by_probs, _ = inference.to_original_labels(probs, pp.meta, 2, "probabilities")
  by_labels, _ = inference.to_original_labels(probs, pp.meta, 2, "labels")
  assert by_probs.shape == by_labels.shape == label.shape
  assert (by_probs != by_labels).any()
  assert _dice(by_probs > 0, label > 0) > _dice(by_labels > 0, label > 0)

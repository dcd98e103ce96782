"""Tests for jaxseg.metrics.

Surface-metric cases are those published in DeepMind's surface-distance
library (surface_distance_test.py); the expected numbers are copied from it.
Where that library returns inf/NaN for empty masks, jaxseg's documented
conventions are checked instead.
"""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import ndimage

from jaxseg import metrics
from jaxseg.errors import ConfigError
from jaxseg.errors import DataError


def _directed_means(sd):
  """(reference -> prediction, prediction -> reference) mean distances."""
  return (
    np.sum(sd.ref_to_pred * sd.ref_sizes) / np.sum(sd.ref_sizes),
    np.sum(sd.pred_to_ref * sd.pred_sizes) / np.sum(sd.pred_sizes),
  )


def _directed_overlaps(sd, tolerance):
  return (
    np.sum(sd.ref_sizes[sd.ref_to_pred <= tolerance]) / np.sum(sd.ref_sizes),
    np.sum(sd.pred_sizes[sd.pred_to_ref <= tolerance]) / np.sum(sd.pred_sizes),
  )


def _binary(prediction, reference, spacing, **kwargs):
  return metrics.case_metrics(
    prediction.astype(np.int32), reference.astype(np.int32), spacing=spacing, labels={"fg": 1}, **kwargs
  )["fg"]


# ---------------------------------------------------------------------------
# Surfel sizes.
# ---------------------------------------------------------------------------


def test_surfel_sizes_2d_by_hand():
  sizes = metrics.surfel_sizes((2.0, 1.0))
  diag = 0.5 * math.sqrt(5.0)
  assert sizes[0b0000] == 0 and sizes[0b1111] == 0
  np.testing.assert_allclose(sizes[0b0001], diag)
  np.testing.assert_allclose(sizes[0b0011], 1.0)  # Horizontal contour.
  np.testing.assert_allclose(sizes[0b0101], 2.0)  # Vertical contour.
  np.testing.assert_allclose(sizes[0b0110], 2 * diag)  # Two corners cut.


def test_surfel_sizes_3d_by_hand():
  sizes = metrics.surfel_sizes((3.0, 2.0, 1.0))
  # One corner: triangle through (1.5, 0, 0), (0, 1, 0), (0, 0, 0.5) mm.
  np.testing.assert_allclose(sizes[1], 0.5 * 1.75)
  # Four voxels of one axis-0 layer: a plane of 2 x 1 mm^2.
  np.testing.assert_allclose(sizes[0b00001111], 2.0)
  # Two voxels along axis 2: rectangle of 1 mm by |(1.5, 1)| mm.
  np.testing.assert_allclose(sizes[0b00000011], math.hypot(1.5, 1.0))
  # Three corners: a non-planar pentagon, whose size depends on how it is
  # triangulated. DeepMind's table lists the unit-cell triangle normals
  # (0.5, 0, 0), (0.25, 0.25, 0.25) and (0.125, 0.125, 0.125), scaled by
  # (s1 s2, s0 s2, s0 s1) = (2, 3, 6): 1 + 0.25 * 7 + 0.125 * 7.
  np.testing.assert_allclose(sizes[0b00000111], 3.625)
  assert sizes[0] == 0 and sizes[255] == 0


@pytest.mark.parametrize("spacing", [(0.7, 1.9), (0.7, 1.9, 4.2)])
def test_surfel_sizes_complement_symmetric(spacing):
  sizes = metrics.surfel_sizes(spacing)
  np.testing.assert_allclose(sizes, sizes[::-1], rtol=1e-12)
  assert np.all(sizes[1:-1] > 0)


# ---------------------------------------------------------------------------
# Published 2D cases.
# ---------------------------------------------------------------------------


def test_2d_two_pixels_2mm_away():
  reference = np.zeros((128, 128), bool)
  prediction = np.zeros((128, 128), bool)
  reference[50, 70] = True
  prediction[50, 72] = True
  sd = metrics.surface_distances(prediction, reference, (2, 1))
  diag = 0.5 * math.sqrt(2**2 + 1**2)
  np.testing.assert_array_equal(sd.ref_sizes, [diag] * 4)
  np.testing.assert_array_equal(sd.pred_sizes, [diag] * 4)
  np.testing.assert_array_equal(sd.ref_to_pred, [1.0, 1.0, 2.0, 2.0])
  np.testing.assert_array_equal(sd.pred_to_ref, [1.0, 1.0, 2.0, 2.0])
  np.testing.assert_allclose(_directed_means(sd), (1.5, 1.5))
  assert metrics.robust_hausdorff(sd, 100) == 2.0
  assert metrics.robust_hausdorff(sd, 95) == 2.0
  np.testing.assert_allclose(_directed_overlaps(sd, 1.0), (0.5, 0.5))
  assert metrics.surface_dice(sd, 1.0) == 0.5

  result = _binary(prediction, reference, (2, 1))
  assert result["dice"] == 0.0
  assert result["hd95"] == 2.0
  assert result["assd"] == 1.5
  assert result["nsd"] == 0.5
  assert _binary(prediction, reference, (2, 1), tolerances_mm={"fg": 2.0})["nsd"] == 1.0


def test_2d_two_squares_shifted_by_one_pixel():
  reference = np.zeros((6, 6), bool)
  reference[1:3, 1:3] = True
  prediction = np.zeros((6, 6), bool)
  prediction[1:4, 1:3] = True
  vertical, horizontal = 2.0, 1.0
  diag = 0.5 * math.hypot(horizontal, vertical)
  # Published surfels, clockwise from the top left corner.
  ref_sizes = np.array([diag, horizontal, diag, vertical, diag, horizontal, diag, vertical])
  ref_to_pred = np.array([0] * 5 + [horizontal] + [0] * 2)
  pred_sizes = np.array([diag, horizontal, diag, vertical, vertical, diag, horizontal, diag, vertical, vertical])
  pred_to_ref = np.array([0] * 5 + [vertical] * 3 + [0] * 2)

  sd = metrics.surface_distances(prediction, reference, (vertical, horizontal))
  for got_d, got_s, want_d, want_s in (
    (sd.ref_to_pred, sd.ref_sizes, ref_to_pred, ref_sizes),
    (sd.pred_to_ref, sd.pred_sizes, pred_to_ref, pred_sizes),
  ):
    order = np.lexsort((want_s, want_d))
    np.testing.assert_array_equal(got_d, want_d[order])
    np.testing.assert_array_equal(np.sort(got_s), np.sort(want_s))
    for d in np.unique(want_d):  # Same sizes at each distance.
      np.testing.assert_array_equal(np.sort(got_s[got_d == d]), np.sort(want_s[want_d == d]))

  total = ref_sizes.sum() + pred_sizes.sum()
  want_assd = (np.sum(ref_to_pred * ref_sizes) + np.sum(pred_to_ref * pred_sizes)) / total
  want_nsd = (ref_sizes[ref_to_pred <= 1].sum() + pred_sizes[pred_to_ref <= 1].sum()) / total
  result = _binary(prediction, reference, (vertical, horizontal))
  np.testing.assert_allclose(result["assd"], want_assd)
  np.testing.assert_allclose(result["nsd"], want_nsd)
  # 95th percentile: prediction -> reference reaches 2 mm (3 of 10 surfels).
  assert result["hd95"] == 2.0
  np.testing.assert_allclose(result["dice"], 2 * 4 / (4 + 6))


# ---------------------------------------------------------------------------
# Published 3D cases.
# ---------------------------------------------------------------------------


def test_3d_two_voxels_2mm_away():
  reference = np.zeros((128, 128, 128), bool)
  prediction = np.zeros((128, 128, 128), bool)
  reference[50, 60, 70] = True
  prediction[50, 60, 72] = True
  sd = metrics.surface_distances(prediction, reference, (3, 2, 1))
  np.testing.assert_allclose(_directed_means(sd), (1.5, 1.5), atol=5e-4)
  np.testing.assert_allclose(metrics.robust_hausdorff(sd, 100), 2.0)
  np.testing.assert_allclose(_directed_overlaps(sd, 1.0), (0.5, 0.5), atol=5e-4)
  result = _binary(prediction, reference, (3, 2, 1))
  assert result["dice"] == 0.0
  np.testing.assert_allclose(result["hd95"], 2.0)
  np.testing.assert_allclose(result["assd"], 1.5, atol=5e-4)
  np.testing.assert_allclose(result["nsd"], 0.5, atol=5e-4)


def test_3d_two_cubes_shifted_by_one_voxel():
  reference = np.zeros((100, 100, 100), bool)
  prediction = np.zeros((100, 100, 100), bool)
  reference[0:50] = True
  prediction[0:51] = True
  sd = metrics.surface_distances(prediction, reference, (2, 1, 1))
  np.testing.assert_allclose(_directed_means(sd), (0.322, 0.339), atol=5e-4)
  np.testing.assert_allclose(metrics.robust_hausdorff(sd, 100), 2.0)
  np.testing.assert_allclose(_directed_overlaps(sd, 1.0), (0.842, 0.830), atol=5e-4)
  result = _binary(prediction, reference, (2, 1, 1))
  np.testing.assert_allclose(result["hd95"], 2.0)
  np.testing.assert_allclose(result["nsd"], 0.836, atol=5e-4)
  np.testing.assert_allclose(result["dice"], 0.990, atol=5e-4)
  # One extra layer of 100 x 100 voxels of 2 mm^3 = 20000 mm^3 = 20 mL.
  np.testing.assert_allclose(result["volume_difference"], 20.0)


# ---------------------------------------------------------------------------
# Empty masks (DeepMind's cases; jaxseg conventions).
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("shape,spacing", [((128, 128), (3, 2)), ((128, 128, 128), (3, 2, 1))])
def test_empty_masks(shape, spacing):
  empty = np.zeros(shape, bool)
  one = empty.copy()
  one[(50, 60, 70)[: len(shape)]] = True
  voxel_ml = math.prod(spacing) / 10 ** len(shape)

  both = _binary(empty, empty, spacing)
  assert both == {
    "dice": 1.0,
    "iou": 1.0,
    "sensitivity": 1.0,
    "specificity": 1.0,
    "precision": 1.0,
    "hd95": 0.0,
    "assd": 0.0,
    "nsd": 1.0,
    "volume_difference": 0.0,
  }

  no_prediction = _binary(empty, one, spacing)
  assert no_prediction["dice"] == 0.0 and no_prediction["iou"] == 0.0
  assert no_prediction["sensitivity"] == 0.0
  assert no_prediction["precision"] == 1.0
  assert no_prediction["specificity"] == 1.0
  assert no_prediction["nsd"] == 0.0
  assert math.isnan(no_prediction["hd95"])
  assert math.isnan(no_prediction["assd"])
  np.testing.assert_allclose(no_prediction["volume_difference"], -voxel_ml)

  no_reference = _binary(one, empty, spacing)
  assert no_reference["dice"] == 0.0 and no_reference["iou"] == 0.0
  assert no_reference["sensitivity"] == 1.0
  assert no_reference["precision"] == 0.0
  np.testing.assert_allclose(no_reference["specificity"], 1 - 1 / math.prod(shape))
  assert no_reference["nsd"] == 0.0
  assert math.isnan(no_reference["hd95"])
  assert math.isnan(no_reference["assd"])
  np.testing.assert_allclose(no_reference["volume_difference"], voxel_ml)


def test_specificity_without_negatives():
  full = np.ones((3, 4), np.int32)
  result = metrics.case_metrics(full, full, spacing=(1, 1), labels={"fg": 1})
  assert result["fg"]["specificity"] == 1.0
  assert result["fg"]["dice"] == 1.0


# ---------------------------------------------------------------------------
# Overlap metrics, classes, invariances, errors.
# ---------------------------------------------------------------------------


def test_overlap_metrics_by_hand():
  reference = np.array([[0, 1, 1, 0], [0, 1, 1, 0], [0, 0, 2, 2], [0, 0, 0, 0]])
  prediction = np.array([[0, 1, 1, 1], [0, 1, 0, 0], [0, 0, 2, 0], [0, 0, 0, 0]])
  result = metrics.case_metrics(prediction, reference, spacing=(0.5, 2.0), labels={"background": 0, "a": 1, "b": 2})
  assert set(result) == {"a", "b"}
  assert all(set(r) == set(metrics.METRIC_NAMES) for r in result.values())
  a = result["a"]  # TP 3, FP 1, FN 1, TN 11.
  np.testing.assert_allclose(
    [a["dice"], a["iou"], a["sensitivity"], a["specificity"], a["precision"], a["volume_difference"]],
    [6 / 8, 3 / 5, 3 / 4, 11 / 12, 3 / 4, 0.0],
  )
  b = result["b"]  # TP 1, FP 0, FN 1, TN 14; pixels of 1 mm^2 = 0.01 cm^2.
  np.testing.assert_allclose(
    [b["dice"], b["iou"], b["sensitivity"], b["specificity"], b["precision"], b["volume_difference"]],
    [2 / 3, 1 / 2, 1 / 2, 1.0, 1.0, -0.01],
  )


def test_classes_match_binary_masks():
  rng = np.random.default_rng(0)
  reference = rng.integers(0, 3, (6, 7, 8))
  prediction = np.where(rng.random((6, 7, 8)) < 0.3, rng.integers(0, 3, (6, 7, 8)), reference)
  spacing = (2.0, 1.0, 0.5)
  result = metrics.case_metrics(
    prediction, reference, spacing=spacing, labels={"x": 1, "y": 2}, tolerances_mm={"y": 2.5}
  )
  for name, value, tol in (("x", 1, 1.0), ("y", 2, 2.5)):
    binary = _binary(prediction == value, reference == value, spacing, tolerances_mm={"fg": tol})
    assert result[name] == binary


def test_invariant_to_axis_permutation_and_flips():
  rng = np.random.default_rng(1)

  def blob():
    smooth = ndimage.gaussian_filter(rng.random((12, 10, 9)), 1.5)
    return (smooth > 0.5).astype(np.int32)

  reference, prediction = blob(), blob()
  spacing = (2.5, 1.0, 0.7)
  base = _binary(prediction, reference, spacing)
  perm = (2, 0, 1)
  permuted = _binary(prediction.transpose(perm), reference.transpose(perm), tuple(spacing[p] for p in perm))
  flipped = _binary(prediction[::-1, :, ::-1], reference[::-1, :, ::-1], spacing)
  for other in (permuted, flipped):
    for name in metrics.METRIC_NAMES:
      np.testing.assert_allclose(other[name], base[name], rtol=1e-12, err_msg=name)


@pytest.mark.parametrize(
  "prediction,reference,spacing,message",
  [
    (np.zeros((4, 4), np.int32), np.zeros((4, 5), np.int32), (1, 1), "differs from reference shape"),
    (np.zeros((4, 4), np.float32), np.zeros((4, 4), np.int32), (1, 1), "integer label array"),
    (np.zeros((4,), np.int32), np.zeros((4,), np.int32), (1,), "2D or 3D"),
    (np.zeros((4, 4), np.int32), np.zeros((4, 4), np.int32), (1, 1, 1), "spacing must hold 2"),
    (np.zeros((4, 4), np.int32), np.zeros((4, 4), np.int32), (1, 0), "positive voxel sizes"),
  ],
)
def test_bad_arrays_raise_data_error(prediction, reference, spacing, message):
  with pytest.raises(DataError, match=message):
    metrics.case_metrics(prediction, reference, spacing=spacing, labels={"fg": 1})


@pytest.mark.parametrize(
  "labels,tolerances,message",
  [
    ({"background": 0}, None, "no foreground class"),
    ({"fg": 1.5}, None, "integer label value"),
    ({"fg": 1}, {"other": 1.0}, "not a foreground class"),
    ({"fg": 1}, {"fg": 0.0}, "must be > 0 mm"),
  ],
)
def test_bad_config_raises_config_error(labels, tolerances, message):
  zeros = np.zeros((4, 4), np.int32)
  with pytest.raises(ConfigError, match=message):
    metrics.case_metrics(zeros, zeros, spacing=(1, 1), labels=labels, tolerances_mm=tolerances)


# ---------------------------------------------------------------------------
# Device-side counts and the clu metric.
# ---------------------------------------------------------------------------


def _numpy_counts(pred, ref, num_classes, valid):
  rows = []
  for k in range(num_classes):
    p, r = (pred == k) & valid, (ref == k) & valid
    tp = np.sum(p & r)
    fp = np.sum(p & ~r)
    fn = np.sum(~p & r)
    rows.append([tp, fp, fn, valid.sum() - tp - fp - fn])
  return np.array(rows, np.float32)


def test_confusion_counts_match_numpy_with_masks():
  rng = np.random.default_rng(2)
  pred = rng.integers(0, 3, (2, 5, 6))
  ref = rng.integers(0, 3, (2, 5, 6))
  np.testing.assert_array_equal(
    metrics.confusion_counts(pred, ref, 3), _numpy_counts(pred, ref, 3, np.ones(pred.shape, bool))
  )
  voxel_mask = rng.random((2, 5, 6)) < 0.6
  np.testing.assert_array_equal(
    metrics.confusion_counts(pred, ref, 3, voxel_mask), _numpy_counts(pred, ref, 3, voxel_mask)
  )
  example_mask = np.array([True, False])
  np.testing.assert_array_equal(
    metrics.confusion_counts(pred, ref, 3, example_mask),
    _numpy_counts(pred, ref, 3, np.broadcast_to(example_mask[:, None, None], pred.shape)),
  )


@pytest.mark.parametrize("implementation", [metrics._counts_by_bincount, metrics._counts_by_comparison])
def test_both_count_implementations_agree_with_numpy(implementation):
  rng = np.random.default_rng(4)
  # -1 and 255 (an 'ignore' label) are outside [0, 4): negatives everywhere.
  values = np.array([-1, 0, 1, 2, 3, 255])
  pred = rng.choice(values, (3, 7, 5))
  ref = rng.choice(values, (3, 7, 5))
  valid = rng.random((3, 7, 5)) < 0.8
  counts = jax.jit(implementation, static_argnums=3)(pred, ref, valid, 4)
  np.testing.assert_array_equal(counts, _numpy_counts(pred, ref, 4, valid))


def test_scores_from_counts_match_case_metrics():
  rng = np.random.default_rng(3)
  ref = rng.integers(0, 3, (5, 6, 7))
  pred = np.where(rng.random(ref.shape) < 0.4, rng.integers(0, 3, ref.shape), ref)
  scores = metrics.scores_from_counts(metrics.confusion_counts(pred, ref, 3))
  host = metrics.case_metrics(pred, ref, spacing=(1, 1, 1), labels={"a": 1, "b": 2})
  for k, name in ((1, "a"), (2, "b")):
    for score in ("dice", "iou", "sensitivity", "specificity", "precision"):
      np.testing.assert_allclose(scores[score][k], host[name][score], rtol=1e-6)


def test_scores_from_counts_empty_conventions():
  counts = jnp.array(
    [
      [0, 0, 0, 10],  # Both empty.
      [0, 3, 0, 7],  # Only reference empty.
      [0, 0, 4, 6],  # Only prediction empty.
      [5, 0, 0, 0],
    ],  # No negatives.
    jnp.float32,
  )
  s = {k: np.asarray(v) for k, v in metrics.scores_from_counts(counts).items()}
  np.testing.assert_array_equal(s["dice"], [1, 0, 0, 1])
  np.testing.assert_array_equal(s["iou"], [1, 0, 0, 1])
  np.testing.assert_array_equal(s["sensitivity"], [1, 1, 0, 1])
  np.testing.assert_array_equal(s["precision"], [1, 0, 1, 1])
  np.testing.assert_allclose(s["specificity"], [1, 0.7, 1, 1])

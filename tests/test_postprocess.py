"""Largest-connected-component post-processing: components by hand, the per-class choice, the workdir file."""

import json

import numpy as np
import pytest

from jaxseg import postprocess
from jaxseg.errors import DataError


def test_largest_component_2d_uses_diagonal_neighbours():
  mask = np.array([[1, 0, 0, 0, 0], [0, 1, 0, 0, 1], [0, 0, 1, 0, 1], [0, 0, 0, 0, 1], [1, 1, 0, 0, 1]], bool)
  # Diagonal chain of 3 (corners touch), a vertical bar of 4, a pair of 2.
  expected = np.zeros_like(mask)
  expected[1:5, 4] = True
  np.testing.assert_array_equal(postprocess.largest_component(mask), expected)
  mask[4, 2] = mask[3, 3] = True  # Joins the pair, the chain and the bar through corners: one component.
  np.testing.assert_array_equal(postprocess.largest_component(mask), mask)


def test_largest_component_3d_corner_connectivity_and_empty():
  mask = np.zeros((4, 4, 4), bool)
  mask[0, 0, 0] = mask[1, 1, 1] = mask[2, 2, 2] = True  # Three voxels touching at corners.
  mask[0, 3, 0] = mask[1, 3, 0] = True  # Two voxels sharing a face.
  expected = np.zeros_like(mask)
  expected[0, 0, 0] = expected[1, 1, 1] = expected[2, 2, 2] = True
  np.testing.assert_array_equal(postprocess.largest_component(mask), expected)
  empty = np.zeros((3, 3, 3), bool)
  np.testing.assert_array_equal(postprocess.largest_component(empty), empty)


def test_keep_largest_components_touches_only_chosen_classes():
  labels = np.zeros((6, 8), np.uint8)
  labels[0:2, 0:3] = 1  # class 1: 6 voxels
  labels[4:6, 6:8] = 1  # class 1: 4 voxels, separate
  labels[0, 6] = 2  # class 2: two single voxels
  labels[3, 3] = 2
  out = postprocess.keep_largest_components(labels, [1])
  expected = labels.copy()
  expected[4:6, 6:8] = 0
  np.testing.assert_array_equal(out, expected)
  np.testing.assert_array_equal(labels[4:6, 6:8], 1)  # Input unchanged.
  both = postprocess.keep_largest_components(labels, [1, 2])
  assert np.count_nonzero(both == 2) == 1 and both[0, 6] == 2  # Tie: first in scan order.


def test_decide_needs_a_strict_improvement():
  choice = postprocess.decide(
    {"liver": [0.8, 0.6], "kidney": [0.9, 0.9], "tumour": [0.5, 0.7]},
    {"liver": [0.9, 0.6], "kidney": [0.9, 0.9], "tumour": [0.5, 0.3]},
    step=40,
  )
  assert choice.largest_component == ("liver",)
  assert choice.step == 40 and choice.num_cases == 2
  assert choice.validation_dice["liver"] == {
    "as_predicted": pytest.approx(0.7),
    "largest_component": pytest.approx(0.75),
  }
  assert choice.validation_dice["tumour"]["largest_component"] == pytest.approx(0.4)


def test_save_load_apply(tmp_path):
  choice = postprocess.Postprocessing(("spleen",), 12, 3, {"spleen": {"as_predicted": 0.5, "largest_component": 0.6}})
  path = postprocess.save(tmp_path, choice)
  assert json.loads(path.read_text())["largest_component"] == ["spleen"]
  loaded = postprocess.load(tmp_path)
  assert loaded == choice
  labels = np.zeros((3, 5), np.uint8)
  labels[0, 0] = labels[2, 2:5] = 2
  labels[0, 4] = 1
  out = loaded.apply(labels, {"background": 0, "liver": 1, "spleen": 2})
  expected = labels.copy()
  expected[0, 0] = 0
  np.testing.assert_array_equal(out, expected)
  assert postprocess.load(tmp_path / "missing") is None


def test_bad_files_and_classes_raise_data_error(tmp_path):
  (tmp_path / postprocess.FILENAME).write_text('{"largest_component": "liver"}')
  with pytest.raises(DataError, match=f"{tmp_path}/postprocessing.json is not a valid"):
    postprocess.load(tmp_path)
  (tmp_path / postprocess.FILENAME).write_text("{not json")
  with pytest.raises(DataError, match="not a valid post-processing file"):
    postprocess.load(tmp_path)
  with pytest.raises(DataError, match=r"names classes \['lung'\]"):
    postprocess.Postprocessing(("lung",)).apply(np.zeros((2, 2), np.uint8), {"background": 0, "liver": 1})

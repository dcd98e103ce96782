"""Traditional segmentation baselines (jaxseg/traditional.py) on tiny synthetic images with known answers."""

import sys

import numpy as np
import pytest

from jaxseg import traditional
from jaxseg.errors import ConfigError, DataError

pytest.importorskip("skimage")


def _case(seed, shape=(40, 40), noise=0.3):
  """Background 0 (intensity 0), class 1 a square (intensity 4), class 2 a disc (intensity 8), Gaussian noise."""
  rng = np.random.default_rng(seed)
  label = np.zeros(shape, np.uint8)
  y, x = np.mgrid[: shape[0], : shape[1]]
  top = int(rng.integers(2, 8))
  label[top : top + 12, 3:15] = 1
  label[(y - 28) ** 2 + (x - 27) ** 2 <= int(rng.integers(25, 50))] = 2
  image = np.choose(label, [0.0, 4.0, 8.0]) + noise * rng.standard_normal(shape)
  return image[..., None].astype(np.float32), label


@pytest.fixture(scope="module")
def fitted():
  return traditional.fit([_case(s) for s in range(3)], num_classes=3)


@pytest.mark.parametrize("method", traditional.METHODS)
def test_every_method_recovers_well_separated_classes(fitted, method):
  image, label = _case(10)
  prediction = traditional.segment(method, image, fitted)
  assert prediction.shape == label.shape and prediction.dtype == np.uint8
  for value in (1, 2):
    p, r = prediction == value, label == value
    dice = 2 * np.sum(p & r) / (p.sum() + r.sum())
    assert dice > 0.95, (method, value, dice)


def test_threshold_components_is_exact_without_noise_and_drops_implausible_components():
  cases = [_case(s, noise=0.0) for s in range(2)]
  fitted = traditional.fit(cases, num_classes=3)
  image, label = _case(5, noise=0.0)
  np.testing.assert_array_equal(traditional.segment("threshold_components", image, fitted), label)
  # A speck of class-1 intensity (smaller than half the smallest training component) and a second square
  # (training cases have one class-1 component each) become background.
  noisy = image.copy()
  noisy[35, 2, 0] = 4.0
  noisy[20:30, 18:20, 0] = 4.0  # 20 voxels: larger than half the smallest training square, a second component.
  out = traditional.segment("threshold_components", noisy, fitted)
  np.testing.assert_array_equal(out, label)
  assert fitted.max_components[1] == 1 and fitted.min_voxels[1] == 144


def test_fit_learns_only_from_the_cases_given():
  image, label = _case(0, noise=0.0)
  label2 = label.copy()
  label2[label2 == 1] = 0  # Same image, class 1 unlabelled: its intensity is background for the fit.
  fitted = traditional.fit([(image, label2)], num_classes=3)
  assert fitted.priors[1] == 0.0 and fitted.max_components[1] == 0
  assert not np.any(traditional.segment("threshold_components", image, fitted) == 1)
  probabilities = traditional.posterior(image, fitted)
  assert probabilities.shape == (40, 40, 3)
  np.testing.assert_allclose(probabilities.sum(-1), 1.0, rtol=1e-5)


def test_decision_weights_do_not_lower_the_training_dice():
  # One channel, two overlapping intensity distributions: a rare class under a frequent one.
  rng = np.random.default_rng(0)
  label = (rng.random((60, 60)) < 0.05).astype(np.uint8)
  image = (rng.normal(0.0, 1.0, label.shape) + 1.5 * label)[..., None].astype(np.float32)
  fitted = traditional.fit([(image, label)], num_classes=2)
  counts = traditional._count(
    (label.astype(np.int64),) + traditional._bin_index(image, fitted.edges), (2, fitted.likelihood.shape[1])
  )
  lik = fitted.likelihood.reshape(2, -1)
  with_priors = traditional._pooled_dice(counts, (fitted.priors[:, None] * lik).argmax(0))
  with_weights = traditional._pooled_dice(counts, (fitted.weights[:, None] * lik).argmax(0))
  assert with_weights > with_priors  # The rare class under-detected with its prior.


def test_pooled_dice_by_hand():
  counts = np.array([[5.0, 1.0, 0.0], [0.0, 3.0, 2.0]])  # [class, bin]
  # Bins labelled 0, 1, 1: TP = 5, FP = 1, FN = 0 -> 2 * 5 / (10 + 1) for class 1.
  assert traditional._pooled_dice(counts, np.array([0, 1, 1])) == pytest.approx(10 / 11)


def test_otsu_maps_bins_to_the_training_classes():
  cases = [_case(s, noise=0.1) for s in range(2)]
  fitted = traditional.fit(cases, num_classes=3)
  assert list(fitted.otsu_classes) == [0, 1, 2] and fitted.otsu_channel == 0


def test_volumes_and_several_channels():
  rng = np.random.default_rng(1)
  label = np.zeros((8, 16, 16), np.uint8)
  label[1:7, 3:11, 3:11] = 1  # Thick enough to keep a marker after MARKER_EROSION.
  image = np.stack([label * 3.0, -label * 2.0], -1) + 0.2 * rng.standard_normal(label.shape + (2,))
  fitted = traditional.fit([(image, label)], num_classes=2)
  for method in traditional.METHODS:
    prediction = traditional.segment(method, image, fitted)
    assert prediction.shape == label.shape
    assert np.mean(prediction == label) > 0.95, method


def test_one_hot():
  np.testing.assert_array_equal(traditional.one_hot(np.array([[0, 2]]), 3), [[[1, 0, 0], [0, 0, 1]]])


def test_bad_input(fitted):
  image, label = _case(0)
  with pytest.raises(ConfigError, match=r"unknown traditional method 'snake'; choose from threshold_components"):
    traditional.segment("snake", image, fitted)
  with pytest.raises(DataError, match=r"does not match image"):
    traditional.fit([(image, label[:-1])], num_classes=3)
  with pytest.raises(DataError, match=r"no training cases"):
    traditional.fit([], num_classes=3)
  with pytest.raises(DataError, match=r"outside 0..1"):
    traditional.fit([(image, label)], num_classes=2)
  with pytest.raises(DataError, match=r"image has 2 channels; the methods were fitted on 1"):
    traditional.segment("watershed", np.concatenate([image, image], -1), fitted)
  with pytest.raises(DataError, match=r"expected \[Y, X, C\] or \[Z, Y, X, C\]"):
    traditional.segment("otsu", image[..., 0, 0], fitted)


def test_missing_scikit_image_names_the_extra(monkeypatch, fitted):
  for name in ("skimage", "skimage.filters", "skimage.segmentation"):
    monkeypatch.setitem(sys.modules, name, None)
  with pytest.raises(ImportError, match=r"pip install 'jaxseg\[studies\]'"):
    traditional.segment("watershed", _case(0)[0], fitted)

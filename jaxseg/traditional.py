"""Traditional (non-deep) multi-class segmentation baselines, fitted on training cases only.

Every method maps one preprocessed image `[*S, C]` (S = (Z, Y, X) for volumes,
(Y, X) for 2D images; the normalised intensities the deep models see) to a
label map `[*S]` of values 0 .. K-1. What each method LEARNS from the
training cases (`fit`, images and reference labels of the training split,
nothing from validation or test) is stated here and recorded by
`Fitted.summary()`:

- intensity model (every method but `otsu`): per class, a smoothed histogram
  of the training intensities (joint over the C channels; `bins` bins per
  channel between the 0.1 and 99.9 percentiles of all training voxels) and
  the class's share of the training voxels (its prior); then decision weights
  w_k: the priors, each foreground class's scaled by a factor in 10^[-3, 3]
  found by coordinate ascent to maximise the mean foreground Dice of
  thresholding over the pooled training voxels (small classes whose
  intensities overlap a frequent one are otherwise never chosen). The class
  score of a voxel is p(k | x) = w_k hist_k(x) / sum_j w_j hist_j(x): a lookup
  table from intensity to class, i.e. a set of intensity thresholds (for one
  channel, the decision regions are unions of intensity intervals).
- component limits: per foreground class, the smallest connected component
  and the largest number of components per case seen in the training labels.

Methods (`METHODS`):

- `threshold_components`: intensity thresholding (argmax of p(k | x)),
  then per foreground class connected components (full connectivity): keep
  at most the training's largest number of components per case, each of at
  least half the training's smallest component; the rest becomes background.
- `otsu`: multi-Otsu thresholds of each image (`skimage.filters.
  threshold_multiotsu`, unsupervised, per image, on one channel) cut it into
  `K` intensity bins; learned: which class each bin rank stands for (the
  class with most training voxels in that bin) and the channel (the one whose
  bin map gives the best mean foreground Dice on the training cases).
- `watershed`: markers are the class regions of `threshold_components`
  (background included) eroded by `MARKER_EROSION` voxels; the band between
  them is flooded from the markers over the gradient magnitude of the
  (Gaussian-smoothed, sigma 1 voxel) image, channels summed
  (`skimage.segmentation.watershed`): region boundaries move to edges.
- `random_walker`: the same markers as seeds; every other voxel takes the
  class whose seeds a random walker started there reaches first with the
  highest probability
  (`skimage.segmentation.random_walker`, Grady 2006; beta 130, conjugate
  gradient with a Jacobi preconditioner).
- `chan_vese`: morphological active contours without edges (Marquez-Neila et
  al. 2014, `skimage.segmentation.morphological_chan_vese`) per foreground
  class on the class's map p(k | x), started from the class's region of
  `threshold_components`, inside the box of that region grown by
  `CONTOUR_MARGIN` voxels; a voxel claimed by several classes goes to the
  one with the highest p(k | x), a voxel claimed by none is background.

Every method is deterministic. Voxel spacing is not used (operations are in
voxels of the preprocessed grid).

scikit-image is an optional dependency (`pip install 'jaxseg[studies]'`); it
is imported when a method needs it.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Iterable, Sequence

import numpy as np
from scipy import ndimage

from jaxseg.errors import ConfigError, DataError

METHODS = ("threshold_components", "otsu", "watershed", "random_walker", "chan_vese")
MARKER_EROSION = 2  # Voxels by which thresholded regions shrink to become markers / seeds.
CONTOUR_ITERATIONS = 20  # Morphological Chan-Vese iterations.
CONTOUR_MARGIN = 4  # Voxels around the thresholded mask that a contour may grow into.
HISTOGRAM_SMOOTHING = 1.0  # Gaussian sigma (bins) of the class histograms.
OTSU_BINS = 64  # Histogram bins of multi-Otsu (exhaustive search over bins^(K-1)).


def _skimage():
  try:
    import skimage.filters  # pylint: disable=g-import-not-at-top
    import skimage.segmentation  # pylint: disable=g-import-not-at-top
  except ImportError as e:
    raise ImportError(
      "jaxseg.traditional needs scikit-image: pip install 'jaxseg[studies]' (or scikit-image>=0.22)"
    ) from e
  return skimage


@dataclasses.dataclass(frozen=True)
class Fitted:
  """What the methods learned from the training cases.

  Attributes:
    num_classes: K, labels 0 .. K-1 (0 background).
    edges: per channel, bin edges `[bins + 1]` of the intensity histograms.
    likelihood: `[K, bins, ..., bins]` (one axis per channel) smoothed, normalised class histograms.
    priors: `[K]` share of training voxels per class.
    weights: `[K]` decision weights that replace the priors in the posterior: the priors scaled per class
      to maximise the training cases' pooled mean foreground Dice of thresholding (`_fit_weights`).
    min_voxels: `[K]` smallest connected component per class in the training labels (0: class absent).
    max_components: `[K]` largest number of components of a class in one training case.
    otsu_channel: channel that `otsu` thresholds.
    otsu_classes: `[K]` class of each multi-Otsu bin rank.
    num_cases: training cases fitted on.
  """

  num_classes: int
  edges: tuple[np.ndarray, ...]
  likelihood: np.ndarray
  priors: np.ndarray
  weights: np.ndarray
  min_voxels: np.ndarray
  max_components: np.ndarray
  otsu_channel: int
  otsu_classes: np.ndarray
  num_cases: int

  def summary(self) -> dict[str, Any]:
    """The learned values a report can show (JSON types)."""
    return {
      "num_cases": self.num_cases,
      "bins_per_channel": int(self.edges[0].size - 1),
      "intensity_range": [[float(e[0]), float(e[-1])] for e in self.edges],
      "priors": [round(float(p), 5) for p in self.priors],
      "decision_weights": [round(float(w), 5) for w in self.weights],
      "min_component_voxels": [int(v) for v in self.min_voxels],
      "max_components_per_case": [int(v) for v in self.max_components],
      "otsu_channel": int(self.otsu_channel),
      "otsu_bin_classes": [int(v) for v in self.otsu_classes],
    }


def _check_case(image: np.ndarray, label: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray | None]:
  image = np.asarray(image, np.float32)
  if image.ndim not in (3, 4):
    raise DataError(f"image of shape {image.shape}: expected [Y, X, C] or [Z, Y, X, C]")
  if label is not None:
    label = np.asarray(label)
    if label.shape != image.shape[:-1]:
      raise DataError(f"label of shape {label.shape} does not match image of shape {image.shape} (channels last)")
    if not np.issubdtype(label.dtype, np.integer):
      raise DataError(f"label dtype {label.dtype}: expected integer class values")
  return image, label


def _bin_index(image: np.ndarray, edges: Sequence[np.ndarray]) -> tuple[np.ndarray, ...]:
  """Per channel, the histogram bin `[*S]` of every voxel (values outside the range go to the end bins)."""
  return tuple(np.clip(np.searchsorted(e, image[..., c], side="right") - 1, 0, e.size - 2) for c, e in enumerate(edges))


def _count(index: tuple[np.ndarray, ...], shape: tuple[int, ...]) -> np.ndarray:
  """Histogram `shape` of the voxels' multi-indices (one `[*S]` array per axis)."""
  flat = np.ravel_multi_index(tuple(i.ravel() for i in index), shape)
  return np.bincount(flat, minlength=int(np.prod(shape))).reshape(shape).astype(np.float64)


def _components(mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
  """(component map, sizes `[n]`) of a bool mask, full connectivity."""
  structure = ndimage.generate_binary_structure(mask.ndim, mask.ndim)
  components, count = ndimage.label(mask, structure=structure)
  return components, np.bincount(components.ravel(), minlength=count + 1)[1:]


def fit(cases: Iterable[tuple[np.ndarray, np.ndarray]], num_classes: int, *, bins: int | None = None) -> Fitted:
  """Learns every method's parameters from training (image `[*S, C]`, label `[*S]`) pairs.

  `bins` per channel defaults to 64 for one channel and 32 for several. Raises DataError for no cases, a
  label outside 0 .. num_classes - 1, or cases with different channel counts.
  """
  if num_classes < 2:
    raise ConfigError(f"num_classes={num_classes}: need background and at least one class")
  cases = [_check_case(image, label) for image, label in cases]
  if not cases:
    raise DataError("no training cases to fit the traditional methods on")
  channels = {image.shape[-1] for image, _ in cases}
  if len(channels) > 1:
    raise DataError(f"training cases have different channel counts {sorted(channels)}")
  num_channels = channels.pop()
  for _, label in cases:
    if label.min() < 0 or label.max() >= num_classes:
      raise DataError(f"label values {int(label.min())}..{int(label.max())} outside 0..{num_classes - 1}")
  bins = bins or (64 if num_channels == 1 else 32)
  voxels = np.concatenate([image.reshape(-1, num_channels) for image, _ in cases])
  low, high = np.percentile(voxels, 0.1, axis=0), np.percentile(voxels, 99.9, axis=0)
  edges = tuple(np.linspace(lo, max(hi, lo + 1e-6), bins + 1) for lo, hi in zip(low, high))
  counts = np.zeros((num_classes,) + (bins,) * num_channels, np.float64)
  for image, label in cases:
    counts += _count((label.astype(np.int64),) + _bin_index(image, edges), counts.shape)
  priors = counts.reshape(num_classes, -1).sum(1)
  priors = priors / priors.sum()
  smoothed = ndimage.gaussian_filter(counts, sigma=(0,) + (HISTOGRAM_SMOOTHING,) * num_channels, mode="nearest")
  smoothed += 1e-3 * smoothed.reshape(num_classes, -1).sum(1).reshape((-1,) + (1,) * num_channels) / bins**num_channels
  likelihood = smoothed / np.maximum(smoothed.reshape(num_classes, -1).sum(1), 1e-12).reshape(
    (-1,) + (1,) * num_channels
  )
  min_voxels = np.zeros(num_classes, np.int64)
  max_components = np.zeros(num_classes, np.int64)
  for value in range(1, num_classes):
    for _, label in cases:
      _, sizes = _components(label == value)
      if sizes.size:
        smallest = int(sizes.min())
        min_voxels[value] = smallest if min_voxels[value] == 0 else min(min_voxels[value], smallest)
      max_components[value] = max(max_components[value], sizes.size)
  weights = _fit_weights(counts.reshape(num_classes, -1), likelihood.reshape(num_classes, -1), priors)
  partial = Fitted(
    num_classes,
    edges,
    likelihood,
    priors,
    weights,
    min_voxels,
    max_components,
    0,
    np.zeros(num_classes, np.int64),
    len(cases),
  )
  channel, bin_classes = _fit_otsu(cases, num_classes)
  return dataclasses.replace(partial, otsu_channel=channel, otsu_classes=bin_classes)


def _pooled_dice(counts: np.ndarray, predicted: np.ndarray) -> float:
  """Mean foreground Dice over the training voxels when every bin (column of `counts` `[K, B]`) is labelled
  `predicted` `[B]`."""
  num_classes = counts.shape[0]
  total = counts.sum(0)
  dice = []
  for value in range(1, num_classes):
    tp = counts[value, predicted == value].sum()
    fp = total[predicted == value].sum() - tp
    fn = counts[value].sum() - tp
    dice.append(1.0 if 2 * tp + fp + fn == 0 else 2 * tp / (2 * tp + fp + fn))
  return float(np.mean(dice))


def _fit_weights(counts: np.ndarray, likelihood: np.ndarray, priors: np.ndarray, passes: int = 3) -> np.ndarray:
  """Per-class decision weights (priors times a factor in 10^[-3, 3]) maximising the pooled training Dice of
  argmax_k weight_k likelihood_k(bin); coordinate ascent over the foreground classes from the priors.
  `counts`, `likelihood`: `[K, B]` over the B intensity bins."""
  weights = np.asarray(priors, np.float64).copy()
  best = _pooled_dice(counts, (weights[:, None] * likelihood).argmax(0))
  factors = np.logspace(-3, 3, 25)
  for _ in range(passes):
    improved = False
    for value in range(1, counts.shape[0]):
      for factor in factors:
        trial = weights.copy()
        trial[value] = priors[value] * factor
        score = _pooled_dice(counts, (trial[:, None] * likelihood).argmax(0))
        if score > best + 1e-9:
          best, weights, improved = score, trial, True
    if not improved:
      break
  return weights


def _otsu_bins(image: np.ndarray, channel: int, num_bins: int) -> np.ndarray:
  """Multi-Otsu bin rank `[*S]` (0 .. num_bins-1) of every voxel of one channel."""
  values = image[..., channel]
  if np.ptp(values) == 0:
    return np.zeros(values.shape, np.int64)
  thresholds = _skimage().filters.threshold_multiotsu(values, classes=num_bins, nbins=OTSU_BINS)
  return np.digitize(values, thresholds)


def _fit_otsu(cases, num_classes: int) -> tuple[int, np.ndarray]:
  """The channel and bin -> class map of `otsu` with the best pooled mean foreground Dice on the training cases."""
  best = None
  for channel in range(cases[0][0].shape[-1]):
    table = np.zeros((num_classes, num_classes), np.int64)  # [bin, class] voxel counts.
    binned = [(_otsu_bins(image, channel, num_classes), label) for image, label in cases]
    for bins_, label in binned:
      table += _count((bins_, label.astype(np.int64)), table.shape).astype(np.int64)
    bin_classes = table.argmax(1)
    predicted_counts = np.zeros((num_classes, 3))  # TP, FP, FN per class, pooled.
    for bins_, label in binned:
      prediction = bin_classes[bins_]
      for value in range(1, num_classes):
        p, r = prediction == value, label == value
        predicted_counts[value] += [np.sum(p & r), np.sum(p & ~r), np.sum(~p & r)]
    tp, fp, fn = predicted_counts[1:].T
    dice = float(np.mean(np.where(2 * tp + fp + fn > 0, 2 * tp / np.maximum(2 * tp + fp + fn, 1), 1.0)))
    if best is None or dice > best[0]:
      best = (dice, channel, bin_classes)
  return best[1], best[2]


def posterior(image: np.ndarray, fitted: Fitted) -> np.ndarray:
  """Class posterior `[*S, K]` of every voxel under the training intensity model."""
  image, _ = _check_case(image)
  if image.shape[-1] != len(fitted.edges):
    raise DataError(f"image has {image.shape[-1]} channels; the methods were fitted on {len(fitted.edges)}")
  index = _bin_index(image, fitted.edges)
  joint = fitted.likelihood[(slice(None),) + index] * fitted.weights.reshape((-1,) + (1,) * (image.ndim - 1))
  joint = np.moveaxis(joint, 0, -1)
  return (joint / joint.sum(-1, keepdims=True)).astype(np.float32)


def _keep_plausible_components(labels: np.ndarray, fitted: Fitted) -> np.ndarray:
  out = labels.copy()
  for value in range(1, fitted.num_classes):
    mask = labels == value
    if not mask.any():
      continue
    components, sizes = _components(mask)
    order = np.argsort(-sizes, kind="stable")
    keep = order[: max(int(fitted.max_components[value]), 0)]
    keep = keep[sizes[keep] >= max(1, fitted.min_voxels[value] // 2)]
    out[mask & ~np.isin(components, keep + 1)] = 0
  return out


def _markers(labels: np.ndarray, num_classes: int) -> np.ndarray:
  """Seeds `[*S]`: class value + 1 inside each class region of `labels` eroded by MARKER_EROSION voxels
  (face connectivity), 0 in the band between regions that watershed / random walker decide."""
  markers = np.zeros(labels.shape, np.int32)
  structure = ndimage.generate_binary_structure(labels.ndim, 1)
  for value in range(num_classes):
    mask = labels == value
    if mask.any():
      markers[ndimage.binary_erosion(mask, structure, iterations=MARKER_EROSION)] = value + 1
  return markers


def _gradient(image: np.ndarray) -> np.ndarray:
  return sum(ndimage.gaussian_gradient_magnitude(image[..., c], sigma=1.0) for c in range(image.shape[-1]))


def _chan_vese(prob: np.ndarray, start: np.ndarray) -> np.ndarray:
  skimage = _skimage()
  claimed = np.zeros(prob.shape[:-1] + (prob.shape[-1],), bool)
  for value in range(1, prob.shape[-1]):
    mask = start == value
    if not mask.any():
      continue
    hits = [np.flatnonzero(mask.any(axis=tuple(a for a in range(mask.ndim) if a != ax))) for ax in range(mask.ndim)]
    box = tuple(slice(max(0, int(h[0]) - CONTOUR_MARGIN), int(h[-1]) + 1 + CONTOUR_MARGIN) for h in hits)
    region = skimage.segmentation.morphological_chan_vese(
      prob[box + (value,)], CONTOUR_ITERATIONS, init_level_set=mask[box], smoothing=1
    )
    claimed[box + (value,)] = region.astype(bool)
  scores = np.where(claimed, prob, -1.0)
  scores[..., 0] = 0.0
  return scores.argmax(-1)


def segment(method: str, image: np.ndarray, fitted: Fitted) -> np.ndarray:
  """Label map `[*S]` (uint8 / uint16) of one image `[*S, C]` by `method` (one of METHODS)."""
  if method not in METHODS:
    raise ConfigError(f"unknown traditional method {method!r}; choose from {', '.join(METHODS)}")
  image, _ = _check_case(image)
  dtype = np.uint8 if fitted.num_classes <= 256 else np.uint16
  if method == "otsu":
    if image.shape[-1] != len(fitted.edges):
      raise DataError(f"image has {image.shape[-1]} channels; the methods were fitted on {len(fitted.edges)}")
    return fitted.otsu_classes[_otsu_bins(image, fitted.otsu_channel, fitted.num_classes)].astype(dtype)
  prob = posterior(image, fitted)
  if method == "threshold_components":
    return _keep_plausible_components(prob.argmax(-1), fitted).astype(dtype)
  thresholded = _keep_plausible_components(prob.argmax(-1), fitted)
  if method == "chan_vese":
    return _chan_vese(prob, thresholded).astype(dtype)
  markers = _markers(thresholded, fitted.num_classes)
  if not markers.any():  # Regions too thin to keep a seed: thresholding is all there is.
    return thresholded.astype(dtype)
  segmentation = _skimage().segmentation
  if method == "watershed":
    return (segmentation.watershed(_gradient(image), markers) - 1).astype(dtype)
  present = np.unique(markers[markers > 0])
  if present.size == 1:  # One class seeded: it floods everything.
    return np.full(markers.shape, present[0] - 1, dtype)
  walked = segmentation.random_walker(image, markers, beta=130, mode="cg_j", tol=1e-3, channel_axis=-1)
  walked = np.where(walked > 0, walked, thresholded + 1)  # Voxels cut off from every seed.
  return (walked - 1).astype(dtype)


def one_hot(labels: np.ndarray, num_classes: int) -> np.ndarray:
  """float32 `[*S, K]` one-hot of a label map (the 'probabilities' the evaluator resamples)."""
  return np.eye(num_classes, dtype=np.float32)[np.asarray(labels, np.int64)]

"""Label overlays as RGB arrays (for TensorBoard images and report figures)."""

from __future__ import annotations

import numpy as np

# Distinct colours for labels 1..N (label 0, background, is left transparent).
PALETTE = np.array([
    [230, 25, 75], [60, 180, 75], [255, 225, 25], [0, 130, 200], [245, 130, 48],
    [145, 30, 180], [70, 240, 240], [240, 50, 230], [210, 245, 60], [250, 190, 212],
], np.float32)


def to_gray(image: np.ndarray) -> np.ndarray:
  """A 2D float image `[H, W]` scaled to [0, 1] by its 1st and 99th percentiles."""
  lo, hi = np.percentile(image, [1, 99])
  return np.clip((image - lo) / max(hi - lo, 1e-6), 0.0, 1.0)


def overlay(image: np.ndarray, label: np.ndarray, alpha: float = 0.45) -> np.ndarray:
  """RGB uint8 `[H, W, 3]` of a grey image `[H, W]` with label colours blended in."""
  gray = to_gray(image)[..., None] * 255.0
  rgb = np.repeat(gray, 3, axis=-1)
  mask = label > 0
  colours = PALETTE[(label[mask].astype(np.int64) - 1) % len(PALETTE)]
  rgb[mask] = (1 - alpha) * rgb[mask] + alpha * colours
  return rgb.astype(np.uint8)


def comparison_row(image: np.ndarray, reference: np.ndarray, prediction: np.ndarray) -> np.ndarray:
  """`[H, 3W, 3]` uint8: image, image + reference, image + prediction side by side."""
  gray = (to_gray(image)[..., None].repeat(3, -1) * 255).astype(np.uint8)
  return np.concatenate([gray, overlay(image, reference), overlay(image, prediction)], axis=1)


def most_foreground_slice(label: np.ndarray) -> int:
  """Index along axis 0 of the slice with the most foreground voxels."""
  return int(np.argmax((label.reshape(label.shape[0], -1) > 0).sum(axis=1)))

"""Label overlays and report figures (TensorBoard images, `results/<split>/figures/`)."""

from __future__ import annotations

import math
import pathlib
from typing import Mapping, Sequence

import numpy as np

# Distinct colours for labels 1..N (label 0, background, is left transparent).
PALETTE = np.array(
  [
    [230, 25, 75],
    [60, 180, 75],
    [255, 225, 25],
    [0, 130, 200],
    [245, 130, 48],
    [145, 30, 180],
    [70, 240, 240],
    [240, 50, 230],
    [210, 245, 60],
    [250, 190, 212],
  ],
  np.float32,
)


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


def axial_view(volume_zyx: np.ndarray, z: int) -> np.ndarray:
  """Slice `z` of a canonical `[Z, Y, X, ...]` volume in radiological view.

  Canonical indices increase towards anterior (Y) and the patient's right (X);
  the view puts anterior at the top and the patient's right on the left.
  """
  return volume_zyx[z, ::-1, ::-1]


def _pyplot():
  import matplotlib  # pylint: disable=g-import-not-at-top

  matplotlib.use("Agg")
  from matplotlib import pyplot  # pylint: disable=g-import-not-at-top

  return pyplot


def save_case_montage(path: str | pathlib.Path, rows: Sequence[tuple[str, np.ndarray]], title: str) -> None:
  """One row per case of `comparison_row` pictures (`[H, 3W, 3]` uint8, any sizes), titled, as a PNG."""
  plt = _pyplot()
  fig, axes = plt.subplots(len(rows), 1, figsize=(9, 3.2 * len(rows)), squeeze=False)
  for ax, (caption, picture) in zip(axes[:, 0], rows):
    ax.imshow(picture, interpolation="nearest")
    ax.set_title(caption, fontsize=9)
    ax.axis("off")
  fig.suptitle(f"{title}\nimage | reference | prediction", fontsize=10)
  fig.tight_layout()
  fig.savefig(path, dpi=100)
  plt.close(fig)


def save_boxplots(
  path: str | pathlib.Path, values: Mapping[str, Mapping[str, Sequence[float]]], units: Mapping[str, str], title: str
) -> None:
  """Per-class box plots, one panel per metric, as a PNG.

  Args:
    path: output file.
    values: metric name -> class name -> per-case values (NaN values are left out and counted
      in the class label).
    units: metric name -> unit shown on the axis ('' for scores).
    title: figure title.
  """
  plt = _pyplot()
  metrics = list(values)
  cols = min(3, len(metrics))
  rows = math.ceil(len(metrics) / cols)
  fig, axes = plt.subplots(rows, cols, figsize=(4.2 * cols, 3.4 * rows), squeeze=False)
  for ax, metric in zip(axes.ravel(), metrics):
    names, data = [], []
    for name, per_case in values[metric].items():
      finite = [float(v) for v in per_case if v is not None and not math.isnan(v)]
      skipped = len(per_case) - len(finite)
      names.append(name if not skipped else f"{name}\n({skipped} NaN)")
      data.append(finite)
    ax.boxplot(data, showmeans=True)
    ax.set_xticks(range(1, len(names) + 1), names, fontsize=8, rotation=30)
    ax.set_title(metric + (f" [{units[metric]}]" if units.get(metric) else ""), fontsize=9)
    ax.grid(axis="y", alpha=0.3)
  for ax in axes.ravel()[len(metrics) :]:
    ax.axis("off")
  fig.suptitle(title, fontsize=10)
  fig.tight_layout()
  fig.savefig(path, dpi=100)
  plt.close(fig)

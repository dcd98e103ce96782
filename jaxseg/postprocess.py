"""Post-processing: keep only the largest connected component of chosen classes.

A segmentation network can leave small false-positive islands far from an
organ. For a class that is one connected structure (a liver, a spleen), keeping
the largest connected component of its predicted voxels removes them; for a
class of several structures (both kidneys, scattered tumours) it deletes true
positives. As in nnU-Net, the choice is made per class on the validation split:

- `keep_largest_components(prediction, values)` sets every voxel of a class in
  `values` that lies outside that class's largest connected component to
  background (0). Components are connected through faces, edges and corners
  (8-neighbourhood in 2D, 26-neighbourhood in 3D; nnU-Net's and skimage's
  default); ties between equal-sized components keep the first in scan order.
  Each class is processed on its own, so the Dice of one class does not depend
  on the choice for another.
- `decide(...)` switches it on for a class only if the mean Dice over the
  validation cases is strictly higher with it than without.
- The choice is written to `<workdir>/postprocessing.json` (`save`) together
  with the checkpoint step and the validation Dice behind it; test evaluation
  and `--mode=predict` read it back (`load`) and apply the same classes.
"""

from __future__ import annotations

import dataclasses
import json
import pathlib
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from scipy import ndimage

from jaxseg import paths
from jaxseg.errors import DataError, WorkdirError

FILENAME = "postprocessing.json"


def largest_component(mask: np.ndarray) -> np.ndarray:
  """The largest connected component of a bool mask `[H, W]` or `[D, H, W]` (full connectivity)."""
  mask = np.asarray(mask, bool)
  hits = [
    np.flatnonzero(np.any(mask, axis=tuple(a for a in range(mask.ndim) if a != axis))) for axis in range(mask.ndim)
  ]
  if hits[0].size == 0:
    return mask.copy()
  box = tuple(slice(int(h[0]), int(h[-1]) + 1) for h in hits)
  structure = ndimage.generate_binary_structure(mask.ndim, mask.ndim)
  components, count = ndimage.label(mask[box], structure=structure)
  out = np.zeros_like(mask)
  if count <= 1:
    out[box] = mask[box]
    return out
  sizes = np.bincount(components.ravel())[1:]
  out[box] = components == int(np.argmax(sizes)) + 1
  return out


def keep_largest_components(prediction: np.ndarray, values: Sequence[int]) -> np.ndarray:
  """A copy of integer labels `[H, W]` or `[D, H, W]` where each class in `values` keeps only its largest
  connected component; the removed voxels become background (0)."""
  prediction = np.asarray(prediction)
  out = prediction.copy()
  for value in values:
    mask = prediction == value
    out[mask & ~largest_component(mask)] = 0
  return out


@dataclasses.dataclass(frozen=True)
class Postprocessing:
  """Which classes keep only their largest connected component.

  Attributes:
    largest_component: class names, in label order.
    step: checkpoint step the choice was made for (None: no validation ran).
    num_cases: validation cases it was decided on.
    validation_dice: class name -> {'as_predicted': mean Dice,
      'largest_component': mean Dice with the post-processing}.
  """

  largest_component: tuple[str, ...] = ()
  step: int | None = None
  num_cases: int = 0
  validation_dice: dict[str, dict[str, float]] = dataclasses.field(default_factory=dict)

  def values(self, labels: Mapping[str, int]) -> list[int]:
    """Label values of `largest_component` in `labels` (class name -> value).

    Raises:
      DataError: a class name is not in `labels`.
    """
    missing = [name for name in self.largest_component if name not in labels]
    if missing:
      raise DataError(
        f"{FILENAME} names classes {missing} that the dataset does not have "
        f"({', '.join(labels)}); delete it and rerun --mode=evaluate"
      )
    return [labels[name] for name in self.largest_component]

  def apply(self, prediction: np.ndarray, labels: Mapping[str, int]) -> np.ndarray:
    """`keep_largest_components` for the chosen classes (a copy; unchanged when none)."""
    values = self.values(labels)
    return keep_largest_components(prediction, values) if values else np.array(prediction)


def decide(
  dice_as_predicted: Mapping[str, Sequence[float]], dice_largest: Mapping[str, Sequence[float]], step: int
) -> Postprocessing:
  """Chooses the classes whose mean validation Dice improves with the largest component only.

  Args:
    dice_as_predicted: class name -> per-case Dice of the prediction, in label order.
    dice_largest: class name -> per-case Dice after `keep_largest_components` for that class.
    step: the checkpoint step the predictions come from.

  Returns:
    The choice: a class is chosen when its mean Dice is strictly higher.
  """
  chosen, table, num_cases = [], {}, 0
  for name, raw in dice_as_predicted.items():
    before, after = float(np.mean(raw)), float(np.mean(dice_largest[name]))
    table[name] = {"as_predicted": before, "largest_component": after}
    num_cases = len(raw)
    if after > before:
      chosen.append(name)
  return Postprocessing(tuple(chosen), int(step), num_cases, table)


def save(workdir: str | pathlib.Path, choice: Postprocessing) -> pathlib.Path:
  """Writes `<workdir>/postprocessing.json` atomically and returns its path."""
  path = paths.resolve(workdir, "workdir") / FILENAME
  text = json.dumps(
    {
      "largest_component": list(choice.largest_component),
      "step": choice.step,
      "num_cases": choice.num_cases,
      "validation_dice": choice.validation_dice,
      "connectivity": "full",
    },
    indent=2,
  )
  try:
    paths.write_text_atomic(path, text + "\n")
  except OSError as e:
    raise WorkdirError(f"cannot write {path}: {e.strerror or e}") from e
  return path


def load(workdir: str | pathlib.Path) -> Postprocessing | None:
  """Reads `<workdir>/postprocessing.json`; None when there is none.

  Raises:
    DataError: the file exists but is not a post-processing choice.
  """
  path = paths.resolve(workdir, "workdir") / FILENAME
  if not path.exists():
    return None
  try:
    data: Any = json.loads(path.read_text())
    names = data["largest_component"]
    if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
      raise TypeError("largest_component must be a list of class names")
    step = data.get("step")
    return Postprocessing(
      tuple(names),
      None if step is None else int(step),
      int(data.get("num_cases", 0)),
      dict(data.get("validation_dice", {})),
    )
  except (OSError, ValueError, KeyError, TypeError) as e:
    raise DataError(f"{path} is not a valid post-processing file ({e}); delete it and rerun --mode=evaluate") from e

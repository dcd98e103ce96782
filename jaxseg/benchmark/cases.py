"""Benchmark cases: networks, input sizes and batch sizes per scale.

A case is a `config.model` (overrides of `models.default_model_config()`), a
patch `(H, W)` or `(D, H, W)` and a batch size; the suite times it in
float32 and bfloat16. Scales:

  gpu    the issue's accelerator sizes: 2D U-Net 128^2 and 256^2 (configs/msd.py's
         network: depth 5, 32 features, instance norm, leaky ReLU, strided
         downsampling as nnU-Net), 3D U-Net 64x128x128 (depth 4) and 128^3
         (depth 5, deep supervision), DeepLab v3+ ResNet-50 256^2;
  cpu    what 2 CPU cores finish: configs/unet_ct.py's network (2D 128^2,
         batch 8, 16 features, depth 4, batch norm) and a small 3D U-Net
         (32x64x64, batch 2, 16 features, depth 3, instance norm, leaky ReLU,
         deep supervision as configs/unet3d_ct.py), DeepLab v3+ ResNet-18
         128^2 batch 2;
  quick  tiny versions of every network, for tests (seconds).
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

NNUNET_2D = dict(name="unet", norm="instance", activation="leaky_relu", features=32, max_features=512, depth=5)
NNUNET_3D = dict(name="unet3d", norm="instance", activation="leaky_relu", features=32, max_features=320)


@dataclasses.dataclass(frozen=True)
class Case:
  """One network at one size; `model` overrides `default_model_config()`."""

  name: str
  model: tuple[tuple[str, Any], ...]
  patch: tuple[int, ...]
  batch: int
  num_classes: int = 3

  @property
  def model_overrides(self) -> dict[str, Any]:
    return dict(self.model)

  @property
  def ndim(self) -> int:
    return len(self.patch)

  @property
  def voxels(self) -> int:
    """Voxels (pixels in 2D) per batch."""
    return self.batch * math.prod(self.patch)


def _case(case_name, patch, batch, **model):
  return Case(case_name, tuple(sorted(model.items())), tuple(patch), batch)


SCALES: dict[str, tuple[Case, ...]] = {
  "gpu": (
    _case("unet2d-128", (128, 128), 32, **NNUNET_2D),
    _case("unet2d-256", (256, 256), 12, **NNUNET_2D),
    _case("unet3d-64x128x128", (64, 128, 128), 2, depth=4, **NNUNET_3D),
    _case("unet3d-128-ds", (128, 128, 128), 2, depth=5, deep_supervision=True, **NNUNET_3D),
    _case(
      "deeplabv3plus-256", (256, 256), 8, name="deeplabv3plus", backbone="resnet50", output_stride=16, norm="batch"
    ),
  ),
  "cpu": (
    _case("unet2d-128", (128, 128), 8, name="unet", features=16, depth=4, norm="batch", activation="relu"),
    _case(
      "unet3d-32x64x64",
      (32, 64, 64),
      2,
      name="unet3d",
      features=16,
      max_features=320,
      depth=3,
      norm="instance",
      activation="leaky_relu",
      deep_supervision=True,
    ),
    _case(
      "deeplabv3plus-128", (128, 128), 2, name="deeplabv3plus", backbone="resnet18", output_stride=16, norm="batch"
    ),
  ),
  "quick": (
    _case("unet2d-32", (32, 32), 2, name="unet", features=4, depth=2, norm="batch"),
    _case(
      "unet3d-16-ds",
      (16, 16, 16),
      1,
      name="unet3d",
      features=4,
      depth=2,
      norm="instance",
      activation="leaky_relu",
      deep_supervision=True,
    ),
    _case(
      "deeplabv3plus-32",
      (32, 32),
      2,
      name="deeplabv3plus",
      backbone="resnet18",
      backbone_width=8,
      output_stride=16,
      norm="batch",
    ),
  ),
}


def select(scale: str, names: list[str] | None) -> list[Case]:
  """The cases of `scale` named in `names` (all when None).

  Raises:
    ValueError: an unknown scale or case name; the message lists the known
      ones.
  """
  if scale not in SCALES:
    raise ValueError(f"unknown scale {scale!r}; known scales: {', '.join(SCALES)}")
  known = {case.name: case for case in SCALES[scale]}
  if not names:
    return list(known.values())
  unknown = [n for n in names if n not in known]
  if unknown:
    raise ValueError(f"unknown case(s) {', '.join(unknown)} for --scale={scale}; known cases: {', '.join(known)}")
  return [known[n] for n in names]

"""The one place that defines every config key, its default and its checks.

Config files in `configs/` start from `base_config()` and change values; they
never add keys. `base_config()` returns a *locked* `ConfigDict`, so a misspelt
key in a config file or on the command line (`--config.train.num_stpes=5`) is
an error that names the key instead of a silently ignored setting.

Key reference (units in brackets):

  seed                      global seed: init, data order, augmentation, dropout.
  data.name                 `ct_phantom` | `mr_phantom` | `microscopy_phantom` (embedded
                            synthetic datasets) | `msd` (any MSD / nnU-Net raw directory
                            at `data.root`).
  data.root                 raw dataset directory for `msd`.
  data.data_dir             where phantoms are generated and prepared datasets live;
                            '' = $JAXSEG_DATA_DIR or ~/.cache/jaxseg.
  data.num_cases            phantom size (0 = the phantom's default).
  data.patch_size           training patch: (H, W) for 2D models, (D, H, W) for 3D [voxels].
  data.foreground_fraction  share of every batch centred on a foreground voxel.
  data.num_threads          grain read threads; data.prefetch: batches prefetched.
  data.augment.*            augmentation probabilities and ranges.
  model.*                   see `jaxseg.models.default_model_config`.
  train.*                   steps, batch size (global), optimiser, schedule, logging.
  mesh.data                 devices on the mesh's data axis (-1 = all devices).
  eval.*                    splits, sliding-window and test-time-augmentation settings.
  predict.*                 input/output paths and checkpoint for `--mode=predict`.
  adversarial.*             adversarial training (off by default).
"""

from __future__ import annotations

import json
import os
import pathlib
from typing import Any

import ml_collections

from jaxseg import models
from jaxseg.errors import ConfigError

DATASETS = ("ct_phantom", "mr_phantom", "microscopy_phantom", "msd")
OPTIMIZERS = ("adamw", "sgd")
LOSSES = ("dice_ce", "ce", "dice", "focal")


def base_config() -> ml_collections.ConfigDict:
  """Returns the locked default config with every key jaxseg reads."""
  config = ml_collections.ConfigDict()
  config.seed = 0

  config.data = ml_collections.ConfigDict()
  config.data.name = "ct_phantom"
  config.data.root = ""
  config.data.data_dir = ""
  config.data.num_cases = 0
  config.data.patch_size = (128, 128)
  config.data.foreground_fraction = 1 / 3
  config.data.num_threads = 2
  config.data.prefetch = 4
  config.data.cache_cases = 64
  config.data.augment = ml_collections.ConfigDict()
  config.data.augment.flip_axes = ()
  config.data.augment.flip_prob = 0.5
  config.data.augment.rotate_prob = 0.2
  config.data.augment.rotate_max_deg = 15.0
  config.data.augment.scale_prob = 0.2
  config.data.augment.scale_range = (0.85, 1.15)

  config.model = models.default_model_config()
  config.model.num_classes = 0  # 0: as many as the dataset has labels.

  config.train = ml_collections.ConfigDict()
  config.train.num_steps = 1000
  config.train.batch_size = 8
  config.train.optimizer = "adamw"
  config.train.learning_rate = 1e-3
  config.train.warmup_steps = 50
  config.train.end_learning_rate_factor = 0.01
  config.train.weight_decay = 1e-4
  config.train.momentum = 0.99
  config.train.grad_clip_norm = 12.0
  config.train.loss = "dice_ce"
  config.train.freeze_backbone = False
  config.train.backbone_lr_multiplier = 1.0
  config.train.log_every_steps = 50
  config.train.eval_every_steps = 250
  config.train.checkpoint_every_steps = 250
  config.train.keep_checkpoints = 2
  config.train.profile_steps = 0

  config.mesh = ml_collections.ConfigDict()
  config.mesh.data = -1

  config.eval = ml_collections.ConfigDict()
  config.eval.splits = ("validation", "test")
  config.eval.batch_size = 16
  config.eval.step_fraction = 0.5
  config.eval.mirror_axes = ()
  config.eval.num_figures = 4
  config.eval.checkpoint = "best"

  config.predict = ml_collections.ConfigDict()
  config.predict.input = ""
  config.predict.output = ""
  config.predict.checkpoint = "best"
  config.predict.save_probabilities = False

  config.adversarial = ml_collections.ConfigDict()
  config.adversarial.enabled = False
  config.adversarial.weight = 0.01            # lambda of the segmenter's adversarial term.
  config.adversarial.warmup_steps = 100       # steps trained without the adversarial term.
  config.adversarial.disc_every_steps = 1     # the discriminator is updated every k steps.
  config.adversarial.learning_rate = 1e-4
  config.adversarial.beta1 = 0.5
  config.adversarial.label_smoothing = 0.1    # real targets are 1 - smoothing.
  config.adversarial.input = "product"        # product (Luc et al. 2016) | concat.
  config.adversarial.spectral_norm = False
  config.adversarial.features = 32
  config.adversarial.num_layers = 3

  config.lock()
  return config


def validate(config: ml_collections.ConfigDict) -> None:
  """Checks values that a locked config cannot check by itself.

  Raises:
    ConfigError: naming the key and what is wrong.
  """
  def fail(key: str, message: str):
    raise ConfigError(f"config.{key}: {message}")

  if config.data.name not in DATASETS:
    fail("data.name", f"unknown dataset {config.data.name!r}; choose one of {', '.join(DATASETS)}")
  if config.data.name == "msd" and not config.data.root:
    fail("data.root", "is empty; set it to an MSD / nnU-Net raw dataset directory "
         "(--config.data.root=/data/Task09_Spleen)")
  if config.model.name not in models.MODELS:
    fail("model.name", f"unknown model {config.model.name!r}; choose one of {', '.join(models.MODELS)}")
  ndim = models.spatial_dims(config.model.name)
  patch = tuple(config.data.patch_size)
  if len(patch) != ndim or any(int(p) < 1 for p in patch):
    fail("data.patch_size", f"{patch} must be {ndim} positive sizes for the {ndim}D model "
         f"{config.model.name!r}")
  if not 0.0 <= config.data.foreground_fraction <= 1.0:
    fail("data.foreground_fraction", f"{config.data.foreground_fraction} is not in [0, 1]")
  for key in ("num_steps", "batch_size", "log_every_steps", "eval_every_steps",
              "checkpoint_every_steps", "keep_checkpoints"):
    if config.train[key] < 1:
      fail(f"train.{key}", f"must be >= 1, got {config.train[key]}")
  if config.train.optimizer not in OPTIMIZERS:
    fail("train.optimizer", f"unknown optimizer {config.train.optimizer!r}; choose one of {', '.join(OPTIMIZERS)}")
  if config.train.loss not in LOSSES:
    fail("train.loss", f"unknown loss {config.train.loss!r}; choose one of {', '.join(LOSSES)}")
  if config.train.learning_rate <= 0:
    fail("train.learning_rate", f"must be > 0, got {config.train.learning_rate}")
  if config.mesh.data == 0 or config.mesh.data < -1:
    fail("mesh.data", f"must be -1 (all devices) or a positive device count, got {config.mesh.data}")
  for split in config.eval.splits:
    if split not in ("train", "validation", "test"):
      fail("eval.splits", f"unknown split {split!r}; choose from train, validation, test")
  if not 0.0 < config.eval.step_fraction <= 1.0:
    fail("eval.step_fraction", f"{config.eval.step_fraction} is not in (0, 1]")
  for axis in config.data.augment.flip_axes:
    if not 0 <= axis < ndim:
      fail("data.augment.flip_axes", f"axis {axis} is not a spatial axis of a {ndim}D model (0..{ndim - 1})")
  for axis in config.eval.mirror_axes:
    if not 0 <= axis < ndim:
      fail("eval.mirror_axes", f"axis {axis} is not a spatial axis of a {ndim}D model (0..{ndim - 1})")


def data_dir(config: ml_collections.ConfigDict) -> pathlib.Path:
  """Directory holding generated phantoms and prepared datasets."""
  path = config.data.data_dir or os.environ.get("JAXSEG_DATA_DIR") or "~/.cache/jaxseg"
  return pathlib.Path(path).expanduser()


def to_json(config: ml_collections.ConfigDict) -> str:
  """The resolved config as stable, human-readable JSON."""
  return json.dumps(_plain(config.to_dict()), indent=2, sort_keys=True)


def _plain(value: Any) -> Any:
  if isinstance(value, dict):
    return {k: _plain(v) for k, v in value.items()}
  if isinstance(value, (list, tuple)):
    return [_plain(v) for v in value]
  return value

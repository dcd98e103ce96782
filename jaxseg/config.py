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
  data.root                 raw dataset directory for `msd`; with `data.task`, the directory
                            the task archive was extracted into.
  data.task                 '' or a Medical Segmentation Decathlon task name
                            (`Task01_BrainTumour` .. `Task10_Colon`), checked against the
                            published dataset (`jaxseg.data.builders.msd`).
  data.data_dir             where phantoms are generated and prepared datasets live;
                            '' = $JAXSEG_DATA_DIR or ~/.cache/jaxseg.
  data.num_cases            phantom size (0 = the phantom's default).
  data.fold                 '' = the prepared dataset's fixed train/validation split; '0'..'4' =
                            nnU-Net's 5-fold cross-validation over the train + validation cases
                            (KFold, shuffled with seed 12345, over the sorted case ids; the test
                            split stays held out); 'all' = train on all of them (validation then
                            is not held out). Stored in the prepared dataset's metadata.
  data.max_train_cases      0 = every training case; k > 0 = only the first k of a fixed seeded
                            permutation of the training split (after data.fold), so smaller subsets
                            are nested in larger ones; validation and test are unchanged. More than
                            the split has is refused at setup (`jaxseg.data.folds.subset_train`).
  data.prepare_workers      processes preparing cases (0 = one per CPU core).
  data.patch_size           training patch: (H, W) for 2D models, (D, H, W) for 3D [voxels].
  data.foreground_fraction  share of every batch centred on a foreground voxel.
  data.class_balanced       foreground samples pick the class first, uniformly over the
                            split's foreground classes (for rare classes).
  data.num_workers          grain worker processes (0 = read threads of the training process).
  data.num_threads          grain read threads; data.prefetch: batches prefetched.
  data.cache_cases          decoded cases kept in memory per reader.
  data.device_augment       augment inside the jitted train step (`jaxseg.data.device_augment`):
                            the host only samples and crops (with the margin rotation and zoom
                            need). Off by default (on a CPU the host pipeline is cheaper).
  data.device_cache         with device_augment: the whole prepared training split lives on the
                            devices and the step samples its patches itself (no host pipeline);
                            an error names the size when it does not fit.
  data.augment.*            augmentation probabilities and ranges (`jaxseg.data.augment`);
                            nnU-Net's defaults; flip_axes / rotate_max_deg None = nnU-Net's
                            choice for the model's dimension (all axes; 180 deg 2D, 30 deg 3D).
  model.*                   see `jaxseg.models.default_model_config`.
  train.*                   steps, batch size (global), optimiser, schedule, logging.
  train.init_from           '' or a trained jaxseg workdir whose checkpoint initialises this run
                            (transfer learning, `jaxseg.train.init_from_workdir`): every params /
                            batch_stats array with the same name and shape is copied, the rest keep
                            their new initialisation (named in the log and <workdir>/init_from.json);
                            the optimiser starts fresh. Only a fresh run: a resumed run restores its
                            own checkpoint. Not together with model.pretrained.
  train.init_from_checkpoint  'best' (default; the latest when there is no best) | 'latest' | a step.
  train.init_from_exclude   glob patterns of array names never copied (e.g. 'params/head*' when the
                            source's classes are other structures); a tuple or 'a,b'.
  train.freeze_backbone, train.backbone_lr_multiplier  FCN/DeepLab only (the `backbone` module).
  mesh.data                 devices on the mesh's data axis (-1 = all devices / mesh.fsdp).
  mesh.fsdp                 devices on the mesh's fsdp axis: batch rows AND large state arrays
                            (parameters, optimiser moments) are split over it (`jaxseg.parallel`).
  mesh.fsdp_min_size        state arrays with fewer elements are replicated [elements].
  eval.*                    splits, sliding-window and test-time-augmentation settings.
  predict.*                 input/output paths and checkpoint for `--mode=predict`.
  adversarial.*             adversarial training (off by default).
  interpret.*               `--mode=interpret`: split, cases, classes, methods (saliency, smoothgrad,
                            integrated_gradients, grad_cam, attention), Grad-CAM layer, checkpoint,
                            SmoothGrad samples/noise, IG steps, localisation margin [voxels].
  plan.enabled              plan patch, batch, network depth/features, steps and evaluation cadence
                            from the dataset fingerprint and the devices (`jaxseg.plan`; nnU-Net's
                            rules on GPU/TPU, a time budget on CPU). Off in base_config() and the
                            phantom configs (their documented numbers stay); on in configs/msd.py.
                            The plan is written to <workdir>/plan.json and reused from there
                            (resume, evaluate, predict); `--mode=plan` only plans.
  plan.time_budget_min      CPU runs: minutes that training plus evaluation should take.
  plan.memory_gb            memory per device to plan for [GB]; 0 = what the device reports (host
                            RAM on a CPU).
  plan.fixed                config keys the plan must not change; every `--config.KEY=VALUE` given
                            on the command line is added (an override wins and plan.json records it).
"""

from __future__ import annotations

import json
import os
import pathlib
from typing import Any

import ml_collections
from ml_collections import config_dict

from jaxseg import models
from jaxseg.errors import ConfigError

DATASETS = ("ct_phantom", "mr_phantom", "microscopy_phantom", "msd")
OPTIMIZERS = ("adamw", "sgd")
LOSSES = ("dice_ce", "ce", "dice", "focal")
FOLDS = ("", "0", "1", "2", "3", "4", "all")


def base_config() -> ml_collections.ConfigDict:
  """Returns the locked default config with every key jaxseg reads."""
  config = ml_collections.ConfigDict()
  config.seed = 0
  config.deterministic = False  # GPU: XLA's deterministic ops (slower); CPU and TPU are deterministic already.

  config.data = ml_collections.ConfigDict()
  config.data.name = "ct_phantom"
  config.data.root = ""
  config.data.task = ""
  config.data.data_dir = ""
  config.data.num_cases = 0
  config.data.fold = ""                          # '' | '0'..'4' | 'all' (5-fold cross-validation).
  config.data.max_train_cases = 0               # 0 = all; k = a nested seeded subset of the training split.
  config.data.prepare_workers = 0
  config.data.patch_size = (128, 128)
  config.data.foreground_fraction = 1 / 3
  config.data.class_balanced = False
  config.data.num_workers = 0
  config.data.num_threads = 2
  config.data.prefetch = 4
  config.data.cache_cases = 64
  config.data.device_augment = False
  config.data.device_cache = False
  config.data.augment = ml_collections.ConfigDict()  # nnU-Net v2's defaults (jaxseg/data/augment.py).
  config.data.augment.flip_axes = config_dict.placeholder(tuple)  # None: every spatial axis.
  config.data.augment.flip_prob = 0.5
  config.data.augment.rotate_prob = 0.2
  config.data.augment.rotate_max_deg = config_dict.placeholder(float)  # None: 180 (2D), 30 (3D).
  config.data.augment.scale_prob = 0.2
  config.data.augment.scale_range = (0.7, 1.4)                # Zoom factor, > 1 magnifies.
  config.data.augment.elastic_prob = 0.0
  config.data.augment.elastic_alpha = (0.0, 900.0)            # Displacement scale [voxels].
  config.data.augment.elastic_sigma = (9.0, 13.0)             # Smoothing [voxels].
  config.data.augment.noise_prob = 0.1
  config.data.augment.noise_std = (0.0, 0.1)
  config.data.augment.blur_prob = 0.2
  config.data.augment.blur_sigma = (0.5, 1.0)                 # [voxels].
  config.data.augment.brightness_prob = 0.15
  config.data.augment.brightness_range = (0.75, 1.25)
  config.data.augment.contrast_prob = 0.15
  config.data.augment.contrast_range = (0.75, 1.25)
  config.data.augment.lowres_prob = 0.25
  config.data.augment.lowres_range = (0.5, 1.0)               # Downsampling factor.
  config.data.augment.inverted_gamma_prob = 0.1
  config.data.augment.gamma_prob = 0.3
  config.data.augment.gamma_range = (0.7, 1.5)

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
  config.train.init_from = ""                  # A trained workdir to initialise from (transfer learning).
  config.train.init_from_checkpoint = "best"   # best | latest | a step number.
  config.train.init_from_exclude = ()          # Glob patterns of array names kept new ('params/head*').
  config.train.log_every_steps = 50
  config.train.eval_every_steps = 250
  config.train.checkpoint_every_steps = 250
  config.train.keep_checkpoints = 2
  config.train.profile_steps = 0

  config.mesh = ml_collections.ConfigDict()
  config.mesh.data = -1
  config.mesh.fsdp = 1                         # Devices each large state array is split over (FSDP).
  config.mesh.fsdp_min_size = 2**16            # Arrays with fewer elements stay replicated.

  config.eval = ml_collections.ConfigDict()
  config.eval.splits = ("validation", "test")  # Reports under results/<split>/.
  config.eval.batch_size = 16                  # Sliding windows per forward pass.
  config.eval.step_fraction = 0.5              # Step between windows / window size.
  config.eval.mirror_axes = ()                 # Spatial axes mirrored for test-time augmentation.
  config.eval.placement = "auto"               # Sliding-window sums: auto (device on GPU/TPU if they fit) | device | host.
  config.eval.num_figures = 4                  # Best and worst cases shown in figures/.
  config.eval.checkpoint = "best"              # best | latest | a step number.
  config.eval.tolerances_mm = ()               # Surface Dice tolerance [mm]: () = 1 mm, one value, or one per class.
  config.eval.postprocess = True               # Decide largest-component post-processing on validation.
  config.eval.resample = "probabilities"       # To the original grid: probabilities (nnU-Net) | labels.

  config.predict = ml_collections.ConfigDict()
  config.predict.input = ""                    # A NIfTI file or a directory of them.
  config.predict.output = ""                   # Directory for <case>.nii.gz label maps.
  config.predict.checkpoint = "best"           # best | latest | a step number.
  config.predict.save_probabilities = False    # Also write <case>_probabilities.nii.gz [X, Y, Z, K].

  config.interpret = ml_collections.ConfigDict()  # --mode=interpret (jaxseg/interpret_mode.py).
  config.interpret.split = "test"
  config.interpret.cases = ()                  # Case ids ('a,b' on the command line); () = the first num_cases.
  config.interpret.num_cases = 2
  config.interpret.classes = ()                # Class names; () = every foreground class.
  config.interpret.methods = ("saliency", "smoothgrad", "integrated_gradients", "grad_cam")  # + attention.
  config.interpret.region = "predicted"        # Class score over: predicted | reference | all voxels.
  config.interpret.layer = ""                  # Grad-CAM layer (module path); '' = the last before the head.
  config.interpret.checkpoint = "best"         # best | latest | a step number.
  config.interpret.smoothgrad_samples = 16
  config.interpret.smoothgrad_noise = 0.15     # Noise std / (max - min) of the image.
  config.interpret.ig_steps = 32               # Riemann steps of integrated gradients.
  config.interpret.margin_voxels = 2           # Dilation of the reference for the localisation score.

  config.plan = ml_collections.ConfigDict()
  config.plan.enabled = False
  config.plan.time_budget_min = 15.0
  config.plan.memory_gb = 0.0
  config.plan.fixed = ()                       # Keys the plan keeps (the CLI adds its overrides).

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


def smoke_run(config: ml_collections.ConfigDict, *, num_cases: int, num_steps: int, batch_size: int) -> None:
  """Turns `config` into a `:quick` smoke run of every stage (tiny data, few steps, frequent actions)."""
  config.data.num_cases = num_cases
  config.train.num_steps = num_steps
  config.train.batch_size = batch_size
  config.train.log_every_steps = 5
  config.train.eval_every_steps = 10
  config.train.checkpoint_every_steps = 10


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
  if config.data.task and config.data.name != "msd":
    fail("data.task", f"{config.data.task!r} needs data.name 'msd', got {config.data.name!r}")
  if str(config.data.fold) not in FOLDS:
    fail("data.fold", f"{config.data.fold!r} is not a fold; use '' (the fixed split), 0..4 or 'all'")
  if config.plan.time_budget_min <= 0:
    fail("plan.time_budget_min", f"must be > 0 minutes, got {config.plan.time_budget_min}")
  if config.plan.memory_gb < 0:
    fail("plan.memory_gb", f"must be >= 0 GB (0 = the device's), got {config.plan.memory_gb}")
  if config.model.name not in models.MODELS:
    fail("model.name", f"unknown model {config.model.name!r}; choose one of {', '.join(models.MODELS)}")
  ndim = models.spatial_dims(config.model.name)
  patch = tuple(config.data.patch_size)
  if len(patch) != ndim or any(int(p) < 1 for p in patch):
    fail("data.patch_size", f"{patch} must be {ndim} positive sizes for the {ndim}D model "
         f"{config.model.name!r}")
  models.check_patch_size(config.model, patch)  # model.pool_factors / kernel_sizes vs depth, axes and patch.
  _validate_data(config.data, ndim, fail)
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
  if config.mesh.fsdp < 1:
    fail("mesh.fsdp", f"must be a positive device count, got {config.mesh.fsdp}")
  if config.mesh.fsdp_min_size < 0:
    fail("mesh.fsdp_min_size", f"must be >= 0 elements, got {config.mesh.fsdp_min_size}")
  for split in config.eval.splits:
    if split not in ("train", "validation", "test"):
      fail("eval.splits", f"unknown split {split!r}; choose from train, validation, test")
  if not 0.0 < config.eval.step_fraction <= 1.0:
    fail("eval.step_fraction", f"{config.eval.step_fraction} is not in (0, 1]")
  for axis in config.eval.mirror_axes:
    if not 0 <= axis < ndim:
      fail("eval.mirror_axes", f"axis {axis} is not a spatial axis of a {ndim}D model (0..{ndim - 1})")
  if config.eval.resample not in ("probabilities", "labels"):
    fail("eval.resample", f"{config.eval.resample!r} is not 'probabilities' or 'labels'")
  if config.eval.batch_size < 1:
    fail("eval.batch_size", f"must be >= 1, got {config.eval.batch_size}")
  if config.eval.placement not in ("auto", "device", "host"):
    fail("eval.placement", f"{config.eval.placement!r} is not 'auto', 'device' or 'host'")
  if config.eval.num_figures < 0:
    fail("eval.num_figures", f"must be >= 0, got {config.eval.num_figures}")
  if not all(isinstance(t, (int, float)) and t > 0 for t in config.eval.tolerances_mm):
    fail("eval.tolerances_mm", f"{tuple(config.eval.tolerances_mm)} must be positive distances in mm")
  _validate_interpret(config.interpret, fail)
  _validate_init_from(config, fail)
  for key in ("eval.checkpoint", "predict.checkpoint", "interpret.checkpoint"):
    which = str(config[key.split(".")[0]].checkpoint)
    if which not in ("best", "latest") and not which.isdigit():
      fail(key, f"{which!r} is not 'best', 'latest' or a step number")


def split_names(values) -> tuple[str, ...]:
  """A tuple of names from a config value given as a tuple or as 'a,b' on the command line."""
  return tuple(name.strip() for value in values for name in str(value).split(",") if name.strip())


def _validate_init_from(config: ml_collections.ConfigDict, fail) -> None:
  """`train.init_from*` and the backbone keys (transfer learning)."""
  from jaxseg.models import pretrained  # pylint: disable=g-import-not-at-top
  train = config.train
  if train.init_from and config.model.pretrained:
    fail("train.init_from", f"{train.init_from!r} and model.pretrained={config.model.pretrained!r} both set "
         "the initial weights; set one of them")
  which = str(train.init_from_checkpoint)
  if which not in ("best", "latest") and not which.isdigit():
    fail("train.init_from_checkpoint", f"{which!r} is not 'best', 'latest' or a step number")
  if config.model.name not in pretrained.BACKBONE_MODELS:
    for key, unset in (("freeze_backbone", False), ("backbone_lr_multiplier", 1.0)):
      if train[key] != unset:
        fail(f"train.{key}", f"{train[key]!r} has no effect: model {config.model.name!r} has no backbone "
             f"module (only {', '.join(pretrained.BACKBONE_MODELS)} have one)")


def _validate_interpret(settings: ml_collections.ConfigDict, fail) -> None:
  from jaxseg.interpret import METHODS  # pylint: disable=g-import-not-at-top
  methods = split_names(settings.methods)
  if settings.split not in ("train", "validation", "test"):
    fail("interpret.split", f"unknown split {settings.split!r}; choose from train, validation, test")
  unknown = [m for m in methods if m not in METHODS]
  if unknown or not methods:
    fail("interpret.methods", f"{methods} must name some of {', '.join(METHODS)}")
  if settings.region not in ("predicted", "reference", "all"):
    fail("interpret.region", f"{settings.region!r} is not one of predicted, reference, all")
  for key in ("num_cases", "smoothgrad_samples", "ig_steps"):
    if settings[key] < 1:
      fail(f"interpret.{key}", f"must be >= 1, got {settings[key]}")
  if settings.margin_voxels < 0:
    fail("interpret.margin_voxels", f"must be >= 0 voxels, got {settings.margin_voxels}")
  if not settings.smoothgrad_noise >= 0:
    fail("interpret.smoothgrad_noise", f"must be >= 0, got {settings.smoothgrad_noise}")


def _validate_data(data: ml_collections.ConfigDict, ndim: int, fail) -> None:
  """Checks `config.data` for a model of `ndim` spatial axes."""
  if data.task:
    from jaxseg.data.builders import msd  # pylint: disable=g-import-not-at-top  (imports TFDS)
    if data.task not in msd.TASKS:
      fail("data.task", f"unknown task {data.task!r}; choose one of {', '.join(msd.TASKS)}")
  if not 0.0 <= data.foreground_fraction <= 1.0:
    fail("data.foreground_fraction", f"{data.foreground_fraction} is not in [0, 1]")
  for key in ("num_workers", "prepare_workers", "num_threads", "prefetch"):
    if data[key] < 0:
      fail(f"data.{key}", f"must be >= 0, got {data[key]}")
  if data.cache_cases < 1:
    fail("data.cache_cases", f"must be >= 1, got {data.cache_cases}")
  if isinstance(data.max_train_cases, bool) or not isinstance(data.max_train_cases, int) or data.max_train_cases < 0:
    fail("data.max_train_cases", f"must be an integer >= 0 (0 = every training case), got {data.max_train_cases!r}")
  if data.device_cache and not data.device_augment:
    fail("data.device_cache", "needs data.device_augment=True (patches sampled on the device are augmented there)")
  augment = data.augment
  for axis in augment.flip_axes or ():
    if not 0 <= axis < ndim:
      fail("data.augment.flip_axes", f"axis {axis} is not a spatial axis of a {ndim}D model (0..{ndim - 1})")
  if augment.rotate_max_deg is not None and augment.rotate_max_deg < 0:
    fail("data.augment.rotate_max_deg", f"must be >= 0 degrees, got {augment.rotate_max_deg}")
  for key, value in augment.items():
    if key.endswith("_prob") and not 0.0 <= value <= 1.0:
      fail(f"data.augment.{key}", f"{value} is not a probability in [0, 1]")
    if key.endswith(("_range", "_std", "_sigma", "_alpha")):
      if len(value) != 2 or not 0 <= value[0] <= value[1]:
        fail(f"data.augment.{key}", f"{tuple(value)} must be (low, high) with 0 <= low <= high")
      if key in ("scale_range", "lowres_range", "gamma_range") and value[0] <= 0:
        fail(f"data.augment.{key}", f"{tuple(value)} must be positive factors")
      if key == "lowres_range" and value[1] > 1:
        fail(f"data.augment.{key}", f"{tuple(value)} are downsampling factors, at most 1")


def data_dir(config: ml_collections.ConfigDict):
  """Directory holding generated phantoms and prepared datasets: a `pathlib.Path`, or an `epath.Path` for gs://."""
  from jaxseg import paths  # pylint: disable=g-import-not-at-top
  path = config.data.data_dir or os.environ.get("JAXSEG_DATA_DIR") or "~/.cache/jaxseg"
  return paths.resolve(path, "config.data.data_dir" if config.data.data_dir else "data directory")


def to_json(config: ml_collections.ConfigDict) -> str:
  """The resolved config as stable, human-readable JSON."""
  return json.dumps(_plain(config.to_dict()), indent=2, sort_keys=True)


def _plain(value: Any) -> Any:
  if isinstance(value, dict):
    return {k: _plain(v) for k, v in value.items()}
  if isinstance(value, (list, tuple)):
    return [_plain(v) for v in value]
  return value

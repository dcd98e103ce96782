"""The one place that defines every config key, its default and its checks.

Config files in `configs/` start from `base_config()` and change values; they
never add keys. `base_config()` returns a *locked* `ConfigDict`, so a misspelt
key in a config file or on the command line (`--config.train.num_stpes=5`) is
an error that names the key instead of a silently ignored setting.

`validate(config)` is the one check of every key's value (run by every mode
before any work). Config files take one argument grammar,
`configs/NAME.py:key=value,flag` (`parse_arg`), and are read by `load`
(`--config=` reads them the same way). `smoke_run` and `phantom_schedule` are
the settings the shipped configs share.

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
                            '' = $JAXSEG_DATA_DIR or ~/.cache/jaxseg (`jaxseg.data.location`).
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
  train.eval_every_steps    validation (and the `best` checkpoint) every N steps and at the last;
                            0 = none during training (`best` is then the latest checkpoint).
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

import dataclasses
import importlib.util
import json
import os
import pathlib
from typing import Any, Mapping

import ml_collections
from ml_collections import config_dict

from jaxseg import losses
from jaxseg import models
from jaxseg.errors import ConfigError
from jaxseg.models import discriminator

DATASETS = ("ct_phantom", "mr_phantom", "microscopy_phantom", "msd")
OPTIMIZERS = ("adamw", "sgd")
LOSSES = tuple(losses.LOSSES)
FOLDS = ("", "0", "1", "2", "3", "4", "all")


# The `*_prob` keys of nnU-Net's intensity augmentation in `config.data.augment` (a config that switches them off
# sets each to 0).
INTENSITY_AUGMENT_KEYS = (
  "noise_prob",
  "blur_prob",
  "brightness_prob",
  "contrast_prob",
  "lowres_prob",
  "inverted_gamma_prob",
  "gamma_prob",
)


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
  config.data.fold = ""  # '' | '0'..'4' | 'all' (5-fold cross-validation).
  config.data.max_train_cases = 0  # 0 = all; k = a nested seeded subset of the training split.
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
  config.data.augment.scale_range = (0.7, 1.4)  # Zoom factor, > 1 magnifies.
  config.data.augment.elastic_prob = 0.0
  config.data.augment.elastic_alpha = (0.0, 900.0)  # Displacement scale [voxels].
  config.data.augment.elastic_sigma = (9.0, 13.0)  # Smoothing [voxels].
  config.data.augment.noise_prob = 0.1
  config.data.augment.noise_std = (0.0, 0.1)
  config.data.augment.blur_prob = 0.2
  config.data.augment.blur_sigma = (0.5, 1.0)  # [voxels].
  config.data.augment.brightness_prob = 0.15
  config.data.augment.brightness_range = (0.75, 1.25)
  config.data.augment.contrast_prob = 0.15
  config.data.augment.contrast_range = (0.75, 1.25)
  config.data.augment.lowres_prob = 0.25
  config.data.augment.lowres_range = (0.5, 1.0)  # Downsampling factor.
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
  config.train.init_from = ""  # A trained workdir to initialise from (transfer learning).
  config.train.init_from_checkpoint = "best"  # best | latest | a step number.
  config.train.init_from_exclude = ()  # Glob patterns of array names kept new ('params/head*').
  config.train.log_every_steps = 50
  config.train.eval_every_steps = 250
  config.train.checkpoint_every_steps = 250
  config.train.keep_checkpoints = 2
  config.train.profile_steps = 0

  config.mesh = ml_collections.ConfigDict()
  config.mesh.data = -1
  config.mesh.fsdp = 1  # Devices each large state array is split over (FSDP).
  config.mesh.fsdp_min_size = 2**16  # Arrays with fewer elements stay replicated.

  config.eval = ml_collections.ConfigDict()
  config.eval.splits = ("validation", "test")  # Reports under results/<split>/.
  config.eval.batch_size = 16  # Sliding windows per forward pass.
  config.eval.step_fraction = 0.5  # Step between windows / window size.
  config.eval.mirror_axes = ()  # Spatial axes mirrored for test-time augmentation.
  config.eval.placement = "auto"  # Sliding-window sums: auto (device on GPU/TPU if they fit) | device | host.
  config.eval.num_figures = 4  # Best and worst cases shown in figures/.
  config.eval.checkpoint = "best"  # best | latest | a step number.
  config.eval.tolerances_mm = ()  # Surface Dice tolerance [mm]: () = 1 mm, one value, or one per class.
  config.eval.postprocess = True  # Decide largest-component post-processing on validation.
  config.eval.resample = "probabilities"  # To the original grid: probabilities (nnU-Net) | labels.

  config.predict = ml_collections.ConfigDict()
  config.predict.input = ""  # A NIfTI file or a directory of them.
  config.predict.output = ""  # Directory for <case>.nii.gz label maps.
  config.predict.checkpoint = "best"  # best | latest | a step number.
  config.predict.save_probabilities = False  # Also write <case>_probabilities.nii.gz [X, Y, Z, K].

  config.interpret = ml_collections.ConfigDict()  # --mode=interpret (jaxseg/interpret_mode.py).
  config.interpret.split = "test"
  config.interpret.cases = ()  # Case ids ('a,b' on the command line); () = the first num_cases.
  config.interpret.num_cases = 2
  config.interpret.classes = ()  # Class names; () = every foreground class.
  config.interpret.methods = ("saliency", "smoothgrad", "integrated_gradients", "grad_cam")  # + attention.
  config.interpret.region = "predicted"  # Class score over: predicted | reference | all voxels.
  config.interpret.layer = ""  # Grad-CAM layer (module path); '' = the last before the head.
  config.interpret.checkpoint = "best"  # best | latest | a step number.
  config.interpret.smoothgrad_samples = 16
  config.interpret.smoothgrad_noise = 0.15  # Noise std / (max - min) of the image.
  config.interpret.ig_steps = 32  # Riemann steps of integrated gradients.
  config.interpret.margin_voxels = 2  # Dilation of the reference for the localisation score.

  config.plan = ml_collections.ConfigDict()
  config.plan.enabled = False
  config.plan.time_budget_min = 15.0
  config.plan.memory_gb = 0.0
  config.plan.fixed = ()  # Keys the plan keeps (the CLI adds its overrides).

  config.adversarial = ml_collections.ConfigDict()
  config.adversarial.enabled = False
  config.adversarial.weight = 0.01  # lambda of the segmenter's adversarial term.
  config.adversarial.warmup_steps = 100  # steps trained without the adversarial term.
  config.adversarial.disc_every_steps = 1  # the discriminator is updated every k steps.
  config.adversarial.learning_rate = 1e-4
  config.adversarial.beta1 = 0.5
  config.adversarial.label_smoothing = 0.1  # real targets are 1 - smoothing.
  config.adversarial.input = "product"  # product (Luc et al. 2016) | concat.
  config.adversarial.spectral_norm = False
  config.adversarial.features = 32
  config.adversarial.num_layers = 3

  config.lock()
  return config


def smoke_run(
  config: ml_collections.ConfigDict, *, num_steps: int, batch_size: int, num_cases: int | None = None
) -> None:
  """Turns `config` into a `:quick` smoke run of every stage (tiny data, few steps, frequent actions).

  `num_cases` None keeps `config.data.num_cases` (a dataset on disk, not a phantom, has its own size).
  """
  if num_cases is not None:
    config.data.num_cases = num_cases
  config.train.num_steps = num_steps
  config.train.batch_size = batch_size
  config.train.log_every_steps = 5
  config.train.eval_every_steps = 10
  config.train.checkpoint_every_steps = 10


def phantom_schedule(
  config: ml_collections.ConfigDict,
  *,
  num_steps: int = 600,
  batch_size: int = 8,
  learning_rate: float = 2e-3,
  warmup_steps: int = 30,
  log_every_steps: int = 25,
  eval_every_steps: int = 200,
  checkpoint_every_steps: int = 200,
) -> None:
  """Sets the training schedule the phantom configs share (minutes on a CPU); a config passes what differs.

  Batch size is global [cases]; the learning rate is the peak after `warmup_steps` of linear warm-up.
  """
  config.train.update(
    num_steps=num_steps,
    batch_size=batch_size,
    learning_rate=learning_rate,
    warmup_steps=warmup_steps,
    log_every_steps=log_every_steps,
    eval_every_steps=eval_every_steps,
    checkpoint_every_steps=checkpoint_every_steps,
  )


@dataclasses.dataclass(frozen=True)
class OneOf:
  """A string argument of `parse_arg` with fixed values, which may also be given bare.

  `variant=OneOf("8s", ("32s", "16s", "8s"))` accepts `:variant=16s` and `:16s`.
  """

  default: str
  options: tuple[str, ...]


def parse_arg(
  arg: str | None, config_file: str | os.PathLike, *, aliases: Mapping[str, str] | None = None, **spec: Any
) -> ml_collections.ConfigDict:
  """Parses the `ARG` of `--config=configs/NAME.py:ARG`: the one grammar of every config file.

  Like big_vision's `parse_arg`. `ARG` is a comma-separated list of items:

    key=value   a typed value; the type is that of the key's default in `spec`:
                int, float, str, bool (True/False, true/false, 1/0, yes/no), or a
                `OneOf` (one of its options);
    flag        a bare word naming a bool key sets it to True (`:quick`);
    value       a bare word naming an option of a `OneOf` key sets that key
                (`configs/msd.py:unet3d` is `:model=unet3d`).

  No `ARG`, or an empty one, gives the defaults. `aliases` maps an old
  spelling to the items it stands for (`{"16s_quick": "16s,quick"}`). In a
  config file:

    def get_config(arg=None):
      arg = parse_arg(arg, __file__, variant=OneOf("8s", ("32s", "16s", "8s")), quick=False)
      ...  # arg.variant, arg.quick

  so that `configs/fcn_ct.py:16s,quick` and `:variant=16s,quick=True` are one config.

  Args:
    arg: the string after the first ':' (None without one).
    config_file: the config file (`__file__`), named in errors.
    aliases: old spellings -> items.
    **spec: every key the file accepts, with its default (bool, int, float, str or `OneOf`).

  Returns:
    A locked ConfigDict with every key of `spec`.

  Raises:
    ConfigError: naming the config file, the argument, the item and the known keys: an unknown key or
      word, a value that is not of the key's type or not one of its options, a key given twice.
  """
  for key, default in spec.items():
    if not isinstance(default, (bool, int, float, str, OneOf)):
      raise TypeError(f"parse_arg: {key}={default!r} is not a bool, int, float, str or OneOf default")
  where = f"{_config_name(config_file)}:{arg}"
  known = ", ".join(_describe(key, default) for key, default in spec.items()) or "none"

  def fail(what: str):
    raise ConfigError(f"{what} in {where}; known: {known}")

  items = [item.strip() for item in (arg or "").split(",") if item.strip()]
  items = [part.strip() for item in items for part in (aliases or {}).get(item, item).split(",")]
  values = {key: default.default if isinstance(default, OneOf) else default for key, default in spec.items()}
  given = set()
  for item in items:
    key, equals, text = (part.strip() for part in item.partition("="))
    if not equals:
      if isinstance(spec.get(key), bool):
        value = True
      else:
        owners = [k for k, d in spec.items() if isinstance(d, OneOf) and key in d.options]
        if not owners:
          fail(f"unknown variant {key!r}")
        key, value = owners[0], key
    elif key not in spec:
      fail(f"unknown key {key!r}")
    else:
      value = _typed(spec[key], text, lambda what, k=key: fail(f"{k}={text!r} {what}"))
    if key in given:
      fail(f"{key} is given twice")
    given.add(key)
    values[key] = value
  parsed = ml_collections.ConfigDict(values)
  parsed.lock()
  return parsed


def _config_name(config_file: str | os.PathLike) -> str:
  path = pathlib.Path(config_file)
  return f"configs/{path.name}" if path.parent.name == "configs" else str(path)


def _describe(key: str, default: Any) -> str:
  if isinstance(default, bool):
    return f"{key} (a flag)"
  if isinstance(default, OneOf):
    return f"{key}={'|'.join(default.options)} (or the bare value; default {default.default})"
  return f"{key}=<{type(default).__name__}> (default {default!r})"


def _typed(default: Any, text: str, fail) -> Any:
  """`text` as a value of `default`'s type; `fail(what)` raises."""
  if isinstance(default, OneOf):
    if text not in default.options:
      fail(f"is not one of {', '.join(default.options)}")
    return text
  if isinstance(default, bool):
    words = {"true": True, "1": True, "yes": True, "false": False, "0": False, "no": False}
    if text.lower() not in words:
      fail("is not True or False")
    return words[text.lower()]
  if isinstance(default, str):
    return text
  try:
    return type(default)(text)
  except ValueError:
    fail(f"is not a{'n' if isinstance(default, int) else ''} {type(default).__name__}")


def load(path_arg: str | os.PathLike) -> ml_collections.ConfigDict:
  """The config of `configs/NAME.py[:ARG]`, read as `--config=` reads it.

  The file's `get_config(ARG)`, or `get_config()` without ':' (as ml_collections' config_flags:
  `ARG` is everything after the first ':'; `parse_arg` parses it).

  Raises:
    ConfigError: the file does not exist or has no `get_config`; what `get_config` raises.
  """
  path, *arg = os.fspath(path_arg).split(":", 1)
  file = pathlib.Path(path)
  if not file.is_file():
    raise ConfigError(f"config file {path} does not exist")
  spec = importlib.util.spec_from_file_location(f"jaxseg_config_{file.stem}", file)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  get_config = getattr(module, "get_config", None)
  if not callable(get_config):
    raise ConfigError(f"config file {path} has no get_config(arg) function")
  return get_config(*arg)


def validate(config: ml_collections.ConfigDict) -> None:
  """Checks values that a locked config cannot check by itself: the one check of every key.

  Every mode (train, evaluate, predict, interpret, plan) runs it before any work, through
  `jaxseg.experiment.setup` or `plan_workdir`.

  Raises:
    ConfigError: naming the key and what is wrong.
  """

  def fail(key: str, message: str):
    raise ConfigError(f"config.{key}: {message}")

  if config.data.name not in DATASETS:
    fail("data.name", f"unknown dataset {config.data.name!r}; choose one of {', '.join(DATASETS)}")
  if config.data.name == "msd" and not config.data.root:
    fail(
      "data.root", "is empty; set it to an MSD / nnU-Net raw dataset directory (--config.data.root=/data/Task09_Spleen)"
    )
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
    fail("data.patch_size", f"{patch} must be {ndim} positive sizes for the {ndim}D model {config.model.name!r}")
  models.check_patch_size(config.model, patch)  # model.pool_factors / kernel_sizes vs depth, axes and patch.
  _validate_data(config.data, ndim, fail)
  for key in (
    "num_steps",
    "batch_size",
    "log_every_steps",
    "checkpoint_every_steps",
    "keep_checkpoints",
  ):
    if config.train[key] < 1:
      fail(f"train.{key}", f"must be >= 1, got {config.train[key]}")
  if config.train.eval_every_steps < 0:
    fail(
      "train.eval_every_steps",
      f"must be >= 1, or 0 for no validation during training, got {config.train.eval_every_steps}",
    )
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
  validate_adversarial(config)


def validate_adversarial(config: ml_collections.ConfigDict) -> None:
  """Checks `config.adversarial` (and that `data.patch_size` suits the discriminator when enabled).

  Raises:
    ConfigError: naming the key and what is wrong.
  """
  adv = config.adversarial

  def check(ok: bool, key: str, message: str):
    if not ok:
      raise ConfigError(f"config.adversarial.{key}={adv[key]!r}: {message}")

  def is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)

  def is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)

  check(isinstance(adv.enabled, bool), "enabled", "must be True or False")
  check(
    adv.input in discriminator.INPUT_FORMS,
    "input",
    f"unknown input form; choose one of {', '.join(discriminator.INPUT_FORMS)}",
  )
  check(isinstance(adv.spectral_norm, bool), "spectral_norm", "must be True or False")
  for key in ("features", "num_layers", "disc_every_steps"):
    check(is_int(adv[key]) and adv[key] >= 1, key, "must be an integer >= 1")
  check(is_int(adv.warmup_steps) and adv.warmup_steps >= 0, "warmup_steps", "must be an integer >= 0")
  check(is_number(adv.weight) and adv.weight >= 0, "weight", "must be >= 0")
  check(is_number(adv.learning_rate) and adv.learning_rate > 0, "learning_rate", "must be > 0")
  check(is_number(adv.beta1) and 0 <= adv.beta1 < 1, "beta1", "must be in [0, 1)")
  check(is_number(adv.label_smoothing) and 0 <= adv.label_smoothing < 1, "label_smoothing", "must be in [0, 1)")
  smallest = 2**adv.num_layers
  if adv.enabled and min(config.data.patch_size) < smallest:
    raise ConfigError(
      f"config.data.patch_size={tuple(config.data.patch_size)} is smaller than the "
      f"{smallest} voxels the discriminator's {adv.num_layers} stride-2 layers need per axis; "
      "lower config.adversarial.num_layers or enlarge the patch"
    )


def split_names(values) -> tuple[str, ...]:
  """A tuple of names from a config value given as a tuple or as 'a,b' on the command line."""
  return tuple(name.strip() for value in values for name in str(value).split(",") if name.strip())


def _validate_init_from(config: ml_collections.ConfigDict, fail) -> None:
  """`train.init_from*` and the backbone keys (transfer learning)."""
  from jaxseg.models import pretrained  # pylint: disable=g-import-not-at-top

  train = config.train
  if train.init_from and config.model.pretrained:
    fail(
      "train.init_from",
      f"{train.init_from!r} and model.pretrained={config.model.pretrained!r} both set "
      "the initial weights; set one of them",
    )
  which = str(train.init_from_checkpoint)
  if which not in ("best", "latest") and not which.isdigit():
    fail("train.init_from_checkpoint", f"{which!r} is not 'best', 'latest' or a step number")
  if config.model.name not in pretrained.BACKBONE_MODELS:
    for key, unset in (("freeze_backbone", False), ("backbone_lr_multiplier", 1.0)):
      if train[key] != unset:
        fail(
          f"train.{key}",
          f"{train[key]!r} has no effect: model {config.model.name!r} has no backbone "
          f"module (only {', '.join(pretrained.BACKBONE_MODELS)} have one)",
        )


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


def to_json(config: ml_collections.ConfigDict) -> str:
  """The resolved config as stable, human-readable JSON."""
  return json.dumps(_plain(config.to_dict()), indent=2, sort_keys=True)


def _plain(value: Any) -> Any:
  if isinstance(value, dict):
    return {k: _plain(v) for k, v in value.items()}
  if isinstance(value, (list, tuple)):
    return [_plain(v) for v in value]
  return value

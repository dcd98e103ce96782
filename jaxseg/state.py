"""The training state pytree, the optimisers that update it, and the adversarial settings it is built from."""

from __future__ import annotations

import fnmatch
from typing import Any, Sequence

import flax
import flax.traverse_util
import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

from jaxseg.errors import ConfigError
from jaxseg.models import discriminator as discriminator_lib

# fold_in index of the discriminator's initialisation key (independent of the segmenter's keys).
_DISCRIMINATOR_STREAM = 1


class TrainState(flax.struct.PyTreeNode):
  """Everything that changes during training, as one pytree (checkpointed whole).

  Attributes:
    step: int32 scalar, number of optimiser updates done.
    params: the model's `params` collection.
    batch_stats: the model's `batch_stats` collection (empty dict if none).
    opt_state: optax state of the segmenter's optimiser.
    rng: PRNG key data; per-step keys are `jax.random.fold_in(rng, step)`.
    disc_params: the discriminator's `params` (None unless
      `config.adversarial.enabled`).
    disc_batch_stats: the discriminator's `batch_stats` (spectral-norm
      power-iteration state; empty dict without spectral norm; None when
      adversarial training is off).
    disc_opt_state: optax state of the discriminator's optimiser (None when
      adversarial training is off).
  """
  step: jax.Array
  params: Any
  batch_stats: Any
  opt_state: Any
  rng: jax.Array
  disc_params: Any = None
  disc_batch_stats: Any = None
  disc_opt_state: Any = None


def learning_rate_schedule(train_config: ml_collections.ConfigDict) -> optax.Schedule:
  """Linear warm-up to `learning_rate`, then cosine decay to `end_learning_rate_factor` of it."""
  peak = train_config.learning_rate
  warmup = min(train_config.warmup_steps, max(train_config.num_steps - 1, 0))
  return optax.warmup_cosine_decay_schedule(
      init_value=0.0 if warmup else peak, peak_value=peak, warmup_steps=warmup,
      decay_steps=max(train_config.num_steps, warmup + 1),
      end_value=peak * train_config.end_learning_rate_factor)


def decay_mask(params: Any) -> Any:
  """True for the parameters weight decay applies to: convolution and dense kernels.

  Biases and normalisation scales and offsets are not decayed, the usual AdamW
  practice (BERT's optimiser and timm's parameter groups exclude them): a
  norm's scale sets its channel's magnitude, which the following normalised
  layer undoes anyway, so decaying it only fights the optimiser, and biases do
  not add to the function's complexity. (nnU-Net's SGD, weight decay 3e-5,
  decays everything; with these masks `optimizer="sgd"` decays kernels only.)
  Every flax Conv, Dense and ConvTranspose names its weight `kernel`; norms
  hold `scale` and `bias`.
  """
  def is_kernel(path, _) -> bool:
    last = path[-1] if path else None
    return getattr(last, "key", getattr(last, "name", None)) == "kernel"
  return jax.tree_util.tree_map_with_path(is_kernel, params)


def _base_optimizer(train_config: ml_collections.ConfigDict, schedule: optax.Schedule):
  if train_config.optimizer == "adamw":
    return optax.adamw(schedule, weight_decay=train_config.weight_decay, mask=decay_mask)
  return optax.chain(optax.add_decayed_weights(train_config.weight_decay, mask=decay_mask),
                     optax.sgd(schedule, momentum=train_config.momentum, nesterov=True))


def create_optimizer(train_config: ml_collections.ConfigDict) -> optax.GradientTransformation:
  """Optimiser with global-norm clipping and the backbone rules.

  Parameters under a top-level `backbone` module are frozen when
  `train.freeze_backbone`, else trained with the learning rate scaled by
  `train.backbone_lr_multiplier`.
  """
  schedule = learning_rate_schedule(train_config)
  head = _base_optimizer(train_config, schedule)
  if train_config.freeze_backbone:
    backbone = optax.set_to_zero()
  elif train_config.backbone_lr_multiplier != 1.0:
    multiplier = train_config.backbone_lr_multiplier
    backbone = _base_optimizer(train_config, lambda count: multiplier * schedule(count))
  else:
    backbone = None
  if backbone is None:
    tx = head
  else:
    def labels(params):
      return {key: jax.tree.map(lambda _, k=key: "backbone" if k == "backbone" else "head", value)
              for key, value in params.items()}
    tx = optax.multi_transform({"head": head, "backbone": backbone}, labels)
  return optax.chain(optax.clip_by_global_norm(train_config.grad_clip_norm), tx)


def check_adversarial_config(config: ml_collections.ConfigDict) -> None:
  """Checks `config.adversarial` (and that `data.patch_size` suits the discriminator).

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
  check(adv.input in discriminator_lib.INPUT_FORMS, "input",
        f"unknown input form; choose one of {', '.join(discriminator_lib.INPUT_FORMS)}")
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
    raise ConfigError(f"config.data.patch_size={tuple(config.data.patch_size)} is smaller than the "
                      f"{smallest} voxels the discriminator's {adv.num_layers} stride-2 layers need per axis; "
                      "lower config.adversarial.num_layers or enlarge the patch")


def create_discriminator(adversarial_config: ml_collections.ConfigDict) -> discriminator_lib.PatchDiscriminator:
  """The patch discriminator described by `config.adversarial`."""
  return discriminator_lib.PatchDiscriminator(
      features=adversarial_config.features, num_layers=adversarial_config.num_layers,
      input_form=adversarial_config.input, spectral_norm=adversarial_config.spectral_norm)


def create_discriminator_optimizer(adversarial_config: ml_collections.ConfigDict) -> optax.GradientTransformation:
  """Adam with `adversarial.learning_rate` (constant) and `adversarial.beta1` (0.5 as in DCGAN)."""
  return optax.adam(adversarial_config.learning_rate, b1=adversarial_config.beta1)


def init_variables(model: nn.Module, rng: jax.Array, input_shape: tuple[int, ...]) -> dict:
  """Initialises the model's variables for inputs of `input_shape` ([B, *spatial, C])."""
  params_rng, dropout_rng = jax.random.split(rng)
  return model.init({"params": params_rng, "dropout": dropout_rng},
                    jnp.zeros(input_shape, jnp.float32), train=False)


def create_train_state(config: ml_collections.ConfigDict, model: nn.Module, tx: optax.GradientTransformation,
                       input_shape: tuple[int, ...],
                       disc_tx: optax.GradientTransformation | None = None) -> TrainState:
  """A fresh state from `config.seed` (pure: jit it with out_shardings to place it).

  With `config.adversarial.enabled` the state also holds the discriminator
  (for images `input_shape` `[B, *spatial, C]` and `config.model.num_classes`
  label channels) and the state of its optimiser `disc_tx` (default
  `create_discriminator_optimizer(config.adversarial)`); the segmenter's part
  is the same as without it.
  """
  seed_key = jax.random.key(config.seed)
  init_rng, state_rng = jax.random.split(seed_key)
  variables = init_variables(model, init_rng, input_shape)
  params = variables["params"]
  state = TrainState(step=jnp.zeros((), jnp.int32), params=params,
                     batch_stats=variables.get("batch_stats", {}), opt_state=tx.init(params),
                     rng=jax.random.key_data(state_rng))
  if not config.adversarial.enabled:
    return state
  check_adversarial_config(config)
  label_shape = (*input_shape[:-1], config.model.num_classes)
  disc_variables = create_discriminator(config.adversarial).init(
      jax.random.fold_in(seed_key, _DISCRIMINATOR_STREAM), jnp.zeros(input_shape, jnp.float32),
      jnp.zeros(label_shape, jnp.float32))
  disc_params = disc_variables["params"]
  if disc_tx is None:
    disc_tx = create_discriminator_optimizer(config.adversarial)
  return state.replace(disc_params=disc_params, disc_batch_stats=disc_variables.get("batch_stats", {}),
                       disc_opt_state=disc_tx.init(disc_params))


def array_names(variables: dict) -> dict[str, tuple[int, ...]]:
  """'params/down0/conv0/kernel' -> shape for every array of a `{'params': ..., 'batch_stats': ...}` tree."""
  return {"/".join(path): tuple(np.shape(value))
          for path, value in flax.traverse_util.flatten_dict(variables).items()}


def transfer_matching(target: dict, source: dict, exclude: Sequence[str] = ()) -> tuple[dict, list[str], list[str]]:
  """`target` with every array that `source` holds under the same name and with the same shape copied in.

  Args:
    target: `{'params': ..., 'batch_stats': ...}` of the model being initialised (its fresh initialisation).
    source: the same structure from another model (for example a trained run's checkpoint).
    exclude: glob patterns (`fnmatch`) of array names ('params/head0/kernel') never copied, e.g.
      'params/head*' for an output layer whose classes mean other structures in the source.

  Returns:
    (variables, copied, kept): the new variables (numpy float arrays where copied, `target`'s arrays
    elsewhere), the names copied and the names that kept `target`'s value (absent from `source`, another
    shape, or excluded), each sorted.
  """
  flat_source = {"/".join(path): value for path, value in flax.traverse_util.flatten_dict(source).items()}
  copied, kept, out = [], [], {}
  for path, value in flax.traverse_util.flatten_dict(target).items():
    name = "/".join(path)
    other = flat_source.get(name)
    if (other is not None and np.shape(other) == np.shape(value)
        and not any(fnmatch.fnmatchcase(name, pattern) for pattern in exclude)):
      out[path] = np.asarray(other, dtype=np.asarray(value).dtype)
      copied.append(name)
    else:
      out[path] = value
      kept.append(name)
  return flax.traverse_util.unflatten_dict(out), sorted(copied), sorted(kept)


def describe_kept(kept: Sequence[str], target: dict, source: dict, exclude: Sequence[str] = ()) -> list[str]:
  """Why each kept array kept its new initialisation: 'NAME (shape A here, B in the source)' and the like."""
  here, there = array_names(target), array_names(source)
  reasons = []
  for name in kept:
    if any(fnmatch.fnmatchcase(name, pattern) for pattern in exclude):
      reasons.append(f"{name} (excluded)")
    elif name in there:
      reasons.append(f"{name} (shape {here[name]} here, {there[name]} in the source)")
    else:
      reasons.append(f"{name} (not in the source)")
  return reasons


def init_from_variables(state: TrainState, source: dict, tx: optax.GradientTransformation, origin: str,
                        exclude: Sequence[str] = ()) -> tuple[TrainState, dict[str, Any]]:
  """The state with the segmenter's matching arrays copied from `source` (host side, before training).

  `source` is `{'params': ..., 'batch_stats': ...}` of another model; arrays are matched by name and shape
  (`transfer_matching`). The optimiser state starts fresh (`tx.init`), the step stays 0, and the
  discriminator of adversarial training (if any) keeps its initialisation.

  Returns:
    (state, record): record = {'copied': [names], 'kept': ['name (reason)'], 'num_copied', 'num_kept'}.

  Raises:
    ConfigError: naming `origin` (the config key and workdir) when no array matches.
  """
  target = {"params": state.params, "batch_stats": state.batch_stats}
  variables, copied, kept = transfer_matching(target, source, exclude)
  if not copied:
    theirs, ours = sorted(array_names(source)), sorted(array_names(target))
    raise ConfigError(f"{origin}: no array of the source matches this model by name and shape (source has "
                      f"{len(theirs)} arrays, e.g. {theirs[0] if theirs else 'none'}; this model "
                      f"{len(ours)}, e.g. {ours[0] if ours else 'none'}); is it another architecture?")
  params = variables["params"]
  state = state.replace(params=params, batch_stats=variables.get("batch_stats", {}), opt_state=tx.init(params))
  return state, {"copied": copied, "kept": describe_kept(kept, target, source, exclude),
                 "num_copied": len(copied), "num_kept": len(kept)}


def load_pretrained(state: TrainState, model_config: ml_collections.ConfigDict,
                    tx: optax.GradientTransformation) -> TrainState:
  """Replaces the backbone with `model.pretrained` weights (host side, before training)."""
  from jaxseg.models import pretrained  # Imported lazily: only transfer learning needs it.
  variables = pretrained.load_pretrained(
      {"params": state.params, "batch_stats": state.batch_stats}, model_config)
  params = variables["params"]
  return state.replace(params=params, batch_stats=variables.get("batch_stats", {}),
                       opt_state=tx.init(params))

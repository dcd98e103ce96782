"""The training state pytree: creating it, and loading weights into a fresh one (pretrained, transfer).

`TrainState` holds everything that changes during training and is checkpointed
whole; the discriminator of adversarial training is one optional part of it
(`AdversaryState`). The optimisers that update it are in `jaxseg.optimizer`;
the discriminator and its optimiser are built once, on the experiment
(`jaxseg.experiment.Experiment`).

Transfer learning fills a fresh state's segmenter from other weights before
training (`init_from_variables`: a trained jaxseg run's arrays matched by name
and shape; `load_pretrained`: torchvision backbone weights); both restart the
optimiser state.
"""

from __future__ import annotations

import dataclasses
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

# fold_in index of the discriminator's initialisation key (independent of the segmenter's keys).
_DISCRIMINATOR_STREAM = 1


class AdversaryState(flax.struct.PyTreeNode):
  """The discriminator of adversarial training and its optimiser's state (one optional part of `TrainState`).

  Attributes:
    params: the discriminator's `params` collection.
    batch_stats: its `batch_stats` (spectral-norm power-iteration state; empty dict without spectral norm).
    opt_state: optax state of the discriminator's optimiser.
  """

  params: Any
  batch_stats: Any
  opt_state: Any


@dataclasses.dataclass(frozen=True)
class TrainState:
  """Everything that changes during training, as one pytree (checkpointed whole).

  Attributes:
    step: int32 scalar, number of optimiser updates done.
    params: the model's `params` collection.
    batch_stats: the model's `batch_stats` collection (empty dict if none).
    opt_state: optax state of the segmenter's optimiser.
    rng: PRNG key data; per-step keys are `jax.random.fold_in(rng, step)`.
    adversary: the discriminator's params, batch_stats and optimiser state
      (`AdversaryState`) with `config.adversarial.enabled`; None otherwise.

  As a pytree (and so in checkpoints) the adversary's three parts are the
  children `disc_params`, `disc_batch_stats` and `disc_opt_state` (all None
  without a discriminator), the layout the state had before they were
  grouped: every checkpoint written since, with or without a discriminator,
  restores unchanged.
  """

  step: jax.Array
  params: Any
  batch_stats: Any
  opt_state: Any
  rng: jax.Array
  adversary: AdversaryState | None = None

  def replace(self, **updates: Any) -> TrainState:
    """A copy with the given fields replaced (as `flax.struct.PyTreeNode.replace`)."""
    return dataclasses.replace(self, **updates)


_FIELDS = ("step", "params", "batch_stats", "opt_state", "rng")
_ADVERSARY_CHILDREN = ("disc_params", "disc_batch_stats", "disc_opt_state")


def _flatten_with_keys(state: TrainState) -> tuple[list[tuple[jax.tree_util.GetAttrKey, Any]], None]:
  adversary = state.adversary
  parts = (None,) * 3 if adversary is None else (adversary.params, adversary.batch_stats, adversary.opt_state)
  values = tuple(getattr(state, name) for name in _FIELDS) + parts
  return [(jax.tree_util.GetAttrKey(name), value) for name, value in zip(_FIELDS + _ADVERSARY_CHILDREN, values)], None


def _unflatten(_: None, children: Sequence[Any]) -> TrainState:
  *fields, params, batch_stats, opt_state = children
  adversary = (
    None
    if params is None and batch_stats is None and opt_state is None
    else AdversaryState(params=params, batch_stats=batch_stats, opt_state=opt_state)
  )
  return TrainState(*fields, adversary=adversary)


jax.tree_util.register_pytree_with_keys(
  TrainState,
  _flatten_with_keys,
  _unflatten,
  flatten_func=lambda state: ([value for _, value in _flatten_with_keys(state)[0]], None),
)


def init_variables(model: nn.Module, rng: jax.Array, input_shape: tuple[int, ...]) -> dict:
  """Initialises the model's variables for inputs of `input_shape` ([B, *spatial, C])."""
  params_rng, dropout_rng = jax.random.split(rng)
  return model.init({"params": params_rng, "dropout": dropout_rng}, jnp.zeros(input_shape, jnp.float32), train=False)


def create_train_state(
  config: ml_collections.ConfigDict,
  model: nn.Module,
  tx: optax.GradientTransformation,
  input_shape: tuple[int, ...],
  discriminator: nn.Module | None = None,
  disc_tx: optax.GradientTransformation | None = None,
  seed_key: jax.Array | None = None,
) -> TrainState:
  """A fresh state from `config.seed` (pure: jit it with out_shardings to place it).

  Args:
    config: the run's config (`seed`, `model.num_classes`, `adversarial`).
    model: the segmenter; initialised for images of `input_shape` `[B, *spatial, C]`.
    tx: the segmenter's optimiser (`jaxseg.optimizer.create_optimizer`).
    input_shape: `[B, *spatial, C]` of the images the networks are initialised for.
    discriminator, disc_tx: with `config.adversarial.enabled`, the discriminator and its optimiser
      (`Experiment.discriminator`, `Experiment.disc_tx`); ignored otherwise.
    seed_key: `jax.random.key(config.seed)`, the default. Passed as an argument of a jitted call, it keeps the
      seed out of the compiled program, so runs that differ only in seed share it (persistent cache).

  Returns:
    The state; with `config.adversarial.enabled` its `adversary` holds the discriminator's variables
    (initialised for `input_shape` images and `config.model.num_classes` label channels from a key of its
    own) and `disc_tx`'s state; the segmenter's part is the same as without it.
  """
  if seed_key is None:
    seed_key = jax.random.key(config.seed)
  init_rng, state_rng = jax.random.split(seed_key)
  variables = init_variables(model, init_rng, input_shape)
  params = variables["params"]
  state = TrainState(
    step=jnp.zeros((), jnp.int32),
    params=params,
    batch_stats=variables.get("batch_stats", {}),
    opt_state=tx.init(params),
    rng=jax.random.key_data(state_rng),
  )
  if not config.adversarial.enabled:
    return state
  if discriminator is None or disc_tx is None:
    raise ValueError(
      "config.adversarial.enabled: create_train_state needs the discriminator and its optimiser "
      "(Experiment.discriminator and Experiment.disc_tx)"
    )
  label_shape = (*input_shape[:-1], config.model.num_classes)
  disc_variables = discriminator.init(
    jax.random.fold_in(seed_key, _DISCRIMINATOR_STREAM),
    jnp.zeros(input_shape, jnp.float32),
    jnp.zeros(label_shape, jnp.float32),
  )
  disc_params = disc_variables["params"]
  adversary = AdversaryState(
    params=disc_params, batch_stats=disc_variables.get("batch_stats", {}), opt_state=disc_tx.init(disc_params)
  )
  return state.replace(adversary=adversary)


def array_names(variables: dict) -> dict[str, tuple[int, ...]]:
  """'params/down0/conv0/kernel' -> shape for every array of a `{'params': ..., 'batch_stats': ...}` tree."""
  return {"/".join(path): tuple(np.shape(value)) for path, value in flax.traverse_util.flatten_dict(variables).items()}


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
    if (
      other is not None
      and np.shape(other) == np.shape(value)
      and not any(fnmatch.fnmatchcase(name, pattern) for pattern in exclude)
    ):
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


def init_from_variables(
  state: TrainState, source: dict, tx: optax.GradientTransformation, origin: str, exclude: Sequence[str] = ()
) -> tuple[TrainState, dict[str, Any]]:
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
    raise ConfigError(
      f"{origin}: no array of the source matches this model by name and shape (source has "
      f"{len(theirs)} arrays, e.g. {theirs[0] if theirs else 'none'}; this model "
      f"{len(ours)}, e.g. {ours[0] if ours else 'none'}); is it another architecture?"
    )
  params = variables["params"]
  state = state.replace(params=params, batch_stats=variables.get("batch_stats", {}), opt_state=tx.init(params))
  return state, {
    "copied": copied,
    "kept": describe_kept(kept, target, source, exclude),
    "num_copied": len(copied),
    "num_kept": len(kept),
  }


def load_pretrained(
  state: TrainState, model_config: ml_collections.ConfigDict, tx: optax.GradientTransformation
) -> TrainState:
  """Replaces the backbone with `model.pretrained` weights (host side, before training)."""
  from jaxseg.models import pretrained  # Imported lazily: only transfer learning needs it.

  variables = pretrained.load_pretrained({"params": state.params, "batch_stats": state.batch_stats}, model_config)
  params = variables["params"]
  return state.replace(params=params, batch_stats=variables.get("batch_stats", {}), opt_state=tx.init(params))

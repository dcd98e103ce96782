"""The training state pytree and the optimiser that updates it."""

from __future__ import annotations

from typing import Any

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import optax



class TrainState(flax.struct.PyTreeNode):
  """Everything that changes during training, as one pytree (checkpointed whole).

  Attributes:
    step: int32 scalar, number of optimiser updates done.
    params: the model's `params` collection.
    batch_stats: the model's `batch_stats` collection (empty dict if none).
    opt_state: optax state of the segmenter's optimiser.
    rng: PRNG key; per-step keys are `jax.random.fold_in(rng, step)`.
  """
  step: jax.Array
  params: Any
  batch_stats: Any
  opt_state: Any
  rng: jax.Array


def learning_rate_schedule(train_config: ml_collections.ConfigDict) -> optax.Schedule:
  """Linear warm-up to `learning_rate`, then cosine decay to `end_learning_rate_factor` of it."""
  peak = train_config.learning_rate
  warmup = min(train_config.warmup_steps, max(train_config.num_steps - 1, 0))
  return optax.warmup_cosine_decay_schedule(
      init_value=0.0 if warmup else peak, peak_value=peak, warmup_steps=warmup,
      decay_steps=max(train_config.num_steps, warmup + 1),
      end_value=peak * train_config.end_learning_rate_factor)


def _base_optimizer(train_config: ml_collections.ConfigDict, schedule: optax.Schedule):
  if train_config.optimizer == "adamw":
    return optax.adamw(schedule, weight_decay=train_config.weight_decay)
  return optax.chain(optax.add_decayed_weights(train_config.weight_decay),
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


def init_variables(model: nn.Module, rng: jax.Array, input_shape: tuple[int, ...]) -> dict:
  """Initialises the model's variables for inputs of `input_shape` ([B, *spatial, C])."""
  params_rng, dropout_rng = jax.random.split(rng)
  return model.init({"params": params_rng, "dropout": dropout_rng},
                    jnp.zeros(input_shape, jnp.float32), train=False)


def create_train_state(config: ml_collections.ConfigDict, model: nn.Module, tx: optax.GradientTransformation,
                       input_shape: tuple[int, ...]) -> TrainState:
  """A fresh state from `config.seed` (pure: jit it with out_shardings to place it)."""
  init_rng, state_rng = jax.random.split(jax.random.key(config.seed))
  variables = init_variables(model, init_rng, input_shape)
  params = variables["params"]
  return TrainState(step=jnp.zeros((), jnp.int32), params=params,
                    batch_stats=variables.get("batch_stats", {}), opt_state=tx.init(params),
                    rng=jax.random.key_data(state_rng))


def load_pretrained(state: TrainState, model_config: ml_collections.ConfigDict,
                    tx: optax.GradientTransformation) -> TrainState:
  """Replaces the backbone with `model.pretrained` weights (host side, before training)."""
  from jaxseg.models import pretrained  # Imported lazily: only transfer learning needs it.
  variables = pretrained.load_pretrained(
      {"params": state.params, "batch_stats": state.batch_stats}, model_config)
  params = variables["params"]
  return state.replace(params=params, batch_stats=variables.get("batch_stats", {}),
                       opt_state=tx.init(params))

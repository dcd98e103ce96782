"""The optimisers of training: the learning-rate schedule, the weight-decay mask and the optax chains.

- `create_optimizer(config.train)`: the segmenter's optimiser (AdamW, or SGD
  with Nesterov momentum) with global-norm gradient clipping, weight decay on
  kernels only (`decay_mask`) and the backbone rules of transfer learning.
- `learning_rate_schedule(config.train)`: linear warm-up, then cosine decay;
  the step metrics log its value.
- `create_discriminator_optimizer(config.adversarial)`: Adam for the
  discriminator of adversarial training.

Pure functions of the config: no state, no I/O.
"""

from __future__ import annotations

from typing import Any

import jax
import ml_collections
import optax


def learning_rate_schedule(train_config: ml_collections.ConfigDict) -> optax.Schedule:
  """Linear warm-up to `learning_rate`, then cosine decay to `end_learning_rate_factor` of it.

  The warm-up lasts `warmup_steps` (at most `num_steps - 1`) from 0; without warm-up the schedule starts at
  the peak. The cosine reaches `learning_rate * end_learning_rate_factor` at step `num_steps` and stays there.
  """
  peak = train_config.learning_rate
  warmup = min(train_config.warmup_steps, max(train_config.num_steps - 1, 0))
  return optax.warmup_cosine_decay_schedule(
    init_value=0.0 if warmup else peak,
    peak_value=peak,
    warmup_steps=warmup,
    decay_steps=max(train_config.num_steps, warmup + 1),
    end_value=peak * train_config.end_learning_rate_factor,
  )


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


def _base_optimizer(train_config: ml_collections.ConfigDict, schedule: optax.Schedule) -> optax.GradientTransformation:
  """AdamW (`optimizer='adamw'`) or SGD with Nesterov momentum, weight decay masked by `decay_mask`."""
  if train_config.optimizer == "adamw":
    return optax.adamw(schedule, weight_decay=train_config.weight_decay, mask=decay_mask)
  return optax.chain(
    optax.add_decayed_weights(train_config.weight_decay, mask=decay_mask),
    optax.sgd(schedule, momentum=train_config.momentum, nesterov=True),
  )


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
      return {
        key: jax.tree.map(lambda _, k=key: "backbone" if k == "backbone" else "head", value)
        for key, value in params.items()
      }

    tx = optax.multi_transform({"head": head, "backbone": backbone}, labels)
  return optax.chain(optax.clip_by_global_norm(train_config.grad_clip_norm), tx)


def create_discriminator_optimizer(adversarial_config: ml_collections.ConfigDict) -> optax.GradientTransformation:
  """Adam with `adversarial.learning_rate` (constant) and `adversarial.beta1` (0.5 as in DCGAN)."""
  return optax.adam(adversarial_config.learning_rate, b1=adversarial_config.beta1)

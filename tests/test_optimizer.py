"""jaxseg.optimizer: the schedule's values worked out by hand, the weight-decay mask on a real model, the
backbone rules and the discriminator's Adam."""

import math

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from jaxseg import optimizer
from jaxseg.config import base_config


def train_config(**overrides):
  config = base_config().train
  config.update(**overrides)
  return config


@pytest.mark.parametrize(
  "step,expected",
  [
    (0, 0.0),
    (1, 0.025),
    (2, 0.05),
    (4, 0.1),  # Linear warm-up over 4 steps to the peak 0.1.
    (9, 0.001 + 0.099 * 0.5),  # Half-way through the 10 cosine steps: cos(pi / 2) = 0.
    (6, 0.001 + 0.099 * 0.5 * (1 + math.cos(math.pi * 2 / 10))),
    (14, 0.001),
    (40, 0.001),  # The end value 0.01 x 0.1 from num_steps on.
  ],
)
def test_schedule_is_linear_warmup_then_cosine_to_the_end_factor(step, expected):
  schedule = optimizer.learning_rate_schedule(
    train_config(learning_rate=0.1, warmup_steps=4, num_steps=14, end_learning_rate_factor=0.01)
  )
  np.testing.assert_allclose(float(schedule(step)), expected, rtol=1e-5, atol=1e-9)


def test_schedule_without_warmup_starts_at_the_peak_and_warmup_is_capped_by_the_run():
  no_warmup = optimizer.learning_rate_schedule(train_config(learning_rate=0.2, warmup_steps=0, num_steps=10))
  np.testing.assert_allclose(float(no_warmup(0)), 0.2, rtol=1e-6)
  # warmup_steps >= num_steps: the warm-up ends one step before the run does.
  short = optimizer.learning_rate_schedule(
    train_config(learning_rate=0.2, warmup_steps=50, num_steps=5, end_learning_rate_factor=0.5)
  )
  np.testing.assert_allclose([float(short(t)) for t in (0, 2, 4, 5)], [0.0, 0.1, 0.2, 0.1], rtol=1e-6)


class ConvNormDense(nn.Module):
  """Every layer kind whose parameters the mask must sort: conv, norms, transposed conv, dense."""

  @nn.compact
  def __call__(self, x):
    x = nn.Conv(3, (3, 3), name="conv")(x)
    x = nn.BatchNorm(use_running_average=True, name="batch_norm")(x)
    x = nn.GroupNorm(num_groups=1, name="group_norm")(x)
    x = nn.ConvTranspose(2, (2, 2), strides=(2, 2), name="up")(x)
    return nn.Dense(2, name="dense")(x)


def test_decay_mask_decays_kernels_and_spares_biases_and_norm_parameters():
  params = ConvNormDense().init(jax.random.key(0), jnp.zeros((1, 4, 4, 1)))["params"]
  mask = optimizer.decay_mask(params)
  flat = {"/".join(k.key for k in path): bool(v) for path, v in jax.tree_util.tree_leaves_with_path(mask)}
  assert flat == {
    "conv/kernel": True,
    "conv/bias": False,
    "batch_norm/scale": False,
    "batch_norm/bias": False,
    "group_norm/scale": False,
    "group_norm/bias": False,
    "up/kernel": True,
    "up/bias": False,
    "dense/kernel": True,
    "dense/bias": False,
  }


def backbone_params():
  return {"backbone": {"conv": {"kernel": jnp.ones((2, 2))}}, "head": {"kernel": jnp.ones((2, 2))}}


@pytest.mark.parametrize(
  "overrides,backbone_factor", [({}, 1.0), ({"backbone_lr_multiplier": 0.25}, 0.25), ({"freeze_backbone": True}, 0.0)]
)
def test_backbone_rules_scale_or_freeze_only_the_backbone(overrides, backbone_factor):
  """SGD without momentum or decay: the update is -lr * g, with the backbone's lr scaled."""
  tx = optimizer.create_optimizer(
    train_config(
      optimizer="sgd",
      momentum=0.0,
      weight_decay=0.0,
      learning_rate=0.1,
      warmup_steps=0,
      grad_clip_norm=100.0,
      **overrides,
    )
  )
  params = backbone_params()
  grads = jax.tree.map(lambda p: 0.5 * jnp.ones_like(p), params)
  updates, _ = tx.update(grads, tx.init(params), params)
  np.testing.assert_allclose(updates["head"]["kernel"], -0.05, rtol=1e-6)
  np.testing.assert_allclose(updates["backbone"]["conv"]["kernel"], -0.05 * backbone_factor, rtol=1e-6)


def test_gradients_are_clipped_to_the_global_norm():
  tx = optimizer.create_optimizer(
    train_config(optimizer="sgd", momentum=0.0, weight_decay=0.0, learning_rate=1.0, warmup_steps=0, grad_clip_norm=1.0)
  )
  params = {"kernel": jnp.zeros((4,))}
  updates, _ = tx.update({"kernel": jnp.full((4,), 3.0)}, tx.init(params), params)  # Global norm 6.
  np.testing.assert_allclose(updates["kernel"], -0.5, rtol=1e-6)


def test_discriminator_optimizer_is_adam_with_its_beta1():
  adversarial = base_config().adversarial
  adversarial.update(learning_rate=0.01, beta1=0.5)
  tx = optimizer.create_discriminator_optimizer(adversarial)
  expected_tx = optax.adam(0.01, b1=0.5)
  params = {"w": jnp.array([1.0, -2.0])}
  state, expected_state = tx.init(params), expected_tx.init(params)
  for g in ([0.3, -0.1], [1.0, 2.0]):
    grads = {"w": jnp.array(g)}
    updates, state = tx.update(grads, state, params)
    expected, expected_state = expected_tx.update(grads, expected_state, params)
    np.testing.assert_array_equal(updates["w"], expected["w"])

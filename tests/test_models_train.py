"""Two training steps (SGD, cross-entropy) for the U-Nets and FCN-VGG16.

Tiny widths and inputs; each run compiles one init and one train step. The
same dropout key is used in both steps so that the loss is one deterministic
function of the parameters and must go down after a small gradient step.
The ResNet-based models are in test_models_train_resnet.py (one file would
take about a minute).
"""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from jaxseg import models
from test_models import FAST_COMPILE
from test_models import init_variables
from test_models import make_config


@pytest.fixture(autouse=True)
def _fast_random_compile():
  with jax.threefry_partitionable(False):
    yield


TINY = {
    "unet": (dict(features=4, depth=2, dropout=0.1), (2, 20, 24, 2)),
    "unet3d": (dict(features=4, depth=2, norm="instance",
                    activation="leaky_relu", deep_supervision=True),
               (2, 12, 10, 9, 1)),
    "attention_unet": (dict(features=4, depth=2), (2, 17, 16, 1)),
    "fcn32s": (dict(backbone="vgg16", backbone_width=4), (2, 33, 32, 3)),
}


@pytest.mark.parametrize("name", sorted(TINY))
def test_two_training_steps(name):
  run_two_steps(name, *TINY[name])


def run_two_steps(name: str, overrides: dict, shape: tuple[int, ...]):
  """Two SGD steps of model `name` (config `overrides`) on inputs `shape`."""
  cfg = make_config(name=name, num_classes=3, **overrides)
  model = models.create_model(cfg)
  weights = models.output_weights(cfg)
  variables = init_variables(model, shape)
  rng = np.random.default_rng(0)
  x = jnp.asarray(rng.normal(size=shape), jnp.float32)
  labels = jnp.asarray(rng.integers(0, 3, size=shape[:-1]))
  tx = optax.sgd(1e-3)

  def loss_fn(params, batch_stats, rng):
    outputs, updates = model.apply(
        {"params": params, "batch_stats": batch_stats}, x, train=True,
        mutable=["batch_stats"], rngs={"dropout": rng})
    if not isinstance(outputs, list):
      outputs = [outputs]
    assert len(outputs) == len(weights)
    loss = 0.0
    for weight, logits in zip(weights, outputs):
      factor = -(-shape[1] // logits.shape[1])
      target = labels[(slice(None),) + (slice(None, None, factor),) *
                      (labels.ndim - 1)]
      assert logits.shape == target.shape + (3,)
      loss += weight * optax.softmax_cross_entropy_with_integer_labels(
          logits, target).mean()
    return loss, updates.get("batch_stats", {})

  def step(params, batch_stats, opt_state, rng):
    (loss, batch_stats), grads = jax.value_and_grad(
        loss_fn, has_aux=True)(params, batch_stats, rng)
    updates, opt_state = tx.update(grads, opt_state, params)
    return (optax.apply_updates(params, updates), batch_stats, opt_state,
            loss, grads)

  params = variables["params"]
  batch_stats = variables.get("batch_stats", {})
  opt_state = tx.init(params)
  compiled_step = jax.jit(step).lower(
      params, batch_stats, opt_state, jax.random.key(10)).compile(FAST_COMPILE)
  losses = []
  for _ in range(2):
    params, batch_stats, opt_state, loss, grads = compiled_step(
        params, batch_stats, opt_state, jax.random.key(10))
    losses.append(float(loss))
  assert all(np.isfinite(losses))
  assert losses[1] < losses[0]
  # Every parameter gets a gradient (in the second step: FCN's zero-initialised
  # score layers block it in the first), except the head of a zero-weighted
  # output (kernel and bias).
  no_gradient = [bool(np.all(np.asarray(g) == 0))
                 for g in jax.tree.leaves(grads)]
  assert no_gradient.count(True) <= 2 * weights.count(0.0)
  if "batch_stats" in variables:
    moved = jax.tree.map(lambda a, b: bool(np.any(np.asarray(a) != b)),
                         variables["batch_stats"], batch_stats)
    assert all(jax.tree.leaves(moved))

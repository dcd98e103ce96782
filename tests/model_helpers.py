"""What the model tests share: tiny model configs, fast-compiling inits and two training steps.

A module rather than conftest fixtures because `TWO_STEP_MODELS` parametrizes tests at collection time and the
helpers are called in dozens of places in test_models.py (as study_modules.py does for the study tests).
Jit inits under the `fast_random_compile` fixture (conftest.py): compiling an init is much faster so on CPU.
"""

import jax
import jax.numpy as jnp
import numpy as np
import optax

from jaxseg import models

# XLA's backend optimisations double compile times and buy nothing at these
# sizes; results are the same.
FAST_COMPILE = {"xla_backend_optimization_level": 0}

# The models trained for two steps in test_models_train.py: config overrides and input shape. The ResNet-based
# ones are in test_models_train_resnet.py, which checks that the two tables cover the registry.
TWO_STEP_MODELS = {
  "unet": (dict(features=4, depth=2, dropout=0.1), (2, 20, 24, 2)),
  "unet3d": (
    dict(features=4, depth=2, norm="instance", activation="leaky_relu", deep_supervision=True),
    (2, 12, 10, 9, 1),
  ),
  "attention_unet": (dict(features=4, depth=2), (2, 17, 16, 1)),
  "fcn32s": (dict(backbone="vgg16", backbone_width=4), (2, 33, 32, 3)),
}


def make_config(**overrides):
  cfg = models.default_model_config()
  cfg.update(overrides)
  return cfg


def run_jitted(fn, *args):
  """Compiles `fn` for `args` with FAST_COMPILE and calls it."""
  return jax.jit(fn).lower(*args).compile(FAST_COMPILE)(*args)


def init_variables(model, shape, seed=0):
  x = jnp.zeros(shape, jnp.float32)
  return run_jitted(lambda key: model.init({"params": key}, x, train=False), jax.random.key(seed))


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
      {"params": params, "batch_stats": batch_stats}, x, train=True, mutable=["batch_stats"], rngs={"dropout": rng}
    )
    if not isinstance(outputs, list):
      outputs = [outputs]
    assert len(outputs) == len(weights)
    loss = 0.0
    for weight, logits in zip(weights, outputs):
      factor = -(-shape[1] // logits.shape[1])
      target = labels[(slice(None),) + (slice(None, None, factor),) * (labels.ndim - 1)]
      assert logits.shape == target.shape + (3,)
      loss += weight * optax.softmax_cross_entropy_with_integer_labels(logits, target).mean()
    return loss, updates.get("batch_stats", {})

  def step(params, batch_stats, opt_state, rng):
    (loss, batch_stats), grads = jax.value_and_grad(loss_fn, has_aux=True)(params, batch_stats, rng)
    updates, opt_state = tx.update(grads, opt_state, params)
    return (optax.apply_updates(params, updates), batch_stats, opt_state, loss, grads)

  params = variables["params"]
  batch_stats = variables.get("batch_stats", {})
  opt_state = tx.init(params)
  compiled_step = jax.jit(step).lower(params, batch_stats, opt_state, jax.random.key(10)).compile(FAST_COMPILE)
  losses = []
  for _ in range(2):
    params, batch_stats, opt_state, loss, grads = compiled_step(params, batch_stats, opt_state, jax.random.key(10))
    losses.append(float(loss))
  assert all(np.isfinite(losses))
  assert losses[1] < losses[0]
  # Every parameter gets a gradient (in the second step: FCN's zero-initialised
  # score layers block it in the first), except the head of a zero-weighted
  # output (kernel and bias).
  no_gradient = [bool(np.all(np.asarray(g) == 0)) for g in jax.tree.leaves(grads)]
  assert no_gradient.count(True) <= 2 * weights.count(0.0)
  if "batch_stats" in variables:
    moved = jax.tree.map(lambda a, b: bool(np.any(np.asarray(a) != b)), variables["batch_stats"], batch_stats)
    assert all(jax.tree.leaves(moved))

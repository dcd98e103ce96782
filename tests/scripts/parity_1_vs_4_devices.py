"""Runs 3 train steps of a tiny U-Net on a 1-device and a 4-device mesh; prints the max differences.

Run with XLA_FLAGS=--xla_force_host_platform_device_count=4 (tests/test_parallel.py does).
"""

import functools
import json

import jax
import numpy as np

from jaxseg import config as config_lib, models, parallel, state as state_lib, steps


def run(num_devices: int):
  config = config_lib.base_config()
  config.model.update(num_classes=3, features=4, depth=2)
  config.train.update(batch_size=8, num_steps=3, warmup_steps=1)
  config.mesh.data = num_devices
  mesh = parallel.create_mesh(config.mesh)
  model = models.create_model(config.model)
  tx = state_lib.create_optimizer(config.train)
  schedule = state_lib.learning_rate_schedule(config.train)
  create = functools.partial(state_lib.create_train_state, config, model, tx, (1, 16, 16, 2))
  with jax.threefry_partitionable(False):
    state = jax.jit(create, out_shardings=parallel.replicated(mesh))()
  step = jax.jit(steps.make_train_step(model, tx, schedule, "dice_ce", [1.0]),
                 in_shardings=(parallel.replicated(mesh), parallel.batch_sharding(mesh)),
                 out_shardings=(parallel.replicated(mesh), None), donate_argnums=0)
  rng = np.random.default_rng(0)
  losses = []
  for _ in range(3):
    batch = {"image": rng.normal(size=(8, 16, 16, 2)).astype(np.float32),
             "label": rng.integers(0, 3, size=(8, 16, 16)).astype(np.int32)}
    state, metrics = step(state, parallel.global_batch(batch, mesh))
    losses.append(float(metrics["loss"]))
  batch_sharding = state.params and jax.tree.leaves(state.params)[0].sharding
  return losses, jax.device_get(state.params), jax.device_get(state.batch_stats), len(batch_sharding.device_set)


def main():
  assert jax.device_count() == 4, jax.devices()
  losses_1, params_1, stats_1, devices_1 = run(1)
  losses_4, params_4, stats_4, devices_4 = run(4)
  diff = lambda a, b: max(float(np.max(np.abs(x - y))) for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)))
  print(json.dumps({"devices": [devices_1, devices_4], "losses_1": losses_1, "losses_4": losses_4,
                    "max_loss_diff": max(abs(a - b) for a, b in zip(losses_1, losses_4)),
                    "max_param_diff": diff(params_1, params_4), "max_batch_stats_diff": diff(stats_1, stats_4)}))


if __name__ == "__main__":
  main()

"""Runs 3 train steps of a tiny U-Net on 1 device, 4 data-parallel devices and a 2 x 2 (data x fsdp) mesh.

Prints the max differences of losses, parameters, batch statistics and optimiser state against the
1-device run, and how much of the state the fsdp mesh actually splits.
Run with XLA_FLAGS=--xla_force_host_platform_device_count=4 (tests/test_parallel.py does).
"""

import functools
import json

import jax
import numpy as np

from jaxseg import config as config_lib, models, optimizer as optimizer_lib, parallel, state as state_lib, steps


def run(data: int, fsdp: int = 1):
  config = config_lib.base_config()
  config.model.update(num_classes=3, features=4, depth=2)
  config.train.update(batch_size=8, num_steps=3, warmup_steps=1)
  config.mesh.update(data=data, fsdp=fsdp, fsdp_min_size=0)  # Split every array that has a divisible axis.
  mesh = parallel.create_mesh(config.mesh)
  model = models.create_model(config.model)
  tx = optimizer_lib.create_optimizer(config.train)
  schedule = optimizer_lib.learning_rate_schedule(config.train)
  create = functools.partial(state_lib.create_train_state, config, model, tx, (1, 16, 16, 2))
  shapes = jax.eval_shape(create)
  shardings = parallel.state_shardings(shapes, mesh, config.mesh)
  with jax.threefry_partitionable(False):
    state = jax.jit(create, out_shardings=shardings)()
  step = jax.jit(
    steps.make_train_step(model, tx, schedule, "dice_ce", [1.0]),
    in_shardings=(shardings, parallel.batch_sharding(mesh)),
    out_shardings=(shardings, None),
    donate_argnums=0,
  )
  rng = np.random.default_rng(0)
  losses = []
  for _ in range(3):
    batch = {
      "image": rng.normal(size=(8, 16, 16, 2)).astype(np.float32),
      "label": rng.integers(0, 3, size=(8, 16, 16)).astype(np.int32),
    }
    state, metrics = step(state, parallel.global_batch(batch, mesh))
    losses.append(float(metrics["loss"]))
  split = [
    len(leaf.sharding.device_set) != len(leaf.sharding.addressable_devices)
    or leaf.sharding.shard_shape(leaf.shape) != leaf.shape
    for leaf in jax.tree.leaves(state)
  ]
  return {
    "losses": losses,
    "state": jax.device_get(state),
    "devices": mesh.devices.size,
    "split_fraction": parallel.sharded_fraction(shardings, shapes),
    "split_leaves": int(sum(split)),
  }


def main():
  assert jax.device_count() == 4, jax.devices()
  runs = {"1": run(1), "4": run(4), "2x2fsdp": run(2, 2)}
  diff = lambda a, b: max(
    float(np.max(np.abs(np.asarray(x, np.float64) - np.asarray(y, np.float64))))
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b))
  )
  ref = runs["1"]
  out = {"devices": [r["devices"] for r in runs.values()], "losses_1": ref["losses"]}
  for name in ("4", "2x2fsdp"):
    r = runs[name]
    out[name] = {
      "losses": r["losses"],
      "max_loss_diff": max(abs(a - b) for a, b in zip(ref["losses"], r["losses"])),
      "max_param_diff": diff(ref["state"].params, r["state"].params),
      "max_batch_stats_diff": diff(ref["state"].batch_stats, r["state"].batch_stats),
      "max_opt_state_diff": diff(ref["state"].opt_state, r["state"].opt_state),
      "split_fraction": r["split_fraction"],
      "split_leaves": r["split_leaves"],
    }
  print(json.dumps(out))


if __name__ == "__main__":
  main()

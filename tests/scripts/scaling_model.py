"""Inputs of the scaling model in launch/README.md: step times, parameter bytes, and a 1-vs-4-device check.

  XLA_FLAGS=--xla_force_host_platform_device_count=4 JAX_PLATFORMS=cpu python tests/scripts/scaling_model.py

For the 2D U-Net (configs/unet_ct.py), 3D U-Net (configs/unet3d_ct.py) and DeepLab v3 (configs/deeplab_ct.py,
model.name=deeplabv3), with 5 classes and 1 input channel: parameter count and bytes (the gradient all-reduce
volume), and the jitted train step's time on ONE device at the config's batch (median of 3 steps after
compiling). For the 2D U-Net also the step on a 4-device data-parallel mesh, weak scaling (global batch 4 x b)
and strong scaling (global batch b), to check the model's accounting on virtual CPU devices that share the
same cores. Prints one JSON line.
"""

import functools
import json
import os
import statistics
import sys
import time

import jax
import numpy as np

sys.path.insert(0, ".")
from configs import deeplab_ct, unet3d_ct, unet_ct  # pylint: disable=wrong-import-position
from jaxseg import models, optimizer as optimizer_lib, parallel, state as state_lib, steps  # pylint: disable=wrong-import-position

MODELS = {"unet2d": (unet_ct, None), "unet3d": (unet3d_ct, None), "deeplabv3": (deeplab_ct, "deeplabv3")}


def step_time(config, devices: int, global_batch: int, repeats: int = 3) -> float:
  config.mesh.data = devices
  mesh = parallel.create_mesh(config.mesh)
  model = models.create_model(config.model)
  tx = optimizer_lib.create_optimizer(config.train)
  patch = tuple(config.data.patch_size)
  create = functools.partial(state_lib.create_train_state, config, model, tx, (1, *patch, 1))
  shardings = parallel.state_shardings(jax.eval_shape(create), mesh, config.mesh)
  with jax.threefry_partitionable(False):
    state = jax.jit(create, out_shardings=shardings)()
  step = jax.jit(
    steps.make_train_step(
      model,
      tx,
      optimizer_lib.learning_rate_schedule(config.train),
      config.train.loss,
      models.output_weights(config.model),
    ),
    in_shardings=(shardings, parallel.batch_sharding(mesh)),
    out_shardings=(shardings, None),
    donate_argnums=0,
  )
  rng = np.random.default_rng(0)
  batch = parallel.global_batch(
    {
      "image": rng.normal(size=(global_batch, *patch, 1)).astype(np.float32),
      "label": rng.integers(0, 5, (global_batch, *patch)).astype(np.int32),
    },
    mesh,
  )
  state, metrics = step(state, batch)
  jax.block_until_ready(metrics)
  times = []
  for _ in range(repeats):
    start = time.perf_counter()
    state, metrics = step(state, batch)
    jax.block_until_ready(metrics)
    times.append(time.perf_counter() - start)
  return statistics.median(times)


def main():
  out = {
    "jax": jax.__version__,
    "cpu_count": os.cpu_count(),
    "devices": jax.device_count(),
    "load_average": os.getloadavg(),
  }
  for name, (module, model_name) in MODELS.items():
    config = module.get_config()
    if model_name:
      config.model.name = model_name
    config.model.num_classes = 5
    model = models.create_model(config.model)
    patch = tuple(config.data.patch_size)
    variables = jax.eval_shape(
      lambda m=model, p=patch: m.init(jax.random.key(0), np.zeros((1, *p, 1), np.float32), train=False)
    )
    params = sum(int(np.prod(x.shape)) for x in jax.tree.leaves(variables["params"]))
    b = int(config.train.batch_size)
    row = {
      "config": module.__name__,
      "model": config.model.name,
      "patch": patch,
      "batch_per_device": b,
      "params": params,
      "param_bytes": 4 * params,
      "step_s_1_device": step_time(config, 1, b),
    }
    if name == "unet2d":
      row["step_s_4_devices_weak"] = step_time(config, 4, 4 * b)
      row["step_s_4_devices_strong"] = step_time(config, 4, b)
    out[name] = row
    print(json.dumps({name: row}), file=sys.stderr, flush=True)
  print(json.dumps(out))


if __name__ == "__main__":
  main()

"""Augmented patches per second: host pipeline (one core, every core) against device augmentation.

For 2D 256^2 and 3D 128^3 patches (quick: 128^2 and 48^3), nnU-Net v2's
default augmentation (`base_config().data.augment`: rotation, zoom, noise,
blur, brightness, contrast, low resolution, gamma, mirroring; elastic
deformation off as in nnU-Net v2), 1 channel:

  host/1 core       `sampling.training_sample` (sampling, crop, numpy/scipy
                    augmentation) in one thread;
  host/N cores      the same in a process pool of `os.cpu_count()` workers;
  device            `device_augment.augment_batch` jitted on host crops already
                    on the device (the host then only crops: memcpy);

and the train step time with device augmentation over the step time
without augmentation (a U-Net on a batch already on the device; the target
on an accelerator is <= 1.15). Rows: `name`, `path` (host | device), `size`,
`patches_per_s`, and on device rows `step_s_augmented`, `step_s_plain`,
`step_ratio`. All rows of one run come from one process, measured
alternately, medians of repeats.

  python -m jaxseg.benchmark.augment [--quick]
"""

from __future__ import annotations

import argparse
import functools
import json
import multiprocessing
import os
import statistics
import time
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from scipy import ndimage

from jaxseg import models, optimizer as optimizer_lib, state as state_lib, steps
from jaxseg.config import base_config
from jaxseg.data import augment as augment_lib
from jaxseg.data import device_augment as da
from jaxseg.data import sampling


def sizes(quick: bool) -> list[tuple[str, tuple[int, ...], int]]:
  """(name, patch, batch) of each benchmarked size."""
  if quick:
    return [("2d", (128, 128), 4), ("3d", (48, 48, 48), 2)]
  return [("2d", (256, 256), 8), ("3d", (128, 128, 128), 2)]


def synthetic_case(patch: Sequence[int], seed: int = 0) -> sampling.Case:
  """A smooth 1-channel volume with two label blobs, a little larger than the patch (2D: 4 slices)."""
  shape = (4, *[int(1.5 * n) for n in patch]) if len(patch) == 2 else tuple(int(1.5 * n) for n in patch)
  rng = np.random.default_rng(seed)
  image = ndimage.zoom(rng.normal(size=tuple(max(2, n // 8) for n in shape)), [8] * 3, order=1)
  image = np.ascontiguousarray(image[: shape[0], : shape[1], : shape[2]], np.float32)[..., None]
  grid = np.indices(shape).astype(np.float32)
  centre = np.asarray(shape, np.float32).reshape(3, 1, 1, 1) / 2
  radius = np.sqrt(((grid[1:] - centre[1:]) ** 2).sum(0))
  label = (radius < shape[2] / 5).astype(np.uint8) + (radius < shape[2] / 10)
  return sampling.make_case("bench", image, label, (1.0, 1.0, 1.0), {})


def default_augmentation(ndim: int) -> augment_lib.Augmentation:
  return augment_lib.Augmentation.from_config(base_config().data.augment, ndim)


def _host_samples(patch: tuple[int, ...], start: int, count: int) -> int:
  case = _worker_case(patch)
  aug = default_augmentation(len(patch))
  for i in range(start, start + count):
    rng = np.random.default_rng([0, i])
    sampling.training_sample(case, patch, rng, force_foreground=i % 3 == 0, augment=aug)
  return count


@functools.lru_cache(maxsize=2)
def _worker_case(patch: tuple[int, ...]) -> sampling.Case:
  return synthetic_case(patch)


def host_rate(patch: tuple[int, ...], count: int, pool: multiprocessing.pool.Pool | None = None) -> float:
  """Augmented patches/s on the host: one thread, or spread over `pool`'s processes."""
  if pool is None:
    start = time.perf_counter()
    _host_samples(patch, 0, count)
    return count / (time.perf_counter() - start)
  workers = pool._processes  # pylint: disable=protected-access
  per_worker = max(1, count // workers)
  start = time.perf_counter()
  done = sum(pool.starmap(_host_samples, [(patch, w * per_worker, per_worker) for w in range(workers)]))
  return done / (time.perf_counter() - start)


def crop_batch(patch: tuple[int, ...], batch: int) -> dict[str, np.ndarray]:
  """Host crops (what the host path hands the device) of `batch` samples."""
  case = synthetic_case(patch)
  crop = da.crop_size(default_augmentation(len(patch)), patch)
  rows = [
    sampling.training_crop(case, patch, crop, np.random.default_rng([1, i]), force_foreground=i % 3 == 0)
    for i in range(batch)
  ]
  return {k: np.stack([row[k] for row in rows]) for k in rows[0]}


def _seconds(fn) -> float:
  """Seconds of one call, results ready."""
  start = time.perf_counter()
  jax.block_until_ready(fn())
  return time.perf_counter() - start


def _time(fn, repeats: int) -> float:
  """Median seconds of one call (after one warm-up call that compiles)."""
  jax.block_until_ready(fn())
  return statistics.median(_seconds(fn) for _ in range(repeats))


def _model_config(ndim: int, quick: bool):
  config = base_config()
  config.model.name = "unet" if ndim == 2 else "unet3d"
  config.model.num_classes = 3
  config.model.features = 8 if quick else (32 if ndim == 2 else 16)
  config.model.depth = 3 if quick else 4
  return config


def step_times(
  patch: tuple[int, ...], batch: int, crops: dict[str, np.ndarray], quick: bool, repeats: int
) -> tuple[float, float]:
  """(seconds per train step with device augmentation, without augmentation) for a U-Net on `patch`."""
  config = _model_config(len(patch), quick)
  model = models.create_model(config.model)
  tx = optimizer_lib.create_optimizer(config.train)
  schedule = optimizer_lib.learning_rate_schedule(config.train)
  with jax.threefry_partitionable(False):  # As experiment.init_state: the classic lowering compiles far faster on CPU.
    state = jax.jit(functools.partial(state_lib.create_train_state, config, model, tx, (1, *patch, 1)))()
  weights = models.output_weights(config.model)
  plain = jax.jit(steps.make_train_step(model, tx, schedule, "dice_ce", weights))
  augmented = jax.jit(
    steps.make_train_step(model, tx, schedule, "dice_ce", weights, da.make_batch_fn(_augment_config(config, patch)))
  )
  patches = {
    "image": jnp.asarray(crops["image"][(slice(None), *[slice(0, n) for n in patch])]),
    "label": jnp.asarray(crops["label"][(slice(None), *[slice(0, n) for n in patch])], jnp.int32),
  }
  device_crops = {k: jnp.asarray(v) for k, v in crops.items()}
  calls = (lambda: augmented(state, device_crops)[1]["loss"], lambda: plain(state, patches)[1]["loss"])
  for call in calls:  # Compile both first.
    jax.block_until_ready(call())
  # Alternate the two so load changes on a shared machine hit both alike.
  times = [[_seconds(call) for call in calls] for _ in range(max(1, repeats))]
  return statistics.median(t[0] for t in times), statistics.median(t[1] for t in times)


def _augment_config(config, patch):
  config = config.copy_and_resolve_references()
  config.data.patch_size = tuple(patch)
  return config


def run(quick: bool, report=None) -> list[dict]:
  """Benchmark rows (module docstring) for every size; `quick`: small sizes and few repeats.

  `report(row)`, if given, is called with each row as soon as it is measured.
  """
  rows = []

  def add(row):
    rows.append(row)
    if report is not None:
      report(row)

  repeats = 2 if quick else 3
  cores = os.cpu_count() or 1
  context = multiprocessing.get_context("spawn")
  with context.Pool(cores) as pool:
    for name, patch, batch in sizes(quick):
      size = "x".join(str(n) for n in patch)
      count = (8 if quick else 16) if len(patch) == 2 else (2 if quick else 4)
      pool.starmap(_host_samples, [(patch, 0, 1)] * cores)  # Warm the workers (imports, case).
      _host_samples(patch, 0, 1)
      one = statistics.median(host_rate(patch, count) for _ in range(repeats))
      every = statistics.median(host_rate(patch, count * cores, pool) for _ in range(repeats))
      add(
        {
          "name": f"{name} {size} host, 1 core",
          "path": "host",
          "size": size,
          "cores": 1,
          "patches_per_s": round(one, 2),
        }
      )
      add(
        {
          "name": f"{name} {size} host, {cores} cores",
          "path": "host",
          "size": size,
          "cores": cores,
          "patches_per_s": round(every, 2),
        }
      )
      crops = crop_batch(patch, batch)
      aug = default_augmentation(len(patch))
      augment = jax.jit(lambda c, s, aug=aug, patch=patch: da.augment_batch(da.augment_key(0), s, c, aug, patch))
      device_crops = {k: jnp.asarray(v) for k, v in crops.items()}
      counter = iter(range(10**9))
      seconds = _time(lambda: augment(device_crops, jnp.int32(next(counter)))["image"], repeats)
      with_aug, without = step_times(patch, batch, crops, quick, repeats)
      add(
        {
          "name": f"{name} {size} device ({jax.devices()[0].platform})",
          "path": "device",
          "size": size,
          "batch": batch,
          "crop": "x".join(str(n) for n in crops["label"].shape[1:]),
          "patches_per_s": round(batch / seconds, 2),
          "step_s_augmented": round(with_aug, 4),
          "step_s_plain": round(without, 4),
          "step_ratio": round(with_aug / without, 3),
        }
      )
  return rows


def main():
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--quick", action="store_true")
  parser.add_argument("--output", default="", help="also write the rows as JSON here")
  args = parser.parse_args()
  print(
    f"jax {jax.__version__} on {jax.devices()[0].device_kind}, {os.cpu_count()} CPU cores, "
    f"load average {tuple(round(x, 1) for x in os.getloadavg())}"
  )
  print("| name | patches/s | step with device aug (s) | step without (s) | ratio |")
  print("|---|---|---|---|---|", flush=True)

  def report(row):
    print(
      f"| {row['name']} | {row['patches_per_s']} | {row.get('step_s_augmented', '')} | "
      f"{row.get('step_s_plain', '')} | {row.get('step_ratio', '')} |",
      flush=True,
    )

  rows = run(args.quick, report)
  print(f"load average at the end {tuple(round(x, 1) for x in os.getloadavg())}")
  if args.output:
    with open(args.output, "w") as f:
      json.dump(rows, f, indent=2)


if __name__ == "__main__":
  main()

"""Sliding-window throughput (windows/s) with the window batches on 1 and on 4 devices, side by side.

  XLA_FLAGS=--xla_force_host_platform_device_count=4 JAX_PLATFORMS=cpu python tests/scripts/bench_windows.py

The default 2D U-Net of configs/unet_ct.py (random weights) predicts a random [3, 384, 384, 1] volume slice
by slice (window 128 x 128, step 0.5: 25 windows per slice, batches of config.eval.batch_size = 16) through
`inference.DevicePredictor` on `parallel.local_mesh(n)`, whose window batches are split over the n devices.
Prints one JSON line: windows/s per device count (median of repeats) and the ratio 4 : 1.
"""

import json
import statistics
import sys
import time

import jax
import numpy as np

sys.path.insert(0, ".")
from configs import unet_ct  # pylint: disable=g-import-not-at-top,wrong-import-position
from jaxseg import inference, models, parallel, steps  # pylint: disable=g-import-not-at-top,wrong-import-position


def main(repeats: int = 3):
  config = unet_ct.get_config()
  config.model.num_classes = 5
  model = models.create_model(config.model)
  window = tuple(config.data.patch_size)
  batch = config.eval.batch_size
  with jax.threefry_partitionable(False):
    variables = jax.jit(lambda: model.init(jax.random.key(0), np.zeros((1, *window, 1), np.float32), train=False))()
  forward = jax.jit(steps.make_predict_fn(model))
  image = np.random.default_rng(0).normal(size=(3, 384, 384, 1)).astype(np.float32)
  windows = image.shape[0] * int(
    np.prod([len(inference.window_starts(n, w, 0.5)) for n, w in zip(image.shape[1:3], window)])
  )
  out = {
    "windows": windows,
    "devices_available": jax.local_device_count(),
    "window": window,
    "batch": batch,
    "image": list(image.shape),
    "jax": jax.__version__,
    "cpu_count": __import__("os").cpu_count(),
  }
  for n in (1, 4):
    predictor = inference.DevicePredictor(
      forward, (variables["params"], variables.get("batch_stats", {})), placement="device", mesh=parallel.local_mesh(n)
    )
    run = lambda p=predictor: inference.sliding_window_predict(p, image, window=window, num_classes=5, batch_size=batch)
    probs = run()  # Compiles.
    times = []
    for _ in range(repeats):
      start = time.perf_counter()
      run()
      times.append(time.perf_counter() - start)
    count = windows
    out[f"windows_per_s_{n}"] = count / statistics.median(times)
    out[f"seconds_{n}"] = statistics.median(times)
    out[f"probs_sum_{n}"] = float(np.asarray(probs, np.float64).sum())
  out["ratio_4_to_1"] = out["windows_per_s_4"] / out["windows_per_s_1"]
  print(json.dumps(out))


if __name__ == "__main__":
  main()

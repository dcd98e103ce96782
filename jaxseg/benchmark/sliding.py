"""Inference rows: sliding-window throughput and overhead ratio, both paths.

The case's U-Net (random weights) predicts a random image 1.5x the window per
axis (2 windows per axis at step 0.5, then batches of the case's batch size)
through `inference.sliding_window_predict`, once with a plain `predict_fn`
that copies logits back per batch (the host path) and once with an
`inference.DevicePredictor` (the device path). Overhead ratio, as
`experiments/bench_inference.py` defines it: wall time of a whole prediction
/ (forward calls x median time of one batched forward call with its copy
back), each prediction followed by as many single forward calls, median over
repeats.
"""

from __future__ import annotations

import functools
import statistics
import time
from typing import Any

import jax
import numpy as np

from jaxseg import inference, models, steps
from jaxseg.benchmark.cases import Case
from jaxseg.benchmark.train import model_config


def run_case(case: Case, dtype: str, repeats: int) -> list[dict[str, Any]]:
  config = model_config(case, dtype)
  config.model.deep_supervision = False
  model = models.create_model(config.model)
  shape = (case.batch, *case.patch, 1)
  with jax.threefry_partitionable(False):
    variables = jax.jit(lambda: model.init(jax.random.key(0), np.zeros(shape, np.float32), train=False))()
  params, batch_stats = variables["params"], variables.get("batch_stats", {})
  forward = jax.jit(steps.make_predict_fn(model))
  image = np.random.default_rng(0).normal(size=tuple(p * 3 // 2 for p in case.patch) + (1,)).astype(np.float32)
  batch = np.random.default_rng(1).normal(size=shape).astype(np.float32)
  predictors = {
    "host": lambda x: np.asarray(forward(params, batch_stats, x)),
    "device": inference.DevicePredictor(forward, (params, batch_stats), placement="device"),
  }
  calls = inference.num_forward_calls(image.shape[:-1], case.patch, 0.5, case.batch)
  rows = []
  for path, fn in predictors.items():
    predict = functools.partial(
      inference.sliding_window_predict,
      fn,
      image,
      window=case.patch,
      num_classes=case.num_classes,
      batch_size=case.batch,
    )
    predict()  # Compiles.
    np.asarray(forward(params, batch_stats, batch))
    totals, forwards = [], []
    for _ in range(repeats):
      start = time.perf_counter()
      predict()
      totals.append(time.perf_counter() - start)
      one = []
      for _ in range(calls):
        start = time.perf_counter()
        np.asarray(forward(params, batch_stats, batch))
        one.append(time.perf_counter() - start)
      forwards.append(statistics.median(one))
    total = statistics.median(totals)
    rows.append(
      {
        "section": "inference",
        "case": case.name,
        "dtype": dtype,
        "framework": "jaxseg",
        "path": path,
        "batch": case.batch,
        "patch": "x".join(map(str, image.shape[:-1])),
        "status": "ok",
        "seconds": total,
        "voxels_per_s": image[..., 0].size / total,
        "forward_calls": calls,
        "overhead_ratio": statistics.median(t / (calls * f) for t, f in zip(totals, forwards)),
      }
    )
  return rows

"""Train-step rows: jaxseg and the same network in PyTorch, timed alternately.

For one case and compute dtype: the jaxseg train step exactly as train.py
builds it (`steps.make_train_step`, Dice + CE, AdamW with clipping, donated
state) on a batch already on the device, and the PyTorch U-Net of
`torch_models` (autocast for bfloat16). Timed in alternating blocks of
`steps` steps, `repeats` times; the row holds medians. Compile time is
`lower` + `compile` of the jitted step. Peak memory is XLA's buffer
assignment for that program (`memory_analysis()`: arguments + outputs +
temporaries - aliased), or, on accelerators, the device allocator's peak
when it reports one (`memory_stats()['peak_bytes_in_use']`, process-wide).
"""

from __future__ import annotations

import functools
import statistics
import time
from typing import Any

import jax
import numpy as np

from jaxseg import config as config_lib
from jaxseg import models, optimizer as optimizer_lib, state as state_lib, steps
from jaxseg.benchmark import flops as flops_lib
from jaxseg.benchmark.cases import Case


def is_out_of_memory(error: BaseException) -> bool:
  text = f"{type(error).__name__} {error}".lower()
  return any(s in text for s in ("resource_exhausted", "out of memory", "outofmemory", "oom"))


def model_config(case: Case, dtype: str):
  config = config_lib.base_config()
  config.model.update(case.model_overrides)
  config.model.num_classes = case.num_classes
  config.model.dtype = dtype
  return config


def _batch(case: Case, seed: int = 0) -> dict[str, np.ndarray]:
  rng = np.random.default_rng(seed)
  return {
    "image": rng.normal(size=(case.batch, *case.patch, 1)).astype(np.float32),
    "label": rng.integers(0, case.num_classes, (case.batch, *case.patch)).astype(np.int32),
  }


def _memory(compiled) -> int | None:
  try:
    m = compiled.memory_analysis()
    return int(m.argument_size_in_bytes + m.output_size_in_bytes + m.temp_size_in_bytes - m.alias_size_in_bytes)
  except Exception:  # pylint: disable=broad-except
    return None


def _device_peak_bytes() -> int | None:
  try:
    stats = jax.local_devices()[0].memory_stats() or {}
  except Exception:  # pylint: disable=broad-except
    return None
  return stats.get("peak_bytes_in_use")


class JaxStep:
  """The compiled jaxseg train step of a case, and its analytic FLOPs."""

  def __init__(self, case: Case, dtype: str):
    config = model_config(case, dtype)
    model = models.create_model(config.model)
    tx = optimizer_lib.create_optimizer(config.train)
    schedule = optimizer_lib.learning_rate_schedule(config.train)
    shape = (case.batch, *case.patch, 1)
    with jax.threefry_partitionable(False):
      self.state = jax.jit(functools.partial(state_lib.create_train_state, config, model, tx, shape))()
    step = steps.make_train_step(model, tx, schedule, config.train.loss, models.output_weights(config.model))
    self.batch = jax.device_put(_batch(case))
    start = time.perf_counter()
    compiled = jax.jit(step, donate_argnums=0).lower(self.state, self.batch).compile()
    self.compile_s = time.perf_counter() - start
    self.memory_bytes = _memory(compiled)
    self.step = compiled
    variables = {"params": self.state.params, "batch_stats": self.state.batch_stats}
    self.flops = flops_lib.TRAIN_STEP_FACTOR * flops_lib.forward_flops(
      lambda v, x: model.apply(v, x, train=False), variables, self.batch["image"]
    )

  def run(self, count: int) -> float:
    """Median seconds per step over `count` steps."""
    times = []
    for _ in range(count):
      start = time.perf_counter()
      self.state, metrics = self.step(self.state, self.batch)
      jax.block_until_ready(metrics["loss"])
      times.append(time.perf_counter() - start)
    return statistics.median(times)


class TorchStep:
  """The case's network in PyTorch (U-Nets only), on the first CUDA device or the CPU."""

  def __init__(self, case: Case, dtype: str):
    import torch  # pylint: disable=g-import-not-at-top
    from jaxseg.benchmark import torch_models  # pylint: disable=g-import-not-at-top

    self.torch = torch
    m = dict(models.default_model_config())
    m.update(case.model_overrides)
    m["num_classes"] = case.num_classes
    self.device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    model = torch_models.UNet(m, case.ndim, strided=m["name"] == "unet3d").to(self.device)
    batch = _batch(case)
    self.images = torch.from_numpy(np.moveaxis(batch["image"], -1, 1).copy()).to(self.device)
    self.labels = torch.from_numpy(batch["label"]).long().to(self.device)
    weights = models.deep_supervision_weights(m["depth"]) if m["deep_supervision"] else [1.0]
    self.step = torch_models.make_step(model, weights, dtype=torch.bfloat16 if dtype == "bfloat16" else None)
    if self.device.type == "cuda":
      torch.cuda.reset_peak_memory_stats()
    self.step(self.images, self.labels)  # Warm-up (cuDNN autotuning, allocator).
    self.memory_bytes = int(torch.cuda.max_memory_allocated()) if self.device.type == "cuda" else None

  def run(self, count: int) -> float:
    times = []
    for _ in range(count):
      start = time.perf_counter()
      loss = self.step(self.images, self.labels)
      loss.item()  # Waits for the device.
      times.append(time.perf_counter() - start)
    return statistics.median(times)


def _torch_unavailable(case: Case) -> str | None:
  try:
    import torch  # noqa: F401  # pylint: disable=g-import-not-at-top,unused-import
  except ImportError:
    return "skipped: torch is not installed (pip install 'jaxseg[bench]')"
  if not dict(case.model).get("name", "unet").startswith("unet"):
    return "skipped: no PyTorch reference for this network in the suite (U-Nets only)"
  return None


def run_case(case: Case, dtype: str, *, steps_per_repeat: int, repeats: int, with_torch: bool) -> list[dict[str, Any]]:
  """The jaxseg row and the PyTorch row of one case in one dtype."""
  base = {
    "section": "train",
    "case": case.name,
    "dtype": dtype,
    "batch": case.batch,
    "patch": "x".join(map(str, case.patch)),
  }
  rows = {"jaxseg": dict(base, framework="jaxseg")}
  runners = {}
  try:
    runners["jaxseg"] = JaxStep(case, dtype)
  except Exception as e:  # pylint: disable=broad-except
    if not is_out_of_memory(e):
      raise
    rows["jaxseg"]["status"] = "out of memory"
  if with_torch:
    rows["pytorch"] = dict(base, framework="pytorch")
    reason = _torch_unavailable(case)
    if reason:
      rows["pytorch"]["status"] = reason
    else:
      try:
        runners["pytorch"] = TorchStep(case, dtype)
      except Exception as e:  # pylint: disable=broad-except
        if not is_out_of_memory(e):
          raise
        rows["pytorch"]["status"] = "out of memory"
  times = {name: [] for name in runners}
  for name, runner in list(runners.items()):
    try:
      runner.run(1)  # Warm-up.
    except Exception as e:  # pylint: disable=broad-except
      if not is_out_of_memory(e):
        raise
      rows[name]["status"] = "out of memory"
      del runners[name], times[name]
  for _ in range(repeats):  # Alternating blocks: load changes hit both alike.
    for name, runner in runners.items():
      times[name].append(runner.run(steps_per_repeat))
  for name, runner in runners.items():
    step_s = statistics.median(times[name])
    row = rows[name]
    row.update(
      status="ok",
      step_ms=1e3 * step_s,
      voxels_per_s=case.voxels / step_s,
      images_per_s=case.batch / step_s,
      memory_bytes=runner.memory_bytes,
    )
    if name == "jaxseg":
      row.update(
        compile_s=runner.compile_s, gflop_per_step=runner.flops / 1e9, achieved_tflops=runner.flops / step_s / 1e12
      )
      peak = _device_peak_bytes()
      if peak:
        row["memory_bytes"] = peak
    rows[name] = row
  if "jaxseg" in runners and "pytorch" in runners:
    rows["jaxseg"]["vs_pytorch"] = rows["jaxseg"]["step_ms"] / rows["pytorch"]["step_ms"]
    rows["pytorch"]["gflop_per_step"] = rows["jaxseg"]["gflop_per_step"]
    rows["pytorch"]["achieved_tflops"] = rows["jaxseg"]["gflop_per_step"] / rows["pytorch"]["step_ms"]
  for row in rows.values():
    row["voxels"] = case.voxels
  return list(rows.values())

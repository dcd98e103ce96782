"""Benchmark of sliding-window inference (jaxseg.inference) with a model of the zoo.

Runs `sliding_window_predict` on a random image with a jaxseg model (random
weights, built from shapes alone: no init compile) called exactly as
evaluation calls it (`steps.make_predict_fn` jitted, host weights, logits
copied back to numpy) and prints:

- voxels/s: image voxels / median wall time of a whole prediction;
- overhead ratio: wall time of a whole prediction / (number of forward calls
  x median wall time of one forward call on a fixed batch of windows), each
  prediction followed by as many timed calls, median over repeats. A call is
  one batch of `batch_size` windows (times 2**len(mirror axes) with mirror
  TTA). 1.0 means all time is spent in the model; the target is <= 1.2;
- peak resident memory of the process (ru_maxrss).

Both paths of `sliding_window_predict` are measured in the same run
(`--placement=both`, the default): the host path (a plain `predict_fn` that
copies logits back per batch, as evaluation did before the device path) and
the device path (an `inference.DevicePredictor`: accumulation on the device,
one copy back at the end).

Quick by default (under a minute on 2 quiet CPU cores):

  python experiments/bench_inference.py
  python experiments/bench_inference.py --model=unet --image=40,128,128 --window=128,128 --batch_size=8
  # Peak memory of a whole 512 x 512 x 300 CT with 128^3 windows and 14 classes (the host side does not
  # depend on the model; XLA:CPU takes about 10 s per 3D convolution of a 128^3 window):
  python experiments/bench_inference.py --image=300,512,512 --window=128,128,128 --model=pointwise \\
      --num_classes=14 --batch_size=2 --repeats=1
"""

import argparse
import os
import platform
import resource
import statistics
import time

import flax.linen as nn
import jax
import numpy as np

from jaxseg import inference, models, state as state_lib, steps


def _ints(text):
  return tuple(int(v) for v in text.split(","))


def _median_time(fn, repeats):
  times = []
  for _ in range(repeats):
    start = time.perf_counter()
    fn()
    times.append(time.perf_counter() - start)
  return statistics.median(times)


class PointwiseClassifier(nn.Module):
  """A per-voxel linear classifier `[B, *window, C] -> [B, *window, K]`: nearly free, so that a run measures
  the host side of sliding-window inference (memory, stitching) on volumes where a real 3D network would take
  hours on a CPU."""

  num_classes: int

  @nn.compact
  def __call__(self, x, train: bool = False):
    del train
    return nn.Dense(self.num_classes)(x)


def random_variables(model, input_shape, seed=0):
  """Host variables of `model` with random weights (batch-norm variances 1), from shapes alone."""
  shapes = jax.eval_shape(lambda: state_lib.init_variables(model, jax.random.key(seed), input_shape))
  rng = np.random.default_rng(seed)

  def fill(path, leaf):
    name = jax.tree_util.keystr(path)
    if name.endswith("['var']"):
      return np.ones(leaf.shape, leaf.dtype)
    if name.startswith("['params']"):
      fan_in = int(np.prod(leaf.shape[:-1])) or 1
      return (rng.normal(size=leaf.shape) / np.sqrt(fan_in)).astype(leaf.dtype)
    return np.zeros(leaf.shape, leaf.dtype)

  return jax.tree_util.tree_map_with_path(fill, shapes)


def main():
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument(
    "--model",
    default="unet3d",
    choices=sorted(models.MODELS) + ["pointwise"],
    help="a model of the zoo, or pointwise (a per-voxel linear classifier)",
  )
  parser.add_argument("--image", type=_ints, default=(32, 64, 64), help="spatial image shape, e.g. 48,96,80")
  parser.add_argument("--window", type=_ints, default=(32, 32, 32), help="model window (2 or 3 values)")
  parser.add_argument("--channels", type=int, default=1)
  parser.add_argument("--features", type=int, default=8)
  parser.add_argument("--depth", type=int, default=3)
  parser.add_argument("--num_classes", type=int, default=3)
  parser.add_argument("--batch_size", type=int, default=2)
  parser.add_argument("--step_fraction", type=float, default=0.5)
  parser.add_argument("--mirror", action="store_true", help="mirror TTA over all window axes")
  parser.add_argument(
    "--placement", default="both", choices=["host", "device", "both"], help="sliding-window path(s) to measure"
  )
  parser.add_argument(
    "--repeats",
    type=int,
    default=3,
    help="timed predictions; 0: one prediction (compilation included), no overhead ratio",
  )
  args = parser.parse_args()

  if args.model == "pointwise":
    model = PointwiseClassifier(args.num_classes)
  else:
    model_config = models.default_model_config()
    model_config.update(name=args.model, features=args.features, depth=args.depth, num_classes=args.num_classes)
    model = models.create_model(model_config)
  ndim = len(args.window)
  batch_shape = (args.batch_size,) + args.window + (args.channels,)
  variables = random_variables(model, batch_shape)
  forward = jax.jit(steps.make_predict_fn(model))
  params, batch_stats = variables["params"], variables.get("batch_stats", {})
  calls = []

  def predict_fn(batch):  # As `experiment.Experiment.predictor`.
    calls.append(1)
    return np.asarray(forward(params, batch_stats, batch))

  image = np.random.default_rng(0).normal(size=args.image + (args.channels,)).astype(np.float32)
  mirror_axes = tuple(range(ndim)) if args.mirror else ()

  device_predictor = inference.DevicePredictor(forward, (params, batch_stats), placement="device")

  def predict(path):
    fn = predict_fn if path == "host" else device_predictor
    return inference.sliding_window_predict(
      fn,
      image,
      window=args.window,
      num_classes=args.num_classes,
      step_fraction=args.step_fraction,
      batch_size=args.batch_size,
      mirror_axes=mirror_axes,
    )

  batch = np.random.default_rng(1).normal(size=batch_shape).astype(np.float32)

  def one_forward():
    np.asarray(forward(params, batch_stats, batch))

  voxels = int(np.prod(args.image))
  print(
    f"machine: {platform.platform()}, {os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f}, "
    f"jax {jax.__version__}, devices {jax.devices()}"
  )
  size = "" if args.model == "pointwise" else f"features={args.features}, depth={args.depth}, "
  print(
    f"settings: image {args.image} x {args.channels} ch, window {args.window}, batch {args.batch_size}, "
    f"step {args.step_fraction}, mirror {mirror_axes}, model {args.model}({size}classes={args.num_classes}), "
    f"repeats {args.repeats}"
  )
  paths = ["host", "device"] if args.placement == "both" else [args.placement]
  results = {}
  for path in paths:
    calls.clear()
    start = time.perf_counter()
    results[path] = predict(path)  # Compiles.
    first = time.perf_counter() - start
    if path == "host":
      calls_per_prediction = len(calls)
    else:
      calls_per_prediction = inference.num_forward_calls(
        image.shape[:-1], args.window, args.step_fraction, args.batch_size, len(mirror_axes)
      )
    print(
      f"[{path} path] first prediction (with compilation): {first:.2f} s, {calls_per_prediction} forward "
      f"calls, {voxels / first:,.0f} voxels/s"
    )
    if args.repeats > 0:
      _report_overhead(
        lambda path=path: predict(path), one_forward, calls_per_prediction, voxels, args.repeats, f"[{path} path] "
      )
  if len(results) == 2:
    print(f"max |device - host| probability: {np.abs(results['device'] - results['host']).max():.2e}")
  peak_gib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # ru_maxrss is in KiB on Linux.
  print(f"peak resident memory: {peak_gib:.2f} GiB")


def _report_overhead(predict, one_forward, calls_per_prediction, voxels, repeats, label=""):
  one_forward()
  # Each whole prediction is followed by as many single timed forwards, so that a change of load on a shared
  # machine affects both sides of each ratio alike.
  totals, forwards = [], []
  for _ in range(repeats):
    totals.append(_median_time(predict, 1))
    forwards.append(_median_time(one_forward, calls_per_prediction))
  total = statistics.median(totals)
  forward_time = statistics.median(forwards)
  ratio = statistics.median(t / (calls_per_prediction * f) for t, f in zip(totals, forwards))
  print(f"{label}prediction: {total:.3f} s median, {voxels / total:,.0f} voxels/s")
  print(
    f"{label}forward: {calls_per_prediction} calls x {forward_time * 1e3:.2f} ms median = "
    f"{calls_per_prediction * forward_time:.3f} s"
  )
  print(f"{label}overhead ratio: {ratio:.3f} median over repeats (target <= 1.2)")
  return {
    "seconds": total,
    "voxels_per_s": voxels / total,
    "overhead_ratio": ratio,
    "forward_calls": calls_per_prediction,
    "forward_s": forward_time,
  }


if __name__ == "__main__":
  main()

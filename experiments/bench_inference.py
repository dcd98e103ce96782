"""Benchmark of sliding-window inference (jaxseg.inference).

Runs `sliding_window_predict` with a small 3D (or 2D) flax conv net on a
random image and prints:
- voxels/s: image voxels / median wall time of a whole prediction;
- overhead ratio: wall time of a whole prediction / (number of predict_fn
  calls x median wall time of one call on a fixed batch), each prediction
  followed by as many timed calls; the median over repeats. 1.0 means all
  time is spent in the model; the target is <= 1.2.

Quick by default (under a minute on 2 shared CPU cores, about 20 s idle):

  python experiments/bench_inference.py
  python experiments/bench_inference.py --image=96,256,256 \
      --window=64,128,128 --features=32 --batch_size=2 --mirror
"""

import argparse
import os
import platform
import statistics
import time

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from jaxseg import inference


class TinyConvNet(nn.Module):
  """Two 3x3(x3) conv + ReLU layers and a 1x1(x1) classifier."""
  features: int
  num_classes: int
  ndim: int

  @nn.compact
  def __call__(self, x):
    for _ in range(2):
      x = nn.relu(nn.Conv(self.features, (3,) * self.ndim)(x))
    return nn.Conv(self.num_classes, (1,) * self.ndim)(x)


def _ints(text):
  return tuple(int(v) for v in text.split(','))


def _median_time(fn, repeats):
  times = []
  for _ in range(repeats):
    start = time.perf_counter()
    fn()
    times.append(time.perf_counter() - start)
  return statistics.median(times)


def main():
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('--image', type=_ints, default=(48, 96, 80),
                      help='spatial image shape, e.g. 48,96,80')
  parser.add_argument('--window', type=_ints, default=(32, 32, 32),
                      help='model window (2 or 3 values)')
  parser.add_argument('--channels', type=int, default=1)
  parser.add_argument('--features', type=int, default=8)
  parser.add_argument('--num_classes', type=int, default=3)
  parser.add_argument('--batch_size', type=int, default=2)
  parser.add_argument('--step_fraction', type=float, default=0.5)
  parser.add_argument('--mirror', action='store_true',
                      help='mirror TTA over all window axes')
  parser.add_argument('--repeats', type=int, default=3)
  args = parser.parse_args()

  ndim = len(args.window)
  model = TinyConvNet(args.features, args.num_classes, ndim)
  batch_shape = (args.batch_size,) + args.window + (args.channels,)
  params = model.init(jax.random.key(0), jnp.zeros(batch_shape))
  apply = jax.jit(model.apply)
  calls = []

  def predict_fn(batch):
    calls.append(1)
    return apply(params, batch)

  image = np.random.default_rng(0).normal(
      size=args.image + (args.channels,)).astype(np.float32)
  mirror_axes = tuple(range(ndim)) if args.mirror else ()

  def predict():
    return inference.sliding_window_predict(
        predict_fn, image, window=args.window, num_classes=args.num_classes,
        step_fraction=args.step_fraction, batch_size=args.batch_size,
        mirror_axes=mirror_axes)

  batch = jnp.asarray(np.random.default_rng(1).normal(size=batch_shape),
                      jnp.float32)

  def forward():
    apply(params, batch).block_until_ready()

  predict()  # Compiles.
  calls_per_prediction = len(calls)
  forward()
  # Each whole prediction is followed by as many single timed forwards, so
  # that a change of load on a shared machine affects both sides of each
  # ratio alike.
  totals, forwards = [], []
  for _ in range(args.repeats):
    totals.append(_median_time(predict, 1))
    forwards.append(_median_time(forward, calls_per_prediction))
  total = statistics.median(totals)
  forward_time = statistics.median(forwards)
  ratio = statistics.median(
      t / (calls_per_prediction * f) for t, f in zip(totals, forwards))

  voxels = int(np.prod(args.image))
  print(f'machine: {platform.platform()}, {os.cpu_count()} CPUs, '
        f'jax {jax.__version__}, devices {jax.devices()}')
  print(f'settings: image {args.image} x {args.channels} ch, window '
        f'{args.window}, batch {args.batch_size}, step {args.step_fraction}, '
        f'mirror {mirror_axes}, model TinyConvNet(features={args.features}, '
        f'classes={args.num_classes}), repeats {args.repeats}')
  print(f'prediction: {total:.3f} s median, {voxels / total:,.0f} voxels/s')
  print(f'forward: {calls_per_prediction} calls x {forward_time * 1e3:.2f} '
        f'ms median = {calls_per_prediction * forward_time:.3f} s')
  print(f'overhead ratio: {ratio:.3f} median over repeats (target <= 1.2)')

if __name__ == '__main__':
  main()

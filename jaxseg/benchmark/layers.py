"""Layer rows: the formulations jaxseg chose, against the ones they replace.

Forward + backward (gradient of sum(sin(y)) with respect to input and
weights) of one layer, jitted, timed alternately with its alternatives and
with PyTorch's layer where torch is installed (medians):

  conv3d     3x3x3 convolution, 16 -> 16 channels: XLA's 3D convolution
             (`conv3d=native`), `layers.depth_folded_conv` (`conv3d=folded`),
             torch.nn.functional.conv3d;
  upsample   2x2x2 stride-2 transposed convolution: `nn.ConvTranspose`,
             `layers.StrideUpsample`, torch ConvTranspose3d;
  maxpool    2x2 max pooling of a 2D feature map: `nn.max_pool`,
             `layers.max_pool`, torch max_pool2d.
"""

from __future__ import annotations

import importlib.util
import statistics
import time
from typing import Any, Callable

import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxseg.models import layers

SHAPES = {  # Input [B, *spatial, C] per scale.
  "gpu": {"conv3d": (2, 64, 128, 128, 16), "upsample": (2, 32, 64, 64, 64), "maxpool": (32, 128, 128, 32)},
  "cpu": {"conv3d": (2, 32, 64, 64, 16), "upsample": (2, 16, 32, 32, 32), "maxpool": (8, 128, 128, 16)},
  "quick": {"conv3d": (1, 8, 16, 16, 4), "upsample": (1, 4, 8, 8, 8), "maxpool": (2, 16, 16, 4)},
}


def _jax_fn(f: Callable, x, w):
  if w is None:
    g = jax.jit(jax.grad(lambda x: jnp.sum(jnp.sin(f(x, None)))))
  else:
    g = jax.jit(jax.grad(lambda x, w: jnp.sum(jnp.sin(f(x, w))), argnums=(0, 1)))
  return lambda: jax.block_until_ready(g(x) if w is None else g(x, w))


def _torch_fn(kind: str, shape):
  import torch  # pylint: disable=g-import-not-at-top

  f = torch.nn.functional
  x = torch.randn(shape[0], shape[-1], *shape[1:-1], requires_grad=True)
  c = shape[-1]
  if kind == "conv3d":
    w = torch.randn(c, c, 3, 3, 3, requires_grad=True)
    op = lambda: f.conv3d(x, w, padding=1)
  elif kind == "upsample":
    w = torch.randn(c, c // 2, 2, 2, 2, requires_grad=True)
    op = lambda: f.conv_transpose3d(x, w, stride=2)
  else:
    op = lambda: f.max_pool2d(x, 2)

  def run():
    torch.sin(op()).sum().backward()

  return run


def _variants(kind: str, shape) -> dict[str, Callable[[], Any]]:
  key = jax.random.key(0)
  x = jax.random.normal(key, shape)
  c = shape[-1]
  if kind == "conv3d":
    w = jax.random.normal(key, (3, 3, 3, c, c)) * 0.1
    args = ((1, 1, 1), [(1, 1)] * 3)
    kw = dict(dimension_numbers=("NDHWC", "DHWIO", "NDHWC"))
    return {
      "xla 3D conv (native)": _jax_fn(lambda x, w: jax.lax.conv_general_dilated(x, w, *args, **kw), x, w),
      "depth folded (folded)": _jax_fn(lambda x, w: layers.depth_folded_conv(x, w, *args, **kw), x, w),
    }
  if kind == "upsample":
    ref = nn.ConvTranspose(c // 2, (2, 2, 2), strides=(2, 2, 2))
    new = layers.StrideUpsample(c // 2, (2, 2, 2))
    variables = ref.init(key, x)
    return {
      "nn.ConvTranspose": _jax_fn(lambda x, v: ref.apply(v, x), x, variables),
      "StrideUpsample": _jax_fn(lambda x, v: new.apply(v, x), x, variables),
    }
  return {
    "nn.max_pool": _jax_fn(lambda x, _: nn.max_pool(x, (2, 2), strides=(2, 2)), x, None),
    "layers.max_pool": _jax_fn(lambda x, _: layers.max_pool(x, (2, 2)), x, None),
  }


def run(scale: str, repeats: int) -> list[dict[str, Any]]:
  rows = []
  has_torch = importlib.util.find_spec("torch") is not None
  for kind, shape in SHAPES[scale].items():
    fns = _variants(kind, shape)
    if has_torch:
      fns["pytorch"] = _torch_fn(kind, shape)
    for fn in fns.values():
      fn()  # Compiles / warms up.
    times = {name: [] for name in fns}
    for _ in range(max(3, repeats)):
      for name, fn in fns.items():
        start = time.perf_counter()
        fn()
        times[name].append(time.perf_counter() - start)
    medians = {name: statistics.median(t) for name, t in times.items()}
    for name, seconds in medians.items():
      rows.append(
        {
          "section": "layers",
          "case": kind,
          "shape": "x".join(map(str, shape)),
          "framework": "pytorch" if name == "pytorch" else "jaxseg",
          "variant": name,
          "status": "ok",
          "ms": 1e3 * seconds,
          "vs_pytorch": seconds / medians["pytorch"] if has_torch else None,
        }
      )
  return rows

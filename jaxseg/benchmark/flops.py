"""Analytic FLOP counts and device peaks, for achieved FLOP/s and its share.

XLA's `cost_analysis()` does not count convolutions that XLA:GPU hands to
cuDNN (it reported 6.8 GFLOP for a step of about 1.15 TFLOP), so the suite
counts FLOPs itself: every `conv_general_dilated` and `dot_general` in the
jaxpr of the model's forward pass (one multiply-add = 2 FLOPs), times 3 for
a training step (forward, and a backward of twice the forward's cost: the
input and the weight gradients), the usual convention of utilisation figures.
Elementwise work (norms, activations, the optimiser) is not counted.
"""

from __future__ import annotations

import math
from typing import Any

import jax
from jax.extend import core as jax_core

# Dense peak FLOP/s by device kind (substring of `device.device_kind`) and
# compute dtype, from the vendors' data sheets (no sparsity). fp32 means
# plain fp32 (not TF32) arithmetic.
PEAKS: dict[str, dict[str, float]] = {
  "H200": {"float32": 67e12, "bfloat16": 989e12},
  "H100": {"float32": 67e12, "bfloat16": 989e12},
  "A100": {"float32": 19.5e12, "bfloat16": 312e12},
  "L4": {"float32": 30.3e12, "bfloat16": 121e12},
  "TPU v4": {"bfloat16": 275e12},
  "TPU v5 lite": {"bfloat16": 197e12},
  "TPU v5p": {"bfloat16": 459e12},
}
TRAIN_STEP_FACTOR = 3


def device_peak(device_kind: str, dtype: str) -> float | None:
  """Peak FLOP/s of `device_kind` in `dtype`, or None when unknown."""
  for kind, peaks in PEAKS.items():
    if kind.lower() in device_kind.lower():
      return peaks.get(dtype)
  return None


def _eqn_flops(eqn) -> int:
  name = eqn.primitive.name
  if name == "conv_general_dilated":
    lhs, rhs = (v.aval for v in eqn.invars)
    out = eqn.outvars[0].aval
    dims = eqn.params["dimension_numbers"]
    rhs_spec = dims.rhs_spec  # (out feature, in feature, *spatial)
    window = math.prod(rhs.shape[d] for d in rhs_spec[2:])
    in_features = rhs.shape[rhs_spec[1]]
    return 2 * math.prod(out.shape) * window * in_features
  if name == "dot_general":
    lhs, rhs = (v.aval for v in eqn.invars)
    (lhs_contract, _), _ = eqn.params["dimension_numbers"]
    contracted = math.prod(lhs.shape[d] for d in lhs_contract)
    return 2 * math.prod(eqn.outvars[0].aval.shape) * contracted
  return 0


def jaxpr_flops(jaxpr: Any) -> int:
  """Convolution and matmul FLOPs of a (closed) jaxpr, sub-jaxprs included.

  A loop body (`scan`, `while`) is counted once per trip of a `scan` and
  once for a `while` (whose trip count is unknown).
  """
  jaxpr = getattr(jaxpr, "jaxpr", jaxpr)
  total = 0
  for eqn in jaxpr.eqns:
    total += _eqn_flops(eqn)
    repeat = eqn.params.get("length", 1) if eqn.primitive.name == "scan" else 1
    for param in eqn.params.values():
      for sub in param if isinstance(param, (tuple, list)) else (param,):
        if isinstance(sub, (jax_core.ClosedJaxpr, jax_core.Jaxpr)):
          total += repeat * jaxpr_flops(sub)
  return total


def forward_flops(fn, *args) -> int:
  """FLOPs of `fn(*args)` (arrays or `jax.ShapeDtypeStruct`s), traced only."""
  return jaxpr_flops(jax.make_jaxpr(fn)(*args))

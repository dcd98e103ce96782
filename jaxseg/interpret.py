"""Interpretability maps for any registered segmentation model.

Every map explains one *class score* of one image: the sum of the logits of
class k over a region R of the output,

  S_k(x) = sum_{v in R} logits(x)[v, k],

with R the voxels the model itself assigns to k (`region="predicted"`, the
default; Vinogradova et al., 2020, "Towards interpretable semantic
segmentation via gradient-weighted class activation mapping"), the whole
image (`region="all"`) or a boolean mask `[B, *S]` given by the caller.

Maps (inputs `images` `[B, *S, C]` float32; 2D `S = (H, W)`, 3D `(D, H, W)`):

- `saliency`: |dS/dx|, the maximum over input channels (Simonyan et al.,
  2014) -> `[B, *S]`.
- `smoothgrad`: the same, from the mean gradient over `num_samples` copies of
  the image with Gaussian noise of std `noise_level` x (max - min) of each
  image (Smilkov et al., 2017) -> `[B, *S]`.
- `integrated_gradients`: (x - x') * mean over a midpoint Riemann sum of
  dS/dx along the straight path from the baseline x' (zeros by default) to x,
  summed over channels (Sundararajan et al., 2017) -> `[B, *S]`, signed. Its
  sum approximates S(x) - S(x') ("completeness"); `steps` sets the accuracy.
- `grad_cam`: relu(sum_c w_c A_c) at a chosen layer, with A `[B, *s, C_l]`
  the layer's output and w_c the mean over space of dS/dA_c, linearly
  resized to the input's spatial size -> `[B, *S]`, >= 0. `layers()` lists
  the layers it can use (module paths such as `up0` or `encoder2/conv1`);
  the default is the last feature map before the output head.
- `attention_maps`: the gate coefficients alpha in [0, 1] of an Attention
  U-Net (`jaxseg.models.attention_unet`), resized to the input's size and
  ordered from the deepest skip to the full-resolution one.

Sanity checks (Adebayo et al., 2018, "Sanity checks for saliency maps"):
`rank_correlation` of two maps (Spearman, over voxels), to compare the maps
of a trained model with those of `randomized_variables` (same architecture,
fresh random weights) or of a model trained on shuffled labels: a map that
explains the model must change when the model does. `localisation_score`:
the share of a map's positive mass inside the reference structure dilated
by `margin` voxels.

Models are called as `model.apply(variables, images, train=False)` with
`variables = {"params": ..., "batch_stats": ...}`; parameters are never
changed. All functions are jittable except the sanity-check helpers, which
work on host arrays.
"""

from __future__ import annotations

import functools
from typing import Any

from flax import traverse_util
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from scipy import ndimage, stats

from jaxseg.errors import ConfigError

Array = jax.Array
Variables = dict[str, Any]
METHODS = ("saliency", "smoothgrad", "integrated_gradients", "grad_cam", "attention")


def _logits(model: nn.Module, variables: Variables, images: Array) -> Array:
  return model.apply(variables, images, train=False).astype(jnp.float32)


def region_mask(logits: Array, class_index: int, region: str) -> Array:
  """The region R (`predicted` or `all`) of the class score as float32 `[B, *S]`."""
  if region == "predicted":
    return (jnp.argmax(logits, axis=-1) == class_index).astype(jnp.float32)
  return jnp.ones(logits.shape[:-1], jnp.float32)


def class_score(logits: Array, class_index: int, mask: Array) -> Array:
  """S_k: the sum of class `class_index`'s logits inside `mask`, per image -> `[B]`."""
  axes = tuple(range(1, logits.ndim - 1))
  return jnp.sum(logits[..., class_index] * mask, axis=axes)


def _logits_shape(model, variables, images) -> tuple[int, ...]:
  return jax.eval_shape(functools.partial(_logits, model), variables, images).shape


def _checked_region(model, shape, class_index, region) -> tuple[str, Array | None]:
  """Checks class and region against the logits' `shape` -> (static kind, mask or None)."""
  if not 0 <= class_index < shape[-1]:
    raise ConfigError(
      f"interpret class index {class_index} is outside 0..{shape[-1] - 1} "
      f"({type(model).__name__} has {shape[-1]} classes)"
    )
  if isinstance(region, str):
    if region not in ("predicted", "all"):
      raise ConfigError(f"interpret region {region!r} is not one of 'predicted', 'all' or a mask array")
    return region, None
  mask = jnp.asarray(region, jnp.float32)
  if mask.shape != shape[:-1]:
    raise ConfigError(f"interpret region mask has shape {mask.shape}, the model's output {shape[:-1]}")
  return "mask", mask


def _mask(model, variables, images, class_index, kind, mask) -> Array:
  if kind == "mask":
    return mask
  return region_mask(_logits(model, variables, images), class_index, kind)


def _input_gradient(model, variables, images, class_index, mask) -> Array:
  """dS/dx `[B, *S, C]`, with R fixed to `mask` (R does not move with x)."""

  def total_score(x):
    return jnp.sum(class_score(_logits(model, variables, x), class_index, mask))

  return jax.grad(total_score)(images)


def _jit(*extra_static: str):
  """jit with the model, region kind and options static; the class index is traced, so one compilation
  serves every class of a given input shape."""
  return functools.partial(jax.jit, static_argnames=("model", "kind", *extra_static))


@_jit()
def _saliency(model, variables, images, mask, *, class_index, kind):
  mask = _mask(model, variables, images, class_index, kind, mask)
  return jnp.max(jnp.abs(_input_gradient(model, variables, images, class_index, mask)), axis=-1)


def saliency(
  model: nn.Module, variables: Variables, images: Array, class_index: int, region: str | Array = "predicted"
) -> Array:
  """max over channels of |dS/dx| -> `[B, *S]` float32."""
  kind, mask = _checked_region(model, _logits_shape(model, variables, images), class_index, region)
  return _saliency(model, variables, images, mask, class_index=jnp.int32(class_index), kind=kind)


@_jit("num_samples")
def _smoothgrad(model, variables, images, mask, rng, noise_level, *, class_index, kind, num_samples):
  mask = _mask(model, variables, images, class_index, kind, mask)
  axes = tuple(range(1, images.ndim))
  sigma = noise_level * (jnp.max(images, axis=axes, keepdims=True) - jnp.min(images, axis=axes, keepdims=True))

  def add_sample(total, key):
    noisy = images + sigma * jax.random.normal(key, images.shape, images.dtype)
    return total + _input_gradient(model, variables, noisy, class_index, mask), None

  total, _ = jax.lax.scan(add_sample, jnp.zeros_like(images), jax.random.split(rng, num_samples))
  return jnp.max(jnp.abs(total / num_samples), axis=-1)


def smoothgrad(
  model: nn.Module,
  variables: Variables,
  images: Array,
  class_index: int,
  region: str | Array = "predicted",
  *,
  rng: Array,
  num_samples: int = 16,
  noise_level: float = 0.15,
) -> Array:
  """max over channels of |mean over noisy copies of dS/dx| -> `[B, *S]` float32."""
  if num_samples < 1 or not noise_level >= 0:
    raise ConfigError(f"smoothgrad needs num_samples >= 1 and noise_level >= 0, got {num_samples}, {noise_level}")
  kind, mask = _checked_region(model, _logits_shape(model, variables, images), class_index, region)
  return _smoothgrad(
    model,
    variables,
    images,
    mask,
    rng,
    noise_level,
    class_index=jnp.int32(class_index),
    kind=kind,
    num_samples=num_samples,
  )


@_jit("steps")
def _integrated_gradients(model, variables, images, mask, baseline, *, class_index, kind, steps):
  mask = _mask(model, variables, images, class_index, kind, mask)
  alphas = (jnp.arange(steps, dtype=jnp.float32) + 0.5) / steps

  def add_step(total, alpha):
    point = baseline + alpha * (images - baseline)
    return total + _input_gradient(model, variables, point, class_index, mask), None

  total, _ = jax.lax.scan(add_step, jnp.zeros_like(images), alphas)
  return jnp.sum((images - baseline) * total / steps, axis=-1)


def integrated_gradients(
  model: nn.Module,
  variables: Variables,
  images: Array,
  class_index: int,
  region: str | Array = "predicted",
  *,
  baseline: Array | None = None,
  steps: int = 32,
) -> Array:
  """Integrated gradients summed over channels -> `[B, *S]` float32 (signed)."""
  if steps < 1:
    raise ConfigError(f"integrated_gradients needs steps >= 1, got {steps}")
  baseline = jnp.zeros_like(images) if baseline is None else jnp.broadcast_to(baseline, images.shape)
  kind, mask = _checked_region(model, _logits_shape(model, variables, images), class_index, region)
  return _integrated_gradients(
    model, variables, images, mask, baseline, class_index=jnp.int32(class_index), kind=kind, steps=steps
  )


def _feature_maps(model: nn.Module, variables: Variables, images: Array) -> tuple[dict[str, Array], Array]:
  """Every submodule output that is a feature map `[B, *s, C]` of the input's rank, by module path, and the
  logits."""
  logits, state = model.apply(variables, images, train=False, capture_intermediates=True, mutable=["intermediates"])
  maps = {}
  for path, value in traverse_util.flatten_dict(state["intermediates"]).items():
    if path[-1] != "__call__" or len(path) < 2:
      continue
    if len(value) == 1 and hasattr(value[0], "ndim") and value[0].ndim == images.ndim:
      maps["/".join(path[:-1])] = value[0]
  return maps, logits


def _feature_shapes(model, variables, images) -> tuple[dict[str, jax.ShapeDtypeStruct], tuple[int, ...]]:
  """(feature-map shapes by layer, logits shape) from one abstract trace (no computation)."""
  shapes, logits = jax.eval_shape(functools.partial(_feature_maps, model), variables, images)
  return shapes, logits.shape


def layers(model: nn.Module, variables: Variables, images: Array) -> list[str]:
  """Module paths whose output `grad_cam` can use, in the order the model computes them."""
  return list(_feature_shapes(model, variables, images)[0])


def _default_layer(model: nn.Module, shapes: dict[str, jax.ShapeDtypeStruct], logits_shape) -> str:
  if not shapes:
    raise ConfigError(f"{type(model).__name__} has no layer whose output is a feature map")
  names = list(shapes)
  return next((name for name in reversed(names) if shapes[name].shape != logits_shape), names[-1])


def default_layer(model: nn.Module, variables: Variables, images: Array) -> str:
  """The last feature map before the output head: the last listed layer whose output is not the logits."""
  return _default_layer(model, *_feature_shapes(model, variables, images))


@_jit("layer", "activation_shape")
def _grad_cam(model, variables, images, mask, *, class_index, kind, layer, activation_shape):
  mask = _mask(model, variables, images, class_index, kind, mask)

  def perturbed_score(delta):
    captured = []

    def add_delta(next_fun, args, kwargs, context):
      out = next_fun(*args, **kwargs)
      if context.method_name == "__call__" and "/".join(context.module.path) == layer:
        captured.append(out)
        return out + delta.astype(out.dtype)
      return out

    with nn.intercept_methods(add_delta):
      logits = _logits(model, variables, images)
    return jnp.sum(class_score(logits, class_index, mask)), captured[0]

  # dS/dA at delta = 0, and A itself, from one forward and backward pass.
  grads, activation = jax.grad(perturbed_score, has_aux=True)(jnp.zeros(activation_shape, jnp.float32))
  weights = jnp.mean(grads, axis=tuple(range(1, activation.ndim - 1)), keepdims=True)
  cam = nn.relu(jnp.sum(weights * activation.astype(jnp.float32), axis=-1))
  return jax.image.resize(cam, images.shape[:-1], method="linear")


def grad_cam(
  model: nn.Module,
  variables: Variables,
  images: Array,
  class_index: int,
  region: str | Array = "predicted",
  *,
  layer: str | None = None,
) -> Array:
  """Grad-CAM for segmentation at `layer` -> `[B, *S]` float32, >= 0."""
  shapes, logits_shape = _feature_shapes(model, variables, images)
  layer = _default_layer(model, shapes, logits_shape) if layer is None else layer
  if layer not in shapes:
    raise ConfigError(
      f"interpret layer {layer!r} is not a feature map of {type(model).__name__}; layers: {', '.join(shapes)}"
    )
  kind, mask = _checked_region(model, logits_shape, class_index, region)
  return _grad_cam(
    model,
    variables,
    images,
    mask,
    class_index=jnp.int32(class_index),
    kind=kind,
    layer=layer,
    activation_shape=tuple(shapes[layer].shape),
  )


@functools.partial(jax.jit, static_argnames=("model",))
def _attention_maps(model, variables, images):
  _, state = model.apply(variables, images, train=False, mutable=["intermediates"])
  gates = state.get("intermediates", {}).get("attention_gates")
  if gates is None:
    return None
  return [jax.image.resize(g[..., 0].astype(jnp.float32), images.shape[:-1], method="linear") for g in gates]


def attention_maps(model: nn.Module, variables: Variables, images: Array) -> list[Array]:
  """Attention-gate coefficients `[B, *S]` of an Attention U-Net, deepest skip first."""
  gates = _attention_maps(model, variables, images)
  if gates is None:
    raise ConfigError(f"{type(model).__name__} has no attention gates; use model.name=attention_unet")
  return gates


def compute(
  method: str,
  model: nn.Module,
  variables: Variables,
  images: Array,
  class_index: int,
  *,
  region: str | Array = "predicted",
  rng: Array | None = None,
  layer: str | None = None,
  **options,
) -> Array:
  """One map by method name (one of METHODS; `attention` returns the full-resolution gate)."""
  if method == "saliency":
    return saliency(model, variables, images, class_index, region)
  if method == "smoothgrad":
    return smoothgrad(
      model, variables, images, class_index, region, rng=jax.random.key(0) if rng is None else rng, **options
    )
  if method == "integrated_gradients":
    return integrated_gradients(model, variables, images, class_index, region, **options)
  if method == "grad_cam":
    return grad_cam(model, variables, images, class_index, region, layer=layer)
  if method == "attention":
    return attention_maps(model, variables, images)[-1]
  raise ConfigError(f"interpret method {method!r} is not one of {', '.join(METHODS)}")


# Sanity checks (host-side, numpy).


def randomized_variables(model: nn.Module, variables: Variables, images: Array, seed: int) -> Variables:
  """Variables of the same architecture with fresh random parameters (Adebayo et al.'s full randomisation);
  batch statistics are kept so that only the learned weights change."""
  fresh = model.init({"params": jax.random.key(seed), "dropout": jax.random.key(seed + 1)}, images[:1], train=False)
  return {**variables, "params": fresh["params"]}


def rank_correlation(a: np.ndarray, b: np.ndarray) -> float:
  """Spearman rank correlation of two maps over all voxels (nan when either map is constant)."""
  a, b = np.asarray(a, np.float64).ravel(), np.asarray(b, np.float64).ravel()
  if a.shape != b.shape:
    raise ValueError(f"maps of different sizes: {a.size} and {b.size}")
  if np.ptp(a) == 0 or np.ptp(b) == 0:
    return float("nan")
  return float(stats.spearmanr(a, b).statistic)


def localisation_score(attribution: np.ndarray, reference: np.ndarray, margin: int = 0) -> float:
  """Share of the map's positive mass inside `reference` (bool, same shape) dilated by `margin` voxels
  (nan when the map has no positive mass)."""
  attribution = np.asarray(attribution, np.float64)
  reference = np.asarray(reference, bool)
  if attribution.shape != reference.shape:
    raise ValueError(f"map shape {attribution.shape} != reference shape {reference.shape}")
  if margin < 0:
    raise ValueError(f"margin must be >= 0 voxels, got {margin}")
  if margin:
    reference = ndimage.binary_dilation(reference, iterations=margin)
  positive = np.clip(attribution, 0, None)
  total = positive.sum()
  return float(positive[reference].sum() / total) if total > 0 else float("nan")

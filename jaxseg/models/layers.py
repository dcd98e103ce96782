"""Building blocks shared by the models: norms, activations, convolutions.

Layout is channels-last everywhere: `[B, H, W, C]` in 2D and `[B, D, H, W, C]`
in 3D. Convolutions use explicit symmetric zero padding of
`dilation * (kernel - 1) // 2` per side (PyTorch's convention), so a strided
convolution sees the same pixels as its torchvision counterpart and pretrained
weights transfer exactly.
"""

from collections.abc import Callable, Sequence
import functools
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

Array = jax.Array
Dtype = Any

NORMS = ("batch", "instance", "group", "layer", "none")
ACTIVATIONS = ("relu", "leaky_relu", "gelu", "silu")

# Batch norm as in PyTorch: running statistics are updated as
# `0.9 * running + 0.1 * batch` and the variance epsilon is 1e-5.
BATCH_NORM_MOMENTUM = 0.9
NORM_EPSILON = 1e-5
# Negative slope of the leaky ReLU (nnU-Net's value).
LEAKY_RELU_SLOPE = 0.01


def activation_fn(name: str) -> Callable[[Array], Array]:
  """Returns the elementwise activation called `name` (one of ACTIVATIONS)."""
  if name == "relu":
    return nn.relu
  if name == "leaky_relu":
    return lambda x: nn.leaky_relu(x, negative_slope=LEAKY_RELU_SLOPE)
  if name == "gelu":
    return nn.gelu
  if name == "silu":
    return nn.silu
  raise ValueError(f"unknown activation {name!r}; expected one of {ACTIVATIONS}")


def norm_layer(
  kind: str, *, train: bool, dtype: Dtype, groups: int = 8, name: str | None = None
) -> Callable[[Array], Array]:
  """Returns a normalisation layer over the channel axis of `[B, ..., C]`.

  Must be called inside a compact method; the layer becomes a submodule.

  Args:
    kind: "batch" (statistics in the `batch_stats` collection, running
      averages when `train` is False), "instance" (per sample and channel,
      over the spatial axes), "group" (`groups` channel groups per sample),
      "layer" (one group: per sample over spatial axes and channels) or
      "none" (identity).
    train: whether batch norm normalises with batch statistics and updates
      its running averages.
    dtype: computation dtype.
    groups: number of groups for "group".
    name: submodule name.
  """
  if kind == "batch":
    return nn.BatchNorm(
      use_running_average=not train, momentum=BATCH_NORM_MOMENTUM, epsilon=NORM_EPSILON, dtype=dtype, name=name
    )
  if kind == "instance":
    return nn.InstanceNorm(epsilon=NORM_EPSILON, dtype=dtype, name=name)
  if kind == "group":
    return nn.GroupNorm(num_groups=groups, epsilon=NORM_EPSILON, dtype=dtype, name=name)
  if kind == "layer":
    return nn.GroupNorm(num_groups=1, epsilon=NORM_EPSILON, dtype=dtype, name=name)
  if kind == "none":
    return lambda x: x
  raise ValueError(f"unknown norm {kind!r}; expected one of {NORMS}")


# How 3D convolutions are computed (`config.model.conv3d`): "auto" folds the
# depth axis (below) on the CPU backend and uses XLA's 3D convolution
# elsewhere; "native" always uses XLA's; "folded" always folds. Parameters
# and results are the same either way.
CONV3D_IMPLS = ("auto", "native", "folded")


def fold_depth(impl: str) -> bool:
  """Whether a 3D convolution with `impl` (one of CONV3D_IMPLS) folds depth.

  "auto" decides by `jax.default_backend()` when the model is traced: XLA:CPU
  runs a 3x3x3 convolution about 10x slower per FLOP than a 3x3 one, the
  folded form runs at 2D speed (README, Performance).
  """
  if impl not in CONV3D_IMPLS:
    raise ValueError(f"unknown conv3d implementation {impl!r}; expected one of {CONV3D_IMPLS}")
  return impl == "folded" or (impl == "auto" and jax.default_backend() == "cpu")


def conv3d_kwargs(ndim: int, impl: str) -> dict[str, Any]:
  """`nn.Conv` keyword arguments selecting the 3D convolution `impl`."""
  if ndim == 3 and fold_depth(impl):
    return {"conv_general_dilated": depth_folded_conv}
  return {}


def depth_folded_conv(
  lhs: Array,
  rhs: Array,
  window_strides: Sequence[int],
  padding: str | Sequence[tuple[int, int]],
  *,
  lhs_dilation: Sequence[int] | None = None,
  rhs_dilation: Sequence[int] | None = None,
  dimension_numbers: Any = None,
  feature_group_count: int = 1,
  precision: Any = None,
  preferred_element_type: Dtype | None = None,
) -> Array:
  """`lax.conv_general_dilated` of a 3D channels-last convolution via 2D.

  `lhs` `[B, D, H, W, C_in]`, `rhs` `[kd, kh, kw, C_in, C_out]` (flax's
  `nn.Conv` layout). The `kd` depth taps become channels of one 2D
  convolution over `(H, W)`:

  - depth stride 1: into output channels. Every input depth is convolved with
    the kernel reshaped to `[kh, kw, C_in, kd * C_out]`, and output depth o is
    the sum over t of tap t at input depth `o + t * dil_d - pad_lo` (zero
    outside);
  - strided: into input channels, so that only the needed depths are
    convolved. Output depth o reads input depths `o * s_d + t * dil_d - pad_lo`,
    stacked as `[B * D_out, H, W, kd * C_in]`, with the kernel reshaped to
    `[kh, kw, kd * C_in, C_out]`.

  Same result as the 3D convolution up to float summation order (on XLA:CPU,
  output folding made the stride-1 convolution's forward + backward about 20%
  faster at the U-Nets' widest levels, and a 3D U-Net step about 7%).
  Anything but a plain 3D channels-last convolution (input dilation, feature
  groups, other layouts) goes to `lax.conv_general_dilated` unchanged. Usable
  as `nn.Conv`'s `conv_general_dilated`.
  """
  native = functools.partial(
    jax.lax.conv_general_dilated,
    lhs,
    rhs,
    window_strides,
    padding,
    lhs_dilation=lhs_dilation,
    rhs_dilation=rhs_dilation,
    dimension_numbers=dimension_numbers,
    feature_group_count=feature_group_count,
    precision=precision,
    preferred_element_type=preferred_element_type,
  )
  channels_last = jax.lax.conv_dimension_numbers(lhs.shape, rhs.shape, ("NDHWC", "DHWIO", "NDHWC"))
  if (
    lhs.ndim != 5
    or feature_group_count != 1
    or any(d != 1 for d in (lhs_dilation or ()))
    or (
      dimension_numbers is not None
      and jax.lax.conv_dimension_numbers(lhs.shape, rhs.shape, dimension_numbers) != channels_last
    )
  ):
    return native()
  kd, kh, kw, c_in, c_out = rhs.shape
  strides = tuple(window_strides)
  dilation = tuple(rhs_dilation or (1, 1, 1))
  if isinstance(padding, str):
    padding = jax.lax.padtype_to_pads(
      lhs.shape[1:4], [(k - 1) * d + 1 for k, d in zip(rhs.shape[:3], dilation)], strides, padding
    )
  padding = [tuple(p) for p in padding]
  (lo, hi), stride, dil = padding[0], strides[0], dilation[0]
  batch, depth = lhs.shape[:2]
  out_depth = (depth + lo + hi - dil * (kd - 1) - 1) // stride + 1
  conv2d = functools.partial(
    jax.lax.conv_general_dilated,
    window_strides=strides[1:],
    padding=padding[1:],
    rhs_dilation=dilation[1:],
    dimension_numbers=("NHWC", "HWIO", "NHWC"),
    precision=precision,
    preferred_element_type=preferred_element_type,
  )
  if stride == 1 and kd > 1:
    # Taps into output channels: one 2D convolution of every input depth to `kd * C_out`
    # channels, then output depth o sums tap t of input depth `o + t * dil - lo`.
    y = conv2d(lhs.reshape((batch * depth, *lhs.shape[2:])), jnp.moveaxis(rhs, 0, 3).reshape(kh, kw, c_in, kd * c_out))
    y = y.reshape((batch, depth, *y.shape[1:3], kd, c_out))
    y = jax.lax.pad(y, jnp.zeros((), y.dtype), [(0, 0, 0), (lo, hi, 0)] + [(0, 0, 0)] * 4)
    taps = [jax.lax.slice_in_dim(y, t * dil, t * dil + out_depth, axis=1)[..., t, :] for t in range(kd)]
    return functools.reduce(jnp.add, taps)
  # Strided: taps into input channels, so that only the `out_depth` needed depths are convolved.
  x = jax.lax.pad(lhs, jnp.zeros((), lhs.dtype), [(0, 0, 0), (lo, hi, 0), (0, 0, 0), (0, 0, 0), (0, 0, 0)])
  taps = [jax.lax.slice_in_dim(x, t * dil, t * dil + stride * (out_depth - 1) + 1, stride, axis=1) for t in range(kd)]
  x = taps[0] if kd == 1 else jnp.concatenate(taps, axis=-1)
  x = x.reshape((batch * out_depth, *x.shape[2:]))
  y = conv2d(x, jnp.moveaxis(rhs, 0, 2).reshape(kh, kw, kd * c_in, c_out))
  return y.reshape((batch, out_depth, *y.shape[1:]))


def per_axis(value: int | Sequence[int], ndim: int, what: str = "value") -> tuple[int, ...]:
  """`(value,) * ndim` for an int, else `value` checked to have `ndim` entries."""
  if isinstance(value, (int, np.integer)):
    return (int(value),) * ndim
  value = tuple(int(v) for v in value)
  if len(value) != ndim:
    raise ValueError(f"{what} {value} needs {ndim} entries, one per spatial axis")
  return value


def conv(
  features: int,
  kernel_size: int | Sequence[int],
  *,
  ndim: int = 2,
  strides: int | Sequence[int] = 1,
  dilation: int = 1,
  use_bias: bool = False,
  dtype: Dtype = jnp.float32,
  kernel_init: nn.initializers.Initializer | None = None,
  conv3d: str = "auto",
  name: str | None = None,
) -> nn.Conv:
  """An `ndim`-D convolution with symmetric zero padding (PyTorch style).

  `kernel_size` and `strides` are one int for every axis or one per axis
  (e.g. a `(1, 3, 3)` kernel of stride `(1, 2, 2)` for thick-slice data).
  Each side of axis i is padded by `dilation * (kernel_size[i] - 1) // 2`,
  so a stride-1 convolution keeps the spatial size and a stride-s one maps
  an input size divisible by s to size / s. In 3D, `conv3d` (one of
  CONV3D_IMPLS) picks XLA's 3D convolution or `depth_folded_conv`; the
  parameters are the same.
  """
  kernel = per_axis(kernel_size, ndim, "kernel_size")
  pads = [(dilation * (k - 1) // 2,) * 2 for k in kernel]
  kwargs = {} if kernel_init is None else {"kernel_init": kernel_init}
  kwargs.update(conv3d_kwargs(ndim, conv3d))
  return nn.Conv(
    features,
    kernel,
    strides=per_axis(strides, ndim, "strides"),
    padding=pads,
    kernel_dilation=(dilation,) * ndim,
    use_bias=use_bias,
    dtype=dtype,
    name=name,
    **kwargs,
  )


def atrous_conv(
  features: int,
  rate: int,
  *,
  kernel_size: int = 3,
  ndim: int = 2,
  use_bias: bool = False,
  dtype: Dtype = jnp.float32,
  name: str | None = None,
) -> nn.Conv:
  """Atrous (dilated) convolution that keeps the spatial size.

  The kernel taps are `rate` pixels apart, so a 3x3 kernel sees a
  `(2 * rate + 1)`-pixel square with 9 weights (Chen et al., DeepLab). The
  input is zero padded by `rate * (kernel_size - 1) // 2` on each side.
  """
  return conv(features, kernel_size, ndim=ndim, dilation=rate, use_bias=use_bias, dtype=dtype, name=name)


def bilinear_upsample_init(factor: int = 2) -> nn.initializers.Initializer:
  """Initialiser of a `[k, k, C, C]` transposed-convolution kernel.

  Channel c maps to channel c with the separable bilinear kernel of Long et
  al. (k = 2 * factor), and channels do not mix, so the layer starts as
  bilinear interpolation by `factor`.
  """

  def init(key: Array, shape: Sequence[int], dtype: Dtype = jnp.float32) -> Array:
    del key
    size, _, in_features, out_features = shape
    if in_features != out_features:
      raise ValueError(f"bilinear init needs in == out features, got {shape}")
    center = (size - 1) / 2
    taps = 1 - np.abs(np.arange(size) - center) / factor
    kernel = np.zeros(shape, np.float32)
    kernel[:, :, np.arange(in_features), np.arange(in_features)] = np.outer(taps, taps)[:, :, None]
    return jnp.asarray(kernel, dtype)

  return init


def upsample_2x_learned(features: int, *, dtype: Dtype, name: str | None = None) -> nn.ConvTranspose:
  """Learned 2x upsampling `[B, H, W, C] -> [B, 2H, 2W, C]`, bilinear at init.

  A 4x4 transposed convolution with stride 2 (FCN's `upscore` layers), no bias.
  """
  return nn.ConvTranspose(
    features,
    (4, 4),
    strides=(2, 2),
    padding="SAME",
    use_bias=False,
    dtype=dtype,
    kernel_init=bilinear_upsample_init(2),
    name=name,
  )


class StrideUpsample(nn.Module):
  """Transposed convolution whose kernel equals its stride, as one matmul.

  `[B, *S, C_in] -> [B, *(S * factor), features]`. Equal to
  `nn.ConvTranspose(features, factor, strides=factor)` (flax's default
  `padding='SAME'`, `transpose_kernel=False`) with the same parameters:
  'kernel' `[*factor, C_in, features]` and 'bias' `[features]`, drawn by the
  same initialisers, so checkpoints of either load into the other.

  The windows of such a layer do not overlap: output voxel
  `factor * i + a` (per axis) is `x[i] @ kernel[factor - 1 - a] + bias` (flax
  flips the kernel's spatial axes). So the layer is one `[C_in] x
  [prod(factor) * features]` matrix product followed by a depth-to-space
  reshape, which XLA runs far faster than its transposed convolution (3.6x to
  15x for a whole 3D U-Net step on an H200; see the README's Performance
  section).
  """

  features: int
  factor: Sequence[int]
  use_bias: bool = True
  dtype: Dtype | None = None
  param_dtype: Dtype = jnp.float32
  kernel_init: nn.initializers.Initializer = nn.linear.default_kernel_init
  bias_init: nn.initializers.Initializer = nn.initializers.zeros_init()

  @nn.compact
  def __call__(self, x: Array) -> Array:
    factor = tuple(int(f) for f in self.factor)
    ndim = len(factor)
    if x.ndim != ndim + 2:
      raise ValueError(f"StrideUpsample with factor {factor} needs [B, *{ndim} spatial, C] inputs, got {x.shape}")
    in_features = x.shape[-1]
    kernel = self.param("kernel", self.kernel_init, factor + (in_features, self.features), self.param_dtype)
    bias = self.param("bias", self.bias_init, (self.features,), self.param_dtype) if self.use_bias else None
    x, kernel, bias = nn.dtypes.promote_dtype(x, kernel, bias, dtype=self.dtype)
    # [*k, C_in, C_out] -> flipped -> [C_in, *k, C_out]: one matrix product
    # gives [B, *S, *k, C_out].
    kernel = jnp.flip(kernel, axis=tuple(range(ndim)))
    kernel = jnp.moveaxis(kernel, ndim, 0)
    y = jax.lax.dot_general(x, kernel, (((x.ndim - 1,), (0,)), ((), ())))
    if bias is not None:
      y = y + bias
    # Depth to space: [B, s1, .., sn, k1, .., kn, C] -> [B, s1 k1, .., sn kn, C].
    batch, spatial = x.shape[0], x.shape[1:-1]
    order = [0]
    for axis in range(ndim):
      order += [1 + axis, 1 + ndim + axis]
    y = jnp.transpose(y, order + [2 * ndim + 1])
    return y.reshape((batch, *(s * f for s, f in zip(spatial, factor)), self.features))


def max_pool(x: Array, window: Sequence[int]) -> Array:
  """Non-overlapping max pooling `[B, *S, C] -> [B, *(S / window), C]`.

  Same values as `nn.max_pool(x, window, strides=window)` for spatial sizes
  divisible by `window` (other sizes drop the remainder, as VALID pooling),
  computed as a reshape and a max reduction: XLA:CPU runs its gradient about
  3x faster than the select-and-scatter of `nn.max_pool`. Where several
  inputs of a window tie for the maximum, the gradient is split equally
  among them (select-and-scatter gives it all to the first); after a ReLU
  such ties are zeros, whose gradient the ReLU stops anyway.
  """
  window = tuple(int(w) for w in window)
  spatial = x.shape[1:-1]
  x = crop_spatial(x, [s - s % w for s, w in zip(spatial, window)])
  shape = [x.shape[0]]
  for size, w in zip(x.shape[1:-1], window):
    shape += [size // w, w]
  x = x.reshape(shape + [x.shape[-1]])
  return x.max(axis=tuple(2 + 2 * i for i in range(len(window))))


def resize_bilinear(x: Array, spatial_shape: Sequence[int]) -> Array:
  """Bilinear resize of `[B, *spatial, C]` to `spatial_shape`.

  Half-pixel centres, as PyTorch's `interpolate(..., align_corners=False)`;
  only used for upsampling (no antialiasing happens then).
  """
  shape = (x.shape[0], *spatial_shape, x.shape[-1])
  if tuple(shape) == x.shape:
    return x
  return jax.image.resize(x, shape, method="bilinear").astype(x.dtype)


def pad_to_multiple(x: Array, multiple: int | Sequence[int]) -> tuple[Array, tuple[int, ...]]:
  """Zero pads the spatial axes of `[B, *spatial, C]` at their high end.

  Returns the padded array, whose spatial sizes are the smallest multiples of
  `multiple` (one int for every axis, or one per axis) not below the
  input's, and the original spatial sizes.
  """
  spatial = tuple(x.shape[1:-1])
  multiples = per_axis(multiple, len(spatial), "multiple")
  pads = [(0, -size % m) for size, m in zip(spatial, multiples)]
  if any(high for _, high in pads):
    x = jnp.pad(x, [(0, 0), *pads, (0, 0)])
  return x, spatial


def crop_spatial(x: Array, spatial: Sequence[int]) -> Array:
  """Keeps the first `spatial[i]` entries of spatial axis i of `[B, ..., C]`."""
  return x[(slice(None), *(slice(0, size) for size in spatial), slice(None))]


def downsampled_size(size: int, factor: int) -> int:
  """Size of an axis of `size` pixels after downsampling by `factor` (ceil)."""
  return -(-size // factor)


def crop_to_downsampled(x: Array, spatial: Sequence[int], factor: int | Sequence[int]) -> Array:
  """Crops a `1/factor`-resolution map of a padded input to the input's extent.

  `factor` is one int for every axis or one per axis. The result has
  `ceil(spatial[i] / factor[i])` entries along axis i, the shape of
  `labels[:, ::factor[0], ::factor[1]]` for labels of spatial shape `spatial`.
  """
  factors = per_axis(factor, len(spatial), "factor")
  return crop_spatial(x, [downsampled_size(s, f) for s, f in zip(spatial, factors)])

"""Fully convolutional (patch) discriminator for adversarial segmentation training.

The discriminator sees an image together with a label map (one-hot ground
truth or a segmenter's softmax) and returns one real/fake logit per patch:

  image `[B, *S, C]`, label map `[B, *S, K]` -> logits `[B, *S / 2**L, 1]`

with `S` = `(H, W)` in 2D and `(D, H, W)` in 3D and `L = num_layers` (each
stride-2 layer halves a size, rounding down). Every spatial size must be at
least `2**L`. The two inputs are joined either by
concatenation (`C + K` channels) or in the "product" form of Luc et al. 2016,
"Semantic Segmentation using Adversarial Networks" (each image channel times
each class map, `C * K` channels), which hides the image where the label map
says a class is absent.

Architecture (pix2pix's PatchGAN, Isola et al. 2017, in 2D or 3D): `L`
convolutions of kernel 4 and stride 2, widths `features * 2**min(l, 3)`, each
followed by a leaky ReLU of slope 0.2, then a kernel-3 stride-1 convolution
to one logit per patch. Without spectral normalisation the hidden layers after
the first are layer-normalised (per sample, so real and fake samples never
mix, unlike batch norm); with `spectral_norm` every convolution's kernel is
divided by its largest singular value (Miyato et al. 2018) and there is no
other normalisation. The power-iteration vectors of spectral normalisation live
in the `batch_stats` collection and are updated when `update_stats=True`.
"""

from collections.abc import Callable

import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxseg.models import layers

Array = jax.Array

INPUT_FORMS = ("product", "concat")
LEAKY_SLOPE = 0.2
MAX_WIDTH_MULTIPLIER = 8


def discriminator_input(image: Array, label_map: Array, form: str) -> Array:
  """Joins image `[B, *S, C]` and label map `[B, *S, K]` into the discriminator's input.

  Returns `[B, *S, C * K]` for `form="product"` (channel `c * K + k` is
  `image[..., c] * label_map[..., k]`) or `[B, *S, C + K]` for
  `form="concat"` (image channels first).
  """
  if image.shape[:-1] != label_map.shape[:-1]:
    raise ValueError(f"image {image.shape} and label map {label_map.shape} differ in batch or spatial shape")
  image = image.astype(jnp.float32)
  label_map = label_map.astype(jnp.float32)
  if form == "product":
    joined = image[..., :, None] * label_map[..., None, :]
    return joined.reshape(*image.shape[:-1], image.shape[-1] * label_map.shape[-1])
  if form == "concat":
    return jnp.concatenate([image, label_map], axis=-1)
  raise ValueError(f"unknown discriminator input form {form!r}; expected one of {INPUT_FORMS}")


class PatchDiscriminator(nn.Module):
  """Patch discriminator: (image, label map) -> real/fake logits `[B, *S / 2**num_layers, 1]`.

  Attributes:
    features: width of the first convolution (doubled per layer, capped at 8x).
    num_layers: number of stride-2 convolutions `L`.
    input_form: "product" (Luc et al. 2016) or "concat".
    spectral_norm: spectrally normalise every convolution instead of layer norm.
  """

  features: int = 32
  num_layers: int = 3
  input_form: str = "product"
  spectral_norm: bool = False

  def _conv(
    self, width: int, kernel_size: int, strides: int, ndim: int, use_bias: bool, name: str
  ) -> Callable[[Array, bool], Array]:
    conv = layers.conv(width, kernel_size, ndim=ndim, strides=strides, use_bias=use_bias, name=name)
    if self.spectral_norm:
      normalised = nn.SpectralNorm(conv, name=f"{name}_sn")
      return lambda x, update_stats: normalised(x, update_stats=update_stats)
    return lambda x, update_stats: conv(x)

  @nn.compact
  def __call__(self, image: Array, label_map: Array, *, update_stats: bool = False) -> Array:
    """Logits of "real" per patch.

    Args:
      image: `[B, *S, C]` float image.
      label_map: `[B, *S, K]` class probabilities (one-hot or softmax).
      update_stats: store the spectral-norm power-iteration state (needs
        `mutable=["batch_stats"]`); without spectral norm it has no effect.
    """
    x = discriminator_input(image, label_map, self.input_form)
    ndim = x.ndim - 2
    for level in range(self.num_layers):
      width = self.features * min(2**level, MAX_WIDTH_MULTIPLIER)
      layer_norm = level > 0 and not self.spectral_norm
      x = self._conv(width, 4, 2, ndim, not layer_norm, f"conv{level}")(x, update_stats)
      if layer_norm:
        x = nn.GroupNorm(num_groups=1, epsilon=layers.NORM_EPSILON, name=f"norm{level}")(x)
      x = nn.leaky_relu(x, negative_slope=LEAKY_SLOPE)
    return self._conv(1, 3, 1, ndim, True, "logits")(x, update_stats)

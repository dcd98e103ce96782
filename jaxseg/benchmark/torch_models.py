"""The suite's U-Nets in PyTorch, layer for layer as `jaxseg.models.UNet`.

Two 3^n convolutions (bias only without norm) + norm + activation per block,
2x2 max pooling (2D U-Net) or a stride-2 first convolution (3D U-Net),
kernel-2 stride-2 transposed convolutions with bias, concatenation
`[skip, up]`, 1x1 heads (one per decoder level with deep supervision),
Dice + cross-entropy with nnU-Net's deep-supervision weights, AdamW with
global-norm clipping. Layout NC(D)HW, PyTorch's default. Imported only when
torch is installed (`pip install 'jaxseg[bench]'`).
"""

from __future__ import annotations

import torch
from torch import nn


def _norm(kind: str, ndim: int, channels: int, groups: int) -> nn.Module:
  if kind == "batch":
    return (nn.BatchNorm2d if ndim == 2 else nn.BatchNorm3d)(channels)
  if kind == "instance":
    return (nn.InstanceNorm2d if ndim == 2 else nn.InstanceNorm3d)(channels, affine=True)
  if kind == "group":
    return nn.GroupNorm(groups, channels)
  if kind == "layer":
    return nn.GroupNorm(1, channels)
  return nn.Identity()


def _act(kind: str) -> nn.Module:
  return {"relu": nn.ReLU(), "leaky_relu": nn.LeakyReLU(0.01), "gelu": nn.GELU(), "silu": nn.SiLU()}[kind]


class Block(nn.Sequential):
  def __init__(self, cin, cout, m, ndim, stride=1):
    conv = nn.Conv2d if ndim == 2 else nn.Conv3d
    layers = []
    for i in range(2):
      layers += [
        conv(cin if i == 0 else cout, cout, 3, stride=stride if i == 0 else 1, padding=1, bias=m["norm"] == "none"),
        _norm(m["norm"], ndim, cout, m["norm_groups"]),
        _act(m["activation"]),
      ]
    super().__init__(*layers)


class UNet(nn.Module):
  """`[B, C, *S] -> list of logits`, full resolution first."""

  def __init__(self, m: dict, ndim: int, in_channels: int = 1, strided: bool = False):
    super().__init__()
    self.ndim, self.strided, self.m = ndim, strided, m
    width = lambda level: min(m["features"] * 2**level, m["max_features"])
    depth = m["depth"]
    self.down = nn.ModuleList()
    cin = in_channels
    for level in range(depth + 1):
      self.down.append(Block(cin, width(level), m, ndim, 2 if strided and level else 1))
      cin = width(level)
    up = nn.ConvTranspose2d if ndim == 2 else nn.ConvTranspose3d
    conv = nn.Conv2d if ndim == 2 else nn.Conv3d
    self.upconv, self.up, self.heads = (nn.ModuleList(), nn.ModuleList(), nn.ModuleDict())
    for level in reversed(range(depth)):
      self.upconv.append(up(cin, width(level), 2, stride=2))
      self.up.append(Block(2 * width(level), width(level), m, ndim))
      cin = width(level)
      if level == 0 or m["deep_supervision"]:
        self.heads[str(level)] = conv(cin, m["num_classes"], 1)
    self.pool = nn.MaxPool2d(2) if ndim == 2 else nn.MaxPool3d(2)

  def forward(self, x):
    skips = []
    for level, block in enumerate(self.down):
      if level and not self.strided:
        x = self.pool(x)
      x = block(x)
      skips.append(x)
    skips.pop()
    outputs = []
    for i, level in enumerate(reversed(range(len(skips)))):
      x = self.up[i](torch.cat([skips[level], self.upconv[i](x)], 1))
      if str(level) in self.heads:
        outputs.append(self.heads[str(level)](x))
    return outputs[::-1]


def dice_ce(logits, labels):
  """Cross-entropy + (1 - mean foreground soft Dice over the batch)."""
  logits = logits.float()
  ce = nn.functional.cross_entropy(logits, labels)
  probs = logits.softmax(1)
  onehot = nn.functional.one_hot(labels, logits.shape[1]).movedim(-1, 1)
  axes = (0,) + tuple(range(2, logits.ndim))
  inter = (probs * onehot).sum(axes)
  denom = probs.sum(axes) + onehot.sum(axes)
  dice = (2 * inter + 1e-5) / (denom + 1e-5)
  return ce + 1 - dice[1:].mean()


def make_step(model, weights, lr=1e-3, weight_decay=1e-4, clip=12.0, dtype=None):
  """`step(images, labels) -> loss`: forward, loss, backward, clip, AdamW."""
  opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=weight_decay)
  device_type = next(model.parameters()).device.type

  def step(images, labels):
    opt.zero_grad(set_to_none=True)
    with torch.autocast(device_type, dtype=dtype, enabled=dtype is not None):
      outputs = model(images)
      loss = 0.0
      for level, (w, out) in enumerate(zip(weights, outputs)):
        if w:
          sub = labels[(slice(None),) + (slice(None, None, 2**level),) * (labels.ndim - 1)]
          loss = loss + w * dice_ce(out, sub)
    loss.backward()
    nn.utils.clip_grad_norm_(model.parameters(), clip)
    opt.step()
    return loss

  return step

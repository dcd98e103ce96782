"""Experiment planning: patch, batch, network, steps and cadence from the data and the machine.

nnU-Net's defining feature is that it sizes the network for the dataset and
the hardware. `make_plan` does the same from two inputs:

- a `DatasetSummary` (`summarize_dataset`): the training cases' median shape
  after cropping to the non-zero region and resampling to the target spacing,
  that spacing, the number of training cases, channels and classes, the
  dataset's dimensionality and the size of its validation and test splits;
- a `Devices` description (`detect_devices`): kind (cpu | gpu | tpu), count
  and memory per device (`memory_stats()['bytes_limit']` where the backend
  reports it, the host's RAM on a CPU).

Every function here but `detect_devices` is pure: tests plan for any
fingerprint and any machine without training.

Rules on a GPU / TPU (nnU-Net v2's `ExperimentPlanner`, written anew):

1. Initial patch: a 256^3-voxel (3D) or 2048^2-pixel (2D) box whose edges are
   proportional to 1 / spacing (an isotropic field of view in mm), clipped to
   the median shape.
2. Pooling per axis (`pool_and_conv`): at every stage, the axes whose feature
   map is still >= 2 * 4 voxels and whose current spacing is less than twice
   the finest current spacing are pooled by 2 (so a thick, anisotropic axis is
   pooled only once the in-plane spacing has caught up); a single poolable
   axis must be >= 3 * 4 voxels. Kernels are 1 along an axis while its
   spacing is >= 2x the finest (3 otherwise). The patch is padded up to a
   multiple of 2**pools along each axis.
3. Memory: `feature_map_size` counts the elements of every convolution,
   transposed convolution and segmentation output of the U-Net per sample
   (nnU-Net's estimate). The budget is nnU-Net's reference (560e6 elements in
   3D, 85e6 in 2D, at 2 resp. 12 samples per batch, for 8 GB) scaled by the
   device's memory / 8 GB. While two samples do not fit, the axis with the
   largest patch / median-shape ratio shrinks by its divisibility step.
   A patch that cannot shrink further and still does not fit raises a
   `ConfigError` with the numbers.
4. Batch per device: reference batch * budget / estimate, at most the number
   of patches that covers 5 % of the dataset's voxels, at least 2. The global
   batch is that times the number of devices.
5. Features 32 at the first stage, doubling to 320 (3D) / 512 (2D).
6. Steps: nnU-Net's 1000 epochs of 250 iterations, divided by the number of
   devices (the global batch grows with them); evaluation and checkpoints
   every 1/20 of the run.

Both a '2d' and (for 3D data) a '3d_fullres' configuration are planned; the
one matching the model's dimension is applied.

On a CPU the run is planned to finish in `config.plan.time_budget_min`
(`plan_cpu`): starting from nnU-Net's configuration for an 8 GB device, the
candidate is made cheaper (features 32 -> 16, batch halved down to 2,
features 16 -> 8, then the patch shrunk as in rule 3). A cheap probe is
measured first (a few jitted train steps of the real network,
`measure(candidate)`), the other candidates' step times are predicted from
the closest measurement by their ratio of training FLOPs, and the first
candidate predicted to fit at least `MIN_CPU_STEPS` steps is measured in turn
(at most `MAX_MEASUREMENTS` = 2 measurements). When none fits, the candidate that
trains on most voxels (steps x batch x patch) is taken, and one that cannot
train `MIN_FEASIBLE_STEPS` steps is a `ConfigError`.
The budget covers the measurements themselves (compilation included: their
wall time is subtracted as it is spent), training, the periodic validation
passes and the final evaluation (estimated from the measured step time and
the number of sliding windows); not the dataset preparation. Test-time
mirroring is planned off on a CPU (it multiplies the evaluation's cost by
2**axes). One log line states the result.

`apply_plan` writes the planned values into a config, except the keys named in
`config.plan.fixed` (the command line's `--config.KEY=VALUE` overrides are
added there by the CLI): an override wins, and both values are recorded in
plan.json.

The U-Nets follow the planned topology exactly: `model.pool_factors` is the
plan's strides without stage 0 (e.g. (1, 2, 2) while a thick z axis waits to
be pooled) and `model.kernel_sizes` its kernels per stage (e.g. (1, 3, 3));
their pooling, transposed convolutions, attention gates and deep supervision
use them. An overridden `model.depth` keeps the plan's first levels.
"""

from __future__ import annotations

import dataclasses
import math
import os
import time
from typing import Any, Callable, Mapping, Sequence

import numpy as np

from jaxseg.errors import ConfigError

# nnU-Net v2's reference numbers (ExperimentPlanner).
REFERENCE_GB = 8.0
REFERENCE_FEATURE_MAP = {2: 85_000_000, 3: 560_000_000}
REFERENCE_BATCH = {2: 12, 3: 2}
MIN_BATCH = 2
BASE_FEATURES = 32
MAX_FEATURES = {2: 512, 3: 320}
MIN_EDGE = 4  # Smallest feature map edge at the bottleneck [voxels].
INITIAL_PATCH_VOXELS = {2: 2048**2, 3: 256**3}
MAX_DATASET_COVERED = 0.05  # A batch covers at most 5 % of the dataset's voxels.
ANISOTROPY_THRESHOLD = 3.0
NNUNET_STEPS = 1000 * 250  # nnU-Net: 1000 epochs of 250 iterations.
EVALUATIONS_PER_RUN = 20
# CPU planning.
MIN_CPU_STEPS = 500  # Fewer steps than this rarely train a useful model.
MIN_FEASIBLE_STEPS = 20  # Below this the budget cannot train anything: an error.
MAX_MEASUREMENTS = 2  # Each compiles a train step: tens of seconds idle, minutes on a loaded CPU.
PROBE_FLOPS = 50e9  # The first measured CPU candidate costs at most this per step.
CPU_EVALUATIONS = 4  # Periodic validation passes during a CPU run (best checkpoint).
MAX_CPU_EVAL_FRACTION = 0.15  # Share of the budget periodic validation may take.
FORWARD_FRACTION = 1 / 3  # Forward pass / (forward + backward) of one sample.
WINDOW_OVERHEAD_S = 1e-3  # Host work per sliding window (cutting, dispatch, accumulation) [s].
COMPILE_FACTOR = 2.0  # The run compiles a train step and a predict function: ~2 measured compiles.
FINAL_EVAL_OVERHEAD = 1.5  # Final evaluation: prediction time x this (metrics, resampling, figures).

# Config keys a plan sets.
PLANNED_KEYS = (
  "data.patch_size",
  "train.batch_size",
  "model.depth",
  "model.features",
  "model.max_features",
  "model.pool_factors",
  "model.kernel_sizes",
  "train.num_steps",
  "train.warmup_steps",
  "train.log_every_steps",
  "train.eval_every_steps",
  "train.checkpoint_every_steps",
  "eval.mirror_axes",
)
# Models whose depth / features the plan sets (the others get patch, batch and schedule only).
UNET_MODELS = ("unet", "unet3d", "attention_unet")


@dataclasses.dataclass(frozen=True)
class DatasetSummary:
  """What planning needs to know about a prepared dataset.

  Attributes:
    median_shape: (Z, Y, X) median over training cases of the shape after cropping to the non-zero region
      and resampling to `spacing` [voxels]; Z = 1 for 2D data.
    spacing: (z, y, x) target spacing [mm].
    num_cases: training cases.
    num_channels: image channels.
    num_classes: classes, background included.
    ndim: 2 or 3, dimensionality of the raw images.
    validation_cases, test_cases: sizes of those splits (they set the evaluation cost on a CPU).
  """

  median_shape: tuple[int, int, int]
  spacing: tuple[float, float, float]
  num_cases: int
  num_channels: int
  num_classes: int
  ndim: int
  validation_cases: int = 0
  test_cases: int = 0

  @property
  def anisotropy(self) -> float:
    """Largest / smallest target spacing (3D data; 1 for 2D)."""
    if self.ndim == 2:
      return 1.0
    return float(max(self.spacing) / min(self.spacing))

  def to_dict(self) -> dict[str, Any]:
    return {**dataclasses.asdict(self), "anisotropy": self.anisotropy}


@dataclasses.dataclass(frozen=True)
class Devices:
  """The accelerators a run will use: kind ('cpu', 'gpu' or 'tpu'), count, memory per device [GB]."""

  kind: str
  count: int
  memory_gb: float
  description: str = ""

  def to_dict(self) -> dict[str, Any]:
    return dataclasses.asdict(self)


@dataclasses.dataclass(frozen=True)
class Network:
  """One U-Net configuration (nnU-Net's 2d or 3d_fullres).

  Attributes:
    patch_size: training patch per spatial axis [voxels].
    pool_per_axis: number of 2x poolings along each axis.
    strides: per stage, the pooling factor of each axis (stage 0: all 1).
    kernel_sizes: per stage, the convolution kernel of each axis.
    features: channels per stage.
    batch_size: samples per device.
  """

  patch_size: tuple[int, ...]
  pool_per_axis: tuple[int, ...]
  strides: tuple[tuple[int, ...], ...]
  kernel_sizes: tuple[tuple[int, ...], ...]
  features: tuple[int, ...]
  batch_size: int

  @property
  def depth(self) -> int:
    """Number of downsamplings (jaxseg's `model.depth`): stages - 1."""
    return len(self.strides) - 1

  def to_dict(self) -> dict[str, Any]:
    d = dataclasses.asdict(self)
    return {k: _lists(v) for k, v in d.items()} | {"depth": self.depth}


def _lists(value):
  if isinstance(value, (list, tuple)):
    return [_lists(v) for v in value]
  return value


# Dataset and devices.


def summarize_dataset(
  fingerprint,
  target_spacing: Sequence[float],
  *,
  num_classes: int,
  ndim: int,
  validation_cases: int = 0,
  test_cases: int = 0,
) -> DatasetSummary:
  """A `DatasetSummary` from a `preprocess.Fingerprint` and the plan's target spacing.

  The median shape is that of the cases cropped to the non-zero region and resampled as preprocessing
  resamples them (`preprocess.resampled_shape`).
  """
  from jaxseg.data import preprocess  # pylint: disable=g-import-not-at-top

  cropped = fingerprint.cropped_shapes or fingerprint.shapes
  shapes = [
    preprocess.resampled_shape(shape, spacing, target_spacing) for shape, spacing in zip(cropped, fingerprint.spacings)
  ]
  median = tuple(int(round(v)) for v in np.median(np.asarray(shapes, np.float64), axis=0))
  return DatasetSummary(
    median_shape=median,
    spacing=tuple(float(s) for s in target_spacing),
    num_cases=len(fingerprint.shapes),
    num_channels=len(fingerprint.intensity),
    num_classes=int(num_classes),
    ndim=int(ndim),
    validation_cases=int(validation_cases),
    test_cases=int(test_cases),
  )


def host_memory_gb() -> float:
  """Physical memory of this host [GB]."""
  try:
    return os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE") / 2**30
  except (ValueError, OSError, AttributeError):
    return REFERENCE_GB


def detect_devices(memory_gb: float = 0.0) -> Devices:
  """The devices JAX sees: kind, count and memory per device.

  Args:
    memory_gb: > 0 overrides the memory per device (`config.plan.memory_gb`).
  """
  import jax  # pylint: disable=g-import-not-at-top

  devices = jax.devices()
  first = devices[0]
  kind = first.platform if first.platform in ("cpu", "gpu", "tpu") else "gpu"
  memory, source = memory_gb, "config.plan.memory_gb"
  if memory <= 0:
    stats = None
    try:
      stats = first.memory_stats()
    except Exception:  # pylint: disable=broad-except  (backends without memory statistics raise)
      stats = None
    if stats and stats.get("bytes_limit"):
      memory, source = stats["bytes_limit"] / 2**30, "memory_stats"
    elif kind == "cpu":
      memory, source = host_memory_gb(), "host RAM"
    else:
      memory, source = REFERENCE_GB, "unknown, assumed nnU-Net's reference"
  name = getattr(first, "device_kind", kind)
  return Devices(
    kind=kind,
    count=len(devices),
    memory_gb=float(memory),
    description=f"{len(devices)} x {name}, {memory:.1f} GB each ({source})",
  )


# nnU-Net's topology and memory rules.


def pool_and_conv(
  spacing: Sequence[float], patch_size: Sequence[int], min_edge: int = MIN_EDGE
) -> tuple[tuple[int, ...], tuple[tuple[int, ...], ...], tuple[tuple[int, ...], ...], tuple[int, ...], tuple[int, ...]]:
  """Pooling and kernels per stage for a patch (module doc, rule 2).

  Returns:
    (pool_per_axis, strides per stage, kernel sizes per stage, patch padded to a multiple of 2**pools,
    divisibility 2**pools per axis).
  """
  dim = len(spacing)
  current_spacing = [float(s) for s in spacing]
  current_size = [float(p) for p in patch_size]
  pools = [0] * dim
  kernel = [1] * dim
  strides: list[tuple[int, ...]] = [(1,) * dim]
  kernels: list[tuple[int, ...]] = []
  while True:
    candidates = [a for a in range(dim) if current_size[a] >= 2 * min_edge]
    if not candidates:
      break
    finest = min(current_spacing[a] for a in candidates)
    candidates = [a for a in candidates if current_spacing[a] / finest < 2]
    if len(candidates) == 1 and current_size[candidates[0]] < 3 * min_edge:
      break
    if not candidates:
      break
    finest_all = min(current_spacing)
    kernel = [3 if k == 3 or current_spacing[a] / finest_all < 2 else 1 for a, k in enumerate(kernel)]
    stride = [1] * dim
    for a in candidates:
      stride[a] = 2
      pools[a] += 1
      current_spacing[a] *= 2
      current_size[a] = math.ceil(current_size[a] / 2)
    strides.append(tuple(stride))
    kernels.append(tuple(kernel))
  kernels.append((3,) * dim)
  divisible = tuple(2**p for p in pools)
  padded = tuple(int(math.ceil(p / d) * d) for p, d in zip(patch_size, divisible))
  return tuple(pools), tuple(strides), tuple(kernels), padded, divisible


def stage_features(num_stages: int, dim: int, base: int = BASE_FEATURES) -> tuple[int, ...]:
  """Channels per stage: `base * 2**stage` capped at 320 (3D) / 512 (2D)."""
  return tuple(min(base * 2**s, MAX_FEATURES[dim]) for s in range(num_stages))


def _stage_sizes(patch_size: Sequence[int], strides: Sequence[Sequence[int]]) -> list[tuple[int, ...]]:
  sizes, size = [], tuple(int(p) for p in patch_size)
  for stride in strides:
    size = tuple(s // f for s, f in zip(size, stride))
    sizes.append(size)
  return sizes


def feature_map_size(
  patch_size: Sequence[int],
  strides: Sequence[Sequence[int]],
  features: Sequence[int],
  num_classes: int,
  convs_per_stage: int = 2,
) -> int:
  """Elements of every feature map a U-Net training step keeps, per sample (nnU-Net's VRAM proxy).

  Encoder: `convs_per_stage` convolution outputs per stage. Decoder (every stage but the lowest): the
  transposed convolution's output, `convs_per_stage` convolution outputs and a deep-supervision
  segmentation map of `num_classes` channels.
  """
  sizes = _stage_sizes(patch_size, strides)
  total = 0
  for size, width in zip(sizes, features):
    total += convs_per_stage * width * math.prod(size)
  for size, width in zip(sizes[:-1], features[:-1]):
    total += (1 + convs_per_stage) * width * math.prod(size) + num_classes * math.prod(size)
  return int(total)


def train_flops(
  patch_size: Sequence[int],
  strides: Sequence[Sequence[int]],
  kernel_sizes: Sequence[Sequence[int]],
  features: Sequence[int],
  in_channels: int,
  num_classes: int,
) -> float:
  """Multiply-adds x 2 x 3 (forward and backward) of one U-Net training sample, convolutions only."""
  sizes = _stage_sizes(patch_size, strides)
  forward, channels = 0.0, in_channels
  for size, kernel, width in zip(sizes, kernel_sizes, features):
    voxels, k = math.prod(size), math.prod(kernel)
    forward += voxels * k * (channels * width + width * width)
    channels = width
  for s in range(len(sizes) - 2, -1, -1):
    voxels, k, width = math.prod(sizes[s]), math.prod(kernel_sizes[s]), features[s]
    forward += voxels * features[s + 1] * width  # Transposed convolution (kernel = stride).
    forward += voxels * k * (2 * width * width + width * width)  # Two convolutions on [skip, up].
    forward += voxels * width * num_classes  # Segmentation head.
  return 2.0 * 3.0 * forward


def estimated_gb(estimate: int, dim: int, batch: int = MIN_BATCH) -> float:
  """Device memory [GB] that `batch` samples of a network with `estimate` feature-map elements need,
  by nnU-Net's reference (REFERENCE_FEATURE_MAP elements at REFERENCE_BATCH samples = 8 GB)."""
  return REFERENCE_GB * estimate * batch / REFERENCE_BATCH[dim] / REFERENCE_FEATURE_MAP[dim]


def _network(spacing, patch, num_classes, dim, base_features) -> tuple[Network, int, tuple[int, ...]]:
  pools, strides, kernels, patch, divisible = pool_and_conv(spacing, patch)
  features = stage_features(len(strides), dim, base_features)
  estimate = feature_map_size(patch, strides, features, num_classes)
  return Network(patch, pools, strides, kernels, features, MIN_BATCH), estimate, divisible


def shrink_axis(patch: Sequence[int], median_shape: Sequence[int], divisible: Sequence[int]) -> int | None:
  """The axis nnU-Net shrinks next (largest patch / median ratio) or None when no axis can shrink."""
  ratios = [p / max(m, 1) for p, m in zip(patch, median_shape)]
  for axis in np.argsort(ratios)[::-1]:
    if patch[axis] - divisible[axis] >= min(2 * MIN_EDGE, median_shape[axis]) and patch[axis] > divisible[axis]:
      return int(axis)
  return None


def configure(
  summary: DatasetSummary, dim: int, memory_gb: float, base_features: int = BASE_FEATURES
) -> tuple[Network, dict[str, Any]]:
  """nnU-Net's configuration of `dim` (2: in-plane slices, 3: full resolution) for one device.

  Returns:
    (network, details): details hold the feature-map estimate, the memory budget and the estimated need.

  Raises:
    ConfigError: even the smallest patch does not fit `memory_gb` (with the numbers).
  """
  spacing = summary.spacing if dim == 3 else summary.spacing[1:]
  median = summary.median_shape if dim == 3 else summary.median_shape[1:]
  inverse = 1.0 / np.asarray(spacing, np.float64)
  scale = (INITIAL_PATCH_VOXELS[dim] / np.prod(inverse)) ** (1 / dim)
  patch = [min(int(round(v)), int(m)) for v, m in zip(inverse * scale, median)]
  budget = REFERENCE_FEATURE_MAP[dim] * memory_gb / REFERENCE_GB
  network, estimate, divisible = _network(spacing, patch, summary.num_classes, dim, base_features)
  while estimate * MIN_BATCH / REFERENCE_BATCH[dim] > budget:
    axis = shrink_axis(network.patch_size, median, divisible)
    if axis is None:
      raise ConfigError(
        f"plan: even the smallest patch {'x'.join(map(str, network.patch_size))} ({dim}D U-Net, "
        f"{network.features[0]} features, batch {MIN_BATCH}) needs an estimated "
        f"{estimated_gb(estimate, dim):.2f} GB per device but the device has {memory_gb:.2f} GB "
        "(nnU-Net's estimate: 8 GB per "
        f"{REFERENCE_FEATURE_MAP[dim]:.3g} feature-map elements at batch {REFERENCE_BATCH[dim]}); use a device "
        "with more memory, set config.plan.memory_gb, or disable planning (config.plan.enabled=False)"
      )
    patch = list(network.patch_size)
    # nnU-Net shrinks by the divisibility of the smaller patch's own topology.
    smaller = list(patch)
    smaller[axis] -= divisible[axis]
    _, _, _, _, smaller_divisible = pool_and_conv(spacing, smaller)
    patch[axis] -= smaller_divisible[axis]
    network, estimate, divisible = _network(spacing, patch, summary.num_classes, dim, base_features)
  batch = int(round(budget / estimate * REFERENCE_BATCH[dim]))
  dataset_voxels = float(np.prod(summary.median_shape, dtype=np.float64)) * summary.num_cases
  cover = int(round(dataset_voxels * MAX_DATASET_COVERED / np.prod(network.patch_size, dtype=np.float64)))
  batch = max(min(batch, cover), MIN_BATCH)
  network = dataclasses.replace(network, batch_size=batch)
  details = {
    "feature_map_elements": estimate,
    "memory_budget_gb": memory_gb,
    "estimated_gb": round(estimated_gb(estimate, dim, batch), 3),
  }
  return network, details


# Plans.


def _schedule(num_steps: int, evaluations: int) -> dict[str, int]:
  every = max(1, num_steps // max(1, evaluations))
  return {
    "train.num_steps": int(num_steps),
    "train.eval_every_steps": every,
    "train.checkpoint_every_steps": every,
    "train.log_every_steps": max(1, min(100, num_steps // 50)),
    "train.warmup_steps": max(1, min(250, num_steps // 20)),
  }


def _tuples(value):
  """Nested lists (plan.json) or tuples as nested tuples of ints."""
  return tuple(_tuples(v) for v in value) if isinstance(value, (list, tuple)) else int(value)


def network_values(network: Network, model_name: str, dim: int, num_devices: int) -> dict[str, Any]:
  """Config values of a network (depth, features and the per-axis topology for the U-Nets only).

  `model.pool_factors` is the network's strides without stage 0 (one tuple per downsampling) and
  `model.kernel_sizes` its kernel per stage: the U-Nets pool and convolve exactly as planned.
  """
  values = {
    "data.patch_size": tuple(int(p) for p in network.patch_size),
    "train.batch_size": int(network.batch_size * num_devices),
  }
  if model_name in UNET_MODELS:
    values |= {
      "model.depth": network.depth,
      "model.features": network.features[0],
      "model.max_features": MAX_FEATURES[dim],
      "model.pool_factors": _tuples(network.strides[1:]),
      "model.kernel_sizes": _tuples(network.kernel_sizes),
    }
  return values


def model_dims(model_name: str) -> int:
  from jaxseg import models  # pylint: disable=g-import-not-at-top

  return models.spatial_dims(model_name)


def plan_accelerator(summary: DatasetSummary, devices: Devices, model_name: str) -> dict[str, Any]:
  """nnU-Net's plan for GPUs / TPUs (module doc): both configurations, the model's one applied."""
  configurations, details = {}, {}
  dims = (2, 3) if summary.ndim == 3 and summary.median_shape[0] > 1 else (2,)
  for dim in dims:
    name = "3d_fullres" if dim == 3 else "2d"
    network, info = configure(summary, dim, devices.memory_gb)
    configurations[name] = network.to_dict() | info
    details[dim] = network
  dim = model_dims(model_name)
  if dim not in details:
    raise ConfigError(f"config.model.name: {model_name!r} is a 3D model but the dataset is 2D; choose a 2D model")
  num_steps = max(1, NNUNET_STEPS // devices.count)
  values = network_values(details[dim], model_name, dim, devices.count) | _schedule(num_steps, EVALUATIONS_PER_RUN)
  return {
    "configurations": configurations,
    "applied_configuration": "3d_fullres" if dim == 3 else "2d",
    "values": values,
    "reason": f"nnU-Net's rules for {devices.description or devices.kind}: {num_steps} steps "
    f"(1000 epochs x 250 iterations / {devices.count} device(s))",
  }


@dataclasses.dataclass(frozen=True)
class Candidate:
  """A network a CPU plan may train, and its cost."""

  network: Network
  dim: int
  flops: float  # Per training step (the whole batch).

  def describe(self) -> str:
    return (
      f"{self.dim}D U-Net patch {'x'.join(map(str, self.network.patch_size))}, batch "
      f"{self.network.batch_size}, {self.network.features[0]} features, depth {self.network.depth}"
    )


def _candidate(summary: DatasetSummary, dim: int, patch: Sequence[int], batch: int, base: int) -> Candidate:
  spacing = summary.spacing if dim == 3 else summary.spacing[1:]
  network, _, _ = _network(spacing, patch, summary.num_classes, dim, base)
  network = dataclasses.replace(network, batch_size=batch)
  flops = batch * train_flops(
    network.patch_size,
    network.strides,
    network.kernel_sizes,
    network.features,
    summary.num_channels,
    summary.num_classes,
  )
  return Candidate(network, dim, flops)


def cheaper(summary: DatasetSummary, candidate: Candidate) -> Candidate | None:
  """The next cheaper CPU candidate: features 32 -> 16, batch halves down to 2, features 16 -> 8, then the
  patch shrinks as nnU-Net shrinks it (rule 3); None after the smallest patch."""
  network, dim = candidate.network, candidate.dim
  base, batch, patch = network.features[0], network.batch_size, list(network.patch_size)
  if base > 16:
    return _candidate(summary, dim, patch, batch, 16)
  if batch > MIN_BATCH:
    return _candidate(summary, dim, patch, max(MIN_BATCH, batch // 2), base)
  if base > 8:
    return _candidate(summary, dim, patch, batch, 8)
  median = summary.median_shape if dim == 3 else summary.median_shape[1:]
  spacing = summary.spacing if dim == 3 else summary.spacing[1:]
  _, _, _, _, divisible = pool_and_conv(spacing, patch)
  axis = shrink_axis(patch, median, divisible)
  if axis is None:
    return None
  patch[axis] -= divisible[axis]
  return _candidate(summary, dim, patch, batch, base)


def cpu_ladder(summary: DatasetSummary, start: Candidate, max_length: int = 64) -> list[Candidate]:
  """CPU candidates from nnU-Net's configuration down to the cheapest, ever cheaper."""
  ladder = [start]
  while len(ladder) < max_length:
    nxt = cheaper(summary, ladder[-1])
    if nxt is None:
      break
    ladder.append(nxt)
  return ladder


def windows_per_case(summary: DatasetSummary, patch: Sequence[int], step_fraction: float = 0.5) -> int:
  """Sliding windows of one median case (a 2D model predicts every slice)."""
  shape = summary.median_shape if len(patch) == 3 else summary.median_shape[1:]
  count = 1
  for size, window in zip(shape, patch):
    count *= 1 if size <= window else int(math.ceil((size - window) / (window * step_fraction))) + 1
  if len(patch) == 2:
    count *= summary.median_shape[0]
  return count


def plan_cpu(
  summary: DatasetSummary,
  devices: Devices,
  model_name: str,
  budget_s: float,
  measure: Callable[[Candidate], float],
  *,
  step_fraction: float = 0.5,
) -> dict[str, Any]:
  """A run that finishes in `budget_s` seconds on this CPU (module doc).

  Args:
    summary: the dataset.
    devices: the CPU devices (memory: host RAM).
    model_name: the configured model (its dimension chooses 2D or 3D).
    budget_s: seconds for training, periodic validation and the final evaluation.
    measure: seconds per training step of a candidate, or (seconds per step, seconds that compiling and the
      first step took); tests pass a stub. The run compiles its train step and its prediction function
      again: COMPILE_FACTOR x the measured compile time is set aside for that.
    step_fraction: the evaluation's window step (its cost counts; test-time mirroring is planned off).

  Raises:
    ConfigError: not even `MIN_FEASIBLE_STEPS` steps of the cheapest network fit the budget, or the
      smallest patch does not fit in memory.
  """
  dim = model_dims(model_name)
  if dim == 3 and (summary.ndim == 2 or summary.median_shape[0] == 1):
    raise ConfigError(f"config.model.name: {model_name!r} is a 3D model but the dataset is 2D; choose a 2D model")
  start, info = configure(summary, dim, min(devices.memory_gb, REFERENCE_GB))
  ladder = cpu_ladder(summary, _candidate(summary, dim, start.patch_size, start.batch_size, start.features[0]))
  measured: list[dict[str, Any]] = []
  times: dict[int, float] = {}
  compile_times: dict[int, float] = {}
  spent = [0.0]  # Seconds the measurements took (compilation included): part of the budget.

  def nearest(i: int) -> int:
    return min(times, key=lambda k: abs(math.log(ladder[k].flops / ladder[i].flops)))  # Closest measured cost.

  def costs(i: int) -> tuple[int, int, float, float]:
    """(steps, validation passes, their seconds, final evaluation seconds) of candidate i within the budget."""
    cand, step_s = ladder[i], predicted(i)
    compile_s = COMPILE_FACTOR * compile_times[nearest(i)]
    window_s = step_s / cand.network.batch_size * FORWARD_FRACTION + WINDOW_OVERHEAD_S
    case_s = windows_per_case(summary, cand.network.patch_size, step_fraction) * window_s
    validation_s = summary.validation_cases * case_s
    final_s = FINAL_EVAL_OVERHEAD * (summary.validation_cases + summary.test_cases) * case_s
    evaluations = CPU_EVALUATIONS if validation_s > 0 else 0
    while evaluations > 1 and evaluations * validation_s > MAX_CPU_EVAL_FRACTION * budget_s:
      evaluations -= 1
    train_s = budget_s - spent[0] - compile_s - final_s - evaluations * validation_s
    return (int(train_s // step_s) if train_s > 0 else 0, evaluations, evaluations * validation_s, final_s + compile_s)

  def measure_at(i: int) -> float:
    # CPU "devices" (--xla_force_host_platform_device_count) share the host's cores: a step of the global
    # batch (per-device batch x count) takes about count times the one-device measurement.
    start = time.perf_counter()
    result = measure(ladder[i])
    seconds, compile_s = result if isinstance(result, tuple) else (result, 0.0)
    seconds = float(seconds) * devices.count
    spent[0] += time.perf_counter() - start
    compile_times[i] = float(compile_s)
    measured.append(
      {
        "candidate": ladder[i].describe(),
        "seconds_per_step": round(seconds, 4),
        "gflops_per_step": round(ladder[i].flops / 1e9, 3),
      }
    )
    times[i] = seconds
    return seconds

  def predicted(i: int) -> float:
    if i in times:
      return times[i]
    j = nearest(i)
    return times[j] * ladder[i].flops / ladder[j].flops

  # A cheap probe first (compiling and running nnU-Net's GPU network on a CPU can take minutes).
  probe = next((i for i, c in enumerate(ladder) if c.flops <= PROBE_FLOPS), len(ladder) - 1)
  measure_at(probe)
  choice = None
  while True:
    fitting = [i for i in range(len(ladder)) if costs(i)[0] >= MIN_CPU_STEPS]
    # None fits: the most training data (steps x batch x patch voxels); evaluation favours large patches.
    i = (
      fitting[0]
      if fitting
      else max(
        range(len(ladder)),
        key=lambda k: (
          costs(k)[0] * ladder[k].network.batch_size * math.prod(ladder[k].network.patch_size),
          -ladder[k].flops,
        ),
      )
    )
    if i in times or len(measured) >= MAX_MEASUREMENTS:
      choice = i
      break
    measure_at(i)
  candidate, step_s = ladder[choice], predicted(choice)
  steps, evaluations, eval_s, final_s = costs(choice)
  if steps < MIN_FEASIBLE_STEPS:
    cheapest = ladder[-1]
    steps, _, eval_s, final_s = costs(len(ladder) - 1)
    raise ConfigError(
      f"plan: no network trains {MIN_FEASIBLE_STEPS} steps in the budget on this CPU: the cheapest "
      f"({cheapest.describe()}) takes about {predicted(len(ladder) - 1):.3f} s per step, and "
      f"config.plan.time_budget_min={budget_s / 60:g} leaves {steps} training steps after "
      f"{eval_s + final_s:.0f} s of evaluation ({summary.validation_cases} validation and {summary.test_cases} "
      "test cases); raise config.plan.time_budget_min or disable planning (config.plan.enabled=False)"
    )
  values = network_values(candidate.network, model_name, dim, devices.count) | _schedule(steps, max(1, evaluations))
  values["eval.mirror_axes"] = ()  # 2**axes forward passes per window: training time is worth more on a CPU.
  train_min = steps * step_s / 60
  how = "measured" if choice in times else "predicted from the measurements by FLOPs:"
  reason = (
    f"CPU plan for a {budget_s / 60:g}-minute budget (config.plan.time_budget_min): {candidate.describe()}, "
    f"{how} {step_s:.3f} s/step -> {steps} steps ({train_min:.1f} min) + {evaluations} validation "
    f"passes, the final evaluation and compiling (about {(eval_s + final_s) / 60:.1f} min) + "
    f"{len(measured)} step-time measurements ({spent[0] / 60:.1f} min)"
  )
  return {
    "configurations": {
      ("3d_fullres" if dim == 3 else "2d") + "_nnunet_8gb": start.to_dict() | info,
      "cpu": candidate.network.to_dict() | {"seconds_per_step": round(step_s, 4)},
    },
    "applied_configuration": "cpu",
    "values": values,
    "measurements": measured,
    "reason": reason,
  }


def make_plan(
  summary: DatasetSummary,
  devices: Devices,
  model_name: str,
  *,
  time_budget_min: float = 15.0,
  measure: Callable[[Candidate], float] | None = None,
  step_fraction: float = 0.5,
) -> dict[str, Any]:
  """The plan (JSON-serialisable): `values` maps config keys to planned values; `reason` is one line."""
  if devices.kind == "cpu":
    if measure is None:
      raise ValueError("a CPU plan needs a step-time measurement")
    body = plan_cpu(summary, devices, model_name, time_budget_min * 60.0, measure, step_fraction=step_fraction)
  else:
    body = plan_accelerator(summary, devices, model_name)
  return {
    "dataset": summary.to_dict(),
    "devices": devices.to_dict(),
    "model": model_name,
    "time_budget_min": time_budget_min if devices.kind == "cpu" else None,
    **body,
  }


def _get(config, key: str):
  node = config
  for part in key.split("."):
    node = node[part]
  return node


def _set(config, key: str, value) -> None:
  *parents, last = key.split(".")
  node = config
  for part in parents:
    node = node[part]
  node[last] = value


def _json(value):
  return [_json(v) for v in value] if isinstance(value, (list, tuple)) else value


# Planned per-level topology keys and how many levels each has for a U-Net of depth d.
_LEVEL_KEYS = {"model.pool_factors": lambda depth: depth, "model.kernel_sizes": lambda depth: depth + 1}


def apply_plan(config, plan: Mapping[str, Any], fixed: Sequence[str] = ()):
  """Writes the plan's values into a copy of `config`; keys in `fixed` keep their value (an override wins).

  An overridden `model.depth` keeps the plan's first `depth` pooling factors and `depth + 1` kernel sizes
  (recorded as 'adjusted'); a depth beyond the plan's poolings is refused unless `model.pool_factors` is
  overridden too. The result's patch must be divisible by the product of its pooling factors per axis.

  Returns:
    (config, record): the new locked config and plan.json's record of every planned key:
    {key: {'planned': v, 'used': v, 'overridden': bool[, 'adjusted': why]}}.

  Raises:
    ConfigError: the overrides and the planned topology do not fit together (names the keys and numbers).
  """
  import ml_collections  # pylint: disable=g-import-not-at-top

  out = ml_collections.ConfigDict(config.to_dict())
  out.lock()
  fixed = set(fixed)
  record = {}
  for key, value in plan["values"].items():
    planned = _json(value)
    if key in fixed:
      record[key] = {"planned": planned, "used": _json(_get(out, key)), "overridden": True}
      continue
    if key in _LEVEL_KEYS and "model.depth" in fixed:
      depth, levels = out.model.depth, _LEVEL_KEYS[key](out.model.depth)
      if levels > len(value):
        raise ConfigError(
          f"config.model.depth={depth} (command line) is deeper than the plan's {len(value)} levels of "
          f"config.{key} (patch {tuple(_get(out, 'data.patch_size'))}); use config.model.depth <= "
          f"{len(value) - levels + depth} or also set config.model.pool_factors and config.model.kernel_sizes "
          "(() = 2 and 3 on every axis)"
        )
      value = value[:levels]
      record[key] = {
        "planned": planned,
        "used": _json(value),
        "overridden": False,
        "adjusted": f"first {levels} levels, for config.model.depth={depth} (override)",
      }
      _set(out, key, _tuples(value))
      continue
    _set(out, key, _tuples(value) if key in _LEVEL_KEYS else (tuple(value) if isinstance(value, list) else value))
    record[key] = {"planned": planned, "used": planned, "overridden": False}
  if any(key in plan["values"] for key in _LEVEL_KEYS):
    from jaxseg import models  # pylint: disable=g-import-not-at-top

    models.check_patch_size(out.model, out.data.patch_size)
  return out, record


def format_plan(plan: Mapping[str, Any], record: Mapping[str, Any] | None = None) -> str:
  """A human-readable rendering of a plan for `--mode=plan`."""
  d = plan["dataset"]
  lines = [
    f"Dataset: {d['num_cases']} training cases, {d['num_channels']} channel(s), {d['num_classes']} classes, "
    f"{d['ndim']}D; median shape {tuple(d['median_shape'])} voxels at spacing "
    f"{tuple(round(s, 4) for s in d['spacing'])} mm (anisotropy {d['anisotropy']:.2f})",
    f"Devices: {plan['devices']['description'] or plan['devices']['kind']}",
    f"Model: {plan['model']} (configuration {plan['applied_configuration']})",
  ]
  for name, conf in plan["configurations"].items():
    strides = ", ".join("x".join(map(str, s)) for s in conf["strides"][1:])
    lines.append(
      f"  {name}: patch {tuple(conf['patch_size'])}, batch/device {conf['batch_size']}, "
      f"pooling per axis {tuple(conf['pool_per_axis'])} (per stage {strides}), "
      f"features {tuple(conf['features'])}"
    )
  lines.append(plan["reason"])
  record = record or {
    k: {"planned": _json(v), "used": _json(v), "overridden": False} for k, v in plan["values"].items()
  }
  for key, r in record.items():
    note = f"   (override; planned {r['planned']})" if r["overridden"] else ""
    if r.get("adjusted"):
      note = f"   ({r['adjusted']}; planned {r['planned']})"
    lines.append(f"  config.{key} = {r['used']}{note}")
  return "\n".join(lines)

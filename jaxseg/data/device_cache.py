"""The prepared training split resident on the devices; the train step samples its own patches.

With `config.data.device_cache` (and `config.data.device_augment`) no host
pipeline runs during training: `build` decodes every training case once,
stacks them (padded to the largest case; each case keeps its own extent, and
outside it the image reads the case minimum, the label 0, exactly as on the
host) and places them replicated on the mesh. `make_batch_fn` returns the
jittable `batch_fn(cache, step)` that draws the global batch of `step`:

  - case and centre as on the host (`sampling.CaseIndex.choose`,
    `sampling.choose_center`): ceil(B x foreground_fraction) rows of every
    batch are centred on a foreground voxel of a case holding foreground (with
    `class_balanced`, a class first), from the same precomputed class
    locations (`sampling.class_locations`); the other rows take any case
    and a centre that keeps the patch inside the volume where it fits;
  - then `device_augment.transform_example` resamples the patch from the
    case and augments it.

Row i of step s draws from `fold_in(fold_in(augment_key(seed), s), i)`, so a
batch depends on (seed, step) only, not on the number of devices or hosts.
The random streams differ from the host pipeline's numpy ones: same
distributions, other draws.
"""

from __future__ import annotations

import dataclasses
import os
from typing import Any, Callable, Sequence

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from jaxseg.data import augment as augment_lib
from jaxseg.data import device_augment as da
from jaxseg.data import sampling
from jaxseg.errors import ConfigError, DataError

# Share of a device's free memory the cache may take (the rest is for the model, activations, XLA).
FIT_FRACTION = 0.5


@dataclasses.dataclass(frozen=True)
class Layout:
  """Static facts about a cache (hashable: part of the jitted step).

  Attributes:
    num_cases: cases in the split.
    classes: foreground class values, in the order of the `[N, K]` tables.
    patch_size: `config.data.patch_size`.
  """

  num_cases: int
  classes: tuple[int, ...]
  patch_size: tuple[int, ...]


def cache_arrays(cases: Sequence[sampling.Case]) -> dict[str, np.ndarray]:
  """Host arrays of the cache.

  Returns:
    `image` `[N, Z, Y, X, C]` float32 and `label` `[N, Z, Y, X]` uint8 (every
    case padded to the largest extent), `shape` `[N, 3]` int32 (each case's own
    extent), `pad_value` `[N, C]` float32, `locations` `[T, 3]` int32 (every
    case's class locations, concatenated), `loc_start` / `loc_count` `[N, K]`
    int32 (where case n's locations of class K are), `class_cases` `[K, N]`
    int32 (the cases holding class k first, `class_case_count` `[K]` of them),
    `fg_cases` `[N]` int32 (the cases holding any foreground first,
    `fg_count` of them).
  """
  classes = sorted({value for case in cases for value in case.locations})
  n, k = len(cases), len(classes)
  extent = np.max([case.image.shape[:3] for case in cases], axis=0)
  channels = cases[0].image.shape[-1]
  image = np.empty((n, *extent, channels), np.float32)
  label = np.zeros((n, *extent), np.uint8)
  loc_start, loc_count = np.zeros((n, k), np.int32), np.zeros((n, k), np.int32)
  locations, total = [], 0
  for i, case in enumerate(cases):
    z, y, x = case.image.shape[:3]
    image[i] = case.pad_value
    image[i, :z, :y, :x] = case.image
    if case.label is not None:
      label[i, :z, :y, :x] = case.label
    for j, value in enumerate(classes):
      coords = case.locations.get(value, np.zeros((0, 3), np.int32))
      loc_start[i, j], loc_count[i, j] = total, len(coords)
      locations.append(coords.astype(np.int32))
      total += len(coords)
  holding = loc_count > 0
  class_cases = np.zeros((k, n), np.int32)
  for j in range(k):
    members = np.nonzero(holding[:, j])[0]
    class_cases[j, : len(members)] = members
  foreground = np.nonzero(holding.any(axis=1))[0]
  fg_cases = np.zeros(n, np.int32)
  fg_cases[: len(foreground)] = foreground
  return {
    "image": image,
    "label": label,
    "shape": np.asarray([case.image.shape[:3] for case in cases], np.int32),
    "pad_value": np.stack([case.pad_value for case in cases]).astype(np.float32),
    "locations": np.concatenate(locations + [np.zeros((1, 3), np.int32)]),
    "loc_start": loc_start,
    "loc_count": loc_count,
    "class_cases": class_cases,
    "class_case_count": holding.sum(axis=0).astype(np.int32),
    "fg_cases": fg_cases,
    "fg_count": np.int32(len(foreground)),
  }


def device_memory(device: jax.Device) -> tuple[int, str]:
  """(free bytes, description) of `device`; host RAM for CPU devices."""
  stats = device.memory_stats() if hasattr(device, "memory_stats") else None
  if stats and "bytes_limit" in stats:
    free = int(stats["bytes_limit"]) - int(stats.get("bytes_in_use", 0))
    return free, f"{free / 2**30:.2f} GiB free of {int(stats['bytes_limit']) / 2**30:.2f} GiB on {device}"
  try:
    free = os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
  except (ValueError, OSError, AttributeError):
    free = 0
  return free, f"{free / 2**30:.2f} GiB of free host memory for {device}"


def check_fits(arrays: dict[str, np.ndarray], num_cases: int, device: jax.Device) -> None:
  """Raises ConfigError naming the dataset size and the device memory when the cache does not fit."""
  size = sum(np.asarray(v).nbytes for v in arrays.values())
  free, described = device_memory(device)
  if size > FIT_FRACTION * free:
    raise ConfigError(
      f"config.data.device_cache: the training split ({num_cases} cases, {size / 2**30:.2f} GiB as "
      f"{tuple(arrays['image'].shape)} float32 + labels) does not fit in device memory ({described}; the cache "
      f"may take {FIT_FRACTION:.0%}); set config.data.device_cache=False to sample patches on the host "
      "(device_augment still augments on the device)"
    )


def build(source, mesh: jax.sharding.Mesh, patch_size: Sequence[int]) -> tuple[dict[str, jax.Array], Layout]:
  """Decodes every case of `source` (a `pipeline.CaseSource`) and places the cache replicated on `mesh`."""
  if len(source) == 0:
    raise DataError("the training split is empty: no case to train on")
  cases = [source[i] for i in range(len(source))]
  if any(case.label is None for case in cases):
    raise DataError(f"the {source.split} split has unlabelled cases; they cannot be trained on")
  arrays = cache_arrays(cases)
  check_fits(arrays, len(cases), mesh.devices.flat[0])
  replicated = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())
  cache = {
    k: jax.make_array_from_callback(np.shape(v), replicated, lambda index, v=v: np.asarray(v)[index])
    for k, v in arrays.items()
  }
  classes = tuple(sorted({value for case in cases for value in case.locations}))
  return cache, Layout(len(cases), classes, tuple(int(p) for p in patch_size))


def _randint(key: jax.Array, count: jax.Array) -> jax.Array:
  """Uniform integer in [0, count) for a traced count >= 1."""
  return jnp.minimum(jnp.floor(jax.random.uniform(key) * count).astype(jnp.int32), jnp.maximum(count - 1, 0))


def choose_case(
  key: jax.Array, cache: dict[str, jax.Array], layout: Layout, force: jax.Array, class_balanced: bool
) -> tuple[jax.Array, jax.Array]:
  """(case index, class slot or -1) as `sampling.CaseIndex.choose`; `force` is a traced bool."""
  k_class, k_case = jax.random.split(key)
  any_case = _randint(k_case, layout.num_cases)
  if not layout.classes:
    return any_case, jnp.int32(-1)
  if class_balanced:
    slot = _randint(k_class, len(layout.classes))
    case = cache["class_cases"][slot, _randint(k_case, cache["class_case_count"][slot])]
  else:
    slot = jnp.int32(-1)
    case = cache["fg_cases"][_randint(k_case, cache["fg_count"])]
  forced = force & (cache["fg_count"] > 0)
  return jnp.where(forced, case, any_case), jnp.where(forced, slot, -1)


def choose_center(
  key: jax.Array,
  cache: dict[str, jax.Array],
  case: jax.Array,
  slot: jax.Array,
  patch_size: Sequence[int],
  force: jax.Array,
) -> jax.Array:
  """The (z, y, x) centre voxel, float32, as `sampling.choose_center`; `force` is a traced bool."""
  k_class, k_voxel, k_uniform = jax.random.split(key, 3)
  shape = cache["shape"][case].astype(jnp.float32)
  full = jnp.asarray([1] * (3 - len(patch_size)) + list(patch_size), jnp.float32)
  half = full / 2
  low, high = half, shape - half
  uniform = jax.random.uniform(k_uniform, (3,))
  center = jnp.floor(jnp.where(high > low, low + uniform * (high - low), shape / 2))
  if len(patch_size) == 2:
    center = center.at[0].set(jnp.floor(uniform[0] * shape[0]))
  if cache["loc_count"].shape[1] == 0:
    return center
  counts = cache["loc_count"][case]
  present = counts > 0
  # The asked class if the case holds it, else one of the case's classes uniformly.
  pick = jax.random.categorical(k_class, jnp.where(present, 0.0, -jnp.inf))
  slot = jnp.where((slot >= 0) & present[jnp.maximum(slot, 0)], slot, pick)
  row = cache["loc_start"][case, slot] + _randint(k_voxel, counts[slot])
  voxel = cache["locations"][row].astype(jnp.float32)
  return jnp.where(force & jnp.any(present), voxel, center)


def sample_batch(
  cache: dict[str, jax.Array],
  step: jax.Array,
  *,
  seed: int,
  layout: Layout,
  aug: augment_lib.Augmentation,
  batch_size: int,
  foreground_fraction: float,
  class_balanced: bool,
) -> dict[str, jax.Array]:
  """The global batch of `step`: `image` `[B, *patch, C]` float32, `label` `[B, *patch]` int32."""
  patch = layout.patch_size
  ndim = len(patch)
  channels = cache["image"].shape[-1]
  forced = np.array([sampling.is_forced_foreground(i, batch_size, foreground_fraction) for i in range(batch_size)])
  keys = da.example_keys(da.augment_key(seed), step, batch_size)

  def one(key, force):
    sample_key = jax.random.fold_in(key, da._STREAMS["sample"])  # pylint: disable=protected-access
    k_case, k_center = jax.random.split(sample_key)
    case, slot = choose_case(k_case, cache, layout, force, class_balanced)
    center = choose_center(k_center, cache, case, slot, patch, force)
    shape = cache["shape"][case]
    lead = (case,) if ndim == 3 else (case, center[0].astype(jnp.int32))

    def sampler(coords):
      return (
        da.interpolate_linear(cache["image"], lead, coords, shape[3 - ndim :], cache["pad_value"][case]),
        da.interpolate_nearest(cache["label"], lead, coords, shape[3 - ndim :]),
      )

    return da.transform_example(key, aug, patch, center[3 - ndim :], sampler, channels)

  image, label = jax.vmap(one)(keys, jnp.asarray(forced))
  return {"image": image, "label": label}


def make_batch_fn(
  config: ml_collections.ConfigDict, layout: Layout, sharding: jax.sharding.Sharding | None = None
) -> Callable[[dict[str, jax.Array], jax.Array], dict[str, jax.Array]]:
  """`batch_fn(cache, step) -> batch` for `steps.make_train_step`, the batch constrained to `sharding`."""
  data = config.data
  aug = augment_lib.Augmentation.from_config(data.augment, len(layout.patch_size))

  def batch_fn(cache, step):
    batch = sample_batch(
      cache,
      step,
      seed=int(config.seed),
      layout=layout,
      aug=aug,
      batch_size=int(config.train.batch_size),
      foreground_fraction=float(data.foreground_fraction),
      class_balanced=bool(data.class_balanced),
    )
    return jax.lax.with_sharding_constraint(batch, sharding) if sharding is not None else batch

  return batch_fn


def cache_sharding(cache: dict[str, Any]) -> Any:
  """The shardings the jitted step takes the cache with (as placed by `build`)."""
  return jax.tree.map(lambda x: x.sharding, cache)

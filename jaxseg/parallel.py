"""Device mesh, shardings and host-to-global array assembly.

jaxseg is data parallel: the mesh has one axis, `data`, over which batches are
split; the train state is replicated. The same jitted code runs on one CPU, on
every GPU of a host and on every chip of a multi-host TPU slice.
"""

from __future__ import annotations

import os
from typing import Any

import jax
import ml_collections
import numpy as np
from absl import logging
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from jaxseg.errors import ConfigError

DATA_AXIS = "data"


def initialize_distributed() -> None:
  """Calls `jax.distributed.initialize()` on multi-process launches.

  A launch is multi-process when the cluster environment says so (SLURM,
  Cloud TPU, Kubernetes/Open MPI via JAX's auto-detection) or when
  `JAX_COORDINATOR_ADDRESS`, `JAX_NUM_PROCESSES` and `JAX_PROCESS_ID` are set
  (the launchers under `launch/` do that). Single-process runs skip it.
  """
  address = os.environ.get("JAX_COORDINATOR_ADDRESS")
  if address:
    jax.distributed.initialize(
        coordinator_address=address,
        num_processes=int(os.environ["JAX_NUM_PROCESSES"]),
        process_id=int(os.environ["JAX_PROCESS_ID"]))
  elif int(os.environ.get("SLURM_NTASKS", "1")) > 1 or "TPU_WORKER_HOSTNAMES" in os.environ:
    jax.distributed.initialize()
  else:
    return
  logging.info("jax.distributed: process %d of %d, %d local / %d global devices",
               jax.process_index(), jax.process_count(), jax.local_device_count(),
               jax.device_count())


def create_mesh(mesh_config: ml_collections.ConfigDict) -> Mesh:
  """A 1D mesh over `mesh_config.data` devices (-1 = all devices)."""
  devices = jax.devices()
  count = len(devices) if mesh_config.data == -1 else mesh_config.data
  if count > len(devices):
    raise ConfigError(f"config.mesh.data: asks for {count} devices but only {len(devices)} are visible")
  return Mesh(np.asarray(devices[:count]), (DATA_AXIS,))


def replicated(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, P())


def batch_sharding(mesh: Mesh) -> NamedSharding:
  """Leading (batch) axis split over the data axis, the rest replicated."""
  return NamedSharding(mesh, P(DATA_AXIS))


def check_batch_size(global_batch_size: int, mesh: Mesh, key: str = "train.batch_size") -> int:
  """Returns the per-process batch size; the global one must split evenly."""
  devices = mesh.devices.size
  if global_batch_size % devices:
    raise ConfigError(f"config.{key}={global_batch_size} is not divisible by the {devices} devices of the mesh")
  return global_batch_size // jax.process_count()


def global_batch(local_batch: dict[str, np.ndarray], mesh: Mesh) -> dict[str, jax.Array]:
  """Assembles each process's slice of the batch into global, sharded arrays."""
  sharding = batch_sharding(mesh)
  return jax.tree.map(lambda x: jax.make_array_from_process_local_data(sharding, x), local_batch)


def replicate_tree(tree: Any, mesh: Mesh) -> Any:
  """Places a host pytree (the same on every process) replicated on the mesh."""
  return jax.device_put(tree, replicated(mesh))

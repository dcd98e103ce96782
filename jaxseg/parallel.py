"""Multi-process start-up, the device mesh, shardings and host-to-global array assembly.

One process per host (or per GPU); every process runs the same jitted program
over a `jax.sharding.Mesh` of ALL global devices, built by `jax.make_mesh`
(topology-aware device order) with two axes:

  data   data parallelism: the rows of every batch are split over it.
  fsdp   (`config.mesh.fsdp`, default 1) fully sharded data parallelism: batch
         rows are split over it too, and every large array of the train state
         (parameters, optimiser moments) is split along one of its axes over it
         (`state_shardings`), so a 3D model whose state does not fit on one
         device is spread over `fsdp` devices. XLA gathers a layer's weights
         before use and reduce-scatters its gradients.

With fsdp = 1 the state is replicated and the step is the classic data-parallel
one. The same code runs on one CPU, every GPU of a host, and a multi-host slice.

Multi-process launches (`initialize_distributed`) are recognised from the
environment, in this order:

  explicit     JAXSEG_COORDINATOR=host:port, JAXSEG_NUM_PROCESSES=N and
               JAXSEG_PROCESS_ID=i (or JAX_COORDINATOR_ADDRESS / JAX_NUM_PROCESSES /
               JAX_PROCESS_ID); `launch/local_multiprocess.sh` sets them.
  kubernetes   JOB_COMPLETION_INDEX (indexed Job / JobSet) gives the process id;
               JAXSEG_NUM_PROCESSES is required; the coordinator is JAXSEG_COORDINATOR,
               or for a JobSet `<JOBSET_NAME>-<REPLICATED_JOB_NAME>-0-0.<JOBSET_NAME>:<port>`
               (port JAXSEG_COORDINATOR_PORT, default 1234).
  slurm        inside `srun` with SLURM_NTASKS > 1 (JAX reads SLURM's variables;
               one process per GPU by default, JAX_LOCAL_DEVICE_IDS for per node).
  tpu          TPU_WORKER_HOSTNAMES / TPU_PROCESS_ADDRESSES naming more than one worker,
               or JAXSEG_DISTRIBUTED=auto (`launch/tpu/train.sh`): JAX's Cloud TPU detection.

JAXSEG_DISTRIBUTED=off skips all of it. JAXSEG_INIT_TIMEOUT (seconds, default 300)
bounds the start-up: a process that cannot reach the coordinator, or a coordinator
that does not hear from every process, ends with one line naming the address
instead of hanging.
"""

from __future__ import annotations

import dataclasses
import hashlib
import math
import os
import pickle
import socket
import sys
import threading
import time
from typing import Any, Mapping, Sequence

import jax
import ml_collections
import numpy as np
from absl import logging
from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec as P

from jaxseg.errors import ConfigError, JaxsegError

DATA_AXIS = "data"
FSDP_AXIS = "fsdp"
BATCH_AXES = (DATA_AXIS, FSDP_AXIS)  # Batch rows are split over both axes.
DEFAULT_INIT_TIMEOUT_S = 300
DEFAULT_K8S_PORT = 1234


class DistributedError(JaxsegError):
  """A multi-process launch is misconfigured, or its processes cannot meet or disagree."""


@dataclasses.dataclass(frozen=True)
class Launch:
  """How this process joins a multi-process run.

  Attributes:
    method: 'explicit', 'kubernetes', 'slurm' or 'tpu'.
    coordinator: 'host:port' of process 0's coordinator (None: JAX finds it).
    num_processes: number of processes (None: JAX finds it).
    process_id: this process's index (None: JAX finds it).
    timeout_s: start-up time limit [s].
    source: the environment variable(s) the coordinator came from (for messages).
  """

  method: str
  coordinator: str | None
  num_processes: int | None
  process_id: int | None
  timeout_s: int
  source: str = ""


def _int_env(env: Mapping[str, str], names: tuple[str, ...], what: str) -> tuple[int | None, str]:
  for name in names:
    if env.get(name, "") != "":
      try:
        return int(env[name]), name
      except ValueError:
        raise DistributedError(f"{name}={env[name]!r} is not an integer ({what})") from None
  return None, ""


def _check_coordinator(address: str, source: str) -> str:
  host, _, port = address.rpartition(":")
  if not host or not port.isdigit() or not 0 < int(port) < 65536:
    raise DistributedError(f"{source}={address!r} is not host:port (e.g. 10.0.0.1:1234)")
  return address


def detect_launch(env: Mapping[str, str] | None = None) -> Launch | None:
  """The multi-process launch described by the environment, or None for a single process.

  Raises:
    DistributedError: a half-configured launch (a variable missing or malformed), naming it.
  """
  env = os.environ if env is None else env
  mode = env.get("JAXSEG_DISTRIBUTED", "").lower()
  if mode in ("off", "0", "false", "no"):
    return None
  if mode not in ("", "auto", "on", "1", "true", "yes"):
    raise DistributedError(f"JAXSEG_DISTRIBUTED={env['JAXSEG_DISTRIBUTED']!r}: use 'auto' or 'off'")
  timeout, _ = _int_env(env, ("JAXSEG_INIT_TIMEOUT",), "seconds")
  timeout = DEFAULT_INIT_TIMEOUT_S if timeout is None else timeout
  if timeout < 1:
    raise DistributedError(f"JAXSEG_INIT_TIMEOUT={timeout} must be >= 1 second")

  coordinator, coordinator_var = None, ""
  for name in ("JAXSEG_COORDINATOR", "JAX_COORDINATOR_ADDRESS"):
    if env.get(name):
      coordinator, coordinator_var = _check_coordinator(env[name], name), name
      break
  num, num_var = _int_env(env, ("JAXSEG_NUM_PROCESSES", "JAX_NUM_PROCESSES"), "number of processes")
  pid, pid_var = _int_env(env, ("JAXSEG_PROCESS_ID", "JAX_PROCESS_ID"), "process id")
  method = "explicit"
  if "JOB_COMPLETION_INDEX" in env and (coordinator or num is not None or env.get("JOBSET_NAME")):
    method = "kubernetes"
    if pid is None:
      pid, pid_var = _int_env(env, ("JOB_COMPLETION_INDEX",), "Kubernetes completion index")
    if coordinator is None and env.get("JOBSET_NAME") and env.get("REPLICATED_JOB_NAME"):
      port, _ = _int_env(env, ("JAXSEG_COORDINATOR_PORT",), "port")
      jobset = env["JOBSET_NAME"]
      coordinator = f"{jobset}-{env['REPLICATED_JOB_NAME']}-0-0.{jobset}:{port or DEFAULT_K8S_PORT}"
      coordinator_var = "JOBSET_NAME/REPLICATED_JOB_NAME"
    if coordinator is None:
      raise DistributedError(
        "Kubernetes indexed job (JOB_COMPLETION_INDEX is set) without a coordinator: "
        "set JAXSEG_COORDINATOR=<pod 0 host>:<port> (launch/k8s/jobset.yaml does)"
      )
  if coordinator or method == "kubernetes":
    if num is None:
      raise DistributedError(
        f"{coordinator_var} is set but JAXSEG_NUM_PROCESSES is not: set it to the number of processes"
      )
    if pid is None:
      raise DistributedError(
        f"{coordinator_var} is set but JAXSEG_PROCESS_ID is not: set it to this process's index 0 .. N-1"
      )
    if num < 1 or not 0 <= pid < num:
      raise DistributedError(f"{pid_var}={pid} is not a process index 0 .. {num - 1} ({num_var}={num})")
    if num == 1:
      return None
    return Launch(method, coordinator, num, pid, timeout, coordinator_var)
  if num is not None or pid is not None:
    raise DistributedError(
      f"{num_var or pid_var} is set but JAXSEG_COORDINATOR is not: set it to host:port of process 0"
    )

  slurm_vars = ("SLURM_JOB_ID", "SLURM_STEP_NODELIST", "SLURM_NTASKS", "SLURM_PROCID", "SLURM_LOCALID")
  if all(v in env for v in slurm_vars) and int(env["SLURM_NTASKS"]) > 1:  # Inside `srun` (JAX's SLURM rule).
    return Launch("slurm", slurm_coordinator(env), None, None, timeout, "SLURM_STEP_NODELIST")
  workers = env.get("TPU_PROCESS_ADDRESSES") or env.get("TPU_WORKER_HOSTNAMES") or ""
  if len([w for w in workers.split(",") if w]) > 1 or mode in ("auto", "on", "1", "true", "yes"):
    return Launch("tpu", None, None, None, timeout, "Cloud TPU metadata")
  return None


def slurm_coordinator(env: Mapping[str, str]) -> str:
  """The address JAX derives on SLURM: the step's first node, port JAX_COORDINATOR_PORT or from the job id."""
  port = env.get("JAX_COORDINATOR_PORT") or str(int(env["SLURM_JOB_ID"]) % 2**12 + (65535 - 2**12 + 1))
  nodes = env["SLURM_STEP_NODELIST"]  # 'node001', 'node001,host2', 'node[001-015],host2', 'node[001,007]'.
  cut = next((i for i, ch in enumerate(nodes) if ch in ",["), len(nodes))
  if cut == len(nodes) or nodes[cut] == ",":
    return f"{nodes[:cut]}:{port}"
  first = nodes[cut + 1 :]
  end = next((i for i, ch in enumerate(first) if ch in ",-]"), len(first))
  return f"{nodes[:cut]}{first[:end]}:{port}"


def _wait_for_coordinator(launch: Launch, deadline: float) -> None:
  """Returns once a TCP connection to the coordinator succeeds; raises DistributedError at the deadline."""
  host, _, port = launch.coordinator.rpartition(":")
  host = host.strip("[]")
  last = "no answer"
  while True:
    try:
      with socket.create_connection((host, int(port)), timeout=max(0.1, min(2.0, deadline - time.time()))):
        return
    except OSError as e:
      last = e.strerror or type(e).__name__
    if time.time() >= deadline:
      raise DistributedError(
        f"process {launch.process_id if launch.process_id is not None else '?'} cannot reach the coordinator "
        f"{launch.coordinator} (from {launch.source}) within {launch.timeout_s} s ({last}); is process 0 "
        "running and is the address reachable from this host?"
      )
    time.sleep(0.25)


DETERMINISTIC_XLA_FLAGS = ("--xla_gpu_deterministic_ops=true",)


def configure_determinism(enabled: bool, env: dict[str, str] | None = None) -> bool:
  """`config.deterministic`: run-to-run identical GPU programs, by XLA flags set before the backend starts.

  XLA on CPU (and TPU) runs these programs deterministically already; on a GPU,
  convolution autotuning, reductions in backward passes and scatter-adds may
  not be unless `--xla_gpu_deterministic_ops=true` is in XLA_FLAGS when JAX
  initialises its backend (slower: deterministic algorithms and scatter
  expansion). Adds the flags to `env` (default `os.environ`) when missing.

  Returns whether the flags are in effect. Raises ConfigError when they are
  missing and a GPU backend has already started in this process (XLA reads its
  flags once): the caller must set XLA_FLAGS before JAX starts, as
  `python -m jaxseg.main` does.
  """
  if not enabled:
    return False
  env = os.environ if env is None else env
  flags = env.get("XLA_FLAGS", "").split()
  missing = [f for f in DETERMINISTIC_XLA_FLAGS if f not in flags]
  if not missing:
    return True
  from jax._src import xla_bridge  # pylint: disable=g-import-not-at-top

  if not xla_bridge.backends_are_initialized():
    env["XLA_FLAGS"] = " ".join([*flags, *missing])
    logging.info("config.deterministic: XLA_FLAGS=%s", env["XLA_FLAGS"])
    return True
  if any(d.platform == "gpu" for d in jax.devices()):
    raise ConfigError(
      "config.deterministic=True, but this process started its GPU backend without "
      f"XLA_FLAGS={' '.join(DETERMINISTIC_XLA_FLAGS)} (XLA reads its flags once): set it in the "
      "environment before the first JAX call, or run through `python -m jaxseg.main`"
    )
  return False  # CPU / TPU: deterministic without the flags.


def initialize_distributed(env: Mapping[str, str] | None = None) -> Launch | None:
  """Calls `jax.distributed.initialize()` when the environment describes a multi-process launch.

  Must run before any other JAX call. Returns the launch (None for a single process).

  Raises:
    DistributedError: misconfigured environment, or an unreachable coordinator within
      JAXSEG_INIT_TIMEOUT seconds. A coordinator that does not hear from every process
      within that time prints one line and exits the process with status 1.
  """
  launch = detect_launch(env)
  if launch is None:
    return None
  deadline = time.time() + launch.timeout_s
  if launch.coordinator and launch.process_id not in (None, 0):
    _wait_for_coordinator(launch, deadline)
  remaining = max(1, int(deadline - time.time()))
  where = launch.coordinator or "(found by JAX)"

  def give_up():  # JAX would abort with a C++ stack trace (or wait) instead: one line, bounded time.
    sys.stderr.write(
      f"jaxseg: error: the {launch.method} launch did not start within {launch.timeout_s} s: "
      f"not every one of the {launch.num_processes or 'expected'} processes reached the "
      f"coordinator {where} (JAXSEG_INIT_TIMEOUT)\n"
    )
    sys.stderr.flush()
    os._exit(1)  # pylint: disable=protected-access

  watchdog = threading.Timer(remaining, give_up)
  watchdog.daemon = True
  watchdog.start()
  try:
    jax.distributed.initialize(
      coordinator_address=launch.coordinator,
      num_processes=launch.num_processes,
      process_id=launch.process_id,
      initialization_timeout=remaining + 60,
    )
  finally:
    watchdog.cancel()
  logging.info(
    "jax.distributed (%s): process %d of %d, %d local / %d global devices",
    launch.method,
    jax.process_index(),
    jax.process_count(),
    jax.local_device_count(),
    jax.device_count(),
  )
  return launch


def config_hash(config: ml_collections.ConfigDict) -> str:
  """sha256 of the config's JSON (sorted keys): equal configs, equal hashes."""
  from jaxseg import config as config_lib  # pylint: disable=g-import-not-at-top  (config imports models)

  return hashlib.sha256(config_lib.to_json(config).encode()).hexdigest()


def check_same_config(config: ml_collections.ConfigDict) -> None:
  """Refuses a multi-process run whose processes were started with different configs."""
  if jax.process_count() == 1:
    return
  every = gather_objects(config_hash(config), timeout_s=DEFAULT_INIT_TIMEOUT_S)
  differ = [p for p, digest in enumerate(every) if digest != every[0]]
  if differ:
    raise DistributedError(
      f"processes were started with different configs: process {differ[0]} has config "
      f"hash {every[differ[0]][:12]}, process 0 has {every[0][:12]}; start every process "
      "with the same --config and overrides"
    )


def mesh_shape(mesh_config: ml_collections.ConfigDict, num_devices: int, num_processes: int = 1) -> tuple[int, int]:
  """(data, fsdp) from `config.mesh` for `num_devices` global devices.

  Raises:
    ConfigError: the shape does not fit the devices (more than there are, an fsdp size that does not
      divide them, or, with several processes, fewer than all of them).
  """
  fsdp = int(mesh_config.fsdp)
  if fsdp < 1:
    raise ConfigError(f"config.mesh.fsdp must be >= 1, got {fsdp}")
  data = int(mesh_config.data)
  if data == -1:
    if num_devices % fsdp:
      raise ConfigError(f"config.mesh.fsdp={fsdp} does not divide the {num_devices} devices")
    data = num_devices // fsdp
  elif data < 1:
    raise ConfigError(f"config.mesh.data must be -1 (all devices) or >= 1, got {data}")
  if data * fsdp > num_devices:
    raise ConfigError(
      f"config.mesh.data={mesh_config.data} x config.mesh.fsdp={fsdp} asks for {data * fsdp} "
      f"devices but only {num_devices} are visible"
    )
  if data * fsdp != num_devices and num_processes > 1:
    raise ConfigError(
      f"config.mesh.data={mesh_config.data} x config.mesh.fsdp={fsdp} = {data * fsdp} devices "
      f"does not match the {num_devices} devices of this {num_processes}-process run; use "
      "config.mesh.data=-1"
    )
  return data, fsdp


def create_mesh(mesh_config: ml_collections.ConfigDict) -> Mesh:
  """The (data, fsdp) mesh over all global devices, in `jax.make_mesh`'s topology-aware order.

  A single process may use fewer devices than it has (the first data x fsdp ones), e.g. to compare 1
  with 4 devices; a multi-process mesh must cover every device.
  """
  devices = jax.devices()
  data, fsdp = mesh_shape(mesh_config, len(devices), jax.process_count())
  subset = devices[: data * fsdp] if data * fsdp < len(devices) else None
  return jax.make_mesh((data, fsdp), BATCH_AXES, axis_types=(AxisType.Auto, AxisType.Auto), devices=subset)


def local_mesh(num_devices: int | None = None) -> Mesh:
  """A (data, fsdp=1) mesh over this process's own devices (the first `num_devices`; None = all).

  For work each process does on its own inputs, such as evaluating its share of the cases
  (`split_for_process`): programs on it never wait for other processes.
  """
  devices = jax.local_devices()
  count = len(devices) if num_devices is None else num_devices
  if not 1 <= count <= len(devices):
    raise ConfigError(f"asked for {count} local devices but this process has {len(devices)}")
  return jax.make_mesh((count, 1), BATCH_AXES, axis_types=(AxisType.Auto, AxisType.Auto), devices=devices[:count])


def data_parallel_size(mesh: Mesh) -> int:
  """Devices a batch is split over (data x fsdp)."""
  return math.prod(mesh.shape[a] for a in BATCH_AXES if a in mesh.shape)


def replicated(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, P())


def batch_sharding(mesh: Mesh) -> NamedSharding:
  """Leading (batch) axis split over the data and fsdp axes, the rest replicated."""
  return NamedSharding(mesh, P(tuple(a for a in BATCH_AXES if a in mesh.shape)))


def shard_spec(shape: tuple[int, ...], fsdp: int, min_size: int) -> P:
  """FSDP rule for one array: split its largest axis divisible by `fsdp`, or replicate.

  Arrays with fewer than `min_size` elements (biases, norms, the step counter) and arrays
  with no axis divisible by `fsdp` are replicated.
  """
  if fsdp <= 1 or math.prod(shape) < max(min_size, 1) or not shape:
    return P()
  for axis in sorted(range(len(shape)), key=lambda a: (-shape[a], -a)):
    if shape[axis] % fsdp == 0:
      return P(*([None] * axis + [FSDP_AXIS]))
  return P()


def state_shardings(abstract_state: Any, mesh: Mesh, mesh_config: ml_collections.ConfigDict) -> Any:
  """NamedSharding of every leaf of a train state (`jax.eval_shape` output) under the FSDP rules.

  With `config.mesh.fsdp` = 1 everything is replicated. Otherwise each leaf with at least
  `config.mesh.fsdp_min_size` elements is split along its largest axis divisible by the fsdp
  size (`shard_spec`); the optimiser moments have their parameter's shape and follow it.
  """
  fsdp = mesh.shape.get(FSDP_AXIS, 1)
  min_size = int(mesh_config.fsdp_min_size)
  return jax.tree.map(lambda s: NamedSharding(mesh, shard_spec(tuple(s.shape), fsdp, min_size)), abstract_state)


def sharded_fraction(shardings: Any, abstract_state: Any) -> float:
  """Share of the state's elements that are split (not replicated) under `shardings`."""
  total = split = 0
  for sharding, leaf in zip(jax.tree.leaves(shardings), jax.tree.leaves(abstract_state)):
    size = math.prod(leaf.shape)
    total += size
    split += size if any(p is not None for p in sharding.spec) else 0
  return split / max(total, 1)


def check_batch_size(global_batch_size: int, mesh: Mesh, key: str = "train.batch_size") -> int:
  """Returns the per-process batch size; the global one must split over the data-parallel devices."""
  devices = data_parallel_size(mesh)
  if global_batch_size % devices or global_batch_size % jax.process_count():
    raise ConfigError(
      f"config.{key}={global_batch_size} is not divisible by the {devices} data-parallel devices "
      f"of the mesh (data={mesh.shape[DATA_AXIS]} x fsdp={mesh.shape.get(FSDP_AXIS, 1)}) "
      f"over {jax.process_count()} process(es)"
    )
  return global_batch_size // jax.process_count()


def global_batch(local_batch: dict[str, np.ndarray], mesh: Mesh) -> dict[str, jax.Array]:
  """Assembles each process's slice of the batch into global, sharded arrays."""
  sharding = batch_sharding(mesh)
  return jax.tree.map(lambda x: jax.make_array_from_process_local_data(sharding, x), local_batch)


def host_copy(tree: Any) -> Any:
  """numpy copy of a pytree of (possibly sharded, multi-process) arrays, the same on every process.

  Arrays split across processes are all-gathered; local or replicated ones are fetched directly.
  Every process must call it (it is a collective when some array spans processes).
  """

  def fetch(x):
    if isinstance(x, jax.Array) and not x.is_fully_addressable and not x.is_fully_replicated:
      from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top

      return np.asarray(multihost_utils.process_allgather(x, tiled=True))
    return np.asarray(jax.device_get(x))

  return jax.tree.map(fetch, tree)


def split_for_process(items: Sequence[Any], process: int | None = None, count: int | None = None) -> list[Any]:
  """Process `process`'s share of `items`: every `count`-th item from index `process` (round robin)."""
  process = jax.process_index() if process is None else process
  count = jax.process_count() if count is None else count
  return [items[i] for i in range(process, len(items), count)]


GATHER_TIMEOUT_S = 12 * 3600  # Processes may finish their share of an evaluation hours apart.
_CHUNK_BYTES = 1 << 20
_gather_calls = iter(range(1 << 62))
_barrier_calls = iter(range(1 << 62))


def _client():
  from jax._src import distributed  # pylint: disable=g-import-not-at-top

  if distributed.global_state.client is None:
    raise DistributedError(
      "several JAX processes but no jax.distributed client; call parallel.initialize_distributed() first"
    )
  return distributed.global_state.client


def barrier(name: str, timeout_s: float = GATHER_TIMEOUT_S) -> None:
  """Waits until every process reaches `name` (coordination service; no device collective, no 30 s gloo limit)."""
  if jax.process_count() > 1:  # Every process calls the same barriers in the same order: ids agree.
    _client().wait_at_barrier(f"jaxseg/{name}/{next(_barrier_calls)}", int(timeout_s * 1000))


def compile_together(jitted: Any, *args: Any, name: str = "step") -> Any:
  """With several processes: `jitted` compiled ahead for `args`, returned once every process has compiled it.

  The first cross-process collective of a program sets up gloo (CPU) contexts, which wait only 30 s
  for a peer; a process that compiles more slowly (a loaded host, or a persistent compilation cache
  that only some hosts hit) would make the others fail. One process: `jitted` unchanged.
  """
  if jax.process_count() == 1:
    return jitted
  compiled = jitted.lower(*args).compile()
  barrier(f"compiled {name}")
  return compiled


def gather_objects(obj: Any, timeout_s: float = GATHER_TIMEOUT_S) -> list[Any]:
  """[object of process 0, object of process 1, ...] on every process.

  Pickled through the coordination service's key-value store (1 MiB chunks), so processes may
  arrive hours apart (`timeout_s`), unlike a device all-gather whose gloo rendezvous gives up after
  30 s. A collective: every process must call it, in the same order.
  """
  if jax.process_count() == 1:
    return [obj]
  client, call = _client(), next(_gather_calls)
  data = pickle.dumps(obj, protocol=pickle.HIGHEST_PROTOCOL)
  prefix = f"jaxseg/gather/{call}"
  chunks = [data[i : i + _CHUNK_BYTES] for i in range(0, len(data), _CHUNK_BYTES)] or [b""]
  for i, chunk in enumerate(chunks):
    client.key_value_set_bytes(f"{prefix}/{jax.process_index()}/{i}", chunk)
  client.key_value_set(f"{prefix}/{jax.process_index()}/count", str(len(chunks)))
  timeout_ms = int(timeout_s * 1000)
  every = []
  for p in range(jax.process_count()):
    count = int(client.blocking_key_value_get(f"{prefix}/{p}/count", timeout_ms))
    every.append(
      pickle.loads(b"".join(client.blocking_key_value_get_bytes(f"{prefix}/{p}/{i}", timeout_ms) for i in range(count)))
    )
  client.wait_at_barrier(f"{prefix}/read", timeout_ms)
  for i in range(len(chunks)):
    client.key_value_delete(f"{prefix}/{jax.process_index()}/{i}")
  return every


def gather_split(local_results: Sequence[Any]) -> list[Any]:
  """Undoes `split_for_process`: every process's results, back in the original item order, on every process."""
  if jax.process_count() == 1:
    return list(local_results)
  parts = gather_objects(list(local_results))
  merged = []
  for i in range(max(len(p) for p in parts)):
    merged.extend(p[i] for p in parts if i < len(p))
  return merged


def is_main_process() -> bool:
  """True on process 0, the only process that writes reports, configs and figures."""
  return jax.process_index() == 0

"""Meshes, FSDP rules, multi-process detection and start-up errors (one process; see test_multiprocess.py)."""

import json
import os
import socket
import subprocess
import sys
import pathlib
import time

import jax
import pytest

from jaxseg import config as config_lib, parallel, xla_flags
from jaxseg.errors import ConfigError

SCRIPT = pathlib.Path(__file__).parent / "scripts" / "parity_1_vs_4_devices.py"
REPO = pathlib.Path(__file__).parent.parent


def test_four_devices_and_fsdp_match_one_device():
  env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=4", JAX_PLATFORMS="cpu")
  out = subprocess.run([sys.executable, str(SCRIPT)], env=env, capture_output=True, text=True, timeout=400)
  assert out.returncode == 0, out.stderr[-3000:]
  result = json.loads(out.stdout.strip().splitlines()[-1])
  assert result["devices"] == [1, 4, 4]
  for name in ("4", "2x2fsdp"):
    for key in ("max_loss_diff", "max_param_diff", "max_batch_stats_diff", "max_opt_state_diff"):
      assert result[name][key] < 1e-5, (name, key, result[name])
  assert result["4"]["split_leaves"] == 0
  assert result["2x2fsdp"]["split_leaves"] > 0 and result["2x2fsdp"]["split_fraction"] > 0.9  # FSDP really splits.
  assert result["losses_1"][0] != result["losses_1"][-1]  # Training did something.


def mesh_config(data=-1, fsdp=1):
  config = config_lib.base_config()
  config.mesh.update(data=data, fsdp=fsdp)
  return config.mesh


def test_mesh_shapes():
  assert parallel.mesh_shape(mesh_config(), 8) == (8, 1)
  assert parallel.mesh_shape(mesh_config(fsdp=2), 8) == (4, 2)
  assert parallel.mesh_shape(mesh_config(data=2), 8) == (2, 1)  # One process may use a subset.
  with pytest.raises(ConfigError, match=r"config.mesh.data=1000 x config.mesh.fsdp=1 asks for 1000 devices"):
    parallel.mesh_shape(mesh_config(data=1000), 8)
  with pytest.raises(ConfigError, match="config.mesh.fsdp=3 does not divide the 8 devices"):
    parallel.mesh_shape(mesh_config(fsdp=3), 8)
  with pytest.raises(ConfigError, match="does not match the 8 devices of this 2-process run"):
    parallel.mesh_shape(mesh_config(data=2, fsdp=2), 8, num_processes=2)


def test_mesh_larger_than_devices_is_rejected():
  with pytest.raises(ConfigError, match="config.mesh.data"):
    parallel.create_mesh(mesh_config(data=1000))


def test_mesh_is_two_axis_and_batch_must_split():
  mesh = parallel.create_mesh(mesh_config(data=1))
  assert mesh.axis_names == ("data", "fsdp") and mesh.devices.size == 1
  assert parallel.check_batch_size(8, mesh) == 8
  assert parallel.batch_sharding(mesh).spec == jax.sharding.PartitionSpec(("data", "fsdp"))


def test_batch_not_divisible_is_one_line():
  mesh = parallel.create_mesh(mesh_config(data=1))
  fake = type("FakeMesh", (), {"shape": {"data": 3, "fsdp": 2}})()
  with pytest.raises(ConfigError, match=r"config.train.batch_size=8 is not divisible by the 6 data-parallel"):
    parallel.check_batch_size(8, fake)
  assert parallel.check_batch_size(6, mesh) == 6


def test_fsdp_rule_splits_largest_divisible_axis_and_replicates_small_arrays():
  P = jax.sharding.PartitionSpec
  assert parallel.shard_spec((3, 3, 3, 32, 64), 4, 1000) == P(None, None, None, None, "fsdp")
  assert parallel.shard_spec((3, 3, 3, 30, 64), 4, 1000) == P(None, None, None, None, "fsdp")
  assert parallel.shard_spec((3, 3, 3, 64, 30), 4, 1000) == P(None, None, None, "fsdp")  # 30 % 4 != 0.
  assert parallel.shard_spec((64,), 4, 1000) == P()  # Small: replicated.
  assert parallel.shard_spec((3, 3, 5, 7), 4, 0) == P()  # No divisible axis: replicated.
  assert parallel.shard_spec((), 4, 0) == P()  # Scalars (the step).
  assert parallel.shard_spec((3, 3, 32, 64), 1, 0) == P()  # fsdp = 1: replicated.


ENV_KEYS = (
  "JAXSEG_COORDINATOR",
  "JAXSEG_NUM_PROCESSES",
  "JAXSEG_PROCESS_ID",
  "JAX_COORDINATOR_ADDRESS",
  "JAX_NUM_PROCESSES",
  "JAX_PROCESS_ID",
  "SLURM_JOB_ID",
  "JOB_COMPLETION_INDEX",
)


def test_launch_detection():
  assert parallel.detect_launch({}) is None
  launch = parallel.detect_launch(
    {
      "JAXSEG_COORDINATOR": "10.0.0.1:1234",
      "JAXSEG_NUM_PROCESSES": "4",
      "JAXSEG_PROCESS_ID": "3",
      "JAXSEG_INIT_TIMEOUT": "30",
    }
  )
  assert (launch.method, launch.coordinator, launch.num_processes, launch.process_id, launch.timeout_s) == (
    "explicit",
    "10.0.0.1:1234",
    4,
    3,
    30,
  )
  legacy = parallel.detect_launch({"JAX_COORDINATOR_ADDRESS": "h:1", "JAX_NUM_PROCESSES": "2", "JAX_PROCESS_ID": "0"})
  assert (legacy.method, legacy.process_id) == ("explicit", 0)
  k8s = parallel.detect_launch(
    {"JOB_COMPLETION_INDEX": "1", "JAXSEG_NUM_PROCESSES": "2", "JOBSET_NAME": "seg", "REPLICATED_JOB_NAME": "workers"}
  )
  assert (k8s.method, k8s.coordinator, k8s.process_id, k8s.num_processes) == (
    "kubernetes",
    "seg-workers-0-0.seg:1234",
    1,
    2,
  )
  slurm = parallel.detect_launch(
    {
      "SLURM_JOB_ID": "4242",
      "SLURM_STEP_NODELIST": "node[003-004]",
      "SLURM_NTASKS": "2",
      "SLURM_PROCID": "1",
      "SLURM_LOCALID": "0",
    }
  )
  assert (slurm.method, slurm.coordinator) == ("slurm", f"node003:{4242 % 4096 + 61440}")
  assert (
    parallel.detect_launch(
      {"SLURM_JOB_ID": "1", "SLURM_STEP_NODELIST": "n1", "SLURM_NTASKS": "1", "SLURM_PROCID": "0", "SLURM_LOCALID": "0"}
    )
    is None
  )
  assert parallel.detect_launch({"TPU_WORKER_HOSTNAMES": "w0,w1"}).method == "tpu"
  assert parallel.detect_launch({"TPU_WORKER_HOSTNAMES": "w0"}) is None
  assert parallel.detect_launch({"JAXSEG_DISTRIBUTED": "auto"}).method == "tpu"
  assert parallel.detect_launch({"JAXSEG_DISTRIBUTED": "off", "TPU_WORKER_HOSTNAMES": "w0,w1"}) is None


@pytest.mark.parametrize(
  "env, message",
  [
    ({"JAXSEG_COORDINATOR": "10.0.0.1", "JAXSEG_NUM_PROCESSES": "2", "JAXSEG_PROCESS_ID": "0"}, "is not host:port"),
    ({"JAXSEG_COORDINATOR": "h:1", "JAXSEG_PROCESS_ID": "0"}, "JAXSEG_NUM_PROCESSES is not"),
    ({"JAXSEG_COORDINATOR": "h:1", "JAXSEG_NUM_PROCESSES": "2"}, "JAXSEG_PROCESS_ID is not"),
    ({"JAXSEG_COORDINATOR": "h:1", "JAXSEG_NUM_PROCESSES": "2", "JAXSEG_PROCESS_ID": "2"}, r"is not a process index"),
    ({"JAXSEG_NUM_PROCESSES": "2", "JAXSEG_PROCESS_ID": "1"}, "JAXSEG_COORDINATOR is not"),
    ({"JAXSEG_COORDINATOR": "h:1", "JAXSEG_NUM_PROCESSES": "two", "JAXSEG_PROCESS_ID": "1"}, "is not an integer"),
    ({"JOB_COMPLETION_INDEX": "0", "JAXSEG_NUM_PROCESSES": "2"}, "without a coordinator"),
    ({"JAXSEG_DISTRIBUTED": "maybe"}, "use 'auto' or 'off'"),
  ],
)
def test_half_configured_launch_is_one_line(env, message):
  with pytest.raises(parallel.DistributedError, match=message) as error:
    parallel.detect_launch(env)
  assert "\n" not in str(error.value)


def free_port() -> int:
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def test_unreachable_coordinator_is_a_bounded_one_line_error(tmp_path):
  env = {k: v for k, v in os.environ.items() if k not in ENV_KEYS}
  env.update(
    JAXSEG_COORDINATOR=f"127.0.0.1:{free_port()}",
    JAXSEG_NUM_PROCESSES="2",
    JAXSEG_PROCESS_ID="1",
    JAXSEG_INIT_TIMEOUT="2",
  )
  start = time.time()
  out = subprocess.run(
    [sys.executable, "-m", "jaxseg.main", "--config=configs/unet_ct.py:quick", f"--workdir={tmp_path}"],
    cwd=REPO,
    env=env,
    capture_output=True,
    text=True,
    timeout=120,
  )
  assert out.returncode == 1
  lines = out.stderr.strip().splitlines()
  assert lines[-1].startswith("jaxseg: error: process 1 cannot reach the coordinator 127.0.0.1:"), out.stderr[-2000:]
  assert "within 2 s" in lines[-1]
  assert time.time() - start < 100


def test_missing_processes_end_the_coordinator_with_one_line():
  env = {k: v for k, v in os.environ.items() if k not in ENV_KEYS}
  env.update(
    JAXSEG_COORDINATOR=f"127.0.0.1:{free_port()}",
    JAXSEG_NUM_PROCESSES="2",
    JAXSEG_PROCESS_ID="0",
    JAXSEG_INIT_TIMEOUT="3",
  )
  out = subprocess.run(
    [sys.executable, "-c", "from jaxseg import parallel; parallel.initialize_distributed()"],
    cwd=REPO,
    env=env,
    capture_output=True,
    text=True,
    timeout=120,
  )
  assert out.returncode == 1
  assert (
    out.stderr.strip()
    .splitlines()[-1]
    .startswith("jaxseg: error: the explicit launch did not start within 3 s: not every one of the 2 processes")
  ), out.stderr


def test_config_hash_differs_with_overrides():
  a, b = config_lib.base_config(), config_lib.base_config()
  assert parallel.config_hash(a) == parallel.config_hash(b)
  b.train.learning_rate = 0.5
  assert parallel.config_hash(a) != parallel.config_hash(b)
  parallel.check_same_config(a)  # One process: nothing to compare.


def test_split_for_process_is_a_partition():
  items = list(range(7))
  parts = [parallel.split_for_process(items, p, 3) for p in range(3)]
  assert sorted(sum(parts, [])) == items and parts[0] == [0, 3, 6]


def test_processes_with_different_configs_are_refused_in_one_line():
  code = (
    "import sys\nfrom jaxseg import cli, config as config_lib, parallel\nparallel.initialize_distributed()\n"
    "config = config_lib.base_config()\nconfig.train.learning_rate = float(sys.argv[1])\n"
    "try:\n  parallel.check_same_config(config)\nexcept parallel.DistributedError as e:\n  cli.fail(str(e))\n"
    "print('same')\n"
  )
  env = {k: v for k, v in os.environ.items() if k not in ENV_KEYS}
  env.update(JAXSEG_COORDINATOR=f"127.0.0.1:{free_port()}", JAXSEG_NUM_PROCESSES="2", JAXSEG_INIT_TIMEOUT="60")
  children = [
    subprocess.Popen(
      [sys.executable, "-c", code, lr],
      cwd=REPO,
      env=dict(env, JAXSEG_PROCESS_ID=str(i)),
      stdout=subprocess.PIPE,
      stderr=subprocess.PIPE,
      text=True,
    )
    for i, lr in enumerate(("0.001", "0.002"))
  ]
  try:
    outputs = [child.communicate(timeout=120) for child in children]
  finally:
    for child in children:
      if child.poll() is None:
        child.kill()
  for child, (_, stderr) in zip(children, outputs):
    assert child.returncode == 1, stderr[-2000:]
    assert (
      stderr.strip()
      .splitlines()[-1]
      .startswith("jaxseg: error: processes were started with different configs: process 1 has config hash ")
    ), stderr[-2000:]


def test_configure_determinism_adds_the_xla_flags_before_the_backend_starts():
  code = (
    "import os\nfrom jaxseg import parallel\nassert parallel.configure_determinism(True)\n"
    "assert parallel.configure_determinism(True)\n"  # Idempotent: the flag is not added twice.
    "import jax\nprint(float(jax.numpy.ones(3).sum()))\nprint(os.environ['XLA_FLAGS'])\n"
  )
  env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=1")
  out = subprocess.run([sys.executable, "-c", code], cwd=REPO, env=env, capture_output=True, text=True, timeout=120)
  assert out.returncode == 0, out.stderr[-2000:]
  total, flags = out.stdout.strip().splitlines()
  assert total == "3.0"  # XLA:CPU accepts the GPU flag.
  flags = [f for f in flags.split() if f != xla_flags.CPU_CONVOLUTIONS_FLAG]  # Added by `import jaxseg`.
  assert flags == ["--xla_force_host_platform_device_count=1", "--xla_gpu_deterministic_ops=true"]


def test_configure_determinism_after_the_backend_started():
  jax.devices()  # This process's backend is up: flags can no longer be added.
  env = {"XLA_FLAGS": ""}
  assert not parallel.configure_determinism(False, env)
  assert env == {"XLA_FLAGS": ""}
  assert parallel.configure_determinism(True, {"XLA_FLAGS": "--xla_gpu_deterministic_ops=true"})
  if jax.devices()[0].platform == "gpu":
    with pytest.raises(ConfigError, match="config.deterministic=True"):
      parallel.configure_determinism(True, env)
  else:  # CPU / TPU: deterministic without the flags, nothing to refuse.
    assert not parallel.configure_determinism(True, env) and env == {"XLA_FLAGS": ""}


def test_deterministic_run_through_the_command_line_sets_the_flags(tmp_path):
  code = (
    "import os\nfrom unittest import mock\nfrom jaxseg import cli, config as config_lib\n"
    "config = config_lib.base_config()\nconfig.deterministic = True\n"
    "with mock.patch('jaxseg.experiment.plan_workdir', lambda c, w: 'planned'):\n"
    "  cli.run(config, 'configs/unet_ct.py', 'unused', 'plan')\n"
    "import jax\njax.devices()\nprint(os.environ['XLA_FLAGS'])\n"
  )
  env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
  out = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
  assert out.returncode == 0, out.stderr[-2000:]
  flags = out.stdout.strip().splitlines()[-1].split()
  assert [f for f in flags if f != xla_flags.CPU_CONVOLUTIONS_FLAG] == ["--xla_gpu_deterministic_ops=true"]

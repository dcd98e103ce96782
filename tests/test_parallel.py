"""Data parallelism: 4 devices give the same losses and parameters as 1 device."""

import json
import os
import subprocess
import sys
import pathlib

import pytest

from jaxseg import config as config_lib, parallel
from jaxseg.errors import ConfigError

SCRIPT = pathlib.Path(__file__).parent / "scripts" / "parity_1_vs_4_devices.py"


def test_four_devices_match_one_device():
  env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=4", JAX_PLATFORMS="cpu")
  out = subprocess.run([sys.executable, str(SCRIPT)], env=env, capture_output=True, text=True, timeout=300)
  assert out.returncode == 0, out.stderr[-3000:]
  result = json.loads(out.stdout.strip().splitlines()[-1])
  assert result["devices"] == [1, 4]
  assert result["max_loss_diff"] < 1e-5, result
  assert result["max_param_diff"] < 1e-5, result
  assert result["max_batch_stats_diff"] < 1e-5, result
  assert result["losses_1"][0] != result["losses_1"][-1]  # Training did something.


def test_mesh_larger_than_devices_is_rejected():
  config = config_lib.base_config()
  config.mesh.data = 1000
  with pytest.raises(ConfigError, match="config.mesh.data"):
    parallel.create_mesh(config.mesh)


def test_batch_must_split_over_devices():
  config = config_lib.base_config()
  config.mesh.data = 1
  mesh = parallel.create_mesh(config.mesh)
  assert parallel.check_batch_size(8, mesh) == 8

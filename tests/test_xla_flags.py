"""jaxseg/xla_flags.py: the CPU convolution flag added to XLA_FLAGS on import."""

import os
import subprocess
import sys

import pytest

from jaxseg import xla_flags

FLAG = xla_flags.CPU_CONVOLUTIONS_FLAG
SUPPORTED = xla_flags.CPU_CONVOLUTIONS_JAXLIB[0]


def test_adds_the_flag_after_the_users_flags():
  env = {"XLA_FLAGS": "--xla_force_host_platform_device_count=4"}
  assert xla_flags.add_cpu_convolution_flag(env, SUPPORTED)
  assert env["XLA_FLAGS"] == f"--xla_force_host_platform_device_count=4 {FLAG}"
  assert xla_flags.add_cpu_convolution_flag(env, SUPPORTED)  # Idempotent.
  assert env["XLA_FLAGS"].split().count(FLAG) == 1
  empty = {}
  assert xla_flags.add_cpu_convolution_flag(empty, SUPPORTED) and empty == {"XLA_FLAGS": FLAG}


def test_leaves_a_users_own_ynn_setting_and_unknown_jaxlib_versions_alone():
  for user in (
    "--xla_cpu_experimental_ynn_fusion_type=+individual_convolution",
    "--xla_cpu_experimental_ynn_fusion_type=",
  ):
    env = {"XLA_FLAGS": user}
    assert not xla_flags.add_cpu_convolution_flag(env, SUPPORTED)
    assert env == {"XLA_FLAGS": user}
  lowest, highest = xla_flags.CPU_CONVOLUTIONS_JAXLIB
  for version in ((0, 9, 2), lowest[:2] + (lowest[2] - 1,), highest, highest[:1] + (highest[1] + 1, 0)):
    env = {}
    assert not xla_flags.add_cpu_convolution_flag(env, version), version
    assert env == {}


def test_version_parsing():
  assert xla_flags._version("0.10.2") == (0, 10, 2)
  assert xla_flags._version("0.11.0.dev20261201+cuda12") == (0, 11, 0)


@pytest.mark.skipif(
  not xla_flags.version_supported(xla_flags.jaxlib_version()),
  reason="the flag is only added for the jaxlib versions it was measured with",
)
def test_importing_jaxseg_keeps_cpu_convolutions_out_of_ynnpack():
  # A fresh process: the flag must be in XLA_FLAGS before JAX starts its backend. The convolution is
  # large enough for XLA to choose YNNPACK by default (small ones stay with Eigen anyway).
  script = (
    "import sys\n"
    "if sys.argv[1] == 'jaxseg':\n  import jaxseg\n"
    "import jax, jax.numpy as jnp\n"
    "conv = lambda x, k: jax.lax.conv_general_dilated(x, k, (1, 1), 'SAME', "
    "dimension_numbers=('NHWC', 'HWIO', 'NHWC'))\n"
    "hlo = jax.jit(conv).lower(jnp.ones((2, 64, 64, 32)), jnp.ones((3, 3, 32, 32))).compile().as_text()\n"
    "print('ynn' if 'ynn_fusion' in hlo else 'eigen')\n"
  )
  env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
  env["JAX_PLATFORMS"] = "cpu"
  out = {}
  for mode in ("jaxseg", "plain"):
    result = subprocess.run(
      [sys.executable, "-c", script, mode], env=env, capture_output=True, text=True, timeout=120, check=True
    )
    out[mode] = result.stdout.split()[-1]
  assert out["jaxseg"] == "eigen"
  # Without jaxseg, XLA's default: the convolution is a YNNPACK fusion (the test shows the flag is what differs).
  assert out["plain"] == "ynn"

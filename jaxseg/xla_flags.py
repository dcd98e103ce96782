"""XLA flags jaxseg adds to XLA_FLAGS when it is imported, before JAX starts its backend.

XLA reads XLA_FLAGS once, when the first JAX computation initialises the
backend, so these take effect only if `import jaxseg` (any jaxseg module)
comes before that; `python -m jaxseg.main`, the studies and the tests do.

`CPU_CONVOLUTIONS_FLAG`: XLA:CPU (jaxlib 0.10) hands every convolution to its YNNPACK
library fusion by default. On the CPUs measured here YNNPACK's weight-gradient
convolutions are 2-3x slower than the Eigen convolutions XLA uses otherwise,
so a whole train step ran 1.5x (2D U-Net, `configs/unet_ct.py`'s network)
and 3.3x (depth-folded 3D U-Net) faster with this flag, which keeps convolutions
out of YNNPACK and leaves its other fusions on (README, Performance). Results
differ from the YNNPACK ones only by float rounding. The flag concerns the CPU
backend only; GPU and TPU programs do not read it.

An XLA_FLAGS that already sets `xla_cpu_experimental_ynn_fusion_type` is left
alone: `XLA_FLAGS=--xla_cpu_experimental_ynn_fusion_type=+individual_convolution`
restores XLA's default (an empty value turns every YNNPACK fusion off). The
flag is added only for the jaxlib versions in `CPU_CONVOLUTIONS_JAXLIB`, where
it was measured: XLA stops at an unknown flag, and a later jaxlib may rename it.
"""

from __future__ import annotations

import importlib.metadata
import os
import re
from collections.abc import MutableMapping

CPU_CONVOLUTIONS_FLAG = "--xla_cpu_experimental_ynn_fusion_type=-individual_convolution"
# [lowest, highest) jaxlib versions known to have the flag and the YNNPACK convolutions it avoids.
CPU_CONVOLUTIONS_JAXLIB = ((0, 10, 2), (0, 11, 0))


def _version(text: str) -> tuple[int, ...]:
  """(major, minor, patch) of a version string such as '0.10.2' or '0.10.2.dev20261201+cuda'."""
  return tuple(int(part) for part in re.findall(r"\d+", text)[:3])


def jaxlib_version() -> tuple[int, ...] | None:
  try:
    return _version(importlib.metadata.version("jaxlib"))
  except importlib.metadata.PackageNotFoundError:
    return None


def version_supported(version: tuple[int, ...] | None) -> bool:
  """Whether a jaxlib `version` is in `CPU_CONVOLUTIONS_JAXLIB` (None: jaxlib not installed)."""
  lowest, highest = CPU_CONVOLUTIONS_JAXLIB
  return version is not None and lowest <= version < highest


def add_cpu_convolution_flag(
  env: MutableMapping[str, str] | None = None, version: tuple[int, ...] | None = None
) -> bool:
  """Adds `CPU_CONVOLUTIONS_FLAG` to `env["XLA_FLAGS"]` (default `os.environ`).

  Returns whether the flag is in effect for a backend started from `env`: False
  when the user's XLA_FLAGS sets the YNNPACK fusion types itself, or when the
  jaxlib version (`version`, default the installed one) is outside
  `CPU_CONVOLUTIONS_JAXLIB`.
  """
  env = os.environ if env is None else env
  flags = env.get("XLA_FLAGS", "").split()
  name = CPU_CONVOLUTIONS_FLAG.split("=")[0]
  if CPU_CONVOLUTIONS_FLAG in flags:
    return True
  if any(f.split("=")[0] == name for f in flags):
    return False
  if not version_supported(jaxlib_version() if version is None else version):
    return False
  env["XLA_FLAGS"] = " ".join([*flags, CPU_CONVOLUTIONS_FLAG])
  return True

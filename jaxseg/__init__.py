"""jaxseg: medical image segmentation in JAX/Flax."""

__version__ = "0.1.0"

from jaxseg import xla_flags as _xla_flags

_xla_flags.add_cpu_convolution_flag()  # Before JAX starts its backend; see jaxseg/xla_flags.py.

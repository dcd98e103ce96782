"""Where generated phantoms and prepared datasets live on disk (or in a bucket).

`data_dir(config)` is `config.data.data_dir`, else `$JAXSEG_DATA_DIR`, else
`~/.cache/jaxseg`; prepared datasets go under `<data_dir>/prepared`. It sits
next to the data code (`jaxseg.data.pipeline` reads it) so that the data
package never imports `jaxseg.config`.
"""

from __future__ import annotations

import os

import ml_collections

from jaxseg import paths

ENV_VAR = "JAXSEG_DATA_DIR"
DEFAULT = "~/.cache/jaxseg"


def data_dir(config: ml_collections.ConfigDict) -> paths.Path:
  """Directory holding generated phantoms and prepared datasets: a `pathlib.Path`, or an `epath.Path` for gs://.

  Raises:
    WorkdirError: `config.data.data_dir` (or $JAXSEG_DATA_DIR) is a URL jaxseg cannot write.
  """
  path = config.data.data_dir or os.environ.get(ENV_VAR) or DEFAULT
  return paths.resolve(path, "config.data.data_dir" if config.data.data_dir else "data directory")

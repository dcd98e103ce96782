"""Command line: `python -m jaxseg.main --config=configs/NAME.py[:ARG] [--workdir=DIR] [--mode=...]`.

Flags and dispatch only; `jaxseg.cli` checks the flags and turns user mistakes
into one-line errors, the work is in train.py, evaluate.py and predict.py.
"""

import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")  # Quiet a TensorFlow that a user's environment may import.

from absl import app, flags  # pylint: disable=g-import-not-at-top
from ml_collections import config_flags  # pylint: disable=g-import-not-at-top

from jaxseg import cli  # pylint: disable=g-import-not-at-top

_CONFIG = config_flags.DEFINE_config_file("config", None, "Config file: configs/NAME.py[:ARG].")
_WORKDIR = flags.DEFINE_string("workdir", None, "Output directory (default: runs/<config file stem>).")
_MODE = flags.DEFINE_enum("mode", "train", ["train", "evaluate", "predict", "plan", "interpret"],
                          "train (then evaluate), evaluate a trained workdir, predict "
                          "--config.predict.input into --config.predict.output, or plan (print the plan "
                          "of jaxseg.plan and write <workdir>/plan.json), or interpret (saliency / Grad-CAM / attention "
                          "figures and scores of a trained workdir under <workdir>/interpret/).")


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
  cli.hide_gpus_from_tensorflow()
  cli.keep_command_line_keys(_CONFIG.value, sys.argv)  # A plan never overrides --config.KEY=VALUE.
  return cli.run(_CONFIG.value, config_flags.get_config_filename(flags.FLAGS["config"]), _WORKDIR.value,
                 _MODE.value)


if __name__ == "__main__":
  cli.parse_and_run(app.run, main)

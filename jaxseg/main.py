"""jaxseg: train, evaluate and apply medical image segmentation models (JAX/Flax).

Usage: python -m jaxseg.main --config=configs/NAME.py[:VARIANT] [--workdir=DIR] [--mode=MODE]
                             [--config.KEY=VALUE ...] [--verbosity=N]

Modes (--mode):
  train      train (resuming from the workdir's newest checkpoint), then evaluate; the default
  evaluate   evaluate a trained workdir again: <workdir>/results/<split>/summary.md
  predict    segment the images of --config.predict.input into --config.predict.output
  plan       print the plan (patch, batch, network, steps) and write <workdir>/plan.json
  interpret  saliency / Grad-CAM / attention figures of a trained workdir under <workdir>/interpret/

Main flags:
  --config=configs/NAME.py[:VARIANT]  what to run: one file per run family in configs/
  --config.KEY=VALUE     override any config key, e.g. --config.train.num_steps=2000
  --workdir=DIR          checkpoints, results, TensorBoard events and logs (default: runs/NAME)
  --verbosity=N, -v N    what the console shows: -1 warnings only, 0 jaxseg's progress (default),
                         1 libraries' INFO lines too, 2 debug; the full log is always written to
                         <workdir>/logs/<mode>-<date>-<time>.log

Examples:
  python -m jaxseg.main --config=configs/unet_ct.py:quick --workdir=/tmp/quick   (a one-minute smoke run)
  python -m jaxseg.main --config=configs/unet_ct.py         (the default run, about 10 minutes on a CPU)
  python -m jaxseg.main --config=configs/unet_ct.py --mode=evaluate --config.eval.checkpoint=latest

Ctrl-C stops a run with one line; rerunning the same command resumes it. --helpfull lists every flag.
"""

# Flags and dispatch only: `jaxseg.cli` checks the flags and turns user mistakes into one-line errors,
# `jaxseg.console` sets up the console and the log file, the work is in train.py, evaluate.py and predict.py.
# The docstring above is absl's --help text (no percent signs: absl formats it).

import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")  # Quiet a TensorFlow that a user's environment may import.

from absl import app, flags  # pylint: disable=g-import-not-at-top
from absl import logging as absl_logging  # noqa: F401  # pylint: disable=g-import-not-at-top,unused-import  (defines -v)
from ml_collections import config_flags  # pylint: disable=g-import-not-at-top

from jaxseg import cli, console  # pylint: disable=g-import-not-at-top

_CONFIG = config_flags.DEFINE_config_file("config", None, "Config file: configs/NAME.py[:ARG].")
_WORKDIR = flags.DEFINE_string("workdir", None, "Output directory (default: runs/<config file stem>).")
_MODE = flags.DEFINE_enum(
  "mode",
  "train",
  ["train", "evaluate", "predict", "plan", "interpret"],
  "train (then evaluate), evaluate a trained workdir, predict "
  "--config.predict.input into --config.predict.output, or plan (print the plan "
  "of jaxseg.plan and write <workdir>/plan.json), or interpret (saliency / Grad-CAM / attention "
  "figures and scores of a trained workdir under <workdir>/interpret/).",
)
flags.FLAGS["verbosity"].help = cli.VERBOSITY_HELP  # absl's -v, in jaxseg's terms (`jaxseg.console`).
flags.FLAGS.set_default("verbosity", 0)  # What absl sets when the flag is not given; --help shows it.
flags.declare_key_flag("verbosity")  # Listed by --help with the flags above.


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
  console.configure(flags.FLAGS.verbosity)
  cli.hide_gpus_from_tensorflow()
  cli.keep_command_line_keys(_CONFIG.value, sys.argv)  # A plan never overrides --config.KEY=VALUE.
  return cli.run(_CONFIG.value, config_flags.get_config_filename(flags.FLAGS["config"]), _WORKDIR.value, _MODE.value)


if __name__ == "__main__":
  cli.parse_and_run(app.run, main)

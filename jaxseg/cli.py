"""What `jaxseg.main` does with its flags: checks, dispatch, one-line errors.

User mistakes (a missing config file, a misspelt key, an unwritable workdir, a
corrupt checkpoint or one of another model, a NaN loss, a bad input image...)
end the program with one line on stderr, `jaxseg: error: ...`, and exit status
2 for bad flags or 1 otherwise, never a traceback. No `--config` prints the
usage (`--help`'s text). Ctrl-C ends it with one line, `jaxseg: interrupted
...` (at which step, and from which checkpoint step rerunning resumes), and
exit status 130. `run` writes the run's log file (`jaxseg.console`), which
also records the error or interruption that ended it.
"""

from __future__ import annotations

import difflib
import os
import pathlib
import re
import sys
from typing import Callable, Sequence

from jaxseg.errors import JaxsegError

VERBOSITY_HELP = (
  "What the console shows: -1 warnings and errors only; 0 (default) jaxseg's own lines (the "
  "plan, progress, validation, results) and libraries' warnings; 1 libraries' INFO lines too; "
  "2 DEBUG too. Everything at INFO (DEBUG at 2) is always written to "
  "<workdir>/logs/<mode>-<date>-<time>.log."
)
INTERRUPTED_STATUS = 130  # 128 + SIGINT, as a shell reports a command ended by Ctrl-C.

_OVERRIDE = re.compile(r"^--?config\.([A-Za-z0-9_.]+)(=|$)")


def fail(message: str, status: int = 1) -> None:
  print(f"jaxseg: error: {message}", file=sys.stderr)
  sys.exit(status)


def _config_file(argv: Sequence[str]) -> str | None:
  for i, arg in enumerate(argv):
    if arg.startswith(("--config=", "-config=")):
      return arg.split("=", 1)[1]
    if arg in ("--config", "-config") and i + 1 < len(argv):
      return argv[i + 1]
  return None


def _known_keys() -> list[str]:
  from jaxseg import config as config_lib  # pylint: disable=g-import-not-at-top

  keys = []

  def walk(tree, prefix):
    for key, value in tree.items():
      keys.append(prefix + key)
      if isinstance(value, dict):
        walk(value, f"{prefix}{key}.")

  walk(config_lib.base_config().to_dict(), "")
  return keys


def _explain_flag_error(argv: Sequence[str], error: Exception, config_file: str | None) -> str:
  known = _known_keys()
  for arg in argv:
    match = _OVERRIDE.match(arg)
    if match and match.group(1) not in known:
      key = match.group(1)
      close = difflib.get_close_matches(key, known, n=1)
      hint = f"; did you mean config.{close[0]}?" if close else ""
      return f"unknown config key config.{key} (in {arg}){hint}"
  text = " ".join(str(error).split()) or type(error).__name__
  if config_file and not isinstance(error, ValueError):
    return f"config file {config_file}: {text}"
  return text


def command_line_keys(argv: Sequence[str]) -> list[str]:
  """Config keys set on the command line (`--config.KEY=VALUE` or `--config.KEY VALUE`), in order."""
  return [m.group(1) for m in map(_OVERRIDE.match, argv) if m]


def keep_command_line_keys(config, argv: Sequence[str]) -> None:
  """Adds the command line's config keys to `config.plan.fixed`, so that a plan never overrides them."""
  keys = [k for k in command_line_keys(argv) if not k.startswith("plan.")]
  if keys:
    config.plan.fixed = tuple(dict.fromkeys((*config.plan.fixed, *keys)))


def parse_flags(argv: list[str]) -> list[str]:
  """absl flag parsing with one-line errors for bad config files and keys."""
  from absl import flags  # pylint: disable=g-import-not-at-top

  config_file = _config_file(argv)
  if config_file is None:
    if any(arg.lstrip("-") in ("help", "helpshort", "helpfull", "?") for arg in argv[1:]):
      return flags.FLAGS(argv)  # absl prints the usage and exits.
    print_usage()
    if len(argv) > 1:  # Something was asked for, without saying what to run.
      fail("--config is required, e.g. --config=configs/unet_ct.py:quick", 2)
    sys.exit(0)
  path = pathlib.Path(config_file.split(":", 1)[0])
  if not path.is_file():
    fail(f"config file {path} does not exist", 2)
  try:
    return flags.FLAGS(argv)
  except Exception as e:  # absl, ml_collections and the config file itself raise many types.
    fail(_explain_flag_error(argv, e, str(path)), 2)
  raise AssertionError("unreachable")


def print_usage() -> None:
  """The usage `--help` prints (the main module's docstring and its flags), on stdout."""
  from absl import app  # pylint: disable=g-import-not-at-top

  app.usage(shorthelp=True, writeto_stdout=True)


def parse_and_run(app_run: Callable, main: Callable) -> None:
  try:
    app_run(main, flags_parser=parse_flags)
  except JaxsegError as e:
    fail(str(e))
  except KeyboardInterrupt as e:  # Ctrl-C: one line, not a traceback.
    print(f"jaxseg: {e}" if isinstance(e, _interrupted()) else "jaxseg: interrupted", file=sys.stderr)
    sys.exit(INTERRUPTED_STATUS)


def _interrupted() -> type:
  from jaxseg import console  # pylint: disable=g-import-not-at-top

  return console.Interrupted


def hide_gpus_from_tensorflow() -> None:
  """If something already imported TensorFlow, it must not take GPU memory from JAX.

  jaxseg itself never imports TensorFlow (events are written by jaxseg.writers,
  datasets read through TFDS's array_record sources); importing it here just
  to hide GPUs would cost seconds on every command, so only an already
  imported TensorFlow is told.
  """
  tf = sys.modules.get("tensorflow")
  if tf is None:
    return
  try:
    tf.config.set_visible_devices([], "GPU")
  except (AttributeError, RuntimeError):  # A partial import, or devices already initialised.
    pass


def default_workdir(config_arg: str) -> pathlib.Path:
  return pathlib.Path("runs") / pathlib.Path(config_arg.split(":", 1)[0]).stem


def run(config, config_arg: str, workdir: str | None, mode: str) -> int:
  """Dispatches `--mode` (errors propagate as JaxsegError)."""
  import logging as logging_lib  # pylint: disable=g-import-not-at-top
  from absl import logging  # pylint: disable=g-import-not-at-top
  from jaxseg import console, parallel  # pylint: disable=g-import-not-at-top

  parallel.configure_determinism(config.deterministic)  # XLA flags: before JAX starts its backend.
  launch = parallel.initialize_distributed()
  workdir = pathlib.Path(workdir) if workdir else default_workdir(config_arg)
  import jax  # pylint: disable=g-import-not-at-top

  process = jax.process_index() if launch is not None else None  # Each process its own log file.
  # Only train and plan create a workdir; the others read a trained one (or several: an ensemble's list).
  log_file = console.open_log_file(workdir, mode, process, create=mode in ("train", "plan"))
  logging.info(
    "jaxseg %s: config %s, workdir %s (pid %d)%s",
    mode,
    config_arg,
    workdir,
    os.getpid(),
    f"; full log in {log_file}" if log_file else "",
  )
  logging.info("Command line: %s", " ".join(sys.argv), extra=console.FILE_ONLY)
  try:
    _dispatch(config, workdir, mode)
  except JaxsegError as e:
    console.to_log_file(logging_lib.ERROR, f"jaxseg: error: {e}")
    raise
  except KeyboardInterrupt as e:
    console.to_log_file(
      logging_lib.WARNING, f"jaxseg: {e}" if isinstance(e, console.Interrupted) else "jaxseg: interrupted"
    )
    raise
  except Exception:
    console.to_log_file(logging_lib.ERROR, "jaxseg: unexpected error", exc_info=sys.exc_info())
    raise
  finally:
    console.close_log_file()
  return 0


def _dispatch(config, workdir: pathlib.Path, mode: str) -> None:
  if mode == "plan":
    from jaxseg import experiment  # pylint: disable=g-import-not-at-top

    print(experiment.plan_workdir(config, workdir))
    return
  from jaxseg import evaluate, predict, train  # pylint: disable=g-import-not-at-top

  if mode == "train":
    train.train_and_evaluate(config, workdir)
  elif mode == "evaluate":
    evaluate.evaluate_workdir(config, workdir)
  elif mode == "predict":
    predict.predict_workdir(config, workdir)
  elif mode == "interpret":
    from jaxseg import interpret_mode  # pylint: disable=g-import-not-at-top

    interpret_mode.interpret_workdir(config, workdir)

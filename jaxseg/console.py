"""What a run shows on the console and what it keeps in its log file.

`python -m jaxseg.main` shows a person jaxseg's own lines on stderr (what is
being prepared, the plan, one progress line per `config.train.log_every_steps`
with step, loss, train Dice, steps/s and ETA, validation results, where the
reports are) and every library's warnings and errors. Everything at INFO (the
libraries' too: orbax's checkpoint internals, TFDS, JAX's backend probe, the
TensorBoard scalars, the hyperparameters) goes to a log file in the workdir:

  <workdir>/logs/<mode>-<YYYYmmdd-HHMMSS>.log       (-p<i> added on process i of a multi-process run)

in absl's format (`I1201 08:10:46.645349 <thread> cli.py:130] message`). A
`gs://` workdir gets the file when the command ends (it is written locally
until then).

absl's `-v` / `--verbosity` flag sets what the console shows:

  -1   warnings and errors only
   0   (default) jaxseg's lines, libraries' warnings and errors
   1   everything the log file has (libraries at INFO too)
   2   DEBUG as well, on the console and in the log file

Lines are routed by where they come from, not by logger level: jaxseg and
orbax, TFDS and grain all log through absl's single `absl` logger, so a record
is jaxseg's own when it was logged from a file of the `jaxseg` package (or by
a `jaxseg.*` logger). A jaxseg line that is detail for the log file only is
logged with `extra=console.FILE_ONLY`. Two libraries' warnings are file-only
too (`_CONSOLE_MINIMUM`): TFDS warns on every run that jaxseg's per-dataset
builder configs are "custom", and matplotlib's warnings are about fonts.
"""

from __future__ import annotations

import logging
import os
import pathlib
import shutil
import sys
import tempfile
import time

from absl import logging as absl_logging

FILE_ONLY = {"console": False}  # `logging.info(..., extra=console.FILE_ONLY)`: the log file, not the console.
LOG_DIR = "logs"

_PACKAGE_DIR = os.path.dirname(os.path.abspath(__file__)) + os.sep
_CONSOLE_MINIMUM = {"tensorflow_datasets": logging.ERROR, "matplotlib": logging.ERROR}  # Origin -> level.


class Interrupted(KeyboardInterrupt):
  """Ctrl-C, with the one line the console shows (`jaxseg: <message>`) and exit status 130."""


def is_own(record: logging.LogRecord) -> bool:
  """True for a record logged from a file of the jaxseg package (through absl) or by a `jaxseg.*` logger."""
  return (
    record.name == "jaxseg" or record.name.startswith("jaxseg.") or (record.pathname or "").startswith(_PACKAGE_DIR)
  )


def origin(record: logging.LogRecord) -> str:
  """The top-level package a record comes from: `orbax`, `tensorflow_datasets`, `jax`, `jaxseg`, ..."""
  if is_own(record):
    return "jaxseg"
  if record.name == "py.warnings":  # `warnings.warn`, through `logging.captureWarnings`.
    return "warnings"
  if record.name != "absl":  # A standard logger is named after its module.
    return record.name.split(".", 1)[0]
  parts = pathlib.PurePath(record.pathname or "").parts
  for i, part in enumerate(parts[:-1]):
    if part in ("site-packages", "dist-packages"):
      return parts[i + 1].removesuffix(".py")
  return pathlib.PurePath(record.pathname or "absl").stem


class ConsoleFilter(logging.Filter):
  """Lets through what the console shows at `verbosity` (see the module docstring)."""

  def __init__(self, verbosity: int = 0):
    super().__init__()
    self.verbosity = verbosity

  def filter(self, record: logging.LogRecord) -> bool:
    if self.verbosity >= 1:
      return record.levelno >= (logging.DEBUG if self.verbosity >= 2 else logging.INFO)
    if record.levelno >= logging.WARNING:
      return record.levelno >= _CONSOLE_MINIMUM.get(origin(record), logging.WARNING)
    return (
      self.verbosity == 0 and record.levelno >= logging.INFO and is_own(record) and getattr(record, "console", True)
    )


class ConsoleFormatter(logging.Formatter):
  """`HH:MM:SS message`; warnings and errors name their level, other libraries' lines their package."""

  def format(self, record: logging.LogRecord) -> str:
    prefix = time.strftime("%H:%M:%S", time.localtime(record.created))
    if record.levelno >= logging.WARNING:
      prefix += f" {record.levelname}"
    if not is_own(record):
      prefix += f" [{origin(record)}]"
    text = f"{prefix} {record.getMessage().rstrip()}"  # `warnings` messages end with a newline.
    if record.exc_info:
      text += "\n" + self.formatException(record.exc_info)
    return text


_console: logging.Handler | None = None
_log_file: logging.FileHandler | None = None
_upload_to = None  # The log file's place in a gs:// workdir, written at close.
_verbosity = 0


def configure(verbosity: int = 0) -> None:
  """Routes logging for a command-line run: replaces absl's stderr handler with the console's.

  Call once, after flag parsing (absl's `--verbosity` sets the root level when flags are parsed).
  Also sends Python warnings through logging (so the log file has them) and, unless `verbosity` >= 1,
  turns TFDS's progress bars off when stderr is not a terminal (a pipe or a file gets every redraw).
  """
  global _console, _verbosity
  _verbosity = verbosity
  root = logging.getLogger()
  for handler in list(root.handlers):  # absl's, and any `logging.basicConfig` stderr handler (as absl does).
    plain = type(handler) is logging.StreamHandler  # pylint: disable=unidiomatic-typecheck  (not a subclass)
    plain_stderr = plain and handler.stream in (sys.stderr, sys.__stderr__)
    if handler is absl_logging.get_absl_handler() or handler is _console or plain_stderr:
      root.removeHandler(handler)
  _console = logging.StreamHandler(sys.stderr)
  _console.addFilter(ConsoleFilter(verbosity))
  _console.setFormatter(ConsoleFormatter())
  root.addHandler(_console)
  root.setLevel(logging.DEBUG if verbosity >= 2 else logging.INFO)
  absl_logging.get_absl_logger().setLevel(logging.NOTSET)  # Follows the root's level, as with absl's handler.
  logging.captureWarnings(True)
  if verbosity < 1 and not _isatty(sys.stderr):
    try:
      from tensorflow_datasets.core.utils import tqdm_utils  # pylint: disable=g-import-not-at-top

      tqdm_utils.disable_progress_bar()
    except ImportError:
      pass


def _isatty(stream) -> bool:
  try:
    return stream.isatty()
  except (AttributeError, ValueError):
    return False


def log_file_name(mode: str, process: int | None = None, now: float | None = None) -> str:
  """`<mode>-<YYYYmmdd-HHMMSS>[-p<process>].log` (local time)."""
  stamp = time.strftime("%Y%m%d-%H%M%S", time.localtime(time.time() if now is None else now))
  return f"{mode}-{stamp}" + (f"-p{process}" if process is not None else "") + ".log"


def open_log_file(
  workdir: str | os.PathLike, mode: str, process: int | None = None, *, create: bool = True
) -> str | None:
  """Starts logging everything at INFO (DEBUG at verbosity >= 2) to `<workdir>/logs/<name>`; returns its path.

  Returns None, and logs nothing, when the file cannot be created there (or, with `create` False, when
  `workdir` is not an existing directory): the mode's own workdir check then reports why in one line.
  A gs:// workdir's log is written to a local temporary file and uploaded by `close_log_file`.
  """
  global _log_file, _upload_to
  from jaxseg import paths  # pylint: disable=g-import-not-at-top

  close_log_file()
  name = log_file_name(mode, process)
  try:
    if not create and not paths.resolve(workdir).is_dir():
      return None
    if paths.is_remote(workdir):
      _upload_to = paths.resolve(workdir) / LOG_DIR / name
      local = pathlib.Path(tempfile.mkdtemp(prefix="jaxseg-log-")) / name
    else:
      local = paths.resolve(workdir) / LOG_DIR / name
      local.parent.mkdir(parents=True, exist_ok=True)
    handler = logging.FileHandler(local, encoding="utf-8")
  except Exception:  # pylint: disable=broad-except  (OSError, or a bad URL the mode will report)
    _upload_to = None
    return None
  handler.setFormatter(absl_logging.PythonFormatter())
  handler.setLevel(logging.DEBUG if _verbosity >= 2 else logging.INFO)
  logging.getLogger().addHandler(handler)
  _log_file = handler
  return os.fspath(_upload_to) if _upload_to is not None else os.fspath(local)


def log_file() -> str | None:
  """The path of the open log file (local), or None."""
  return _log_file.baseFilename if _log_file is not None else None


def to_log_file(level: int, message: str, exc_info=None) -> None:
  """Writes one record to the log file only (nothing when no log file is open)."""
  if _log_file is None:
    return
  record = logging.LogRecord("jaxseg", level, __file__, 0, "%s", (message,), exc_info)
  _log_file.handle(record)


def close_log_file() -> None:
  """Stops logging to the log file (uploading it to a gs:// workdir); a no-op when none is open."""
  global _log_file, _upload_to
  if _log_file is None:
    return
  handler, _log_file = _log_file, None
  logging.getLogger().removeHandler(handler)
  handler.close()
  if _upload_to is not None:
    local = pathlib.Path(handler.baseFilename)
    try:
      _upload_to.parent.mkdir(parents=True, exist_ok=True)
      _upload_to.write_bytes(local.read_bytes())
      shutil.rmtree(local.parent, ignore_errors=True)
    except Exception as e:  # pylint: disable=broad-except  (gfile / fsspec raise their own types)
      print(f"jaxseg: the log could not be copied to {_upload_to} ({e}); it is in {local}", file=sys.stderr)
    _upload_to = None

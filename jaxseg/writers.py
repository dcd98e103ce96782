"""TensorBoard event files and progress reports without TensorFlow.

`clu.metric_writers` and `clu.periodic_actions` import TensorFlow (a 1.3 GB
install, seconds of import on every run) only to write event files. This
module writes the same files with tensorboardX (protobuf + a record writer,
no TensorFlow, no TensorBoard), and keeps the calls train.py used:

  writer = writers.create_default_writer(workdir, just_logging=process_index > 0)
  writer.write_hparams({...}); writer.write_scalars(step, {...})
  writer.write_images(step, {tag: [N, H, W, C] uint8 or float in [0, 1]})
  writer.flush(); writer.close()

Every call is also logged at INFO level (as clu's LoggingWriter does), to the
log file only (`jaxseg.console`), so a run without TensorBoard still has its
curves in the log. `read_scalars`
reads event files back (TFRecord framing, CRC-checked) for tests and
experiment reports. Viewing needs TensorBoard, which is *not* a dependency:
`pip install tensorboard && tensorboard --logdir runs/NAME`.

`ReportProgress` logs the progress line the console shows (step, percent done,
loss and train Dice when given, steps/s, ETA) and writes
`steps_per_sec` and `uptime` scalars; `Profile` records a `jax.profiler`
trace (TensorFlow-free: XLA's profiler writes `plugins/profile/<run>/*.xplane.pb`
under the workdir, viewable with `pip install xprof` or TensorBoard's profile plugin).
"""

from __future__ import annotations

import contextlib
import io
import os
import struct
import sys
import time
from typing import Any, Iterator, Mapping

import jax
import numpy as np
from absl import logging

from jaxseg import console, paths


def _import_tensorboardx():
  """tensorboardX, imported without also importing PyTorch.

  tensorboardX's writer module runs `try: import torch` at import time only to
  type-annotate torch tensors; with the `interop` extra installed that costs
  seconds and hundreds of MB on every training run, and fails outright on a
  broken torch install. jaxseg passes only numpy arrays, so the import runs
  with `torch` marked absent (unless something already imported it).
  """
  if "tensorboardX" in sys.modules or "torch" in sys.modules:
    import tensorboardX  # pylint: disable=g-import-not-at-top

    return tensorboardX
  sys.modules["torch"] = None  # `import torch` raises ImportError while this is set.
  try:
    import tensorboardX  # pylint: disable=g-import-not-at-top
  finally:
    del sys.modules["torch"]
  return tensorboardX


class _BucketEventFile:
  """An event file in a bucket (`jaxseg.paths`): held in memory, the whole object rewritten at each flush.

  Objects cannot be appended to; tensorboardX's own gs:// writer does the
  same through google-cloud-storage, this one goes through etils.epath like
  every other jaxseg output, so it needs no extra package.
  """

  def __init__(self, path: str):
    self._path = paths.resolve(path)
    self._buffer = io.BytesIO()

  def write(self, data: bytes) -> None:
    self._buffer.write(data)

  def flush(self) -> None:
    self._path.write_bytes(self._buffer.getvalue())

  def close(self) -> None:
    self.flush()


class _BucketEventFiles:
  """tensorboardX writer factory for the URL schemes of `jaxseg.paths`."""

  def open(self, path: str) -> _BucketEventFile:
    return _BucketEventFile(path)

  def directory_check(self, path: str) -> None:
    paths.resolve(path).mkdir(parents=True, exist_ok=True)


def _register_bucket_writers() -> None:
  from tensorboardX import record_writer  # pylint: disable=g-import-not-at-top

  for scheme in paths.REMOTE_SCHEMES:
    record_writer.register_writer_factory(scheme, _BucketEventFiles())


class Writer:
  """Scalars, images and hyperparameters to the INFO log and (unless `just_logging`) to event files in `logdir`."""

  def __init__(self, logdir: str | os.PathLike, *, just_logging: bool = False, flush_secs: int = 30):
    self.logdir = paths.resolve(logdir, "workdir")  # A local directory or a gs:// URL.
    self._file = None
    if not just_logging:
      tbx = _import_tensorboardx()
      _register_bucket_writers()
      self.logdir.mkdir(parents=True, exist_ok=True)
      from tensorboardX import summary  # pylint: disable=g-import-not-at-top

      self._file = tbx.FileWriter(os.fspath(self.logdir), max_queue=100, flush_secs=flush_secs)
      self._summary = summary

  def write_scalars(self, step: int, scalars: Mapping[str, Any]) -> None:
    """Each value a Python or numpy scalar (or a 0-d array)."""
    if not scalars:
      return
    values = {k: float(np.asarray(v)) for k, v in scalars.items()}
    logging.info("[%d] %s", step, ", ".join(f"{k}={v:.6g}" for k, v in sorted(values.items())), extra=console.FILE_ONLY)
    if self._file is not None:
      for tag, value in values.items():
        self._file.add_summary(self._summary.scalar(tag, value), step)

  def write_images(self, step: int, images: Mapping[str, Any]) -> None:
    """Each value `[N, H, W, C]` (C = 1, 3 or 4), uint8 or float in [0, 1]; N > 1 is tiled into one grid image."""
    logging.info("[%d] Got images: %s.", step, {k: np.shape(v) for k, v in images.items()}, extra=console.FILE_ONLY)
    if self._file is None:
      return
    for tag, batch in images.items():
      batch = np.asarray(batch)
      if batch.ndim != 4 or batch.shape[-1] not in (1, 3, 4):
        raise ValueError(f"image {tag!r} must be [N, H, W, C] with C in (1, 3, 4), got shape {batch.shape}")
      if batch.dtype != np.uint8:
        batch = (np.clip(batch.astype(np.float32), 0.0, 1.0) * 255).round().astype(np.uint8)
      grid = _tile(batch)
      self._file.add_summary(self._summary.image(tag, grid, dataformats="HWC"), step)

  def write_hparams(self, hparams: Mapping[str, Any]) -> None:
    """Hyperparameters for TensorBoard's HParams tab (str, bool, int, float; None skipped, others as str).

    Writes the session-start record only, as TensorFlow's hparams API does;
    TensorBoard then takes the metrics from the run's scalars.
    """
    logging.info("[Hyperparameters] %s", dict(hparams), extra=console.FILE_ONLY)
    if self._file is None:
      return
    clean = {k: (v if isinstance(v, (str, bool, int, float)) or v is None else str(v)) for k, v in hparams.items()}
    _, session_start, _ = self._summary.hparams(clean, {})
    self._file.add_summary(session_start)

  def flush(self) -> None:
    if self._file is not None:
      self._file.flush()

  def close(self) -> None:
    if self._file is not None:
      self._file.close()
      self._file = None

  def __enter__(self) -> "Writer":
    return self

  def __exit__(self, *exc) -> None:
    self.close()


def create_default_writer(logdir: str | os.PathLike, *, just_logging: bool = False) -> Writer:
  """The writer of one run: event files in `logdir` on process 0, the log only elsewhere."""
  return Writer(logdir, just_logging=just_logging)


def _tile(batch: np.ndarray) -> np.ndarray:
  """`[N, H, W, C]` -> `[rows * H, cols * W, C]`, row-major, at most 4 per row, zero-padded."""
  n, h, w, c = batch.shape
  if n == 1:
    return batch[0]
  cols = min(n, 4)
  rows = -(-n // cols)
  grid = np.zeros((rows * h, cols * w, c), batch.dtype)
  for i in range(n):
    r, q = divmod(i, cols)
    grid[r * h : (r + 1) * h, q * w : (q + 1) * w] = batch[i]
  return grid


# Reading event files back (tests, experiment reports).


def _masked_crc(data: bytes) -> int:
  from tensorboardX.record_writer import masked_crc32c  # pylint: disable=g-import-not-at-top

  return int(masked_crc32c(data))


def read_events(path: str | os.PathLike) -> Iterator[Any]:
  """The `Event` protos of one event file (local or gs://), in order; a torn last record ends the file.

  Raises ValueError on a record whose checksum does not match.
  """
  _import_tensorboardx()
  from tensorboardX.proto import event_pb2  # pylint: disable=g-import-not-at-top

  with paths.resolve(path).open("rb") as f:
    while True:
      header = f.read(12)
      if len(header) < 12:
        return
      length, length_crc = struct.unpack("<QI", header)
      if _masked_crc(header[:8]) != length_crc:
        raise ValueError(f"{path}: corrupt event record header")
      data, footer = f.read(length), f.read(4)
      if len(data) < length or len(footer) < 4:
        return
      if _masked_crc(data) != struct.unpack("<I", footer)[0]:
        raise ValueError(f"{path}: corrupt event record")
      event = event_pb2.Event()
      event.ParseFromString(data)
      yield event


def _scalar_value(value: Any) -> float | None:
  if value.HasField("simple_value"):
    return float(value.simple_value)
  if value.HasField("tensor"):  # TensorFlow's writers store scalars as 0-d tensors.
    tensor = value.tensor
    if tensor.float_val:
      return float(tensor.float_val[0])
    if tensor.double_val:
      return float(tensor.double_val[0])
    if tensor.tensor_content and tensor.dtype in (1, 2):  # DT_FLOAT, DT_DOUBLE
      return float(np.frombuffer(tensor.tensor_content, np.float32 if tensor.dtype == 1 else np.float64)[0])
  return None


def _event_files(logdir: str | os.PathLike) -> list[Any]:
  return sorted(paths.resolve(logdir).glob("events.out.tfevents.*"), key=os.fspath)


def read_scalars(logdir: str | os.PathLike) -> dict[str, list[tuple[int, float]]]:
  """{tag: [(step, value), ...]} from every `events.out.tfevents.*` file directly in `logdir`, by file name order."""
  scalars: dict[str, list[tuple[int, float]]] = {}
  for path in _event_files(logdir):
    for event in read_events(path):
      if not event.HasField("summary"):
        continue
      for value in event.summary.value:
        number = _scalar_value(value)
        if number is not None:
          scalars.setdefault(value.tag, []).append((int(event.step), number))
  return scalars


def read_tags(logdir: str | os.PathLike) -> set[str]:
  """Every summary tag (scalars, images, hparams) in the event files directly in `logdir`."""
  return {
    value.tag
    for path in _event_files(logdir)
    for event in read_events(path)
    if event.HasField("summary")
    for value in event.summary.value
  }


# Periodic actions (called once after every training step).


def _format_secs(secs: float) -> str:
  secs = max(int(round(secs)), 0)
  hours, rest = divmod(secs, 3600)
  mins, secs = divmod(rest, 60)
  return f"{hours}h{mins:02d}m" if hours else f"{mins}m{secs:02d}s"


class ReportProgress:
  """Every `every_steps` steps and at the last step: logs the progress line and writes its scalars.

  The line: `Step 50/400 (12.5%): loss 0.8123, train Dice 0.4051, 3.21 steps/s, ETA 1m49s`, where
  loss and train Dice are `train/loss` and `train/dice_foreground` of the `metrics` passed with the step
  (left out when not given). Also writes the scalars `steps_per_sec` and `uptime` (seconds since
  construction).

  The first call only starts the clock (its step includes compilation), so
  the rate is that of the steps since the previous report.
  """

  def __init__(self, *, num_train_steps: int, every_steps: int, writer: Writer | None = None):
    self._num_steps = num_train_steps
    self._every = every_steps
    self._writer = writer
    self._t0 = time.monotonic()
    self._previous: tuple[int, float] | None = None

  def __call__(self, step: int, t: float | None = None, metrics: Mapping[str, float] | None = None) -> bool:
    t = time.monotonic() if t is None else t
    if self._previous is None:
      self._previous = (step, t)
      return False
    if step % self._every and step != self._num_steps:
      return False
    previous_step, previous_t = self._previous
    steps_per_sec = (step - previous_step) / max(t - previous_t, 1e-9)
    eta = (self._num_steps - step) / max(steps_per_sec, 1e-9)
    metrics = metrics or {}
    values = "".join(
      f"{label} {float(metrics[key]):.4f}, "
      for key, label in (("train/loss", "loss"), ("train/dice_foreground", "train Dice"))
      if key in metrics
    )
    logging.info(
      "Step %d/%d (%.1f%%): %s%.2f steps/s, ETA %s",
      step,
      self._num_steps,
      100 * step / self._num_steps,
      values,
      steps_per_sec,
      _format_secs(eta),
    )
    if self._writer is not None:
      self._writer.write_scalars(step, {"steps_per_sec": steps_per_sec, "uptime": t - self._t0})
    self._previous = (step, t)
    return True


class Profile:
  """A `jax.profiler` trace of steps `first_step + 1 .. first_step + num_steps` into `logdir`.

  Traces once per run (clu's Profile repeated every hour; one trace of a
  warmed-up stretch is what is looked at). A trace that cannot start (another
  profiler running) is logged and skipped, never fatal.
  """

  def __init__(self, *, logdir: str | os.PathLike, num_profile_steps: int, first_step: int = 10):
    self._logdir = os.fspath(logdir)
    self._num_steps = num_profile_steps
    self._first = first_step
    self._running = False
    self._done = False

  def __call__(self, step: int) -> bool:
    if self._running and step >= self._first + self._num_steps:
      jax.profiler.stop_trace()
      self._running, self._done = False, True
      logging.info("Profile of steps %d-%d written under %s", self._first + 1, step, self._logdir)
      return True
    if not self._running and not self._done and step >= self._first:
      try:
        jax.profiler.start_trace(self._logdir)
        self._running, self._first = True, step
      except Exception as e:  # pylint: disable=broad-except  (profiler already running elsewhere)
        logging.warning("Could not start the profiler: %s", e)
        self._done = True
    return False

  def close(self) -> None:
    """Stops a trace still running (training ended inside the profiled stretch)."""
    if self._running:
      with contextlib.suppress(Exception):
        jax.profiler.stop_trace()
      self._running, self._done = False, True

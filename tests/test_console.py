"""The console shows jaxseg's own lines, the workdir's log file everything; Ctrl-C ends a run with one line."""

import logging
import os
import pathlib
import re
import signal
import subprocess
import sys
import time

import pytest

from jaxseg import console, paths, writers

ROOT = pathlib.Path(__file__).parent.parent
PROGRESS = re.compile(r"Step (\d+)/(\d+) \([\d.]+%\): loss [\d.]+, train Dice [\d.]+, [\d.]+ steps/s, ETA \d+")


def record(level=logging.INFO, pathname=None, name="absl", **extra):
  """A log record as absl makes one: logger 'absl', the caller's file as pathname."""
  pathname = pathname or str(ROOT / "jaxseg" / "train.py")
  rec = logging.LogRecord(name, level, pathname, 1, "message", (), None)
  rec.__dict__.update(extra)
  return rec


ORBAX = "/venv/lib/python3.11/site-packages/orbax/checkpoint/_src/checkpoint_manager.py"
TFDS = "/venv/lib/python3.11/site-packages/tensorflow_datasets/core/dataset_builder.py"


def test_origin_of_absl_and_standard_records():
  assert console.origin(record()) == "jaxseg"
  assert console.origin(record(pathname=ORBAX)) == "orbax"
  assert console.origin(record(pathname=TFDS)) == "tensorflow_datasets"
  assert console.origin(record(name="jax._src.xla_bridge", pathname="/x/jax/_src/xla_bridge.py")) == "jax"
  assert console.origin(record(name="py.warnings", pathname="/usr/lib/logging/__init__.py")) == "warnings"
  assert console.is_own(record(name="jaxseg.data", pathname="/elsewhere.py"))


@pytest.mark.parametrize(
  "verbosity,rec,shown",
  [
    (0, record(), True),  # jaxseg's own INFO
    (0, record(**console.FILE_ONLY), False),  # jaxseg detail (scalars, hyperparameters)
    (0, record(pathname=ORBAX), False),  # a library's INFO
    (0, record(logging.WARNING, pathname=ORBAX), True),  # a library's warning
    (0, record(logging.WARNING, pathname=TFDS), False),  # TFDS's "custom data configuration"
    (0, record(logging.ERROR, pathname=TFDS), True),
    (0, record(logging.WARNING, name="matplotlib.font_manager", pathname="/x/font_manager.py"), False),
    (0, record(logging.DEBUG), False),
    (-1, record(), False),
    (-1, record(logging.WARNING), True),
    (1, record(pathname=ORBAX), True),
    (1, record(**console.FILE_ONLY), True),
    (1, record(logging.WARNING, pathname=TFDS), True),
    (1, record(logging.DEBUG), False),
    (2, record(logging.DEBUG, pathname=ORBAX), True),
  ],
)
def test_console_filter(verbosity, rec, shown):
  assert console.ConsoleFilter(verbosity).filter(rec) is shown


def test_console_format_names_level_and_library():
  formatter = console.ConsoleFormatter()
  assert re.fullmatch(r"\d\d:\d\d:\d\d message", formatter.format(record()))
  assert re.fullmatch(
    r"\d\d:\d\d:\d\d WARNING \[orbax\] message", formatter.format(record(logging.WARNING, pathname=ORBAX))
  )


def test_log_file_in_the_workdir(tmp_path):
  path = console.open_log_file(tmp_path / "run", "train")
  try:
    assert re.fullmatch(r"train-\d{8}-\d{6}\.log", pathlib.Path(path).name)
    assert pathlib.Path(path).parent == tmp_path / "run" / "logs"
    library = logging.getLogger("orbax.test")
    library.setLevel(logging.INFO)
    library.info("library detail")
    console.to_log_file(logging.ERROR, "jaxseg: error: the end")
  finally:
    console.close_log_file()
  text = pathlib.Path(path).read_text()
  assert "library detail" in text and "jaxseg: error: the end" in text
  assert console.log_file() is None
  assert console.log_file_name("evaluate", 3, now=0).endswith("-p3.log")


def test_log_file_of_a_bucket_workdir_is_uploaded_at_the_end(tmp_path, monkeypatch):
  bucket = tmp_path / "bucket"  # Stands in for gs://bucket/run: written only through the path object.
  monkeypatch.setattr(paths, "is_remote", lambda path: True)
  monkeypatch.setattr(paths, "resolve", lambda path, what="path": bucket)
  path = console.open_log_file("gs://bucket/run", "train")
  assert path.startswith(str(bucket / "logs" / "train-")) and not (bucket / "logs").exists()
  console.to_log_file(logging.WARNING, "jaxseg: interrupted")
  console.close_log_file()
  assert "jaxseg: interrupted" in pathlib.Path(path).read_text()


def test_no_log_file_where_it_cannot_be_written(tmp_path):
  blocker = tmp_path / "file"
  blocker.write_text("")
  assert console.open_log_file(blocker / "run", "train") is None  # The mode reports the workdir in one line.
  assert console.open_log_file(tmp_path / "missing", "evaluate", create=False) is None
  assert not (tmp_path / "missing").exists()


def test_progress_line_has_loss_dice_rate_and_eta(caplog):
  report = writers.ReportProgress(num_train_steps=10, every_steps=5)
  with caplog.at_level(logging.INFO, logger="absl"):
    report(1, t=0.0)
    report(5, t=2.0, metrics={"train/loss": 0.5, "train/dice_foreground": 0.25, "train/grad_norm": 1.0})
  line = caplog.records[-1].getMessage()
  assert line == "Step 5/10 (50.0%): loss 0.5000, train Dice 0.2500, 2.00 steps/s, ETA 0m02s"


def run_main(*args, timeout=240):
  return subprocess.run(
    [sys.executable, "-m", "jaxseg.main", *map(str, args)],
    cwd=ROOT,
    capture_output=True,
    text=True,
    timeout=timeout,
    env=dict(os.environ, JAX_PLATFORMS="cpu"),
  )


def test_quick_run_console_is_short_and_the_log_file_has_the_detail(tmp_path):
  """The one-minute quick run, preparing its data: about 20 console lines (210 before), the rest in the log."""
  workdir = tmp_path / "run"
  result = run_main(
    "--config=configs/unet_ct.py:quick", f"--workdir={workdir}", f"--config.data.data_dir={tmp_path / 'data'}"
  )
  assert result.returncode == 0, result.stderr[-3000:]
  lines = (result.stdout + result.stderr).splitlines()
  assert len(lines) <= 40, "\n".join(lines)
  assert "\r" not in result.stderr  # No progress bars redrawn into a pipe.
  assert [int(m.group(1)) for m in map(PROGRESS.search, lines) if m] == [5, 10, 15, 20]
  assert sum("validation Dice" in line for line in lines) == 2
  for split in ("validation", "test"):
    assert any(f"report in {workdir / 'results' / split / 'summary.md'}" in line for line in lines), split
  assert not [line for line in lines if re.search(r"orbax|Checkpoint|libtpu|Hyperparameters|train/loss=", line)]
  logs = list((workdir / "logs").glob("train-*.log"))
  assert len(logs) == 1 and f"full log in {logs[0]}" in result.stderr
  text = logs[0].read_text()
  assert len(text.splitlines()) > 100
  for detail in (
    "CheckpointManager",
    "Saving checkpoint at step 20",
    "[Hyperparameters]",
    "train/loss=",
    "Step 20/20 (100.0%): loss",
    "test (step 10): mean foreground Dice",
    "Command line: ",
  ):
    assert detail in text, detail


def test_verbosity_1_shows_the_detail_and_errors_reach_the_log_file(tmp_path):
  workdir = tmp_path / "run"
  quiet = run_main("--config=configs/unet_ct.py", "--config.model.name=unett", f"--workdir={workdir}")
  loud = run_main("--config=configs/unet_ct.py", "--config.model.name=unett", f"--workdir={workdir}", "-v", "1")
  for result in (quiet, loud):
    assert result.returncode == 1 and result.stderr.strip().splitlines()[-1].startswith("jaxseg: error:")
  assert "Command line: " not in quiet.stderr and "Command line: " in loud.stderr
  logs = sorted((workdir / "logs").glob("train-*.log"))
  assert logs and all("jaxseg: error: " in log.read_text() for log in logs)


def test_ctrl_c_during_training_is_one_line_and_status_130(tmp_path):
  """Ctrl-C (SIGINT to the process group, as a terminal sends it) once a checkpoint exists."""
  workdir = tmp_path / "run"
  process = subprocess.Popen(
    [
      sys.executable,
      "-m",
      "jaxseg.main",
      "--config=configs/unet_ct.py:quick",
      f"--workdir={workdir}",
      "--config.train.num_steps=100000",
      "--config.train.checkpoint_every_steps=5",
      "--config.train.eval_every_steps=100000",
      "--config.model.features=4",
      "--config.model.depth=2",
    ],
    cwd=ROOT,
    env=dict(os.environ, JAX_PLATFORMS="cpu"),
    stdout=subprocess.PIPE,
    stderr=subprocess.PIPE,
    text=True,
    start_new_session=True,
    # As a terminal's foreground job: a shell's background job (pytest under `cmd &`) passes SIGINT ignored to
    # its children, and jaxseg then leaves Ctrl-C alone on purpose (train._Progress.defer_ctrl_c).
    preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
  )
  try:
    deadline = time.time() + 180
    while not any((workdir / "checkpoints" / "latest").glob("[0-9]*")):
      assert process.poll() is None and time.time() < deadline, process.stderr.read()[-3000:]
      time.sleep(0.2)
    time.sleep(0.5)  # Into the steps after the first checkpoint.
    os.killpg(process.pid, signal.SIGINT)
    _, stderr = process.communicate(timeout=120)
  finally:
    if process.poll() is None:
      os.killpg(process.pid, signal.SIGKILL)
      process.wait()
  assert process.returncode == 130, stderr[-3000:]
  assert "Traceback" not in stderr, stderr[-3000:]
  last = stderr.strip().splitlines()[-1]
  match = re.fullmatch(r"jaxseg: interrupted at step (\d+); rerun the same command to resume from step (\d+)", last)
  assert match, stderr[-3000:]
  step, resume = int(match.group(1)), int(match.group(2))
  saved = sorted(int(p.name) for p in (workdir / "checkpoints" / "latest").iterdir() if p.name.isdigit())
  assert resume == saved[-1] and 5 <= resume <= step, (step, resume, saved)
  assert not list((workdir / "checkpoints" / "latest").glob("*tmp*"))  # No checkpoint left half-written.
  assert last in next((workdir / "logs").glob("train-*.log")).read_text()

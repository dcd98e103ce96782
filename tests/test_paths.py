"""jaxseg.paths: local paths and gs:// URLs, tested offline with an in-process fake bucket backend.

The `bucket` fixture (conftest.py) serves gs:// from a local folder.
"""

import json
import os
import pathlib

import pytest
from etils import epath

from jaxseg import checkpointing, config as config_lib, evaluate, experiment, paths
from jaxseg.data import location
from jaxseg.errors import WorkdirError


def test_local_paths_stay_pathlib(tmp_path):
  assert paths.resolve(tmp_path / "run") == tmp_path / "run"
  assert isinstance(paths.resolve("~/x"), pathlib.Path) and "~" not in str(paths.resolve("~/x"))
  assert paths.resolve(f"file://{tmp_path}/run") == tmp_path / "run"
  assert not paths.is_remote(tmp_path)


def test_urls_and_pathlib_mangled_urls_become_epath():
  for given in ("gs://bucket/run", pathlib.Path("gs://bucket/run"), "gs:/bucket/run"):
    resolved = paths.resolve(given)
    assert isinstance(resolved, epath.Path) and os.fspath(resolved) == "gs://bucket/run", given
    assert paths.is_remote(given)


@pytest.mark.parametrize(
  "url, message",
  [
    ("s3://bucket/run", "jaxseg cannot read or write s3:// paths; use a local path or gs://bucket/..."),
    ("hdfs://namenode/run", "cannot read or write hdfs:// paths"),
    ("gs:///run", "no bucket name after gs://"),
  ],
)
def test_unsupported_urls_are_refused_in_one_line(url, message):
  with pytest.raises(WorkdirError, match=message) as error:
    paths.resolve(url, "workdir")
  assert str(error.value).startswith(f"workdir {url}: ") and "\n" not in str(error.value)


def test_workdir_config_and_reports_land_in_the_bucket(bucket, tmp_path):
  workdir = experiment.ensure_workdir("gs://my-bucket/runs/a")
  assert os.fspath(workdir) == "gs://my-bucket/runs/a"
  assert (bucket / "my-bucket" / "runs" / "a").is_dir()
  assert not (tmp_path / "gs:").exists()  # The old behaviour: a local folder named gs:.
  paths.write_text_atomic(workdir / "config.json", '{"seed": 0}')
  assert json.loads((bucket / "my-bucket/runs/a/config.json").read_text()) == {"seed": 0}
  summary = evaluate.summarize(
    [{"case_id": "c1", "class": "liver", **{m: 0.5 for m in evaluate.METRIC_NAMES}}], ["liver"], 7
  )
  evaluate.write_reports(workdir / "results" / "test", [], ["liver"], "test", summary)
  written = bucket / "my-bucket/runs/a/results/test"
  assert json.loads((written / "summary.json").read_text())["step"] == 7
  assert (written / "summary.md").read_text().startswith("# test: 1 cases")
  assert not list(written.glob("*.tmp"))


def test_data_dir_and_checkpoint_directory_follow_the_url(bucket):
  config = config_lib.base_config()
  config.data.data_dir = "gs://data-bucket/jaxseg"
  assert os.fspath(location.data_dir(config) / "prepared") == "gs://data-bucket/jaxseg/prepared"
  config.data.data_dir = "ftp://host/data"
  with pytest.raises(WorkdirError, match=r"^config.data.data_dir ftp://host/data: jaxseg cannot"):
    location.data_dir(config)
  checkpoints = checkpointing.Checkpoints("gs://my-bucket/runs/b")
  assert os.fspath(checkpoints.directory) == "gs://my-bucket/runs/b/checkpoints"
  assert (bucket / "my-bucket/runs/b/checkpoints/latest").is_dir()  # Created through epath, in the bucket.
  assert checkpoints.latest_step() is None
  checkpoints.close()


def test_unwritable_local_workdir_is_one_line(tmp_path):
  blocker = tmp_path / "file"
  blocker.write_text("x")
  with pytest.raises(WorkdirError, match="workdir .*file/run cannot be written"):
    experiment.ensure_workdir(blocker / "run")


def test_prediction_outputs_are_written_to_the_bucket(bucket):
  import nibabel as nib  # pylint: disable=g-import-not-at-top
  import numpy as np  # pylint: disable=g-import-not-at-top
  from jaxseg import predict  # pylint: disable=g-import-not-at-top
  from jaxseg.data import nifti  # pylint: disable=g-import-not-at-top

  config = config_lib.base_config()
  config.predict.input, config.predict.output = "/data/in", "gs://my-bucket/predictions"
  _, output = predict._paths(config)  # pylint: disable=protected-access
  assert os.fspath(output) == "gs://my-bucket/predictions"
  labels = np.arange(24, dtype=np.uint8).reshape(2, 3, 4)
  paths.write_via_local(output / "case_1.nii.gz", lambda p: nifti.save_nifti(p, labels, np.eye(4)))
  stored = bucket / "my-bucket/predictions/case_1.nii.gz"
  assert np.array_equal(np.asarray(nib.load(stored).dataobj), labels)
  config.predict.output = "s3://other/predictions"
  with pytest.raises(WorkdirError, match="^config.predict.output s3://other/predictions: jaxseg cannot"):
    predict._paths(config)  # pylint: disable=protected-access


def test_replace_atomically_leaves_the_old_file_on_failure_and_no_temporary(tmp_path):
  target = tmp_path / "report.txt"
  paths.write_text_atomic(target, "old")

  def failing(tmp):
    tmp.write_text("half")
    raise RuntimeError("writer failed")

  with pytest.raises(RuntimeError, match="writer failed"):
    paths.replace_atomically(target, failing, ".txt")
  assert target.read_text() == "old" and [p.name for p in tmp_path.iterdir()] == ["report.txt"]
  seen = []
  paths.replace_atomically(target, lambda tmp: (seen.append(tmp.name), tmp.write_text("new")), ".nii.gz")
  assert target.read_text() == "new" and seen[0].endswith(".tmp.nii.gz") and seen[0].startswith(".report.txt.")
  assert [p.name for p in tmp_path.iterdir()] == ["report.txt"]


def test_exclusive_lock_serialises_processes(tmp_path):
  """A second process waits for the lock the first holds: its line comes after the holder's 'released'."""
  import subprocess  # pylint: disable=g-import-not-at-top
  import sys  # pylint: disable=g-import-not-at-top
  import time  # pylint: disable=g-import-not-at-top

  lock, log, started = tmp_path / ".prepare.lock", tmp_path / "log.txt", tmp_path / "started"
  child = (
    "import pathlib, sys; from jaxseg import paths\n"
    "pathlib.Path(sys.argv[3]).touch()\n"
    "with paths.exclusive_lock(pathlib.Path(sys.argv[1])):\n"
    "  open(sys.argv[2], 'a').write('child\\n')\n"
  )
  with paths.exclusive_lock(lock):
    process = subprocess.Popen([sys.executable, "-c", child, str(lock), str(log), str(started)])
    deadline = time.monotonic() + 60
    while not started.exists() and time.monotonic() < deadline:
      time.sleep(0.05)
    assert started.exists(), "the child process did not start"
    time.sleep(0.5)  # Without the lock the child would write now, before 'released'.
    with open(log, "a") as f:
      f.write("released\n")
  assert process.wait(timeout=60) == 0
  assert log.read_text() == "released\nchild\n"

"""experiments/time_to_accuracy.py: a run is stopped at its budget or once validation reaches the threshold.

The runs here are a fake training process that writes validation scalars as jaxseg.train does and then waits.
"""

import argparse
import subprocess
import sys
import time

import pytest
from study_modules import load_study

tta = load_study("time_to_accuracy")

FAKE_RUN = """
import sys, time
from jaxseg import writers
writer = writers.create_default_writer(sys.argv[1])
for step, dice in ((50, 0.5), (100, 0.95)):
  writer.write_scalars(step, {"validation/dice_foreground": dice, "validation/dice_liver": dice})
writer.close()  # On disk now (tensorboardX's flush() can leave queued events for its 30 s timer).
time.sleep(300)
"""


def start_fake_run(tmp_path, name):
  script = tmp_path / "fake_run.py"
  script.write_text(FAKE_RUN)
  log = open(tmp_path / f"{name}.log", "w")  # pylint: disable=consider-using-with
  start = time.time()
  process = subprocess.Popen([sys.executable, str(script), str(tmp_path / name)], stdout=log, stderr=subprocess.STDOUT)
  return {"command": "fake", "start": start, "process": process, "log": log}


@pytest.mark.parametrize(
  "threshold,budget_s,stopped",
  [(0.9, 0.0, "stopped_at_threshold"), (0.99, 4.0, "stopped_at_budget")],
)
def test_a_run_is_stopped_at_the_threshold_or_at_its_budget(tmp_path, monkeypatch, threshold, budget_s, stopped):
  monkeypatch.setattr(tta, "POLL_S", 0.5)
  run = start_fake_run(tmp_path, "host")
  args = argparse.Namespace(budget_s=budget_s, stop_at_threshold=True, threshold=threshold)
  tta.finish(run, tmp_path / "host", args)
  other = "stopped_at_budget" if stopped == "stopped_at_threshold" else "stopped_at_threshold"
  assert run[stopped] and not run.get(other)
  assert run["process"].returncode is not None and run["end"] - run["start"] < 120
  rows = tta.validation_history(tmp_path / "host", run["start"])["validation/dice_foreground"]
  if stopped == "stopped_at_threshold":
    assert [(step, round(dice, 2)) for step, dice, _ in rows] == [(50, 0.5), (100, 0.95)]
    assert tta.first_at(rows, threshold)[1] == 100
  else:
    assert tta.first_at(rows, threshold) is None

"""End to end: train, evaluate, resume exactly, and refuse bad states (tiny model, tiny phantom)."""

import json

import jax
import numpy as np
import pytest

from jaxseg import checkpointing, train, writers
from jaxseg.data import pipeline
from jaxseg.errors import CheckpointError, TrainingError, WorkdirError


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
  return tmp_path_factory.mktemp("data")


@pytest.fixture(scope="module")
def tiny_config(phantom_config):
  """`tiny_config(data_dir, **train_overrides)`: the tiny phantom config with one figure per report."""

  def make(data_dir, **train_overrides):
    return phantom_config(data_dir, train=train_overrides, eval={"num_figures": 1})

  return make


def test_train_writes_every_output(data_dir, tiny_config, tmp_path):
  results = train.train_and_evaluate(tiny_config(data_dir), tmp_path)
  assert (tmp_path / "config.json").exists()
  assert json.loads((tmp_path / "config.json").read_text())["model"]["num_classes"] == 5
  assert sorted(p.name for p in (tmp_path / "checkpoints" / "latest").iterdir() if p.name.isdigit()) == ["2", "4"]
  assert any((tmp_path / "checkpoints" / "best").iterdir())
  scalars = writers.read_scalars(tmp_path)  # TensorBoard events, written without TensorFlow.
  assert [step for step, _ in scalars["train/loss"]] == [2, 4] and [s for s, _ in scalars["steps_per_sec"]] == [2, 4]
  assert [step for step, _ in scalars["validation/dice_foreground"]] == [2, 4]
  assert {"validation/image_reference_prediction", "_hparams_/session_start_info"} <= writers.read_tags(tmp_path)
  summary = json.loads((tmp_path / "results" / "test" / "summary.json").read_text())
  assert summary == results["test"]
  for name in ("liver", "spleen", "kidney", "tumour"):
    assert set(summary[name]) >= {"dice", "iou", "sensitivity", "specificity", "hd95", "assd", "nsd"}
  assert summary["num_cases"] >= 1 and summary["step"] in (2, 4)
  assert "mean_foreground" in summary
  csv_lines = (tmp_path / "results" / "test" / "cases.csv").read_text().splitlines()
  assert csv_lines[0].startswith("case_id,class,dice")
  assert len(csv_lines) == 1 + 4 * summary["num_cases"]
  assert "| liver |" in (tmp_path / "results" / "test" / "summary.md").read_text()
  assert list((tmp_path / "results" / "test" / "figures").glob("*.png"))


def test_eval_every_steps_0_trains_without_validation_and_evaluates_the_latest(data_dir, tiny_config, tmp_path):
  results = train.train_and_evaluate(tiny_config(data_dir, eval_every_steps=0), tmp_path)
  assert not any((tmp_path / "checkpoints" / "best").glob("[0-9]*"))
  assert not any(tag.startswith("validation/") for tag in writers.read_tags(tmp_path))
  assert "train/loss" in writers.read_scalars(tmp_path)
  assert results["test"]["step"] == 4  # eval.checkpoint 'best' falls back to the latest.


def test_killed_run_resumes_to_identical_result(data_dir, tiny_config, tmp_path, interrupt_training, restore_latest):
  config = tiny_config(data_dir, num_steps=6, checkpoint_every_steps=3, eval_every_steps=3)
  reference = train.train_and_evaluate(config, tmp_path / "uninterrupted")
  # Step 4 is computed but its checkpoint (step 6) never written.
  interrupt_training(config, tmp_path / "resumed", after_batches=4)
  assert checkpointing.Checkpoints(tmp_path / "resumed", read_only=True).latest_step() == 3
  resumed = train.train_and_evaluate(config, tmp_path / "resumed")

  assert resumed == reference
  a, step_a = restore_latest(config, tmp_path / "uninterrupted")
  b, step_b = restore_latest(config, tmp_path / "resumed")
  assert step_a == step_b == 6
  for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
    np.testing.assert_array_equal(x, y)


def test_corrupt_checkpoint_is_an_error_and_is_kept(data_dir, tiny_config, tmp_path):
  config = tiny_config(data_dir, num_steps=2)
  train.train_and_evaluate(config, tmp_path)
  step_dir = tmp_path / "checkpoints" / "latest" / "2"
  files = [p for p in step_dir.rglob("*") if p.is_file() and p.stat().st_size > 0]
  for path in files:
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
  sizes = {p: p.stat().st_size for p in files}
  config.train.num_steps = 4
  with pytest.raises(CheckpointError, match="corrupt or unreadable"):
    train.train_and_evaluate(config, tmp_path)
  assert {p: p.stat().st_size for p in files} == sizes  # Nothing overwritten.


def test_nan_loss_stops_with_step_and_keeps_last_good_checkpoint(data_dir, tiny_config, tmp_path, monkeypatch):
  config = tiny_config(data_dir, num_steps=6, checkpoint_every_steps=2, eval_every_steps=100)
  original = pipeline.train_batches

  def poisoned_batches(*args, **kwargs):
    for step, batch in enumerate(original(*args, **kwargs), start=kwargs["start_step"] + 1):
      if step == 3:
        batch = dict(batch, image=np.full_like(batch["image"], np.nan))
      yield batch

  monkeypatch.setattr(pipeline, "train_batches", poisoned_batches)
  with pytest.raises(TrainingError, match=r"at step 3; .*last good checkpoint \(step 2\) is kept"):
    train.train_and_evaluate(config, tmp_path)
  assert checkpointing.Checkpoints(tmp_path, read_only=True).latest_step() == 2


def test_unwritable_workdir_is_named(data_dir, tiny_config, tmp_path):
  blocker = tmp_path / "a_file"
  blocker.write_text("x")
  with pytest.raises(WorkdirError, match="a_file/run cannot be written"):
    train.train_and_evaluate(tiny_config(data_dir), blocker / "run")

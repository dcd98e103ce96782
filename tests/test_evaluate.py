"""Evaluation in the original geometry, post-processing choice and reports, on a tiny raw dataset.

The raw files (the `tiny_msd` fixture of conftest.py) have a permuted and flipped affine and a zero border
that preprocessing crops away, so a prediction is only scored right if orientation and crop are undone. The
model is replaced by an oracle that returns the preprocessed reference (plus a spurious blob), which makes
every number computable by hand.
"""

import csv
import hashlib
import json

import numpy as np
import pytest

from jaxseg import evaluate, experiment, inference
from jaxseg.config import base_config
from jaxseg.data import pipeline
from jaxseg.errors import ConfigError

VOXEL_ML = 1.5 * 1.5 * 3.0 / 1000.0  # The voxel of the tiny dataset (conftest.TinyMsd) in mL.


def organ_voxels(prepared):
  return 6 * 7 * (3 if prepared.ndim == 3 else 1)


@pytest.fixture(scope="module", params=[5, 1], ids=["3d", "2d"])
def dataset(request, tmp_path_factory, tiny_msd):
  base = tmp_path_factory.mktemp(f"tiny{request.param}")
  root = tiny_msd.write(base / "raw", depth=request.param)
  config = tiny_msd.config(root, base / "data")
  prepared = pipeline.prepare(config)
  return config, prepared


def oracle(prepared, blob):
  """A stand-in for `predict_probabilities`: one-hot of the preprocessed reference, with `blob` voxels
  [Z, Y, X] of the cropped, canonical grid set to 'organ'."""
  labels = {}
  for split in ("validation", "test"):
    for case in pipeline.CaseSource(prepared, split):
      label = case.label.copy()
      label[blob] = 1
      labels[hashlib.sha1(case.image.tobytes()).hexdigest()] = label

  def predict_probabilities(predict, image, config, num_classes):
    del predict, config
    return np.eye(num_classes, dtype=np.float32)[labels[hashlib.sha1(image.tobytes()).hexdigest()]]

  return predict_probabilities


BLOB = (0, slice(0, 2), slice(0, 2))  # 4 background voxels in a corner of the cropped volume.


def run_evaluation(dataset, tiny_msd, tmp_path, monkeypatch, postprocess_enabled):
  config, prepared = dataset
  config = tiny_msd.config(config.data.root, config.data.data_dir)
  config.eval.postprocess = postprocess_enabled
  monkeypatch.setattr(inference, "predict_probabilities", oracle(prepared, BLOB))
  exp = experiment.setup(config, tmp_path)
  return evaluate.evaluate_predictor(exp, predict=None, step=7)


def test_oracle_with_largest_component_is_perfect_in_original_geometry(dataset, tiny_msd, tmp_path, monkeypatch):
  results = run_evaluation(dataset, tiny_msd, tmp_path, monkeypatch, postprocess_enabled=True)
  choice = json.loads((tmp_path / "postprocessing.json").read_text())
  organ = organ_voxels(dataset[1])
  assert choice["largest_component"] == ["organ"]  # Removes the blob; would delete half of 'pair'.
  assert choice["step"] == 7 and choice["num_cases"] == 1
  assert choice["validation_dice"]["organ"]["as_predicted"] == pytest.approx(2 * organ / (2 * organ + 4))
  assert choice["validation_dice"]["organ"]["largest_component"] == 1.0
  assert choice["validation_dice"]["pair"]["as_predicted"] == 1.0
  assert choice["validation_dice"]["pair"]["largest_component"] < 1.0
  for split in ("validation", "test"):
    summary = json.loads((tmp_path / "results" / split / "summary.json").read_text())
    assert summary == results[split]
    assert summary["num_cases"] == 1 and summary["step"] == 7
    assert summary["postprocessing"] == {"largest_component": ["organ"]}
    for name in ("organ", "pair"):
      assert summary[name]["dice"] == 1.0 and summary[name]["nsd"] == 1.0
      assert summary[name]["hd95"] == 0.0 and summary[name]["assd"] == 0.0
      assert summary[name]["volume_difference"] == 0.0
      assert summary["std"][name]["dice"] == 0.0
      assert set(summary["nan_skipped"][name].values()) == {0}
    figures = {p.name for p in (tmp_path / "results" / split / "figures").iterdir()}
    assert figures == {"best_cases.png", "worst_cases.png", "boxplots.png"}


def test_without_post_processing_the_blob_counts_with_raw_spacing(dataset, tiny_msd, tmp_path, monkeypatch):
  results = run_evaluation(dataset, tiny_msd, tmp_path, monkeypatch, postprocess_enabled=False)
  assert json.loads((tmp_path / "postprocessing.json").read_text())["largest_component"] == []
  organ = results["test"]["organ"]
  voxels = organ_voxels(dataset[1])
  assert organ["dice"] == pytest.approx(2 * voxels / (2 * voxels + 4))
  assert organ["precision"] == pytest.approx(voxels / (voxels + 4))
  assert organ["sensitivity"] == 1.0
  is_3d = dataset[1].ndim == 3
  # 4 extra voxels of 1.5 x 1.5 x 3 mm (in mL) or, in 2D, of 1.5 x 1.5 mm (in cm^2).
  assert organ["volume_difference"] == pytest.approx(4 * (VOXEL_ML if is_3d else 1.5 * 1.5 / 100))
  assert organ["hd95"] > 0 and results["test"]["pair"]["dice"] == 1.0
  rows = list(csv.DictReader((tmp_path / "results" / "test" / "cases.csv").open()))
  assert [(r["case_id"], r["class"]) for r in rows] == [(tiny_msd.CASES[4], "organ"), (tiny_msd.CASES[4], "pair")]
  assert float(rows[0]["dice"]) == pytest.approx(organ["dice"])
  assert "| organ |" in (tmp_path / "results" / "test" / "summary.md").read_text()


def test_summarize_skips_and_counts_nan():
  def row(case, name, dice, hd95):
    return {"case_id": case, "class": name, **{m: 1.0 for m in evaluate.METRIC_NAMES}, "dice": dice, "hd95": hd95}

  rows = [
    row("a", "liver", 0.9, 2.0),
    row("b", "liver", 0.5, float("nan")),
    row("c", "liver", 0.7, 4.0),
    row("a", "tumour", 0.0, float("nan")),
    row("b", "tumour", 1.0, float("nan")),
    row("c", "tumour", 0.2, float("nan")),
  ]
  summary = evaluate.summarize(rows, ["liver", "tumour"], step=3, postprocessed=["liver"])
  assert summary["liver"]["dice"] == pytest.approx(0.7)
  assert summary["std"]["liver"]["dice"] == pytest.approx(np.sqrt(0.08 / 3))
  assert summary["liver"]["hd95"] == 3.0 and summary["std"]["liver"]["hd95"] == 1.0
  assert summary["nan_skipped"]["liver"]["hd95"] == 1 and summary["nan_skipped"]["liver"]["dice"] == 0
  assert summary["tumour"]["hd95"] is None and summary["nan_skipped"]["tumour"]["hd95"] == 3
  assert summary["mean_foreground"]["dice"] == pytest.approx(0.7 / 2 + 0.4 / 2)
  assert summary["mean_foreground"]["hd95"] == 3.0  # The tumour's undefined mean is left out.
  assert summary["num_cases"] == 3 and summary["step"] == 3
  assert summary["postprocessing"] == {"largest_component": ["liver"]}
  text = evaluate.summary_markdown(summary, ["liver", "tumour"], "test")
  assert "3.0000 ± 1.0000 (1 NaN)" in text and "n/a (3 NaN)" in text
  json.dumps(summary, allow_nan=False)


def test_surface_tolerances_from_config():
  config = base_config()
  foreground = {"liver": 1, "spleen": 2, "tumour": 3}
  assert evaluate.surface_tolerances(config, foreground) == {}
  config.eval.tolerances_mm = (2.0,)
  assert evaluate.surface_tolerances(config, foreground) == {"liver": 2.0, "spleen": 2.0, "tumour": 2.0}
  config.eval.tolerances_mm = (2.0, 1.5, 0.5)
  assert evaluate.surface_tolerances(config, foreground) == {"liver": 2.0, "spleen": 1.5, "tumour": 0.5}
  config.eval.tolerances_mm = (2.0, 1.0)
  with pytest.raises(ConfigError, match="config.eval.tolerances_mm has 2 values"):
    evaluate.surface_tolerances(config, foreground)

"""The README's generated result paragraph of experiments/adversarial.py."""

import pathlib

import pytest

from study_modules import load_study

ROOT = pathlib.Path(__file__).resolve().parent.parent


def _load_adversarial():
  return load_study("adversarial")


def _saved(adv):
  classes = ("liver", "mean_foreground")
  runs = []
  for seed, (plain, gain) in enumerate([(0.80, 0.05), (0.70, 0.07), (0.90, 0.06)]):
    for arm, dice in (("plain", plain), ("adversarial", plain + gain)):
      runs.append(
        {
          "arm": arm,
          "seed": seed,
          "test": {c: {"dice": dice, "hd95": 10.0} for c in classes},
          "config": {"train": {"num_steps": 150}, "data": {"patch_size": [64, 64]}},
        }
      )
  summary = adv.aggregate(runs, list(classes))
  return {
    "summary": summary,
    "seeds": [0, 1, 2],
    "runs": runs,
    "scale": "cpu",
    "date": "2026-12-01T00:00:00",
    "machine": "test machine",
    "cpu_count": 2,
    "versions": {"jax": "0.0"},
    "verdict": adv.verdict(summary),
  }


def test_update_readme_replaces_only_the_marked_block(tmp_path):
  adv = _load_adversarial()
  readme = tmp_path / "README.md"
  readme.write_text(f"before\n{adv.README_BEGIN}\nold text\n{adv.README_END}\nafter\n")
  adv.update_readme(_saved(adv), "experiments/results/adversarial.md", readme)
  text = readme.read_text()
  assert text.startswith("before\n") and text.endswith(f"{adv.README_END}\nafter\n")
  assert "old text" not in text
  # Adversarial 0.85, 0.77, 0.96 (std 0.0954) against 0.80, 0.70, 0.90: gains 0.05, 0.07, 0.06, a positive
  # interval, so "helped".
  assert "The adversarial term helped" in text
  assert "| liver | 0.800 ± 0.100 | 0.860 ± 0.095 | 0.060 ± 0.010 |" in text
  assert "(150 steps of 64 x 64 patches, the `--scale=cpu` protocol, 3 seeds, 2026-12-01, test machine, 2 CPU" in text


def test_update_readme_without_markers_names_the_file(tmp_path):
  adv = _load_adversarial()
  readme = tmp_path / "README.md"
  readme.write_text("no markers here\n")
  with pytest.raises(SystemExit, match="README.md: the markers"):
    adv.update_readme(_saved(adv), "x.md", readme)
  assert readme.read_text() == "no markers here\n"


def test_shipped_readme_block_matches_the_committed_results():
  """The README paragraph is exactly what --readme generates from the committed JSON (nothing typed by hand)."""
  import json

  adv = _load_adversarial()
  saved = json.loads((ROOT / "experiments" / "results" / "adversarial.json").read_text())
  text = (ROOT / "README.md").read_text()
  block = text[text.index(adv.README_BEGIN) + len(adv.README_BEGIN) + 1 : text.index(adv.README_END) - 1]
  assert block == adv.readme_block(saved, "experiments/results/adversarial.md")

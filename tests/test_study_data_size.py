"""experiments/data_size_and_hyperparameters.py: bad input, the runs and their configs, the statistics, the
report, resumption; and its --quick protocol end to end (slow)."""

import json
import math
import pathlib
import subprocess
import sys

import numpy as np
import pytest

from study_modules import assert_refused_before_training, load_study
from scipy import stats

ROOT = pathlib.Path(__file__).resolve().parent.parent
NAME = "data_size_and_hyperparameters"


study = load_study(NAME)


@pytest.mark.parametrize(
  "argv, message",
  [
    (["--losses=ce,hinge"], r"unknown loss 'hinge'; choose from dice_ce, ce, dice, focal"),
    (
      ["--factors=data_size,batch_size"],
      r"unknown factor 'batch_size'; choose from data_size, loss, "
      r"learning_rate, augmentation",
    ),
    (
      ["--sizes=2,21"],
      r"--sizes: 21 training cases asked for, the ct_phantom of this protocol \(30 cases\) has 20 "
      r"in its training split",
    ),
    (["--sizes=2,x"], r"--sizes: 'x' is not an integer"),
    (["--sizes=0"], r"--sizes: '0' must be >= 1 case"),
    (["--learning_rates=1e-3,-1"], r"--learning_rates: '-1' must be > 0"),
    (["--learning_rates=fast"], r"--learning_rates: 'fast' is not a number"),
    (["--scale=tpu"], r"argument --scale: invalid choice: 'tpu'"),
    (["--seeds=0"], r"--seeds must be >= 1, got 0"),
    (["--bogus"], r"unrecognized arguments: --bogus"),
  ],
)
def test_bad_input_is_one_line_before_training(tmp_path, argv, message):
  assert_refused_before_training(study, NAME, argv, message, tmp_path, f"--output={tmp_path / 'out'}")


def test_quick_sizes_are_checked_against_the_quick_phantom(tmp_path):
  with pytest.raises(SystemExit, match=r"--sizes: 6 training cases asked for, .* \(8 cases\) has 5"):
    study.main(["--quick", "--sizes=6", f"--workdir={tmp_path / 'runs'}"])


def test_one_baseline_serves_every_factor_and_each_run_changes_one_thing(tmp_path):
  args = study.parse_args([f"--workdir={tmp_path}"])
  runs = study.runs_of(args)
  assert list(runs) == [
    "baseline",
    "cases2",
    "cases4",
    "cases8",
    "loss_ce",
    "loss_dice",
    "loss_focal",
    "lr0.0005",
    "lr0.008",
    "augment_off",
  ]
  base = study.run_config(None, None, 1, args)
  assert base.seed == 1 and base.train.loss == "dice_ce" and base.data.max_train_cases == 0
  assert base.train.learning_rate == study._study.load_config("unet_ct").train.learning_rate
  assert base.data.num_cases == 30 and base.eval.splits == ("test",) and base.eval.checkpoint == "latest"
  flat = lambda c: dict(_flatten(c.to_dict()))
  expected = {
    "cases4": {"data.max_train_cases": 4},
    "loss_focal": {"train.loss": "focal"},
    "lr0.008": {"train.learning_rate": 0.008},
  }
  for name, changes in expected.items():
    config = study.run_config(*runs[name], 1, args)
    diff = {k: v for k, v in flat(config).items() if flat(base)[k] != v}
    assert diff == changes, name
  off = flat(study.run_config("augmentation", "off", 1, args))
  changed = {k for k, v in off.items() if flat(base)[k] != v}
  assert changed and all(k.startswith("data.augment.") and k.endswith("_prob") for k in changed)
  assert all(v == 0.0 for k, v in off.items() if k.startswith("data.augment.") and k.endswith("_prob"))
  # Levels equal to the baseline's are not run twice.
  args = study.parse_args(
    [
      f"--workdir={tmp_path}",
      "--sizes=4,20",
      "--losses=dice_ce,ce",
      "--learning_rates=2e-3",
      "--factors=data_size,loss,learning_rate",
    ]
  )
  assert list(study.runs_of(args)) == ["baseline", "cases4", "loss_ce"]


def _flatten(tree, prefix=""):
  for k, v in tree.items():
    if isinstance(v, dict):
      yield from _flatten(v, f"{prefix}{k}.")
    else:
      yield f"{prefix}{k}", v


def fake_dice(args, rng):
  """run name -> seed -> class -> Dice, with 'mean_foreground' the mean of the classes."""
  out = {}
  for name in study.runs_of(args):
    out[name] = {}
    for seed in range(args.seeds):
      values = {c: float(rng.uniform(0.3, 0.9)) for c in ("liver", "spleen")}
      out[name][seed] = {**values, "mean_foreground": float(np.mean(list(values.values())))}
  return out


def test_summary_statistics_match_an_independent_computation(tmp_path):
  args = study.parse_args([f"--workdir={tmp_path}", "--seeds=4"])
  dice = fake_dice(args, np.random.default_rng(0))
  summary = study.summarise(args, dice)
  assert [r["level"] for r in summary["data_size"]] == ["all", 2, 4, 8]
  assert [r["level"] for r in summary["learning_rate"]] == [0.002, 0.0005, 0.008]
  row = summary["loss"][2]
  assert row["run"] == "loss_dice"
  values = np.array([dice["loss_dice"][s]["spleen"] for s in range(4)], np.float64)
  base = np.array([dice["baseline"][s]["spleen"] for s in range(4)], np.float64)
  stat = row["dice"]["spleen"]
  assert stat["stat"][0] == pytest.approx(values.mean()) and stat["stat"][1] == pytest.approx(values.std(ddof=1))
  diffs = values - base
  half = stats.t.ppf(0.975, 3) * diffs.std(ddof=1) / math.sqrt(4)
  paired = stat["paired_vs_baseline"]
  assert paired["per_seed"] == pytest.approx(list(diffs))
  assert paired["ci95"] == pytest.approx([diffs.mean() - half, diffs.mean() + half])
  assert summary["loss"][0]["baseline"] and summary["loss"][0]["dice"]["spleen"]["paired_vs_baseline"] is None


def fake_results(config):
  """A test summary whose Dice is a deterministic function of the run's config."""
  key = (
    config.data.max_train_cases,
    config.train.loss,
    config.train.learning_rate,
    config.data.augment.rotate_prob,
    config.seed,
  )
  value = 0.5 + (hash(key) % 1000) / 4000
  return {
    "test": {
      "liver": {"dice": value},
      "tumour": {"dice": value / 2},
      "num_cases": 2,
      "mean_foreground": {"dice": 0.75 * value},
    }
  }


def test_interrupted_study_resumes_its_finished_runs_and_reports(tmp_path, monkeypatch):
  """The real harness (`_study.run_training`) with a fake train_and_evaluate: a study killed at its third run
  trains only the rest when rerun, and the report and JSON are written (figures: the next test)."""
  from jaxseg import train

  monkeypatch.setattr(study._study, "use_compilation_cache", lambda directory: None)
  monkeypatch.setattr(study, "save_figures", lambda args, summary: ["dsh_data_size.png", "dsh_factors.png"])
  trained = []

  def fake_train(config, workdir):
    if len(trained) == 2 and not (tmp_path / "killed").exists():
      (tmp_path / "killed").touch()
      raise KeyboardInterrupt("simulated kill")
    trained.append(pathlib.Path(workdir).name)
    return fake_results(config)

  monkeypatch.setattr(train, "train_and_evaluate", fake_train)
  argv = [
    "--seeds=2",
    "--sizes=2",
    "--losses=ce",
    "--factors=data_size,loss,augmentation",
    f"--workdir={tmp_path / 'runs'}",
    f"--output={tmp_path / 'out' / 'dsh'}",
  ]
  with pytest.raises(KeyboardInterrupt):
    study.main(argv)
  assert trained == ["baseline_seed0", "cases2_seed0"]
  study.main(argv)
  names = ["baseline", "cases2", "loss_ce", "augment_off"]
  assert trained == [f"{n}_seed0" for n in names] + [f"{n}_seed1" for n in names]
  saved = json.loads((tmp_path / "out" / "dsh.json").read_text())
  assert saved["seeds"] == 2 and set(saved["runs"]) == set(names)
  assert saved["runs"]["cases2"]["0"]["reused"] is True and saved["runs"]["cases2"]["1"]["reused"] is False
  liver = [r for r in saved["summary"]["data_size"] if r["level"] == 2][0]["dice"]["liver"]
  assert liver["per_seed"] == [saved["runs"]["cases2"][s]["results"]["test"]["liver"]["dice"] for s in "01"]
  text = (tmp_path / "out" / "dsh.md").read_text()
  assert "| 20 (all) | baseline |" in text and "| 2 | cases2 |" in text and "Partial" not in text
  assert "## Loss" in text and "## Learning rate" not in text and "## Augmentation" in text


def test_report_and_figures_after_the_first_seed_say_it_is_partial(tmp_path, monkeypatch):
  from jaxseg import train

  monkeypatch.setattr(study._study, "use_compilation_cache", lambda directory: None)
  calls = []

  def fake_train(config, workdir):
    if config.seed == 1:
      raise KeyboardInterrupt("simulated kill")
    calls.append(workdir)
    return fake_results(config)

  monkeypatch.setattr(train, "train_and_evaluate", fake_train)
  with pytest.raises(KeyboardInterrupt):
    study.main(
      [
        "--seeds=2",
        "--factors=data_size,augmentation",
        "--sizes=2",
        f"--workdir={tmp_path / 'runs'}",
        f"--output={tmp_path / 'dsh'}",
      ]
    )
  text = (tmp_path / "dsh.md").read_text()
  assert "**Partial: 1 of 2 seeds finished so far**" in text
  assert json.loads((tmp_path / "dsh.json").read_text())["seeds"] == 1
  for figure in ("dsh_data_size.png", "dsh_factors.png"):
    assert (tmp_path / figure).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
  assert "one seed: no interval" in text and "| 2 | cases2 | " in text and "±" not in text.split("## Number")[1]
  # --report_only (another process still training): the same report from the finished seed, nothing trained.
  (tmp_path / "dsh.md").unlink()
  monkeypatch.setattr(train, "train_and_evaluate", None)
  argv = [
    "--seeds=2",
    "--factors=data_size,augmentation",
    "--sizes=2",
    f"--workdir={tmp_path / 'runs'}",
    f"--output={tmp_path / 'dsh'}",
    "--report_only",
  ]
  study.main(argv)
  assert "**Partial: 1 of 2 seeds finished so far**" in (tmp_path / "dsh.md").read_text()
  with pytest.raises(SystemExit, match=r"--report_only: no seed has finished all its runs in .*other"):
    study.main([*argv[:3], f"--workdir={tmp_path / 'other'}", *argv[4:]])


@pytest.mark.slow
def test_quick_protocol_end_to_end(tmp_path):
  """`--quick` in a fresh process (it sets JAX's compilation cache): trains, reports, and a rerun reuses every run."""
  cmd = [
    sys.executable,
    str(ROOT / "experiments" / f"{NAME}.py"),
    "--quick",
    f"--workdir={tmp_path / 'runs'}",
    f"--output={tmp_path / 'out' / NAME}",
  ]
  subprocess.run(cmd, check=True, cwd=ROOT, capture_output=True, timeout=1800)
  saved = json.loads((tmp_path / "out" / f"{NAME}.json").read_text())
  assert saved["scale"] == "quick" and saved["seeds"] == 2
  assert set(saved["runs"]) == {"baseline", "cases2", "loss_ce", "lr0.008", "augment_off"}
  for factor in ("data_size", "loss", "learning_rate", "augmentation"):
    rows = saved["summary"][factor]
    assert rows[0]["baseline"] and len(rows) == 2
    assert 0.0 <= rows[1]["dice"]["mean_foreground"]["stat"][0] <= 1.0
    assert len(rows[1]["dice"]["mean_foreground"]["paired_vs_baseline"]["per_seed"]) == 2
  # The 2-case runs trained on the first 2 cases of the fixed permutation of the phantom's 5 training cases.
  config = json.loads((tmp_path / "runs" / "cases2_seed0" / "config.json").read_text())
  assert config["data"]["max_train_cases"] == 2
  result = subprocess.run(cmd, check=True, cwd=ROOT, capture_output=True, text=True, timeout=600)
  assert result.stdout.count("(reused") == 10
  for figure in (f"{NAME}_data_size.png", f"{NAME}_factors.png"):
    assert (tmp_path / "out" / figure).exists()

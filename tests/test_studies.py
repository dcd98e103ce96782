"""The studies' shared harness (experiments/_study.py) and the --quick protocols of the studies built on it."""

import json
import math

import nibabel as nib
import numpy as np
import pytest

from study_modules import assert_refused_before_training, load_study
from scipy import stats


_load = load_study


study = _load("_study")


# Harness.


@pytest.mark.parametrize(
  "name, argv, message",
  [
    ("interpretability", ["--models=unet,vit"], r"unknown model 'vit'; choose from unet, attention_unet"),
    ("interpretability", ["--dataset=mr_phantom"], r"unknown dataset 'mr_phantom'; choose from ct_phantom"),
    ("interpretability", ["--classes=liver,pancreas"], r"unknown class 'pancreas'; choose from liver"),
    ("interpretability", ["--scale=tpu"], r"argument --scale: invalid choice: 'tpu'"),
    ("interpretability", ["--region=box"], r"argument --region: invalid choice: 'box'"),
    ("interpretability", ["--seeds=0"], r"--seeds must be >= 1, got 0"),
    ("reproducibility", ["--dataset=msd"], r"unknown dataset 'msd'"),
    ("reproducibility", ["--bogus"], r"unrecognized arguments: --bogus"),
    ("adversarial", ["--weight=-1"], r"--weight must be > 0, got -1.0"),
    ("adversarial", ["--scale=tpu"], r"argument --scale: invalid choice: 'tpu'"),
  ],
)
def test_bad_study_input_is_one_line_before_training(tmp_path, name, argv, message):
  assert_refused_before_training(_load(name), name, argv, message, tmp_path)


def test_bad_config_value_is_refused_in_one_line():
  config = study.load_config("unet_ct")
  config.model.name = "transformer"
  with pytest.raises(SystemExit, match=r"^x: config.model.name: unknown model 'transformer'"):
    study.checked(config, "x")


def test_run_training_reuses_a_finished_run_and_refuses_another_config(tmp_path, monkeypatch):
  from jaxseg import train

  calls = []

  def fake_train(config, workdir):
    calls.append(workdir)
    return {"test": {"mean_foreground": {"dice": 0.5, "hd95": float("nan")}}}

  monkeypatch.setattr(train, "train_and_evaluate", fake_train)
  config = study.load_config("unet_ct")
  first = study.run_training(config, tmp_path / "run")
  again = study.run_training(config, tmp_path / "run")
  assert len(calls) == 1 and not first["reused"] and again["reused"]
  assert again["results"]["test"]["mean_foreground"]["dice"] == 0.5
  assert math.isnan(again["results"]["test"]["mean_foreground"]["hd95"])
  other = config.copy_and_resolve_references()
  other.seed = 1
  with pytest.raises(SystemExit, match=r"study_run.json: this finished run was made with another config"):
    study.run_training(other, tmp_path / "run")
  assert len(calls) == 1
  # A run made on data of another builder version is refused, not silently reused.
  record = json.loads((tmp_path / "run" / study.RUN_RECORD).read_text())
  assert record["data_version"] == study.data_version()
  (tmp_path / "run" / study.RUN_RECORD).write_text(json.dumps({**record, "data_version": "0.9.0"}))
  with pytest.raises(SystemExit, match=r"made on data prepared by builder version 0.9.0, not the current "):
    study.run_training(config, tmp_path / "run")
  assert len(calls) == 1


def test_statistics_against_scipy():
  assert study.mean_std([1.0, float("nan"), 3.0, None]) == (2.0, math.sqrt(2.0), 2)
  assert study.mean_std([]) == (None, None, 0)
  assert study.fmt((2.0, 1.0, 2), 3, 2) == "2.00 ± 1.00 (2 of 3)" and study.fmt((None, None, 0), 3, 2) == "n/a"
  paired = study.paired_interval([0.80, 0.70, 0.90], [0.85, 0.77, 0.96])
  np.testing.assert_allclose(paired["per_seed"], [0.05, 0.07, 0.06])
  half = stats.t.ppf(0.975, 2) * 0.01 / math.sqrt(3)  # 4.3027 * sd 0.01 / sqrt(3) = 0.02484.
  np.testing.assert_allclose(paired["ci95"], [0.06 - half, 0.06 + half])
  assert study.paired_interval([0.5], [0.6])["ci95"] == [None, None]


def test_write_report_is_atomic_and_json_has_no_nan(tmp_path):
  study.write_report(tmp_path / "x", "# title", {"a": float("nan"), "b": [1.0, float("inf")]})
  assert (tmp_path / "x.md").read_text() == "# title\n"
  assert json.loads((tmp_path / "x.json").read_text()) == {"a": None, "b": [1.0, None]}
  assert sorted(p.name for p in tmp_path.iterdir()) == ["x.json", "x.md"]


def test_shuffled_label_dataset_deranges_only_training_labels(tmp_path):
  from jaxseg.data import phantoms

  interp = _load("interpretability")
  source = phantoms.ensure_phantom("ct_phantom", tmp_path / "data", num_cases=6)
  target, label_of = interp.shuffled_label_dataset(source, tmp_path / "data" / "shuffled")
  splits = json.loads((source / "splits.json").read_text())
  assert sorted(label_of) == sorted(splits["train"]) and sorted(label_of.values()) == sorted(splits["train"])
  assert all(case != other for case, other in label_of.items())
  read = lambda root, sub, case: nib.load(root / sub / f"{case}.nii.gz")
  for case in splits["train"]:
    new = read(target, "labelsTr", case)
    np.testing.assert_array_equal(np.asarray(new.dataobj), np.asarray(read(source, "labelsTr", label_of[case]).dataobj))
    np.testing.assert_array_equal(new.affine, read(source, "labelsTr", case).affine)
  for case in splits["validation"] + splits["test"]:
    np.testing.assert_array_equal(
      np.asarray(read(target, "labelsTr", case).dataobj), np.asarray(read(source, "labelsTr", case).dataobj)
    )
  for case in sum(splits.values(), []):
    assert (target / "imagesTr" / f"{case}.nii.gz").read_bytes() == (
      source / "imagesTr" / f"{case}.nii.gz"
    ).read_bytes()
  assert json.loads((target / "dataset.json").read_text())["name"] == "ct_phantom_shuffled_labels"
  assert interp.shuffled_label_dataset(source, target) == (target, label_of)  # Reused, not redone.


# The --quick protocols end to end (minutes under load: slow).


@pytest.mark.slow
def test_reproducibility_quick_is_bitwise_identical_and_resumes(tmp_path):
  repro = _load("reproducibility")
  argv = ["--quick", f"--workdir={tmp_path / 'runs'}", f"--output={tmp_path / 'out' / 'reproducibility'}"]
  repro.main(argv)
  saved = json.loads((tmp_path / "out" / "reproducibility.json").read_text())
  for check in ("repeat", "resumed"):
    c = saved["checks"][check]
    assert c["state_identical"] and c["metrics_identical"] and c["hash_a"] == c["hash_b"], check
    assert c["steps"] == [6, 6] and c["max_abs_difference"] == 0.0
  assert saved["checks"]["resumed"]["latest_checkpoint_at_kill"] == 3
  assert set(saved["runs"]) == {"seed0", "seed1", "seed0_repeat", "seed0_resumed"}
  assert saved["spread"]["mean_foreground"]["dice"][2] == 2 and saved["determinism"]["deterministic_flags"] == [
    "--xla_gpu_deterministic_ops=true"
  ]
  assert saved["command"].startswith("python experiments/reproducibility.py --quick")
  assert {"jax", "flax", "optax"} <= set(saved["versions"]) and saved["cpu_count"] >= 1
  md = (tmp_path / "out" / "reproducibility.md").read_text()
  assert "| rerun in a fresh process | 6 / 6 |" in md and "**NO**" not in md
  # An interrupted or repeated study reuses the runs it finished.
  repro.main(argv)
  again = json.loads((tmp_path / "out" / "reproducibility.json").read_text())
  assert all(run["reused"] for run in again["runs"].values())
  assert again["checks"] == saved["checks"]


@pytest.mark.slow
def test_interpretability_quick_writes_scores_and_figure(tmp_path):
  interp = _load("interpretability")
  out = tmp_path / "out" / "interpretability"
  interp.main(["--quick", f"--workdir={tmp_path / 'runs'}", f"--output={out}"])
  saved = json.loads(out.with_suffix(".json").read_text())
  assert [(r["model"], r["labels"]) for r in saved["runs"]] == [
    ("unet", "real"),
    ("unet", "shuffled"),
    ("attention_unet", "real"),
    ("attention_unet", "shuffled"),
  ]
  assert set(saved["summary"]) == {"unet", "attention_unet"}
  assert set(saved["summary"]["unet"]) == set(interp.GRADIENT_METHODS)
  assert set(saved["summary"]["attention_unet"]) == set(interp.GRADIENT_METHODS) | {"attention"}
  for row in saved["maps"]:
    assert row["class"] == "liver" and 0 < row["uniform_localisation"] < 1
    for key in ("localisation_trained", "localisation_randomised", "localisation_shuffled"):
      assert row[key] is None or 0.0 <= row[key] <= 1.0
    for key in ("rank_correlation_randomised", "rank_correlation_shuffled"):
      assert row[key] is None or -1.0 <= row[key] <= 1.0
  assert len({r["case"] for r in saved["maps"]}) == 2  # Both test cases of the 8-case phantom.
  assert out.with_suffix(".png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
  md = out.with_suffix(".md").read_text()
  assert "| saliency |" in md and "## Reading" in md and saved["command"] in md


@pytest.mark.slow
def test_adversarial_quick_pairs_the_arms_and_resumes(tmp_path, monkeypatch):
  adv = _load("adversarial")
  out = tmp_path / "out" / "adversarial"
  argv = ["--quick", f"--workdir={tmp_path / 'runs'}", f"--output={out}"]
  adv.main(argv)
  saved = json.loads(out.with_suffix(".json").read_text())
  assert sorted((r["arm"], r["seed"]) for r in saved["runs"]) == [
    ("adversarial", 0),
    ("adversarial", 1),
    ("plain", 0),
    ("plain", 1),
  ]
  adversarial = [r for r in saved["runs"] if r["arm"] == "adversarial"]
  assert all(
    r["config"]["adversarial"]["enabled"] and r["config"]["adversarial"]["warmup_steps"] == 2 for r in adversarial
  )  # A quarter of the 8 steps, as the config's 100 of 400.
  assert all(r["disc"]["train/disc_loss"] > 0 for r in adversarial)
  assert len(saved["summary"]["paired_dice_difference"]["mean_foreground"]["per_seed"]) == 2
  assert saved["scale"] == "quick" and "--scale=quick" not in (out.with_suffix(".md").read_text())
  # Rerunning reads every finished run back instead of training it again.
  monkeypatch.setattr("jaxseg.train.train_and_evaluate", lambda *a, **k: pytest.fail("retrained a finished run"))
  adv.main(argv)
  assert all(r["reused"] for r in json.loads(out.with_suffix(".json").read_text())["runs"])


def test_save_figure_writes_a_png_and_leaves_no_temporary(tmp_path):
  import matplotlib  # pylint: disable=g-import-not-at-top

  matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top

  fig, ax = plt.subplots()
  ax.plot([0, 1], [1, 0])
  study.save_figure(fig, tmp_path / "figure.png", dpi=30)
  assert (tmp_path / "figure.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
  assert [p.name for p in tmp_path.iterdir()] == ["figure.png"] and not plt.get_fignums()

"""experiments/robustness.py: option checks, arm configs, evaluation under a shift (fake models), summary."""

import json
import math
import types

import numpy as np
import pytest

from study_modules import assert_refused_before_training, load_study

from jaxseg.data import corruptions, nifti, preprocess


robustness = load_study("robustness")


@pytest.mark.parametrize(
  "argv, message",
  [
    (["--shifts=noise,fog"], r"unknown shift 'fog'; choose from noise, blur"),
    (["--arms=none,mixup"], r"unknown arm 'mixup'; choose from none, shipped, nnunet, adversarial"),
    (["--model=vit"], r"unknown model 'vit'; choose from unet, attention_unet"),
    (["--datasets=ct_phantom,msd"], r"unknown dataset 'msd'; choose from ct_phantom, mr_phantom"),
    (["--datasets=mr_phantom", "--arms=adversarial"], r"arm 'adversarial' is not run on mr_phantom"),
    (["--datasets=ct_phantom", "--shifts=bias_field"], r"shift 'bias_field' is not applied to ct_phantom"),
    (["--test_cases=-1"], r"--test_cases must be >= 0"),
    (["--seeds=0"], r"--seeds must be >= 1, got 0"),
    (["--scale=tpu"], r"argument --scale: invalid choice: 'tpu'"),
  ],
)
def test_bad_input_is_one_line_before_training(tmp_path, argv, message):
  assert_refused_before_training(robustness, "robustness", argv, message, tmp_path)


def test_protocol_shifts_and_explicit_shifts_per_dataset():
  args = robustness.parse_args([])
  assert args.shifts == {"ct_phantom": list(robustness.DATASETS["ct_phantom"]["shifts"]), "mr_phantom": ["bias_field"]}
  args = robustness.parse_args(["--shifts=noise,bias_field"])
  assert args.shifts == {"ct_phantom": ["noise"], "mr_phantom": ["bias_field", "noise"]}
  args = robustness.parse_args(["--shifts=blur", "--arms=adversarial"])
  assert robustness.arms_of("mr_phantom", args) == [] and robustness.shifts_of("mr_phantom", args) == []


def test_seeds_default_per_protocol_and_explicit():
  assert robustness.parse_args(["--quick"]).seeds == 1
  assert robustness.parse_args([]).seeds == 2
  assert robustness.parse_args(["--scale=gpu"]).seeds == 3
  assert robustness.parse_args(["--seeds=4"]).seeds == 4


def test_arm_configs_differ_only_in_augmentation_and_the_adversarial_term(tmp_path):
  from jaxseg import config as config_lib

  args = robustness.parse_args([f"--workdir={tmp_path}"])
  configs = {arm: robustness.run_config("ct_phantom", arm, 1, args) for arm in robustness.ARMS}
  shipped = robustness._study.load_config("unet_ct").data.augment
  defaults = config_lib.base_config().data.augment
  assert configs["shipped"].data.augment.to_dict() == shipped.to_dict()
  assert all(configs["none"].data.augment[k] == 0.0 for k in robustness.PROBABILITY_KEYS)
  for key in robustness.INTENSITY_KEYS:
    assert shipped[key] == 0.0 and configs["nnunet"].data.augment[key] == defaults[key] > 0.0
  for key in ("rotate_max_deg", "scale_range", "flip_axes", "rotate_prob"):
    assert configs["nnunet"].data.augment[key] == shipped[key]
  assert configs["adversarial"].adversarial.enabled and not configs["shipped"].adversarial.enabled
  assert configs["adversarial"].adversarial.warmup_steps == robustness.PROTOCOLS["cpu"]["num_steps"] // 4
  for arm, config in configs.items():  # Same data, model, budget and seed everywhere.
    assert (
      config.seed,
      config.data.name,
      config.model.name,
      config.model.features,
      config.train.num_steps,
      tuple(config.data.patch_size),
    ) == (1, "ct_phantom", "unet", 8, 250, (96, 96)), arm
  mr = robustness.run_config("mr_phantom", "none", 0, args)
  assert mr.model.name == "unet" and mr.data.name == "mr_phantom" and len(mr.data.patch_size) == 2


# Evaluation under a shift, with fake trained models.


class _FakeRaw:
  """RawCases stand-in: two CT cases of random HU."""

  def __init__(self):
    rng = np.random.default_rng(0)
    self.dataset = types.SimpleNamespace(channel_names=("CT",))
    self.cases = {
      f"c{i}": nifti.LoadedCase(
        f"c{i}",
        rng.normal(50, 300, (12, 10, 4, 1)).astype(np.float32),
        np.zeros((12, 10, 4), np.uint8),
        np.diag([2.0, 2.0, 4.0, 1.0]),
        (2.0, 2.0, 4.0),
      )
      for i in range(2)
    }
    self.loads = 0

  def load(self, case_id):
    self.loads += 1
    return self.cases[case_id]


class _FakeEvaluator:
  """score_case returns the mean and std of the preprocessed image it was given, as 'dice' of two classes."""

  def __init__(self, raw):
    self.raw = raw
    self.seen = []

  def score_case(self, case, choice, compare_largest, with_view):
    assert not compare_largest and not with_view
    self.seen.append(case)
    return types.SimpleNamespace(
      scores={"a": {"dice": float(case.image.mean())}, "b": {"dice": float(case.image.std())}}
    )


def _plan():
  return preprocess.Plan(
    target_spacing=[4.0, 2.0, 2.0],
    normalization=[{"scheme": "ct", "mean": 40.0, "std": 250.0, "clip": [-600.0, 700.0]}],
    channel_names=["CT"],
    labels={"background": 0, "a": 1, "b": 2},
  )


def _runs(raw, hashes=("h0", "h1")):
  return [
    robustness.LoadedRun(f"run{i}", "none", i, h, _FakeEvaluator(raw), object(), _plan(), ["c0", "c1"])
    for i, h in enumerate(hashes)
  ]


def test_a_shift_corrupts_the_raw_image_then_the_clean_plan_preprocesses_it(tmp_path):
  raw = _FakeRaw()
  runs = _runs(raw)
  scores = robustness.evaluate_level(runs, "intensity_shift", 3, ["c0", "c1"], tmp_path / "e.json")
  for index, case_id in enumerate(("c0", "c1")):
    loaded = raw.cases[case_id]
    image = loaded.image + np.float32(100.0)  # Level 3: +100 HU, before preprocessing.
    expected = preprocess.preprocess_case(
      nifti.LoadedCase(case_id, image, None, loaded.affine, loaded.spacing), _plan()
    ).image
    for run in runs:
      np.testing.assert_array_equal(run.evaluator.seen[index].image, expected)
      assert scores[run.name][case_id]["a"]["dice"] == pytest.approx(float(expected.mean()))
  # The clean plan's fixed CT statistics are used (not the corrupted image's own): +100 HU shifts the
  # normalised mean by 100 / 250 where nothing is clipped.
  clean = robustness.evaluate_level(runs, None, 0, ["c0"], tmp_path / "clean.json")
  assert scores["run0"]["c0"]["a"]["dice"] - clean["run0"]["c0"]["a"]["dice"] == pytest.approx(0.4, abs=0.1)
  assert runs[0].evaluator.seen[-1].meta["shape_after_crop"] == [4, 10, 12]


def test_evaluations_resume_and_recompute_only_what_changed(tmp_path):
  raw = _FakeRaw()
  path = tmp_path / "noise.json"
  first = robustness.evaluate_level(_runs(raw), "noise", 2, ["c0", "c1"], path)
  loads = raw.loads
  again = _runs(raw)
  assert robustness.evaluate_level(again, "noise", 2, ["c0", "c1"], path) == first
  assert raw.loads == loads and not any(r.evaluator.seen for r in again)  # Nothing rescored.
  changed = _runs(raw, hashes=("h0", "other"))  # run1 was retrained with another config.
  second = robustness.evaluate_level(changed, "noise", 2, ["c0", "c1"], path)
  assert not changed[0].evaluator.seen and len(changed[1].evaluator.seen) == 2
  assert second == first  # Same corrupted images (seeded by the case), same fake scores.
  other_cases = _runs(raw)
  robustness.evaluate_level(other_cases, "noise", 2, ["c0"], path)  # Another case list: a new evaluation.
  assert len(other_cases[0].evaluator.seen) == 1
  stored = json.loads(path.read_text())
  assert stored["key"]["parameters"] == {"level": 2, "CT": corruptions.SHIFTS["noise"].levels_ct[2]}


def test_identity_check_reads_the_runs_own_case_scores(tmp_path):
  (tmp_path / "results" / "test").mkdir(parents=True)
  (tmp_path / "results" / "test" / "cases.csv").write_text(
    "case_id,class,dice\nc0,a,0.5\nc0,b,0.25\nc1,a,0.75\nc1,b,1.0\n"
  )
  clean = {"c0": {"a": {"dice": 0.5}, "b": {"dice": 0.2}}}
  assert robustness.identity_check(tmp_path, clean, ["a", "b"]) == pytest.approx(0.05)
  assert robustness.identity_check(tmp_path / "none", clean, ["a", "b"]) is None


def _record(arm, seed, level, dice, shift="noise"):
  return {
    "dataset": "ct_phantom",
    "arm": arm,
    "seed": seed,
    "shift": shift,
    "level": level,
    "dice": {"mean_foreground": dice},
  }


def test_summary_statistics_by_hand(tmp_path):
  curves = {
    ("none", 0): [0.9, 0.8, 0.6, 0.4, 0.2],
    ("none", 1): [0.8, 0.7, 0.5, 0.3, 0.1],
    ("nnunet", 0): [0.9, 0.9, 0.8, 0.7, 0.6],
    ("nnunet", 1): [0.85, 0.8, 0.8, 0.6, 0.4],
  }
  records = [_record(arm, seed, lv, d) for (arm, seed), ds in curves.items() for lv, d in enumerate(ds)]
  summary = robustness.summarise(records, None)["ct_phantom"]["noise"]
  assert summary["levels"] == [0, 1, 2, 3, 4]
  none, nnunet = summary["arms"]["none"], summary["arms"]["nnunet"]
  assert none["dice"][0][0] == pytest.approx(0.85) and none["dice"][0][1] == pytest.approx(math.sqrt(0.005))
  assert none["mean_shifted_per_seed"] == {0: pytest.approx(0.5), 1: pytest.approx(0.4)}
  assert nnunet["mean_shifted_per_seed"] == {0: pytest.approx(0.75), 1: pytest.approx(0.65)}
  assert nnunet["drop_at_worst"][0] == pytest.approx(((0.9 - 0.6) + (0.85 - 0.4)) / 2)
  paired = nnunet["vs_none"]["mean_shifted"]
  assert paired["per_seed"] == [pytest.approx(0.25), pytest.approx(0.25)]
  assert paired["ci95"] == [pytest.approx(0.25), pytest.approx(0.25)]  # No spread: a zero-width interval.
  assert nnunet["vs_none"]["levels"][4]["per_seed"] == [pytest.approx(0.4), pytest.approx(0.3)]
  assert "vs_none" not in none
  robustness.save_figure(tmp_path / "f.png", {"ct_phantom": {"noise": summary}}, {"ct_phantom": ["CT"]})
  assert (tmp_path / "f.png").read_bytes()[:4] == b"\x89PNG"
  text = robustness.reading({"ct_phantom": {"noise": summary}})[0]
  assert text.startswith("- ct_phantom noise: mean shifted Dice, best first: nnunet 0.700, none 0.450")


@pytest.mark.slow
def test_robustness_quick_end_to_end_resumes(tmp_path):
  out = tmp_path / "results" / "robustness"
  argv = ["--quick", f"--workdir={tmp_path / 'runs'}", f"--output={out}"]
  robustness.main(argv)
  saved = json.loads(out.with_suffix(".json").read_text())
  assert saved["identity_check_max_abs_dice_difference"] == 0.0  # Level 0 = the run's own evaluation.
  assert {(r["dataset"], r["arm"]) for r in saved["runs"]} == {
    ("ct_phantom", "none"),
    ("ct_phantom", "adversarial"),
    ("mr_phantom", "none"),
  }
  assert set(saved["summary"]["mr_phantom"]) == {"bias_field", "noise"}
  for per_shift in saved["summary"].values():
    for entry in per_shift.values():
      assert entry["levels"] == [0, 1, 2, 3, 4]
      for arm in entry["arms"].values():
        assert all(0.0 <= arm["dice"][str(lv)][0] <= 1.0 for lv in range(5))
  assert out.with_suffix(".png").read_bytes()[:4] == b"\x89PNG"
  evaluations = sorted((tmp_path / "runs" / "evaluations").rglob("*.json"))
  assert len(evaluations) == (1 + 4) + (1 + 4 + 4)  # CT: clean + noise; MR: clean + bias field + noise.
  stamps = [p.stat().st_mtime_ns for p in evaluations]
  robustness.main(argv)  # Resumes: every run and every evaluation is reused.
  again = json.loads(out.with_suffix(".json").read_text())
  assert all(r["reused"] for r in again["runs"])
  assert [p.stat().st_mtime_ns for p in evaluations] == stamps
  assert again["summary"] == saved["summary"]

"""Cross-validation folds (jaxseg.data.folds), ensembles and the summary over folds (jaxseg.ensemble)."""

import hashlib
import json
import pathlib
import pickle
import subprocess
import sys

import nibabel as nib

import numpy as np
import pytest

from jaxseg import config as config_lib
from jaxseg import ensemble, evaluate, experiment
from jaxseg.data import folds, nifti, pipeline
from jaxseg.errors import ConfigError, DataError

AFFINE = np.diag([1.5, 1.5, 3.0, 1.0])
CASES = [f"case_{i:02d}" for i in range(7)]
SPLITS = {"train": CASES[:5], "validation": [CASES[5]], "test": [CASES[6]]}


def write_dataset(root, labels=None):
  rng = np.random.default_rng(0)
  entries = []
  for i, case_id in enumerate(CASES):
    label = np.zeros((12, 14, 3), np.uint8)
    label[3 + i % 3 : 8 + i % 3, 4:10, 1:3] = 1
    image = np.where(label == 1, 80.0, -50.0) + rng.normal(0, 5, label.shape)
    nifti.save_nifti(root / "imagesTr" / f"{case_id}.nii.gz", image.astype(np.float32), AFFINE)
    nifti.save_nifti(root / "labelsTr" / f"{case_id}.nii.gz", label, AFFINE)
    entries.append({"image": f"./imagesTr/{case_id}.nii.gz", "label": f"./labelsTr/{case_id}.nii.gz"})
  (root / "dataset.json").write_text(
    json.dumps(
      {
        "name": "Folds",
        "modality": {"0": "CT"},
        "labels": labels or {"0": "background", "1": "organ"},
        "tensorImageSize": "3D",
        "numTraining": len(CASES),
        "training": entries,
        "test": [],
      }
    )
  )
  (root / "splits.json").write_text(json.dumps(SPLITS))
  return root


@pytest.fixture(scope="module")
def tiny_config(msd_config):
  """`tiny_config(root, data_dir, fold="")`: the tiny MSD config with 8 x 8 patches, no figures."""

  def make(root, data_dir, fold=""):
    return msd_config(root, data_dir, data={"patch_size": (8, 8), "fold": fold}, eval={"num_figures": 0})

  return make


@pytest.fixture(scope="module")
def dataset(tmp_path_factory, tiny_config):
  base = tmp_path_factory.mktemp("folds")
  root = write_dataset(base / "raw")
  config = tiny_config(root, base / "data")
  return config, pipeline.prepare(config)


def test_kfold_is_sklearn_kfold_with_nnunet_seed():
  ids = [f"c{i:02d}" for i in range(13)][::-1]  # Unsorted input: the folds use the sorted ids.
  result = folds.kfold(ids)
  ordered = sorted(ids)
  order = np.arange(13)
  np.random.RandomState(12345).shuffle(order)
  starts = np.cumsum([0, 3, 3, 3, 2, 2])  # 13 = 3 + 3 + 3 + 2 + 2: the first 13 % 5 folds get one more.
  for k, fold in enumerate(result):
    expected = sorted(ordered[i] for i in order[starts[k] : starts[k + 1]])
    assert fold["val"] == expected
    assert fold["train"] == [c for c in ordered if c not in expected]
  assert sorted(c for f in result for c in f["val"]) == ordered
  assert folds.kfold(ids) == result  # Deterministic.
  with pytest.raises(DataError, match="at least 5"):
    folds.kfold(["a", "b", "c"])


def test_folds_are_stored_and_select_reads_the_right_records(dataset):
  config, prepared = dataset
  stored = prepared.builder.info.metadata["folds"]
  assert stored == folds.kfold(CASES[:6])
  for k in range(5):
    view = folds.select(prepared, str(k))
    assert view.splits["train"] == stored[k]["train"] and view.splits["validation"] == stored[k]["val"]
    assert view.splits["test"] == SPLITS["test"]
    for split in ("train", "validation", "test"):
      source = pipeline.CaseSource(view, split)
      assert [c.case_id for c in source] == view.splits[split]
      assert len(view.class_voxels[split]) == len(view.splits[split])
    source = pickle.loads(pickle.dumps(pipeline.CaseSource(view, "train")))  # grain worker processes.
    assert source[0].case_id == view.splits["train"][0]
  everything = folds.select(prepared, "all")
  assert everything.splits["train"] == sorted(CASES[:6]) and everything.splits["validation"] == SPLITS["validation"]
  assert folds.select(prepared, "") is prepared


def test_setup_applies_the_fold(dataset, tiny_config, tmp_path):
  config, _ = dataset
  exp = experiment.setup(tiny_config(config.data.root, config.data.data_dir, fold="3"), tmp_path)
  assert exp.prepared.splits["validation"] == folds.kfold(CASES[:6])[3]["val"]


@pytest.mark.parametrize("fold", ["5", "-1", "x"])
def test_fold_outside_0_to_4_is_refused(fold):
  config = config_lib.base_config()
  config.data.fold = fold
  with pytest.raises(ConfigError, match=r"config.data.fold: .* is not a fold; use '' \(the fixed split\), 0..4"):
    config_lib.validate(config)


def test_fold_on_the_command_line_is_a_one_line_error(tmp_path):
  result = subprocess.run(
    [
      sys.executable,
      "-m",
      "jaxseg.main",
      "--config=configs/unet_ct.py",
      f"--workdir={tmp_path}",
      "--config.data.fold=7",
    ],
    capture_output=True,
    text=True,
    cwd=str(pathlib.Path(__file__).parent.parent),
    timeout=120,
  )
  assert result.returncode == 1
  assert result.stderr.strip().splitlines()[-1] == (
    "jaxseg: error: config.data.fold: '7' is not a fold; use '' (the fixed split), 0..4 or 'all'"
  )


# Training subsets (config.data.max_train_cases).


def test_train_order_is_a_fixed_seeded_permutation_of_the_sorted_ids():
  ids = [f"c{i:02d}" for i in range(20)][::-1]
  order = folds.train_order(ids)
  expected = [sorted(ids)[i] for i in np.random.RandomState(folds.SUBSET_SEED).permutation(20)]
  assert order == expected and sorted(order) == sorted(ids)
  assert folds.train_order(list(reversed(ids))) == order  # Independent of the input order.
  assert order != sorted(ids)  # Really shuffled.


def test_subsets_are_nested_deterministic_and_leave_validation_and_test_alone(dataset):
  _, prepared = dataset
  views = {k: folds.subset_train(prepared, k) for k in (1, 2, 3, 5)}
  for k, view in views.items():
    assert len(view.splits["train"]) == k
    assert view.splits["train"] == [c for c in SPLITS["train"] if c in folds.train_order(SPLITS["train"])[:k]]
    assert view.splits["validation"] == SPLITS["validation"] and view.splits["test"] == SPLITS["test"]
    assert len(view.class_voxels["train"]) == k
    for split in ("train", "validation", "test"):  # The records read are the ids listed.
      assert [c.case_id for c in pipeline.CaseSource(view, split)] == view.splits[split]
    assert folds.subset_train(prepared, k).splits == view.splits  # Deterministic.
  for small, large in ((1, 2), (2, 3), (3, 5)):
    assert set(views[small].splits["train"]) <= set(views[large].splits["train"])
  assert folds.subset_train(prepared, 0) is prepared
  # After a fold: the subset is taken from the fold's training cases, read through the fold's view.
  fold = folds.select(prepared, "1")
  both = folds.select(prepared, "1", 2)
  assert set(both.splits["train"]) <= set(fold.splits["train"]) and len(both.splits["train"]) == 2
  assert both.splits["validation"] == fold.splits["validation"]
  assert [c.case_id for c in pipeline.CaseSource(both, "train")] == both.splits["train"]
  source = pickle.loads(pickle.dumps(pipeline.CaseSource(both, "train")))  # grain worker processes.
  assert source[1].case_id == both.splits["train"][1]


def test_more_train_cases_than_the_split_has_is_refused_at_setup(dataset, tiny_config, tmp_path):
  config, _ = dataset
  config = tiny_config(config.data.root, config.data.data_dir)
  config.data.max_train_cases = 6
  with pytest.raises(
    ConfigError,
    match=r"config.data.max_train_cases=6 but the training split of dataset .* has "
    r"5 cases; use 0 \(all\) or 1..5",
  ):
    experiment.setup(config, tmp_path)
  config.data.max_train_cases = 2
  assert len(experiment.setup(config, tmp_path / "ok").prepared.splits["train"]) == 2


@pytest.mark.parametrize("value", [-1, True])
def test_bad_max_train_cases_is_refused_by_validate(value):
  config = config_lib.base_config()
  config.data.max_train_cases = value
  with pytest.raises(ConfigError, match=r"config.data.max_train_cases: must be an integer >= 0"):
    config_lib.validate(config)


def record_train_reads(monkeypatch) -> list[str]:
  """The case ids read from any training-split CaseSource from now on (in every thread)."""
  sampled = []
  original = pipeline.CaseSource.__getitem__

  def recording(self, index):
    case = original(self, index)
    if self.split == "train":
      sampled.append(case.case_id)
    return case

  monkeypatch.setattr(pipeline.CaseSource, "__getitem__", recording)
  return sampled


def subset_config(tiny_config, config, k):
  config = tiny_config(config.data.root, config.data.data_dir)
  config.data.max_train_cases = k
  config.data.num_threads = 1
  config.train.update(num_steps=2, batch_size=4, log_every_steps=1, eval_every_steps=2, checkpoint_every_steps=2)
  return config


def test_training_batches_and_device_cache_of_a_subset_hold_only_its_cases(dataset, tiny_config, tmp_path, monkeypatch):
  """What train.py feeds the step (`train_inputs`: host batches or the device cache) from a 2-case subset."""
  from jaxseg import parallel
  from jaxseg.data import device_cache

  config = subset_config(tiny_config, dataset[0], 2)
  config.train.num_steps = 12  # 48 samples: each of the 5 cases would show up if it could.
  exp = experiment.setup(config, tmp_path)
  kept = folds.train_order(SPLITS["train"])[:2]
  sampled = record_train_reads(monkeypatch)
  source = pipeline.CaseSource(exp.prepared, "train")
  assert len(list(pipeline.train_batches(config, source, start_step=0, local_batch_size=4))) == 12
  assert sampled and set(sampled) == set(kept)
  _, layout = device_cache.build(pipeline.CaseSource(exp.prepared, "train"), parallel.create_mesh(config.mesh), (8, 8))
  assert layout.num_cases == 2


@pytest.mark.slow
def test_training_run_with_max_train_cases_samples_only_those_cases(dataset, tiny_config, tmp_path, monkeypatch):
  """A two-step train_and_evaluate on a 2-case subset: every training sample comes from those 2 cases."""
  from jaxseg import train

  config = subset_config(tiny_config, dataset[0], 2)
  config.eval.splits = ()
  sampled = record_train_reads(monkeypatch)
  train.train_and_evaluate(config, tmp_path)
  assert sampled and set(sampled) <= set(folds.train_order(SPLITS["train"])[:2])


# Ensembles.


def trained_workdir(tiny_config, path, config, fold):
  """A workdir as training leaves it, as far as an ensemble reads it: config.json and checkpoints/."""
  config = tiny_config(config.data.root, config.data.data_dir, fold=fold)
  exp = experiment.setup(config, path)
  experiment.write_config(exp)
  (path / "checkpoints").mkdir()
  return exp


def oracle_members(prepared, blobs):
  """Stand-ins for the members' softmax: one-hot reference, member i with 'organ' on `blobs[i]` voxels."""
  labels = {}
  for split in ("train", "validation", "test"):
    for case in pipeline.CaseSource(prepared, split):
      labels[hashlib.sha1(case.image.tobytes()).hexdigest()] = case.label

  def member(blob):
    def probabilities(image):
      label = labels[hashlib.sha1(image.tobytes()).hexdigest()].copy()
      if blob:
        label[0, :2, :2] = 1
      return np.eye(2, dtype=np.float32)[label]

    return probabilities

  return [member(b) for b in blobs]


def fake_validation_summary(workdir, dice, hd95):
  summary = evaluate.summarize(
    [{"case_id": "x", "class": "organ", **{m: 0.5 for m in evaluate.METRIC_NAMES}, "dice": dice, "hd95": hd95}],
    ["organ"],
    step=9,
  )
  (workdir / "results" / "validation").mkdir(parents=True)
  (workdir / "results" / "validation" / "summary.json").write_text(json.dumps(summary))


def test_folds_directory_cv_summary_and_ensemble(dataset, tiny_config, tmp_path, monkeypatch):
  config, prepared = dataset
  folds_dir = tmp_path / "folds"
  dices, hd95s = [0.9, 0.8, 0.7], [1.0, 2.0, None]
  for k in range(3):
    trained_workdir(tiny_config, folds_dir / f"fold_{k}", config, str(k))
    fake_validation_summary(folds_dir / f"fold_{k}", dices[k], hd95s[k])
  # Two members right, one with a spurious blob: the averaged softmax (1/3 organ) drops the blob.
  functions = oracle_members(prepared, [False, True, False])
  monkeypatch.setattr(experiment, "restore_members", lambda exps, which: (functions, [11, 12, 13]))
  results = evaluate.evaluate_workdir(tiny_config(config.data.root, config.data.data_dir), folds_dir)
  cv = json.loads((folds_dir / "ensemble" / "cv_summary.json").read_text())
  assert cv == results["cross_validation"] and cv["num_folds"] == 3
  assert cv["organ"]["dice"]["mean"] == pytest.approx(0.8)
  assert cv["organ"]["dice"]["std"] == pytest.approx(np.std(dices))
  assert cv["organ"]["hd95"] == {"mean": 1.5, "std": 0.5, "folds": 2}
  assert "| organ |" in (folds_dir / "ensemble" / "cv_summary.md").read_text()
  assert set(results) == {"cross_validation", "test"}  # Folds trained on each other's validation cases.
  test = json.loads((folds_dir / "ensemble" / "results" / "test" / "summary.json").read_text())
  assert test["organ"]["dice"] == 1.0 and test["step"] == 11
  assert [m["fold"] for m in test["ensemble"]] == ["0", "1", "2"]
  # With the blob in two members of three it stays.
  functions[:] = oracle_members(prepared, [True, True, False])
  results = evaluate.evaluate_workdir(tiny_config(config.data.root, config.data.data_dir), folds_dir)
  assert results["test"]["organ"]["dice"] < 1.0


def test_average_of_probabilities():
  a = lambda image: np.array([[0.9, 0.1]], np.float32)
  b = lambda image: np.array([[0.2, 0.8]], np.float32)
  np.testing.assert_allclose(ensemble.average([a, b])(None), [[0.55, 0.45]])


def test_folds_directory_with_mixed_configs_is_refused(dataset, tiny_config, tmp_path):
  config, _ = dataset
  folds_dir = tmp_path / "folds"
  trained_workdir(tiny_config, folds_dir / "fold_0", config, "0")
  exp = trained_workdir(tiny_config, folds_dir / "fold_1", config, "1")
  trained = json.loads((folds_dir / "fold_1" / "config.json").read_text())
  trained["model"]["features"] = 8
  (folds_dir / "fold_1" / "config.json").write_text(json.dumps(trained))
  del exp
  with pytest.raises(
    ConfigError,
    match=rf"{folds_dir / 'fold_1'}: trained with another config than "
    rf"{folds_dir / 'fold_0'}: model.features=8 \(not 4\)",
  ):
    evaluate.evaluate_workdir(tiny_config(config.data.root, config.data.data_dir), folds_dir)


def test_ensemble_of_different_label_sets_is_refused(dataset, tiny_config, tmp_path):
  config, _ = dataset
  trained_workdir(tiny_config, tmp_path / "a", config, "")
  other_root = write_dataset(tmp_path / "raw_other", labels={"0": "background", "1": "tumour"})
  other = tiny_config(other_root, config.data.data_dir)
  exp = experiment.setup(other, tmp_path / "b")
  experiment.write_config(exp)
  (tmp_path / "b" / "checkpoints").mkdir()
  with pytest.raises(
    DataError,
    match=rf"{tmp_path / 'b'}: trained on labels .*tumour.* but {tmp_path / 'a'} on "
    r".*organ.*; an ensemble needs models of one label set",
  ):
    evaluate.evaluate_workdir(tiny_config(config.data.root, config.data.data_dir), f"{tmp_path / 'a'},{tmp_path / 'b'}")


def test_find_members(tmp_path):
  (tmp_path / "one" / "checkpoints").mkdir(parents=True)
  assert ensemble.find_members(tmp_path / "one") is None
  members = ensemble.find_members(tmp_path)
  assert members.workdirs == (tmp_path / "one",) and members.output_dir == tmp_path / "ensemble"
  (tmp_path / "two" / "checkpoints").mkdir(parents=True)
  listed = ensemble.find_members(f"{tmp_path / 'two'},{tmp_path / 'one'}")
  assert listed.workdirs == (tmp_path / "two", tmp_path / "one") and listed.folds_dir is None
  assert listed.output_dir == tmp_path / "ensemble_two+one"
  from jaxseg.errors import CheckpointError

  with pytest.raises(CheckpointError, match="nothing: not a trained workdir"):
    ensemble.find_members(f"{tmp_path / 'one'},{tmp_path / 'nothing'}")


def test_predict_with_a_folds_directory_averages_the_members(dataset, tiny_config, tmp_path, monkeypatch):
  config, prepared = dataset
  folds_dir = tmp_path / "folds"
  for k in range(3):
    trained_workdir(tiny_config, folds_dir / f"fold_{k}", config, str(k))
  functions = oracle_members(prepared, [True, False, False])  # The blob loses the vote.
  monkeypatch.setattr(experiment, "restore_members", lambda exps, which: (functions, [5, 6, 7]))
  from jaxseg import predict

  cli_config = tiny_config(config.data.root, config.data.data_dir)
  cli_config.predict.input = str(tmp_path / "in" / "case_06.nii.gz")
  cli_config.predict.output = str(tmp_path / "out")
  (tmp_path / "in").mkdir()
  (tmp_path / "in" / "case_06.nii.gz").write_bytes(
    (pathlib.Path(config.data.root) / "imagesTr" / "case_06.nii.gz").read_bytes()
  )
  (written,) = predict.predict_workdir(cli_config, folds_dir)
  raw = nifti.read_dataset(pathlib.Path(config.data.root))
  reference = nifti.load_case(raw.training[6], raw).label
  np.testing.assert_array_equal(np.asarray(nib.load(written).dataobj), reference)

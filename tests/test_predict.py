"""`--mode=predict`: outputs in each input's own geometry, post-processing from the workdir, bad inputs.

The inputs are the tiny raw MSD dataset of conftest.py (`tiny_msd`). The checkpoint holds random weights of a
tiny 2D U-Net (no training, no init compile); what is checked is geometry and plumbing: a flipped copy of an
image and an nnU-Net copy of it must give the same labels.
"""

import os
import pathlib
import shutil
import subprocess
import sys

import jax
import nibabel as nib
import numpy as np
import pytest
from scipy import ndimage

from jaxseg import checkpointing, experiment, postprocess, predict
from jaxseg.data import nifti
from jaxseg.errors import CheckpointError, ConfigError, DataError, WorkdirError

ROOT = pathlib.Path(__file__).parent.parent


def random_state(exp, seed=0):
  """A train state of `exp`'s shapes with random weights (batch-norm variances 1), built on the host."""
  rng = np.random.default_rng(seed)

  def fill(path, leaf):
    name = jax.tree_util.keystr(path)
    if name.startswith(".params"):
      return rng.normal(0.0, 0.5, leaf.shape).astype(leaf.dtype)
    if name.startswith(".batch_stats") and name.endswith("['var']"):
      return np.ones(leaf.shape, leaf.dtype)
    return np.zeros(leaf.shape, leaf.dtype)

  return jax.tree_util.tree_map_with_path(fill, exp.abstract_state())


def make_workdir(config, workdir, step=5):
  exp = experiment.setup(config, workdir)
  checkpoints = checkpointing.Checkpoints(exp.workdir)
  checkpoints.save(step, random_state(exp))
  checkpoints.close()
  experiment.write_config(exp)
  return workdir


@pytest.fixture(scope="module")
def trained(tmp_path_factory, tiny_msd):
  base = tmp_path_factory.mktemp("predict")
  root = tiny_msd.write(base / "raw")
  config = tiny_msd.config(root, base / "data")
  return config, make_workdir(config, base / "workdir"), root


@pytest.fixture(scope="module")
def predict_config(trained, tiny_msd):
  """`predict_config(input_path, output, **predict_overrides)`: the trained config predicting `input_path`."""

  def make(input_path, output, **predict_overrides):
    config, _, root = trained
    config = tiny_msd.config(root, config.data.data_dir)
    config.predict.input = str(input_path)
    config.predict.output = str(output)
    config.predict.update(**predict_overrides)
    return config

  return make


def flipped_copy(source, target):
  """The same physical image with the voxel order of axis 0 reversed (affine adjusted)."""
  image = nib.load(source)
  flip = np.eye(4)
  flip[0, 0], flip[0, 3] = -1, image.shape[0] - 1
  nifti.save_nifti(target, np.asarray(image.dataobj)[::-1], image.affine @ flip)


@pytest.fixture(scope="module")
def predicted(trained, predict_config, tiny_msd, tmp_path_factory):
  """Predictions of a directory with one test image as an MSD file, a flipped copy and an nnU-Net copy."""
  _, workdir, root = trained
  inputs = tmp_path_factory.mktemp("inputs")
  source = root / "imagesTr" / f"{tiny_msd.CASES[4]}.nii.gz"
  shutil.copy(source, inputs / "plain.nii.gz")
  flipped_copy(source, inputs / "flipped.nii.gz")
  shutil.copy(source, inputs / "nnunet_0000.nii.gz")
  output = tmp_path_factory.mktemp("outputs")
  written = predict.predict_workdir(predict_config(inputs, output, save_probabilities=True), workdir)
  return source, output, written


def test_labels_and_probabilities_in_the_input_geometry(predicted):
  source, output, written = predicted
  assert sorted(p.name for p in written) == ["flipped.nii.gz", "nnunet.nii.gz", "plain.nii.gz"]
  raw = nib.load(source)
  labels = nib.load(output / "plain.nii.gz")
  assert labels.shape == raw.shape and labels.get_data_dtype() == np.uint8
  np.testing.assert_allclose(labels.affine, raw.affine)
  np.testing.assert_allclose(labels.header.get_zooms(), raw.header.get_zooms())
  values = np.asarray(labels.dataobj)
  assert set(np.unique(values)) <= {0, 1, 2}
  probabilities = nib.load(output / "plain_probabilities.nii.gz").get_fdata(dtype=np.float32)
  assert probabilities.shape == raw.shape + (3,)
  np.testing.assert_allclose(probabilities.sum(-1), 1.0, atol=1e-5)
  np.testing.assert_array_equal(probabilities.argmax(-1), values)
  assert (values[[0, -1]] == 0).all() and (values[:, [0, -1]] == 0).all()  # The cropped zero frame.


def test_flipped_and_nnunet_copies_give_the_same_labels(predicted):
  _, output, _ = predicted
  plain = np.asarray(nib.load(output / "plain.nii.gz").dataobj)
  assert len(np.unique(plain)) > 1
  np.testing.assert_array_equal(np.asarray(nib.load(output / "flipped.nii.gz").dataobj)[::-1], plain)
  np.testing.assert_array_equal(np.asarray(nib.load(output / "nnunet.nii.gz").dataobj), plain)


def test_post_processing_recorded_in_the_workdir_is_applied(trained, predicted, predict_config, tiny_msd, tmp_path):
  config, workdir, root = trained
  other = make_workdir(config, tmp_path / "workdir")
  postprocess.save(other, postprocess.Postprocessing(("organ", "pair"), step=5))
  source, output, _ = predicted
  predict.predict_workdir(predict_config(source, tmp_path / "out"), other)
  plain = np.asarray(nib.load(output / "plain.nii.gz").dataobj)
  structure = ndimage.generate_binary_structure(3, 3)
  assert max(ndimage.label(plain == v, structure)[1] for v in (1, 2)) > 1  # Something to remove.
  result = np.asarray(nib.load(tmp_path / "out" / f"{tiny_msd.CASES[4]}.nii.gz").dataobj)
  np.testing.assert_array_equal(result, postprocess.keep_largest_components(plain, [1, 2]))


def test_find_cases_groups_channel_files(tmp_path):
  for name in ("a.nii.gz", "b_0000.nii.gz", "b_0001.nii.gz", "c_0003.nii", "notes.txt"):
    (tmp_path / name).write_text("")
  cases = predict.find_cases(tmp_path, ("T1", "T2"))
  assert [(c.case_id, [p.name for p in c.paths], c.layout) for c in cases] == [
    ("a", ["a.nii.gz"], "msd"),
    ("b", ["b_0000.nii.gz", "b_0001.nii.gz"], "nnunetv2"),
    ("c_0003", ["c_0003.nii"], "msd"),
  ]
  assert [c.case_id for c in predict.find_cases(tmp_path / "b_0000.nii.gz", ("T1", "T2"))] == ["b"]
  with pytest.raises(DataError, match=r"case 'b' has channel files _0000, _0001 but the model takes 1"):
    predict.find_cases(tmp_path, ("CT",))
  (tmp_path / "empty").mkdir()
  with pytest.raises(DataError, match="holds no NIfTI file"):
    predict.find_cases(tmp_path / "empty", ("CT",))


def bad_input(tmp_path, name, array, affine):
  path = tmp_path / "in" / name
  nifti.save_nifti(path, array, affine)
  return path


@pytest.mark.parametrize(
  "name, array, error, message",
  [
    (
      "two_channels.nii.gz",
      np.ones((18, 22, 5, 2), np.float32),
      DataError,
      r"two_channels.nii.gz: image has 2 channel\(s\) .* but the model takes 1 \(CT\)",
    ),
    (
      "flat.nii.gz",
      np.ones((18, 22), np.float32),
      DataError,
      r"flat.nii.gz: image is 2D \(shape \(18, 22\)\) but the model was trained on 3D images",
    ),
    (
      "holes.nii.gz",
      np.where(np.arange(18 * 22 * 5).reshape(18, 22, 5) == 7, np.nan, 1.0).astype(np.float32),
      DataError,
      r"holes.nii.gz: 1 voxel\(s\) are NaN or infinite \(first at index \(0, 1, 2(, 0)?\)\)",
    ),
  ],
)
def test_bad_input_images(trained, predict_config, tiny_msd, tmp_path, name, array, error, message):
  path = bad_input(tmp_path, name, array, tiny_msd.AFFINE)
  with pytest.raises(error, match=message):
    predict.predict_workdir(predict_config(path, tmp_path / "out"), trained[1])


def test_bad_output_and_paths(trained, predict_config, tiny_msd, tmp_path):
  source = trained[2] / "imagesTr" / f"{tiny_msd.CASES[0]}.nii.gz"
  blocker = tmp_path / "file"
  blocker.write_text("")
  with pytest.raises(WorkdirError, match=f"config.predict.output: {blocker}/out cannot be written"):
    predict.predict_workdir(predict_config(source, blocker / "out"), trained[1])
  with pytest.raises(ConfigError, match="would overwrite an input"):
    predict.predict_workdir(predict_config(source, source.parent), trained[1])
  with pytest.raises(ConfigError, match="config.predict.input is empty"):
    predict.predict_workdir(predict_config("", tmp_path), trained[1])
  with pytest.raises(DataError, match="config.predict.input: .*missing.nii.gz does not exist"):
    predict.predict_workdir(predict_config(tmp_path / "missing.nii.gz", tmp_path), trained[1])
  with pytest.raises(CheckpointError, match="no checkpoints in"):
    predict.predict_workdir(predict_config(source, tmp_path / "out"), tmp_path / "untrained")


def test_checkpoint_of_another_model_config(trained, predict_config, tiny_msd, tmp_path):
  source = trained[2] / "imagesTr" / f"{tiny_msd.CASES[0]}.nii.gz"
  config = predict_config(source, tmp_path / "out")
  config.model.features = 8
  with pytest.raises(
    CheckpointError,
    match=r"does not match the config: params/.* has shape .* in the checkpoint "
    r"but .* for this config.*it was trained with model.features=4 \(this config: 8\)",
  ):
    predict.predict_workdir(config, trained[1])


def run_cli(*args):
  env = dict(os.environ, JAX_PLATFORMS="cpu")
  return subprocess.run(
    [sys.executable, "-m", "jaxseg.main", *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300
  )


def cli_args(trained, input_path, output):
  config = trained[0]
  return [
    "--config=configs/unet_ct.py",
    f"--workdir={trained[1]}",
    "--mode=predict",
    "--config.data.name=msd",
    f"--config.data.root={config.data.root}",
    f"--config.data.data_dir={config.data.data_dir}",
    "--config.data.prepare_workers=1",
    "--config.data.patch_size=(16,16)",
    "--config.model.features=4",
    "--config.model.depth=2",
    f"--config.predict.input={input_path}",
    f"--config.predict.output={output}",
  ]


@pytest.mark.slow
def test_cli_predict_writes_labels(trained, tiny_msd, tmp_path):
  source = trained[2] / "imagesTr" / f"{tiny_msd.CASES[4]}.nii.gz"
  result = run_cli(*cli_args(trained, source, tmp_path / "out"))
  assert result.returncode == 0, result.stderr[-3000:]
  assert nib.load(tmp_path / "out" / f"{tiny_msd.CASES[4]}.nii.gz").shape == nib.load(source).shape


def test_cli_reports_a_bad_input_in_one_line(trained, tiny_msd, tmp_path):
  path = bad_input(tmp_path, "nan.nii.gz", np.full((18, 22, 5), np.nan, np.float32), tiny_msd.AFFINE)
  result = run_cli(*cli_args(trained, path, tmp_path / "out"))
  errors = [line for line in result.stderr.splitlines() if line.startswith("jaxseg: error:")]
  assert result.returncode == 1 and "Traceback" not in result.stderr, result.stderr[-3000:]
  assert len(errors) == 1 and "nan.nii.gz: 1980 voxel" in errors[0] and "NaN or infinite" in errors[0], errors

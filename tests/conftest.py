"""Test set-up (CPU only, quiet logs, one XLA compilation cache per session) and the fixtures tests share.

The tests build many tiny models whose programs repeat across tests (and across
the subprocesses some tests start); a persistent compilation cache in a fresh
temporary directory compiles each program once per session.

Shared fixtures (test modules never import each other; `tests/model_helpers.py`
holds what the model tests share at collection time):
  phantom_config      factory of the tiny CT-phantom training config;
  msd_config          factory of the tiny MSD-dataset config;
  tiny_msd            a 5-case raw MSD dataset writer (its affine, case ids and config);
  interrupt_training  a run killed (KeyboardInterrupt) after a number of training batches;
  restore_latest      (state, step) of a workdir's latest checkpoint, on the host;
  bucket              gs:// served from a local folder (no network, no credentials);
  fast_random_compile non-partitionable threefry while a test runs (fast init compiles on CPU).
jaxseg and jax are imported inside the fixtures, after the environment below is set.
"""

import json
import os
import pathlib
import tempfile

import numpy as np
import pytest

os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
os.environ.setdefault("CUDA_VISIBLE_DEVICES", "")
os.environ.setdefault("JAX_COMPILATION_CACHE_DIR", tempfile.mkdtemp(prefix="jaxseg-test-xla-cache-"))
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES", "0")

from etils.epath import backend as backend_lib  # pylint: disable=g-import-not-at-top,wrong-import-position


def _configure(config, sections):
  """Applies `section=dict(key=value)` updates (nested dicts merge) and `key=value` for top-level keys."""
  for key, value in sections.items():
    if isinstance(value, dict):
      config[key].update(value)
    else:
      config[key] = value
  return config


def _phantom_config(data_dir, **sections):
  """A tiny U-Net (4 features, depth 2) on a 5-case CT phantom in `data_dir`: 4 steps of batch 2, logging,
  validation and a checkpoint every 2 steps, evaluation on the test split without figures.

  Keyword arguments change what a test needs: `train=dict(num_steps=6)`, `data=dict(patch_size=(32, 32))`,
  `seed=1`, ... (applied after these defaults).
  """
  from jaxseg.config import base_config  # pylint: disable=g-import-not-at-top

  config = base_config()
  config.data.update(data_dir=str(data_dir), num_cases=5, num_threads=1)
  config.model.update(features=4, depth=2)
  config.train.update(
    num_steps=4, batch_size=2, warmup_steps=1, log_every_steps=2, eval_every_steps=2, checkpoint_every_steps=2
  )
  config.eval.update(splits=("test",), num_figures=0)
  return _configure(config, sections)


def _msd_config(root, data_dir, **sections):
  """A tiny U-Net (4 features, depth 2) on the raw MSD dataset at `root`, prepared (one worker) into `data_dir`.

  Keyword arguments as for `phantom_config`; the tests set the patch size: `data=dict(patch_size=(16, 16))`.
  """
  from jaxseg.config import base_config  # pylint: disable=g-import-not-at-top

  config = base_config()
  config.data.update(name="msd", root=str(root), data_dir=str(data_dir), prepare_workers=1)
  config.model.update(features=4, depth=2)
  return _configure(config, sections)


@pytest.fixture(scope="session")
def phantom_config():
  """`phantom_config(data_dir, **sections)`: the tiny CT-phantom training config (see `_phantom_config`)."""
  return _phantom_config


@pytest.fixture(scope="session")
def msd_config():
  """`msd_config(root, data_dir, **sections)`: the tiny MSD-dataset config (see `_msd_config`)."""
  return _msd_config


class TinyMsd:
  """A raw MSD dataset of 5 cases [18, 22, depth] with a permuted and flipped affine and a zero border.

  Labels 'organ' (one box, moving with the case) and 'pair' (two boxes); splits 3 / 1 / 1.
  """

  # Voxel axis 0 -> world -y, axis 1 -> world -x, axis 2 -> z; spacing 1.5 x 1.5 x 3 mm.
  AFFINE = np.array([[0.0, -1.5, 0.0, 12.0], [-1.5, 0.0, 0.0, 30.0], [0.0, 0.0, 3.0, -6.0], [0.0, 0.0, 0.0, 1.0]])
  CASES = [f"tiny_{i:03d}" for i in range(5)]

  def write(self, root, depth=5):
    """Writes the dataset (images, labels, dataset.json, splits.json) under `root`; returns `root`."""
    from jaxseg.data import nifti  # pylint: disable=g-import-not-at-top

    rng = np.random.default_rng(0)
    entries = []
    for i, case_id in enumerate(self.CASES):
      label = np.zeros((18, 22, depth), np.uint8)
      z = slice(1, 4) if depth > 1 else slice(0, 1)
      label[4 + i % 3 : 10 + i % 3, 5 + i % 4 : 12 + i % 4, z] = 1
      label[13:15, 3:5, z] = 2
      label[13:15, 16:19, z] = 2
      image = np.where(label == 1, 80.0, np.where(label == 2, 200.0, -50.0)) + rng.normal(0, 5, label.shape)
      image[[0, -1], :, :] = 0.0
      image[:, [0, -1], :] = 0.0  # A zero frame, cropped away by preprocessing.
      nifti.save_nifti(root / "imagesTr" / f"{case_id}.nii.gz", image.astype(np.float32), self.AFFINE)
      nifti.save_nifti(root / "labelsTr" / f"{case_id}.nii.gz", label, self.AFFINE)
      entries.append({"image": f"./imagesTr/{case_id}.nii.gz", "label": f"./labelsTr/{case_id}.nii.gz"})
    (root / "dataset.json").write_text(
      json.dumps(
        {
          "name": f"Tiny{depth}",
          "modality": {"0": "CT"},
          "labels": {"0": "background", "1": "organ", "2": "pair"},
          "tensorImageSize": "3D",
          "numTraining": len(self.CASES),
          "training": entries,
          "test": [],
        }
      )
    )
    (root / "splits.json").write_text(
      json.dumps({"train": self.CASES[:3], "validation": [self.CASES[3]], "test": [self.CASES[4]]})
    )
    return root

  def config(self, root, data_dir):
    """The config these cases are made for: 16 x 16 patches, one figure per report."""
    return _msd_config(root, data_dir, data={"patch_size": (16, 16)}, eval={"num_figures": 1})


@pytest.fixture(scope="session")
def tiny_msd():
  """The tiny raw MSD dataset of the evaluation and prediction tests (`TinyMsd`)."""
  return TinyMsd()


@pytest.fixture(scope="session")
def interrupt_training():
  """`interrupt_training(config, workdir, after_batches)`: `train.train_and_evaluate` killed by a
  KeyboardInterrupt once `after_batches` training batches were taken (the step of the last one may run, its
  checkpoint is not written); fails unless the run stops so. `pipeline.train_batches` is restored after."""
  from jaxseg import train  # pylint: disable=g-import-not-at-top
  from jaxseg.data import pipeline  # pylint: disable=g-import-not-at-top

  def interrupt(config, workdir, after_batches):
    original = pipeline.train_batches

    def crashing_batches(*args, **kwargs):
      iterator = original(*args, **kwargs)
      for _ in range(after_batches):
        yield next(iterator)
      raise KeyboardInterrupt("simulated kill")

    with pytest.MonkeyPatch.context() as patch:
      patch.setattr(pipeline, "train_batches", crashing_batches)
      with pytest.raises(KeyboardInterrupt):
        train.train_and_evaluate(config, workdir)

  return interrupt


@pytest.fixture(scope="session")
def restore_latest():
  """`restore_latest(config, workdir) -> (state, step)`: the latest checkpoint of `workdir` restored onto the
  state `config` builds (`experiment.setup`), read-only, copied to the host."""
  import jax  # pylint: disable=g-import-not-at-top
  from jaxseg import checkpointing, experiment  # pylint: disable=g-import-not-at-top

  def restore(config, workdir):
    exp = experiment.setup(config, workdir)
    checkpoints = checkpointing.Checkpoints(workdir, read_only=True)
    try:
      state, step = checkpoints.restore(exp.abstract_state(), "latest")
    finally:
      checkpoints.close()
    return jax.device_get(state), step

  return restore


class FakeBucketBackend(backend_lib._OsPathBackend):  # pylint: disable=protected-access
  """etils backend that keeps `gs://BUCKET/KEY` in `ROOT/BUCKET/KEY` (no network, no credentials)."""

  def __init__(self, root: pathlib.Path):
    self.root = root

  def _local(self, path) -> str:
    text = os.fspath(path)
    assert text.startswith("gs://"), text
    return str(self.root / text[len("gs://") :])

  def _url(self, local: str) -> str:
    return "gs://" + os.path.relpath(local, self.root)

  def open(self, path, mode):
    return super().open(self._local(path), mode)

  def exists(self, path):
    return super().exists(self._local(path))

  def isdir(self, path):
    return super().isdir(self._local(path))

  def listdir(self, path):
    return super().listdir(self._local(path))

  def glob(self, path):
    return [self._url(p) for p in super().glob(self._local(path))]

  def walk(self, top, *, top_down=True, on_error=None):
    for root, dirs, files in super().walk(self._local(top), top_down=top_down, on_error=on_error):
      yield self._url(root), dirs, files

  def makedirs(self, path, *, exist_ok=False, mode=0o777):
    return super().makedirs(self._local(path), exist_ok=exist_ok, mode=mode)

  def mkdir(self, path, *, exist_ok=False, mode=0o777):
    return super().mkdir(self._local(path), exist_ok=exist_ok, mode=mode)

  def rmtree(self, path):
    return super().rmtree(self._local(path))

  def remove(self, path):
    return super().remove(self._local(path))

  def rename(self, path, dst):
    return super().rename(self._local(path), self._local(dst))

  def replace(self, path, dst):
    return super().replace(self._local(path), self._local(dst))

  def copy(self, path, dst, overwrite):
    return super().copy(self._local(path), self._local(dst), overwrite)

  def stat(self, path):
    return super().stat(self._local(path))


@pytest.fixture
def bucket(tmp_path, monkeypatch):
  """gs:// served from tmp_path/bucket-root; returns that root."""
  from etils.epath import gpath  # pylint: disable=g-import-not-at-top
  from orbax.checkpoint._src.path import gcs_utils  # pylint: disable=g-import-not-at-top

  root = tmp_path / "bucket-root"
  root.mkdir()
  monkeypatch.setitem(gpath._PREFIX_TO_BACKEND, "gs", FakeBucketBackend(root))  # pylint: disable=protected-access
  monkeypatch.setattr(gpath, "_is_tf_installed", lambda: False)
  # Orbax asks the GCS API whether a bucket has a hierarchical namespace; the fake bucket has none.
  monkeypatch.setattr(gcs_utils, "is_hierarchical_namespace_enabled", lambda path: False)
  monkeypatch.chdir(tmp_path)  # A mangled gs: directory would appear here.
  return root


@pytest.fixture
def fast_random_compile():
  """Inits under `jax.threefry_partitionable(False)`: on XLA:CPU the partitionable threefry makes compiling an
  init of a dozen kernels take tens of seconds (a few seconds without). It changes which random numbers an
  init draws, not what the tests check. Use with `pytestmark = pytest.mark.usefixtures(...)`."""
  import jax  # pylint: disable=g-import-not-at-top

  with jax.threefry_partitionable(False):
    yield

"""`config.train.init_from`: initialising a run from another jaxseg run's checkpoint (transfer learning).

Pure pieces (name-and-shape matching, the state it builds, config checks) on hand-made trees; then one tiny
source run on the CT phantom, restored through `train.init_from_workdir` as a fine-tuning run does, against
the source checkpoint read independently; the refusals; and a resumed fine-tuning run that must not
re-apply init_from over its own checkpoint.
"""

import json
import shutil

import jax
import numpy as np
import optax
import pytest

from jaxseg import checkpointing, experiment, parallel, state as state_lib, train
from jaxseg.config import base_config, validate
from jaxseg.errors import CheckpointError, ConfigError


def tree(**arrays):
  """{'params': {...}, 'batch_stats': {...}} from 'collection/module/leaf' keyword names (with '__' for '/')."""
  out = {}
  for name, value in arrays.items():
    node = out
    *parents, leaf = name.split("__")
    for parent in parents:
      node = node.setdefault(parent, {})
    node[leaf] = value
  return out


def test_matching_arrays_are_copied_exactly_and_the_rest_kept():
  rng = np.random.default_rng(0)
  target = tree(
    params__conv0__kernel=np.zeros((3, 3, 2, 8), np.float32),  # Channels differ: kept.
    params__conv1__kernel=np.zeros((3, 3, 8, 8), np.float32),  # Copied.
    params__head0__kernel=np.zeros((1, 1, 8, 5), np.float32),  # Excluded: kept.
    params__extra__bias=np.ones(4, np.float32),  # Not in the source: kept.
    batch_stats__norm0__mean=np.zeros(8, np.float32),
  )  # Copied.
  source = tree(
    params__conv0__kernel=rng.normal(size=(3, 3, 1, 8)),
    params__conv1__kernel=rng.normal(size=(3, 3, 8, 8)),
    params__head0__kernel=rng.normal(size=(1, 1, 8, 5)),
    params__only_there__kernel=rng.normal(size=(2,)),
    batch_stats__norm0__mean=rng.normal(size=8),
  )
  new, copied, kept = state_lib.transfer_matching(target, source, exclude=("params/head*",))
  assert copied == ["batch_stats/norm0/mean", "params/conv1/kernel"]
  assert kept == ["params/conv0/kernel", "params/extra/bias", "params/head0/kernel"]
  np.testing.assert_array_equal(
    new["params"]["conv1"]["kernel"], source["params"]["conv1"]["kernel"].astype(np.float32)
  )
  assert new["params"]["conv1"]["kernel"].dtype == np.float32  # The target's dtype, not the source's float64.
  np.testing.assert_array_equal(
    new["batch_stats"]["norm0"]["mean"], source["batch_stats"]["norm0"]["mean"].astype(np.float32)
  )
  for name in ("conv0", "head0"):
    np.testing.assert_array_equal(new["params"][name]["kernel"], target["params"][name]["kernel"])
  np.testing.assert_array_equal(new["params"]["extra"]["bias"], np.ones(4))
  assert "only_there" not in new["params"]
  assert state_lib.describe_kept(kept, target, source, ("params/head*",)) == [
    "params/conv0/kernel (shape (3, 3, 2, 8) here, (3, 3, 1, 8) in the source)",
    "params/extra/bias (not in the source)",
    "params/head0/kernel (excluded)",
  ]


def small_state(params, tx):
  return state_lib.TrainState(
    step=np.zeros((), np.int32), params=params, batch_stats={}, opt_state=tx.init(params), rng=np.zeros(2, np.uint32)
  )


def test_state_gets_fresh_optimiser_state_and_nothing_matching_is_refused():
  tx = optax.adam(1e-3)
  params = {"dense": {"kernel": np.zeros((2, 3), np.float32), "bias": np.zeros(3, np.float32)}}
  state = small_state(params, tx)
  state = state.replace(opt_state=jax.tree.map(lambda x: x + 7, state.opt_state))  # A used optimiser state.
  source = {"params": {"dense": {"kernel": np.full((2, 3), 2.0), "bias": np.zeros(4)}}}
  new, record = state_lib.init_from_variables(state, source, tx, "config.train.init_from=/src")
  np.testing.assert_array_equal(new.params["dense"]["kernel"], np.full((2, 3), 2.0))
  assert record["num_copied"] == 1 and record["kept"] == ["params/dense/bias (shape (3,) here, (4,) in the source)"]
  fresh = tx.init(new.params)
  for a, b in zip(jax.tree.leaves(new.opt_state), jax.tree.leaves(fresh)):
    np.testing.assert_array_equal(a, b)
  with pytest.raises(
    ConfigError,
    match=r"^config.train.init_from=/src: no array of the source matches this model "
    r"by name and shape \(source has 1 arrays, e.g. params/other/kernel; this model 2",
  ):
    state_lib.init_from_variables(
      state, {"params": {"other": {"kernel": np.zeros(1)}}}, tx, "config.train.init_from=/src"
    )


@pytest.mark.parametrize(
  "overrides, message",
  [
    ({"train.init_from": "/a", "model.pretrained": "/w.npz"}, r"config.train.init_from: '/a' and model.pretrained"),
    ({"train.init_from_checkpoint": "newest"}, r"config.train.init_from_checkpoint: 'newest' is not 'best'"),
    (
      {"train.freeze_backbone": True},
      r"config.train.freeze_backbone: True has no effect: model 'unet' has no "
      r"backbone module",
    ),
    ({"train.backbone_lr_multiplier": 0.1}, r"config.train.backbone_lr_multiplier: 0.1 has no effect"),
  ],
)
def test_bad_init_settings_are_refused(overrides, message):
  config = base_config()
  for key, value in overrides.items():
    section, name = key.split(".")
    config[section][name] = value
  with pytest.raises(ConfigError, match=message):
    validate(config)


def test_backbone_settings_pass_for_a_backbone_model():
  config = base_config()
  config.model.name = "deeplabv3"
  config.train.freeze_backbone = True
  validate(config)


# Through the training code, on a tiny CT phantom (slow: the phantom is generated and prepared first).


SOURCE_STEP = 3


@pytest.fixture(scope="module")
def tiny_config(phantom_config):
  """`tiny_config(data_dir, seed=0, **model)`: 2 steps on 32 x 32 patches, no post-processing."""

  def make(data_dir, seed=0, **model):
    return phantom_config(
      data_dir,
      seed=seed,
      data={"patch_size": (32, 32)},
      model=model,
      train={"num_steps": 2},
      eval={"postprocess": False},
    )

  return make


@pytest.fixture(scope="module")
def source_run(tmp_path_factory, tiny_config):
  """A tiny 2D U-Net's workdir on the CT phantom with one checkpoint (step 3) whose arrays are its initial
  values plus random offsets, so that copied arrays differ from any fresh initialisation."""
  root = tmp_path_factory.mktemp("init_from")
  config = tiny_config(root / "data")
  exp = experiment.setup(config, root / "source")
  state = exp.init_state()
  leaves, treedef = jax.tree.flatten((state.params, state.batch_stats))
  rng = np.random.default_rng(1)
  offset = [leaf + rng.normal(size=leaf.shape).astype(leaf.dtype) for leaf in leaves]
  params, batch_stats = jax.tree.unflatten(treedef, offset)
  checkpoints = checkpointing.Checkpoints(root / "source")
  checkpoints.save(SOURCE_STEP, state.replace(params=params, batch_stats=batch_stats, step=SOURCE_STEP))
  checkpoints.close()
  experiment.write_config(exp)
  return root, config


def flat(variables):
  return {
    name: np.asarray(v)
    for name, v in {
      "/".join(str(getattr(k, "key", k)) for k in path): v for path, v in jax.tree_util.tree_leaves_with_path(variables)
    }.items()
  }


@pytest.mark.slow  # Generates and prepares a phantom (about a minute on a loaded 2-core machine).
def test_init_from_copies_the_source_checkpoint_and_keeps_the_rest(source_run, tiny_config, restore_latest):
  root, source_config = source_run
  source_state, step = restore_latest(source_config, root / "source")
  source = flat({"params": source_state.params, "batch_stats": source_state.batch_stats})

  config = tiny_config(source_config.data.data_dir, seed=1, depth=3)  # Deeper: some arrays differ.
  config.train.init_from = str(root / "source")
  config.train.init_from_exclude = ("params/head*",)
  target_exp = experiment.setup(config, root / "target")
  fresh = parallel.host_copy(target_exp.init_state())
  state = train.init_from_workdir(target_exp, fresh)
  got, init = (
    flat({"params": state.params, "batch_stats": state.batch_stats}),
    flat({"params": fresh.params, "batch_stats": fresh.batch_stats}),
  )
  record = json.loads((root / "target" / train.INIT_FROM_RECORD).read_text())
  assert record["step"] == step == SOURCE_STEP and record["num_copied"] + record["num_kept"] == len(got)
  assert "params/down0/conv0/kernel" in record["copied"]
  for name, value in got.items():
    if name in record["copied"]:
      np.testing.assert_array_equal(value, source[name])
    else:
      np.testing.assert_array_equal(value, init[name])
      assert name in " ".join(record["kept"])
  kept = {k.split(" ")[0] for k in record["kept"]}
  assert {"params/head0/kernel", "params/head0/bias", "params/bottleneck/conv0/kernel"} <= kept
  assert "params/head0/kernel (excluded)" in record["kept"]
  assert int(state.step) == 0


@pytest.mark.slow  # Generates and prepares a phantom (about a minute on a loaded 2-core machine).
def test_init_from_refusals(source_run, tiny_config, tmp_path):
  root, source_config = source_run
  config = tiny_config(source_config.data.data_dir)

  def refused(init_from, error, message, **changes):
    c = config.copy_and_resolve_references()
    c.train.init_from = str(init_from)
    for key, value in changes.items():
      section, name = key.split("__")
      c[section][name] = value
    exp = experiment.setup(c, tmp_path / "target")
    with pytest.raises(error, match=message):
      train.init_from_workdir(exp, parallel.host_copy(exp.init_state()))

  refused(tmp_path / "missing", ConfigError, r"config.train.init_from=.*missing: not a directory")
  (tmp_path / "empty").mkdir()
  refused(tmp_path / "empty", CheckpointError, r"config.train.init_from=.*empty: .*config.json: cannot read")
  no_checkpoints = tmp_path / "no_checkpoints"
  no_checkpoints.mkdir()
  shutil.copy(root / "source" / "config.json", no_checkpoints / "config.json")
  refused(no_checkpoints, CheckpointError, r"config.train.init_from=.*no_checkpoints: no checkpoint in")
  refused(root / "source", CheckpointError, r"no checkpoint for step 7", train__init_from_checkpoint="7")
  refused(tmp_path / "target", ConfigError, r"is this run's own workdir")
  refused(
    root / "source",
    ConfigError,
    r"no array of the source matches this model",
    model__name="fcn32s",
    model__backbone="resnet18",
    model__backbone_width=4,
  )


@pytest.mark.slow  # Generates and prepares a phantom (about a minute on a loaded 2-core machine).
def test_resumed_fine_tuning_run_restores_its_own_checkpoint(source_run, tiny_config, tmp_path):
  root, source_config = source_run
  source = tmp_path / "source_copy"
  shutil.copytree(root / "source", source)
  config = tiny_config(source_config.data.data_dir)
  config.train.init_from = str(source)
  train.train_and_evaluate(config, tmp_path / "tuned")
  assert (tmp_path / "tuned" / train.INIT_FROM_RECORD).exists()
  shutil.rmtree(source)  # Re-applying init_from would now fail: the resumed run must not need it.
  config.train.num_steps = 4
  train.train_and_evaluate(config, tmp_path / "tuned")
  checkpoints = checkpointing.Checkpoints(tmp_path / "tuned", read_only=True)
  assert checkpoints.latest_step() == 4
  checkpoints.close()

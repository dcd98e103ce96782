"""jaxseg.checkpointing on a tiny TrainState: save and restore, latest/best/step, read-only use, refusals.

The end-to-end uses (resume after a kill, a corrupt checkpoint met by training) are in test_train.py; here
each method of `Checkpoints` is called directly on a state of a few small arrays (no model, no data).
"""

import jax
import numpy as np
import optax
import pytest

from jaxseg import checkpointing, state as state_lib
from jaxseg.errors import CheckpointError

TX = optax.adam(1e-3)


def make_state(step, offset=0.0, kernel_shape=(2, 3)):
  """A TrainState whose arrays all depend on `offset` (so two states differ in every leaf)."""
  params = {
    "dense": {
      "kernel": np.arange(np.prod(kernel_shape), dtype=np.float32).reshape(kernel_shape) + offset,
      "bias": np.full(kernel_shape[-1], offset, np.float32),
    }
  }
  batch_stats = {"norm": {"mean": np.full(3, 2 * offset, np.float32)}}
  opt_state = jax.tree.map(lambda x: x + offset, TX.init(params))
  return state_lib.TrainState(
    step=np.asarray(step, np.int32),
    params=params,
    batch_stats=batch_stats,
    opt_state=opt_state,
    rng=np.asarray([7, int(offset)], np.uint32),
  )


def abstract(state):
  return jax.eval_shape(lambda: state)


def assert_states_equal(a, b):
  leaves_a, leaves_b = jax.tree.leaves(a), jax.tree.leaves(b)
  assert jax.tree.structure(a) == jax.tree.structure(b) and len(leaves_a) > 0
  for x, y in zip(leaves_a, leaves_b):
    assert np.asarray(x).dtype == np.asarray(y).dtype
    np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


@pytest.fixture
def checkpoints(tmp_path):
  manager = checkpointing.Checkpoints(tmp_path)
  yield manager
  manager.close()


def test_save_then_restore_latest_and_by_step(checkpoints, tmp_path):
  assert checkpoints.latest_step() is None and checkpoints.best_step() is None
  assert checkpoints.directory == tmp_path / "checkpoints"
  assert (tmp_path / "checkpoints" / "latest").is_dir() and (tmp_path / "checkpoints" / "best").is_dir()
  first, second = make_state(1, offset=1.0), make_state(2, offset=2.0)
  checkpoints.save(1, first)
  checkpoints.save(2, second)
  assert checkpoints.latest_step() == 2
  restored, step = checkpoints.restore(abstract(first), "latest")
  assert step == 2 and isinstance(restored, state_lib.TrainState)
  assert_states_equal(restored, second)
  restored, step = checkpoints.restore(abstract(first), 1)
  assert step == 1
  assert_states_equal(restored, first)
  assert checkpoints.restore(abstract(first), "1")[1] == 1  # A step given as text (config.eval.checkpoint).


def test_saving_a_saved_step_again_keeps_the_first(checkpoints):
  checkpoints.save(3, make_state(3, offset=1.0))
  checkpoints.save(3, make_state(3, offset=5.0))  # A no-op: the final save after a periodic one.
  assert_states_equal(checkpoints.restore(abstract(make_state(3)), 3)[0], make_state(3, offset=1.0))


def test_only_the_newest_keep_checkpoints_stay(tmp_path):
  checkpoints = checkpointing.Checkpoints(tmp_path, keep=2)
  for step in (1, 2, 3):
    checkpoints.save(step, make_state(step, offset=step))
  assert sorted(p.name for p in (tmp_path / "checkpoints" / "latest").iterdir() if p.name.isdigit()) == ["2", "3"]
  with pytest.raises(CheckpointError, match=r"no checkpoint for step 1 in .*checkpoints \(have \[2, 3\]\)"):
    checkpoints.restore(abstract(make_state(0)), 1)
  checkpoints.close()


def test_best_is_replaced_only_by_a_better_dice(checkpoints, tmp_path):
  assert checkpoints.best_dice() == float("-inf")
  checkpoints.save(1, make_state(1, offset=1.0))
  # No best yet: 'best' is the latest checkpoint.
  assert checkpoints.restore(abstract(make_state(0)), "best")[1] == 1
  assert checkpoints.save_best(2, make_state(2, offset=2.0), 0.5)
  assert not checkpoints.save_best(3, make_state(3, offset=3.0), 0.4)
  assert not checkpoints.save_best(3, make_state(3, offset=3.0), 0.5)  # Equal is not better.
  assert checkpoints.best_step() == 2 and checkpoints.best_dice() == 0.5
  assert checkpoints.save_best(4, make_state(4, offset=4.0), 0.75)
  assert checkpoints.best_step() == 4 and checkpoints.best_dice() == 0.75
  assert [p.name for p in (tmp_path / "checkpoints" / "best").iterdir() if p.name.isdigit()] == ["4"]
  restored, step = checkpoints.restore(abstract(make_state(0)), "best")
  assert step == 4
  assert_states_equal(restored, make_state(4, offset=4.0))
  # A best step that is not among the latest checkpoints is found by its number too.
  assert checkpoints.latest_step() == 1
  assert_states_equal(checkpoints.restore(abstract(make_state(0)), 4)[0], make_state(4, offset=4.0))


def test_read_only_creates_and_writes_nothing(tmp_path):
  checkpoints = checkpointing.Checkpoints(tmp_path / "missing", read_only=True)
  assert checkpoints.latest_step() is None and checkpoints.best_dice() == float("-inf")
  with pytest.raises(CheckpointError, match=r"no checkpoint in .*missing/checkpoints; train first"):
    checkpoints.restore(abstract(make_state(0)), "latest")
  with pytest.raises(CheckpointError, match="no checkpoint in"):
    checkpoints.restore(abstract(make_state(0)), "best")
  checkpoints.close()
  assert not (tmp_path / "missing").exists()

  writer = checkpointing.Checkpoints(tmp_path / "run")
  writer.save(1, make_state(1, offset=1.0))
  writer.close()
  reader = checkpointing.Checkpoints(tmp_path / "run", read_only=True)
  with pytest.raises(ValueError, match="opened read_only, cannot save"):
    reader.save(2, make_state(2))
  with pytest.raises(ValueError, match="opened read_only, cannot save"):
    reader.save_best(2, make_state(2), 0.9)
  assert reader.latest_step() == 1 and reader.best_step() is None
  assert_states_equal(reader.restore(abstract(make_state(0)), "latest")[0], make_state(1, offset=1.0))
  reader.close()
  assert sorted(p.name for p in (tmp_path / "run" / "checkpoints" / "latest").iterdir()) == ["1"]
  assert not list((tmp_path / "run" / "checkpoints" / "best").iterdir())


def test_unknown_checkpoint_name_is_refused(checkpoints):
  checkpoints.save(1, make_state(1))
  with pytest.raises(CheckpointError, match=r"^checkpoint 'newest' is not 'best', 'latest' or a step number$"):
    checkpoints.restore(abstract(make_state(0)), "newest")


def test_checkpoint_of_other_shapes_is_refused_before_reading_arrays(checkpoints):
  checkpoints.save(1, make_state(1))
  wider = abstract(make_state(0, kernel_shape=(2, 4)))
  with pytest.raises(
    CheckpointError,
    match=r"^checkpoint .*latest/1 does not match the config: "
    r"params/dense/bias has shape \(3,\) in the checkpoint but \(4,\) for this config "
    r"\(and 5 more arrays\); a hint$",
  ):
    checkpoints.restore(wider, "latest", mismatch_hint="a hint")
  larger = abstract(
    make_state(0).replace(batch_stats={"norm": {"mean": np.zeros(3, np.float32), "var": np.zeros(3, np.float32)}})
  )
  with pytest.raises(
    CheckpointError,
    match=r"1 arrays of this config's state are not in the checkpoint "
    r"\(e.g. batch_stats/norm/var\)$",
  ):
    checkpoints.restore(larger, "latest")
  smaller = abstract(make_state(0).replace(batch_stats={}))
  with pytest.raises(
    CheckpointError,
    match=r"1 arrays of the checkpoint are not in this config's state "
    r"\(e.g. batch_stats/norm/mean\)$",
  ):
    checkpoints.restore(smaller, "latest")


def test_corrupt_checkpoint_is_an_error_naming_it_and_is_kept(checkpoints, tmp_path):
  checkpoints.save(1, make_state(1))
  checkpoints.save(2, make_state(2))
  step_dir = tmp_path / "checkpoints" / "latest" / "2"
  files = [p for p in step_dir.rglob("*") if p.is_file() and p.stat().st_size > 0]
  assert files
  for path in files:
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
  sizes = {p: p.stat().st_size for p in files}
  with pytest.raises(
    CheckpointError,
    match=rf"^checkpoint {step_dir} is corrupt or unreadable \(.+\); move it "
    r"away to resume from an older one, or use a new --workdir$",
  ):
    checkpoints.restore(abstract(make_state(0)), "latest")
  assert {p: p.stat().st_size for p in files} == sizes
  assert_states_equal(checkpoints.restore(abstract(make_state(0)), 1)[0], make_state(1))  # The older one reads.


def test_tree_difference_names_model_arrays_first():
  stored = {"opt/mu/kernel": (2, 3), "params/b/kernel": (3, 3), "params/a/kernel": (2, 3), "params/gone": (1,)}
  expected = {
    "opt/mu/kernel": (2, 4),
    "params/b/kernel": (3, 4),
    "params/a/kernel": (2, 4),
    "batch_stats/new": (5,),
    "params/new": (1,),
  }
  assert checkpointing.tree_difference(stored, expected) == (
    "params/a/kernel has shape (2, 3) in the checkpoint but (2, 4) for this config (and 2 more arrays); "
    "2 arrays of this config's state are not in the checkpoint (e.g. params/new); "
    "1 arrays of the checkpoint are not in this config's state (e.g. params/gone)"
  )
  assert checkpointing.tree_difference(stored, stored) == ""

"""One process of a (possibly multi-process) tiny training or evaluation run; tests/test_multiprocess.py starts it.

  multiprocess_run.py train WORKDIR DATA_DIR STOP OUT.json [--dump=S1,S2] [--hang] [--evaluate=EVAL.json]
  multiprocess_run.py evaluate WORKDIR DATA_DIR OUT.json [--predict=IN_DIR,OUT_DIR,OUT.json]

Multi-process when JAXSEG_COORDINATOR / JAXSEG_NUM_PROCESSES / JAXSEG_PROCESS_ID are set
(`jaxseg.parallel.initialize_distributed`). `train` runs the training loop's pieces
(experiment.setup, train.make_step on the mesh, this process's rows of every global batch from
pipeline.train_batches, checkpointing.Checkpoints) of a NUM_STEPS = 5 run from the latest checkpoint
(if any) to step STOP, saves, and on process 0 writes the per-step losses and the parameters after STOP
and after each step of --dump (OUT.<step>.npz). With --hang it then waits to be killed (a preemption);
with --evaluate it then evaluates as `evaluate` does, and with --predict=IN_DIR,OUT_DIR,OUT.json it
then runs `predict.predict_workdir` (cases split over processes) and writes the returned paths. `evaluate` runs `evaluate.evaluate_workdir`
(cases split over processes, reports written by process 0) and writes the summaries.
"""

import json
import pathlib
import sys
import time

T0 = time.perf_counter()


def mark(what: str) -> None:
  print(f"[{time.perf_counter() - T0:6.1f} s] {what}", flush=True)


from jaxseg import parallel  # pylint: disable=g-import-not-at-top,wrong-import-position

if __name__ == "__main__":  # Not in the dataset preparation's spawned workers, which import this file.
  parallel.initialize_distributed()  # Before any other JAX call.

import jax  # pylint: disable=g-import-not-at-top
import numpy as np  # pylint: disable=g-import-not-at-top

from jaxseg import checkpointing, evaluate, experiment, predict, train  # pylint: disable=g-import-not-at-top
from jaxseg.config import base_config, smoke_run  # pylint: disable=g-import-not-at-top
from jaxseg.data import pipeline  # pylint: disable=g-import-not-at-top

mark("imported")


def tiny_config(data_dir: str, num_steps: int):
  config = base_config()
  config.data.data_dir = data_dir
  config.data.patch_size = (64, 64)
  config.data.num_threads = 1
  config.data.augment.flip_axes = ()
  config.model.update(features=4, depth=2)
  smoke_run(config, num_cases=6, num_steps=num_steps, batch_size=8)
  config.train.warmup_steps = 1
  config.eval.update(splits=("validation", "test"), num_figures=1, batch_size=32, checkpoint="latest")
  return config


def save_params(params, path: pathlib.Path) -> None:
  params = parallel.host_copy(params)  # Every process (a collective when arrays span processes).
  if jax.process_index() == 0:
    np.savez(
      path, **{jax.tree_util.keystr(p): np.asarray(v) for p, v in jax.tree_util.tree_flatten_with_path(params)[0]}
    )


NUM_STEPS = 5


def run_train(workdir: str, data_dir: str, stop: int, out: pathlib.Path, hang: bool, dump: set[int]) -> None:
  exp = experiment.setup(tiny_config(data_dir, NUM_STEPS), workdir)
  config = exp.config
  mark("setup")
  checkpoints = checkpointing.Checkpoints(exp.workdir, keep=5)
  state = exp.init_state()
  mark("init_state")
  if checkpoints.latest_step() is not None:
    state, _ = checkpoints.restore(exp.abstract_state(), "latest")
    mark("restored")
  experiment.write_config(exp)
  start = int(state.step)
  shardings = exp.state_shardings()
  step_fn = jax.jit(
    train.make_step(exp),
    in_shardings=(shardings, parallel.batch_sharding(exp.mesh)),
    out_shardings=(shardings, None),
    donate_argnums=0,
  )
  local = parallel.check_batch_size(config.train.batch_size, exp.mesh)
  source = pipeline.CaseSource(exp.prepared, "train", config.data.cache_cases)
  batches = pipeline.train_batches(config, source, start_step=start, local_batch_size=local)
  losses = {}
  first = next(batches)
  # Compile before the first cross-process collective, then meet: gloo gives a late process only 30 s.
  step_fn = parallel.compile_together(step_fn, state, parallel.global_batch(first, exp.mesh))
  mark("compiled")
  for step in range(start + 1, stop + 1):
    local_batch = first if step == start + 1 else next(batches)
    assert local_batch["image"].shape[0] == local, local_batch["image"].shape  # Only this process's rows.
    state, metrics = step_fn(state, parallel.global_batch(local_batch, exp.mesh))
    losses[step] = float(metrics["loss"])
    mark(f"step {step}")
    if step in dump and step != stop:
      save_params(state.params, out.with_suffix(f".{step}.npz"))
  checkpoints.save(stop, state)
  checkpoints.close()
  save_params(state.params, out.with_suffix(f".{stop}.npz"))
  if jax.process_index() == 0:
    out.write_text(
      json.dumps(
        {
          "losses": losses,
          "start": start,
          "processes": jax.process_count(),
          "devices": exp.mesh.devices.size,
          "local_batch": local,
        }
      )
    )
  print(f"SAVED step {stop} process {jax.process_index()}", flush=True)
  if hang:
    while True:  # Wait to be killed, like a preempted job.
      time.sleep(1)


def run_predict(workdir: str, data_dir: str, spec: str) -> None:
  source, output, out = spec.split(",")
  config = tiny_config(data_dir, NUM_STEPS)
  config.predict.input, config.predict.output = source, output
  written = predict.predict_workdir(config, workdir)
  if jax.process_index() == 0:
    pathlib.Path(out).write_text(json.dumps({"written": [str(p) for p in written], "processes": jax.process_count()}))


def run_evaluate(workdir: str, data_dir: str, out: pathlib.Path) -> None:
  started = time.perf_counter()
  results = evaluate.evaluate_workdir(tiny_config(data_dir, NUM_STEPS), workdir)  # The trained config (same schedule).
  if jax.process_index() == 0:
    out.write_text(
      json.dumps({"results": results, "seconds": time.perf_counter() - started, "processes": jax.process_count()})
    )


if __name__ == "__main__":
  mode = sys.argv[1]
  if mode == "train":
    dump = {int(s) for a in sys.argv if a.startswith("--dump=") for s in a.split("=", 1)[1].split(",")}
    run_train(sys.argv[2], sys.argv[3], int(sys.argv[4]), pathlib.Path(sys.argv[5]), "--hang" in sys.argv, dump)
    for arg in sys.argv:
      if arg.startswith("--evaluate="):
        run_evaluate(sys.argv[2], sys.argv[3], pathlib.Path(arg.split("=", 1)[1]))
  else:
    run_evaluate(sys.argv[2], sys.argv[3], pathlib.Path(sys.argv[4]))
  for arg in sys.argv:
    if arg.startswith("--predict="):
      run_predict(sys.argv[2], sys.argv[3], arg.split("=", 1)[1])

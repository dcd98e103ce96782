"""Two processes on localhost (2 virtual CPU devices each, gloo collectives) against one process with 4 devices.

One module-scoped run of tests/scripts/multiprocess_run.py (a tiny U-Net on a 6-case CT phantom):
  1. one process, 4 devices: 5 train steps (parameters kept after steps 3 and 5);
  2. two processes: 3 steps, save, then killed (SIGKILL) while alive, as in a preemption;
  3. two processes: resume from that checkpoint to step 5, then evaluate and predict 3 images (cases split
     over processes);
  4. one process: evaluate and predict with the same checkpoint.
"""

import json
import os
import pathlib
import signal
import socket
import subprocess
import sys
import time

import numpy as np
import pytest

REPO = pathlib.Path(__file__).parent.parent
SCRIPT = REPO / "tests" / "scripts" / "multiprocess_run.py"
TIMEOUT_S = 300  # Per launch; every child is killed when it runs out.
_DROP = (
  "JAXSEG_COORDINATOR",
  "JAXSEG_NUM_PROCESSES",
  "JAXSEG_PROCESS_ID",
  "JAX_COORDINATOR_ADDRESS",
  "JAX_NUM_PROCESSES",
  "JAX_PROCESS_ID",
  "XLA_FLAGS",
)


def free_port() -> int:
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def launch(args: list[str], processes: int, log_dir: pathlib.Path, name: str) -> list[subprocess.Popen]:
  """Starts `processes` processes of the script with 4 devices in all (4 // processes each)."""
  base = {k: v for k, v in os.environ.items() if k not in _DROP}
  base.update(
    JAX_PLATFORMS="cpu",
    JAX_CPU_COLLECTIVES_IMPLEMENTATION="gloo",
    PYTHONUNBUFFERED="1",
    XLA_FLAGS=f"--xla_force_host_platform_device_count={4 // processes}",
  )
  if processes > 1:
    base.update(
      JAXSEG_COORDINATOR=f"127.0.0.1:{free_port()}", JAXSEG_NUM_PROCESSES=str(processes), JAXSEG_INIT_TIMEOUT="120"
    )
  children = []
  for i in range(processes):
    env = dict(base, JAXSEG_PROCESS_ID=str(i)) if processes > 1 else base
    log = open(log_dir / f"{name}.{i}.log", "w")  # pylint: disable=consider-using-with
    children.append(
      subprocess.Popen([sys.executable, str(SCRIPT), *args], cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT)
    )
  return children


def kill(children: list[subprocess.Popen]) -> None:
  for child in children:
    if child.poll() is None:
      child.send_signal(signal.SIGKILL)
      child.wait(timeout=30)


def wait(children, log_dir: pathlib.Path, name: str, until_line: str | None = None) -> None:
  """Waits for every child to exit 0 (or to print `until_line`); kills them all on failure or timeout."""
  deadline = time.time() + TIMEOUT_S
  logs = [log_dir / f"{name}.{i}.log" for i in range(len(children))]
  try:
    while time.time() < deadline:
      codes = [c.poll() for c in children]
      if any(code not in (None, 0) for code in codes):
        break
      if until_line is not None and all(until_line in log.read_text() for log in logs):
        return
      if all(code == 0 for code in codes):
        return
      time.sleep(0.5)
    tails = "\n".join(f"--- {log.name}\n{log.read_text()[-2500:]}" for log in logs)
    raise AssertionError(f"{name}: exit codes {[c.poll() for c in children]}\n{tails}")
  finally:
    if until_line is None or any(c.poll() not in (None, 0) for c in children):
      kill(children)


def load_params(path: pathlib.Path) -> dict[str, np.ndarray]:
  with np.load(path) as data:
    return {k: data[k] for k in data.files}


def max_diff(a: dict[str, np.ndarray], b: dict[str, np.ndarray]) -> float:
  assert a.keys() == b.keys()
  return max(float(np.max(np.abs(a[k].astype(np.float64) - b[k]))) for k in a)


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
  root = tmp_path_factory.mktemp("multiprocess")
  data = str(root / "data")
  single, multi = root / "single", root / "multi"
  # 1. One process, 4 devices, 5 steps (prepares the phantom the other runs reuse).
  wait(
    launch(["train", str(single), data, "5", str(root / "single.json"), "--dump=3"], 1, root, "single"), root, "single"
  )
  # 2. Two processes, 3 steps, save, then killed while still running.
  children = launch(["train", str(multi), data, "3", str(root / "multi3.json"), "--hang"], 2, root, "multi3")
  wait(children, root, "multi3", until_line="SAVED step 3")
  kill(children)
  assert [c.returncode for c in children] == [-signal.SIGKILL] * 2
  # 3. Two processes resume to step 5, then evaluate with cases split over the processes.
  images = root / "predict_in"
  images.mkdir()
  for name in sorted(p.name for p in (root / "data" / "ct_phantom" / "imagesTr").glob("*.nii.gz"))[:3]:
    (images / name).symlink_to(root / "data" / "ct_phantom" / "imagesTr" / name)
  wait(
    launch(
      [
        "train",
        str(multi),
        data,
        "5",
        str(root / "multi5.json"),
        f"--evaluate={root / 'eval2.json'}",
        f"--predict={images},{root / 'pred2'},{root / 'pred2.json'}",
      ],
      2,
      root,
      "multi5",
    ),
    root,
    "multi5",
  )
  # 4. One process evaluates the same checkpoint.
  eval1_dir = root / "eval1_workdir"
  eval1_dir.mkdir()
  (eval1_dir / "checkpoints").symlink_to(multi / "checkpoints")
  wait(
    launch(
      [
        "evaluate",
        str(eval1_dir),
        data,
        str(root / "eval1.json"),
        f"--predict={images},{root / 'pred1'},{root / 'pred1.json'}",
      ],
      1,
      root,
      "eval1",
    ),
    root,
    "eval1",
  )
  return root


def test_two_processes_train_like_one_process_with_four_devices_and_resume_after_kill(runs):
  single = json.loads((runs / "single.json").read_text())
  multi3 = json.loads((runs / "multi3.json").read_text())
  multi5 = json.loads((runs / "multi5.json").read_text())
  assert (single["processes"], single["devices"], single["local_batch"]) == (1, 4, 8)
  assert (multi3["processes"], multi3["devices"], multi3["local_batch"]) == (2, 4, 4)  # Each reads its half.
  assert multi5["start"] == 3 and sorted(multi5["losses"]) == ["4", "5"]  # Resumed, not restarted.
  assert not (runs / "multi" / "checkpoints" / "latest" / "4").exists()
  for step in ("1", "2", "3"):
    assert abs(single["losses"][step] - multi3["losses"][step]) <= 1e-6, (step, single, multi3)
  for step in ("4", "5"):
    assert abs(single["losses"][step] - multi5["losses"][step]) <= 1e-6, (step, single, multi5)
  assert single["losses"]["1"] != single["losses"]["5"]
  assert max_diff(load_params(runs / "single.3.npz"), load_params(runs / "multi3.3.npz")) <= 1e-6
  assert max_diff(load_params(runs / "single.5.npz"), load_params(runs / "multi5.5.npz")) <= 1e-6


def test_two_processes_evaluate_like_one(runs):
  two = json.loads((runs / "eval2.json").read_text())
  one = json.loads((runs / "eval1.json").read_text())
  assert (two["processes"], one["processes"]) == (2, 1)
  assert set(two["results"]) == {"validation", "test"}
  assert two["results"] == one["results"]
  summary = json.loads((runs / "multi" / "results" / "test" / "summary.json").read_text())
  assert summary == two["results"]["test"]  # Written by process 0.
  assert summary["num_cases"] >= 1 and summary["step"] == 5


def test_two_processes_predict_like_one(runs):
  import nibabel as nib  # pylint: disable=g-import-not-at-top

  two = json.loads((runs / "pred2.json").read_text())
  one = json.loads((runs / "pred1.json").read_text())
  assert (two["processes"], one["processes"]) == (2, 1)
  names = [pathlib.Path(p).name for p in one["written"]]
  assert len(names) == 3 and [pathlib.Path(p).name for p in two["written"]] == names  # Input order, all cases.
  for name in names:  # Process 0 wrote two of the files, process 1 the third.
    a = np.asarray(nib.load(runs / "pred2" / name).dataobj)
    b = np.asarray(nib.load(runs / "pred1" / name).dataobj)
    assert a.shape == b.shape and np.array_equal(a, b), name

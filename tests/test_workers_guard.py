"""A script without `if __name__ == "__main__":` must not hang when it prepares a dataset.

Spawned preparation workers run the main script again; before the fix an
unguarded `experiment.setup(...)` at a script's top level waited forever at
"Fingerprint of N training cases: 0%" (the workers reran the preparation and
queued on the parent's lock).
"""

import os
import pathlib
import subprocess
import sys
import textwrap

import pytest

REPO = pathlib.Path(__file__).resolve().parents[1]

POOL_PROBE = """
from jaxseg.data.builders import workers


def probe():
  pool = workers.process_pool(2)
  print("POOL" if pool is not None else "INLINE", flush=True)
  if pool is not None:
    pool.shutdown()
"""

SCRIPTS = {
  "unguarded": POOL_PROBE + "\nprobe()\n",
  "guarded": POOL_PROBE + "\n\nif __name__ == '__main__':\n  probe()\n",
  "guarded_reversed_and": POOL_PROBE + "\n\nif '__main__' == __name__ and True:\n  probe()\n",
  "guard_below": POOL_PROBE + "\nprobe()\n\nif __name__ == '__main__':\n  pass\n",
}


def run_script(path, *args, timeout):
  env = {**os.environ, "JAX_PLATFORMS": "cpu", "PYTHONPATH": str(REPO)}
  return subprocess.run(
    [sys.executable, str(path), *map(str, args)],
    capture_output=True,
    text=True,
    timeout=timeout,
    env=env,
    cwd=path.parent,
    check=False,
  )


@pytest.mark.parametrize(
  "name,expected",
  [("unguarded", "INLINE"), ("guarded", "POOL"), ("guarded_reversed_and", "POOL"), ("guard_below", "INLINE")],
)
def test_worker_pool_only_when_the_main_script_is_guarded(tmp_path, name, expected):
  script = tmp_path / f"{name}.py"
  script.write_text(SCRIPTS[name])
  result = run_script(script, timeout=60)
  assert result.returncode == 0, result.stderr[-2000:]
  assert result.stdout.split() == [expected]
  warned = [line for line in result.stderr.splitlines() if "__main__" in line]
  if expected == "INLINE":
    line = SCRIPTS[name].splitlines().index("probe()") + 1
    assert len(warned) == 1 and f"{script}:{line} prepares a dataset outside" in warned[0]
    assert "Move the script's work under that guard" in warned[0]
  else:
    assert not warned


def test_no_main_script_file_spawns_normally():
  code = POOL_PROBE + "\nprobe()\n"
  result = subprocess.run(
    [sys.executable, "-c", code],
    capture_output=True,
    text=True,
    timeout=60,
    check=False,
    env={**os.environ, "PYTHONPATH": str(REPO)},
  )
  assert result.returncode == 0, result.stderr[-2000:]
  assert result.stdout.split() == ["POOL"]


def test_unguarded_script_prepares_a_phantom_without_hanging(tmp_path):
  """End to end: the script a new user writes, on a 5-case phantom with 2 preparation workers asked for."""
  script = tmp_path / "prepare.py"
  script.write_text(
    textwrap.dedent("""
      import sys
      from jaxseg import experiment
      from jaxseg.config import base_config

      config = base_config()
      config.data.data_dir = sys.argv[1]
      config.data.num_cases = 5
      config.data.prepare_workers = 2
      config.model.update(features=4, depth=2)
      exp = experiment.setup(config, sys.argv[2])
      print("PREPARED", exp.prepared.name, flush=True)
  """)
  )
  # Unfixed, this never returns; prepared in-process it takes ~15 s on an idle 2-core CPU.
  result = run_script(script, tmp_path / "data", tmp_path / "workdir", timeout=240)
  assert result.returncode == 0, result.stderr[-2000:]
  assert "PREPARED ct_phantom" in result.stdout
  assert "prepare.py:11 prepares a dataset outside" in result.stderr

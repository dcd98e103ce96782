"""launch/: every launcher parses, and its dry run names the right command and environment."""

import pathlib
import shlex
import subprocess

import pytest
import yaml

LAUNCH = pathlib.Path(__file__).parent.parent / "launch"
SCRIPTS = ["slurm/train.sbatch", "tpu/train.sh", "k8s/submit.sh", "local_multiprocess.sh"]
OVERRIDE = "--config.train.num_steps=7"


def dry_run(script: str, *args: str, env: dict[str, str] | None = None) -> str:
  out = subprocess.run(
    ["bash", str(LAUNCH / script), "--dry-run", *args],
    capture_output=True,
    text=True,
    timeout=60,
    env={"PATH": "/usr/bin:/bin", "HOME": "/home/user", **(env or {})},
  )
  assert out.returncode == 0, out.stderr
  return out.stdout


@pytest.mark.parametrize("script", SCRIPTS)
def test_launcher_parses(script):
  out = subprocess.run(["bash", "-n", str(LAUNCH / script)], capture_output=True, text=True)
  assert out.returncode == 0, out.stderr


def test_old_launchers_are_gone_and_readme_exists():
  assert not any((LAUNCH / name).exists() for name in ("slurm.sbatch", "tpu_vm.sh", "kubernetes.yaml"))
  text = (LAUNCH / "README.md").read_text()
  for script in SCRIPTS + ["k8s/jobset.yaml"]:
    assert script in text


def test_slurm_dry_run_one_process_per_gpu_and_per_node():
  out = dry_run(
    "slurm/train.sbatch",
    "configs/unet_ct.py",
    "/shared/runs/a",
    OVERRIDE,
    env={"SLURM_JOB_NUM_NODES": "3", "SLURM_GPUS_ON_NODE": "4", "SLURM_JOB_ID": "77"},
  )
  srun = shlex.split(out.strip().splitlines()[-1])
  assert srun[:3] == ["srun", "--nodes=3", "--ntasks-per-node=4"]
  assert srun[srun.index("python") :] == [
    "python",
    "-m",
    "jaxseg.main",
    "--config=configs/unet_ct.py",
    "--workdir=/shared/runs/a",
    OVERRIDE,
  ]
  assert "--output=/shared/runs/a/logs/%j.%t.log" in srun
  assert "export JAXSEG_INIT_TIMEOUT=600" in out and "JAX_LOCAL_DEVICE_IDS" not in out
  per_node = dry_run(
    "slurm/train.sbatch",
    "configs/unet_ct.py",
    "/shared/runs/a",
    env={"SLURM_JOB_NUM_NODES": "2", "SLURM_GPUS_ON_NODE": "4", "JAXSEG_PER": "node"},
  )
  assert "--ntasks-per-node=1" in per_node and "export JAX_LOCAL_DEVICE_IDS=0,1,2,3" in per_node
  header = (LAUNCH / "slurm/train.sbatch").read_text()
  assert "#SBATCH --requeue" in header and "scontrol requeue" in header


def test_tpu_dry_run_runs_every_worker_on_a_bucket():
  out = dry_run("tpu/train.sh", "my-tpu", "us-central2-b", "configs/unet3d_ct.py", "gs://bkt/runs/u3", OVERRIDE)
  copy, start = [shlex.split(line) for line in out.strip().splitlines()[1:3]]
  assert copy[:5] == ["gcloud", "compute", "tpus", "tpu-vm", "scp"] and "--worker=all" in copy
  assert start[:6] == ["gcloud", "compute", "tpus", "tpu-vm", "ssh", "my-tpu"] and "--worker=all" in start
  remote = next(a for a in start if a.startswith("--command="))
  assert "JAXSEG_DISTRIBUTED=auto" in remote and "JAXSEG_DATA_DIR=gs://bkt/jaxseg_data" in remote
  assert (f"python -m jaxseg.main --config=configs/unet3d_ct.py --workdir=gs://bkt/runs/u3 {OVERRIDE}") in remote
  refused = subprocess.run(
    ["bash", str(LAUNCH / "tpu/train.sh"), "--dry-run", "t", "z", "c.py", "/local/dir"], capture_output=True, text=True
  )
  assert refused.returncode == 2 and "is not a gs:// bucket" in refused.stderr


def test_jobset_yaml_loads_and_dry_run_renders_an_indexed_jobset():
  raw = list(yaml.safe_load_all((LAUNCH / "k8s/jobset.yaml").read_text()))
  assert [d["kind"] for d in raw] == ["Service", "JobSet"]
  out = dry_run(
    "k8s/submit.sh",
    "configs/unet3d_ct.py",
    "gs://bkt/runs/k",
    OVERRIDE,
    env={"JAXSEG_NUM_PROCESSES": "4", "JAXSEG_GPUS": "2", "JAXSEG_IMAGE": "reg/jaxseg:1"},
  )
  assert out.startswith("# kubectl apply -f -")
  service, jobset = yaml.safe_load_all(out)
  job = jobset["spec"]["replicatedJobs"][0]["template"]["spec"]
  assert (job["completionMode"], job["completions"], job["parallelism"]) == ("Indexed", 4, 4)
  container = job["template"]["spec"]["containers"][0]
  assert container["image"] == "reg/jaxseg:1"
  assert container["command"] == [
    "python",
    "-m",
    "jaxseg.main",
    "--config=configs/unet3d_ct.py",
    "--workdir=gs://bkt/runs/k",
  ]
  assert container["args"] == [OVERRIDE]
  env = {e["name"]: e["value"] for e in container["env"]}
  assert env["JAXSEG_COORDINATOR"] == "jaxseg-coordinator:1234" and env["JAXSEG_NUM_PROCESSES"] == "4"
  assert container["resources"]["limits"]["nvidia.com/gpu"] == 2
  assert service["metadata"]["name"] == "jaxseg-coordinator"
  assert service["spec"]["selector"]["batch.kubernetes.io/job-completion-index"] == "0"


def test_local_dry_run_starts_every_process_with_the_coordinator():
  out = dry_run(
    "local_multiprocess.sh",
    "configs/unet_ct.py:quick",
    "/tmp/run",
    OVERRIDE,
    env={"JAXSEG_PROCESSES": "3", "JAXSEG_DEVICES": "1", "JAXSEG_PORT": "4321", "PYTHON": "python3"},
  )
  lines = out.strip().splitlines()
  assert "export JAXSEG_COORDINATOR=127.0.0.1:4321" in lines and "export JAXSEG_NUM_PROCESSES=3" in lines
  assert "export XLA_FLAGS=--xla_force_host_platform_device_count=1" in lines
  starts = [line for line in lines if line.startswith("JAXSEG_PROCESS_ID=")]
  assert [line.split()[0] for line in starts] == [f"JAXSEG_PROCESS_ID={i}" for i in range(3)]
  assert all(
    f"python3 -m jaxseg.main --config=configs/unet_ct.py:quick --workdir=/tmp/run {OVERRIDE}" in line for line in starts
  )

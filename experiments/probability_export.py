"""Probabilities vs labels resampled to the original grid: one checkpoint of the CT phantom, evaluated both ways.

  JAXSEG_DATA_DIR=/tmp/data python experiments/probability_export.py /tmp/probability_export

trains `configs/unet_ct.py` for 200 steps (validation every 100) in the given workdir, then evaluates its `best`
checkpoint with `config.eval.resample='probabilities'` (nnU-Net's export) and `'labels'` (argmax first, nearest
neighbour), without post-processing, all in one process, and prints the validation and test tables (Dice, HD95,
ASSD) side by side with the evaluation times. Reports stay in <workdir>/results_{probabilities,labels}/.
"""

import json
import pathlib
import shutil
import sys
import time

from absl import flags, logging

from jaxseg import checkpointing, evaluate, experiment, train
from jaxseg import config as config_lib


def main(workdir: str) -> None:
  flags.FLAGS.mark_as_parsed()
  logging.set_verbosity(logging.INFO)
  config = config_lib.load(str(pathlib.Path(__file__).parent.parent / "configs/unet_ct.py"))
  config.train.num_steps = 200
  config.train.eval_every_steps = 100
  config.eval.postprocess = False
  config.eval.num_figures = 0
  work = pathlib.Path(workdir)
  if not (work / "checkpoints").exists():
    train.train_and_evaluate(config, work)
    shutil.rmtree(work / "results")
  seconds = {}
  for how in ("labels", "probabilities"):
    config.eval.resample = how
    exp = experiment.setup(config, work)
    checkpoints = checkpointing.Checkpoints(exp.workdir, read_only=True)
    start = time.time()
    evaluate.evaluate_checkpoint(exp, checkpoints, "best")
    seconds[how] = time.time() - start
    checkpoints.close()
    shutil.rmtree(work / f"results_{how}", ignore_errors=True)
    shutil.move(work / "results", work / f"results_{how}")
  for split in ("validation", "test"):
    a, b = (
      json.loads((work / f"results_{h}" / split / "summary.json").read_text()) for h in ("labels", "probabilities")
    )
    print(
      f"\n{split}: {a['num_cases']} cases, checkpoint step {a['step']}; evaluation {seconds['labels']:.0f} s "
      f"(labels) / {seconds['probabilities']:.0f} s (probabilities), both splits"
    )
    print(
      "| class | Dice labels | Dice probabilities | HD95 labels | HD95 probabilities | ASSD labels | ASSD probabilities |"
    )
    print("|---|---|---|---|---|---|---|")
    for name in [k for k in a if isinstance(a[k], dict) and "dice" in a[k]]:
      cells = [a[name][m] if h == 0 else b[name][m] for m in ("dice", "hd95", "assd") for h in (0, 1)]
      print(f"| {name} | " + " | ".join("n/a" if v is None else f"{v:.4f}" for v in cells) + " |")


if __name__ == "__main__":
  main(sys.argv[1] if len(sys.argv) > 1 else "/tmp/probability_export")

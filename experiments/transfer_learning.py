"""Transfer learning: a 2D U-Net pretrained on the CT phantom and fine-tuned on a few MR cases, against scratch.

Pairing (stated in the report): the source task is the CT phantom (abdominal CT, 1 channel, liver / spleen /
kidney / tumour), the target task the MR phantom (brain MRI, T1 + T2 channels, grey matter / white matter /
CSF / lesion), both segmented slice by slice with the same 2D U-Net (`configs/unet_ct.py`'s architecture and
training settings, both datasets' axial slices). One U-Net per seed is pretrained on every CT training case;
then, for each number k of MR training cases (`config.data.max_train_cases=k`: the first k of a fixed seeded
order, so smaller sets are nested in larger ones), the same U-Net is trained on those k cases for the same
number of steps twice: from a fresh initialisation ("scratch") and from the CT run's final checkpoint
("fine-tuned": `config.train.init_from`). Fine-tuning copies every array of the CT run whose name and shape
match; it keeps the new initialisation of the first convolution (1 input channel in CT, 2 in MR) and of the
output layer (`params/head*`, excluded on purpose: class k is another structure in the other task);
the optimiser starts fresh, with the same learning rate schedule as scratch. Every run is evaluated on the
MR test split with its final weights, without post-processing.

With `--torchvision_weights PATH` (a local torchvision ResNet state_dict: .pth, .safetensors or .npz; never
downloaded) a second pair of arms runs on the same target sizes and seeds: DeepLab v3+ (`configs/deeplab_ct.py`)
with that ResNet backbone from a fresh initialisation against `config.model.pretrained=PATH` (the ImageNet
weights; the first convolution's RGB kernel repeated to the 2 MR channels and scaled by 3/2, as timm does).
Without it the report says that arm was not run.

  python experiments/transfer_learning.py              # --scale=cpu: the committed results
  python experiments/transfer_learning.py --quick      # the test suite's tiny protocol
  python experiments/transfer_learning.py --scale=gpu  # wider U-Net, more steps, k up to 16, 5 seeds
  python experiments/transfer_learning.py --torchvision_weights=/data/resnet18-f37072fd.pth

Writes `<output>.md`, `<output>.json` and `<output>.png` (test mean foreground Dice against k, mean ± std
over seeds per arm). Rerunning resumes: finished runs are read back, half-finished ones resume from their
checkpoints.
"""

from __future__ import annotations

import json
import math
import pathlib
import resource
import sys
import time

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
import _study  # pylint: disable=g-import-not-at-top,wrong-import-position

NAME = "transfer_learning"
SOURCE, TARGET = "ct_phantom", "mr_phantom"
UNET_CONFIG, DEEPLAB_CONFIG = "unet_ct", "deeplab_ct"
CPU_RECORD = "study_cpu.json"  # CPU seconds a run took, beside _study's study_run.json.
EXCLUDE = ("params/head*",)  # The output layer: its classes are other structures in the source task.
# Arms: (name, label in the report, model family).
UNET_ARMS = {"scratch": "U-Net from scratch", "fine_tuned": "U-Net fine-tuned from CT"}
TORCHVISION_ARMS = {
  "deeplab_scratch": "DeepLab v3+ from scratch",
  "deeplab_imagenet": "DeepLab v3+ from torchvision ImageNet weights",
}
PROTOCOLS = {
  "quick": dict(
    source_cases=6,
    target_cases=6,
    sizes=(1, 2),
    patch_size=(32, 32),
    features=4,
    depth=2,
    pretrain_steps=4,
    target_steps=3,
    batch_size=2,
    seeds=1,
  ),
  # Measured CPU time on a loaded 2-core machine (2026-12-01): 0.6 CPU s per step; about 8 CPU s per run
  # besides (set-up, tracing, validation, test evaluation) once the XLA cache holds the compiled programs.
  "cpu": dict(
    source_cases=0,
    target_cases=0,
    sizes=(1, 2, 4, 8),
    patch_size=(64, 64),
    features=16,
    depth=4,
    pretrain_steps=120,
    target_steps=50,
    batch_size=8,
    seeds=3,
  ),
  "gpu": dict(
    source_cases=0,
    target_cases=0,
    sizes=(1, 2, 4, 8, 16),
    patch_size=(96, 96),
    features=32,
    depth=4,
    pretrain_steps=1000,
    target_steps=400,
    batch_size=8,
    seeds=5,
  ),
}


def protocol(args) -> dict:
  return PROTOCOLS["quick" if args.quick else args.scale]


def train_cases(dataset: str, num_cases: int) -> int:
  """Training cases of a phantom of `num_cases` cases (0 = its default) under its fixed split."""
  from jaxseg.data import phantoms  # pylint: disable=g-import-not-at-top

  n = num_cases or phantoms.PHANTOMS[dataset].default_num_cases
  return len(phantoms.split_case_ids([str(i) for i in range(n)])["train"])


def parse_args(argv=None):
  p = _study.parser(__doc__, NAME, default_seeds=PROTOCOLS["cpu"]["seeds"])
  p.add_argument(
    "--target_cases",
    default=None,
    help="comma-separated numbers of MR training cases (default: the protocol's, e.g. 1,2,4,8)",
  )
  p.add_argument(
    "--torchvision_weights",
    default="",
    help="local torchvision ResNet state_dict (.pth/.safetensors/.npz): adds the DeepLab arms",
  )
  prog = p.prog
  # The seed count depends on the protocol, known only after parsing.
  args = _study.parse(p, argv, default_seeds=0)
  if args.seeds == 0:
    args.seeds = protocol(args)["seeds"]
  text = args.target_cases if args.target_cases is not None else ",".join(map(str, protocol(args)["sizes"]))
  try:
    args.sizes = tuple(int(s) for s in _study.split_names(text))
  except ValueError:
    raise SystemExit(f"{prog}: --target_cases={text!r} must be comma-separated integers") from None
  available = train_cases(TARGET, protocol(args)["target_cases"])
  bad = [k for k in args.sizes if not 1 <= k <= available]
  if bad or not args.sizes:
    raise SystemExit(
      f"{prog}: --target_cases={text!r}: each must be 1..{available} (the {TARGET} training split at this protocol)"
    )
  args.sizes = tuple(sorted(set(args.sizes)))
  args.backbone = None
  if args.torchvision_weights:
    args.backbone, args.backbone_width = torchvision_backbone(args.torchvision_weights, prog)
  return args


def torchvision_backbone(path: str, prog: str) -> tuple[str, int]:
  """(resnet18/34/50/101, width of its first stage) of a torchvision state_dict file, or a one-line refusal."""
  from jaxseg.errors import DataError  # pylint: disable=g-import-not-at-top
  from jaxseg.models import pretrained  # pylint: disable=g-import-not-at-top

  try:
    state_dict = pretrained.read_state_dict(path)
    backbone = pretrained.infer_backbone(state_dict, path)
  except DataError as e:
    raise SystemExit(f"{prog}: --torchvision_weights: {e}") from None
  if backbone == "vgg16":
    raise SystemExit(f"{prog}: --torchvision_weights: {path} holds VGG16 weights; DeepLab needs a ResNet")
  if "conv1.weight" not in state_dict:
    raise SystemExit(f"{prog}: --torchvision_weights: {path} has no conv1.weight (the ResNet stem)")
  return backbone, int(state_dict["conv1.weight"].shape[0])


def run_config(arm: str, seed: int, args, cases: int = 0, source: pathlib.Path | None = None):
  """One run's config (checked): the arm's model, the protocol's budget, final-checkpoint MR test evaluation."""
  p = protocol(args)
  pretrain = arm == "pretrain"
  deeplab = arm in TORCHVISION_ARMS
  budget = dict(
    num_cases=p["source_cases"] if pretrain else p["target_cases"],
    patch_size=p["patch_size"],
    features=0 if deeplab else p["features"],
    depth=0 if deeplab else p["depth"],
    num_steps=p["pretrain_steps"] if pretrain else p["target_steps"],
    batch_size=p["batch_size"],
  )
  config = _study.protocol_config(DEEPLAB_CONFIG if deeplab else UNET_CONFIG, seed, args, budget)
  config.data.name = SOURCE if pretrain else TARGET
  config.data.max_train_cases = cases
  steps = budget["num_steps"]
  config.train.log_every_steps = max(1, min(25, steps))
  config.train.checkpoint_every_steps = steps
  config.eval.postprocess = False  # The network's own output.
  if deeplab:
    config.model.backbone = args.backbone
    config.model.backbone_width = args.backbone_width
    config.model.norm = "batch"
    if arm == "deeplab_imagenet":
      config.model.pretrained = str(pathlib.Path(args.torchvision_weights).resolve())
  if arm == "fine_tuned":
    config.train.init_from = str(source)
    config.train.init_from_checkpoint = "latest"  # The pretraining run's final weights.
    config.train.init_from_exclude = EXCLUDE
  return _study.checked(config, args.prog)


def arms(args) -> dict[str, str]:
  return {**UNET_ARMS, **(TORCHVISION_ARMS if args.backbone else {})}


def plan(args) -> list[dict]:
  """Every run, in training order: per seed the CT pretraining, then each arm at each target size."""
  runs = []
  for seed in range(args.seeds):
    source = args.workdir / f"pretrain_ct_seed{seed}"
    runs.append(
      {"arm": "pretrain", "seed": seed, "cases": 0, "workdir": source, "config": run_config("pretrain", seed, args)}
    )
    for cases in args.sizes:
      for arm in arms(args):
        runs.append(
          {
            "arm": arm,
            "seed": seed,
            "cases": cases,
            "workdir": args.workdir / f"{arm}_k{cases}_seed{seed}",
            "config": run_config(arm, seed, args, cases, source),
          }
        )
  return runs


def dice(run: dict, name: str = "mean_foreground") -> float:
  return run["results"]["test"][name]["dice"]


def summarise(runs: list[dict], args) -> dict:
  """Per target size: each arm's test Dice over seeds; paired (same seed) differences of the pretrained arms."""
  out = {}
  for cases in args.sizes:
    at = [r for r in runs if r["cases"] == cases and r["arm"] != "pretrain"]
    row = {arm: _study.mean_std([dice(r) for r in at if r["arm"] == arm]) for arm in arms(args)}
    for base, tuned in (("scratch", "fine_tuned"), ("deeplab_scratch", "deeplab_imagenet")):
      if base in row:
        by_seed = {r["seed"]: dice(r) for r in at if r["arm"] == base}
        pairs = [(by_seed[r["seed"]], dice(r)) for r in at if r["arm"] == tuned and r["seed"] in by_seed]
        row[f"{tuned}_minus_{base}"] = _study.paired_interval([a for a, _ in pairs], [b for _, b in pairs])
    out[str(cases)] = row
  return out


def reading(summary: dict, args) -> list[str]:
  """Generated sentences: at which sizes the paired interval of fine-tuned - scratch excludes zero."""
  lines = []
  for base, tuned in (("scratch", "fine_tuned"), ("deeplab_scratch", "deeplab_imagenet")):
    key = f"{tuned}_minus_{base}"
    if key not in summary[str(args.sizes[0])]:
      continue
    parts = []
    for cases in args.sizes:
      paired = summary[str(cases)][key]
      mean, low, high = paired["stat"][0], *paired["ci95"]
      if mean is None:
        parts.append(f"k={cases}: no pair")
      elif low is None:
        parts.append(f"k={cases}: {mean:+.3f} (one seed, no interval)")
      else:
        verdict = "better" if low > 0 else "worse" if high < 0 else "no difference beyond seed noise"
        parts.append(f"k={cases}: {mean:+.3f} [{low:+.3f}, {high:+.3f}], {verdict}")
    lines.append(
      f"- {arms(args)[tuned]} minus {arms(args)[base]}, test mean foreground Dice, paired by "
      f"seed (95% t interval): " + "; ".join(parts) + "."
    )
  return lines


def save_figure(path: pathlib.Path, summary: dict, args) -> None:
  """Test mean foreground Dice against the number of MR training cases, mean ± std over seeds per arm."""
  from jaxseg import visualize  # pylint: disable=g-import-not-at-top

  plt = visualize._pyplot()  # pylint: disable=protected-access
  fig, ax = plt.subplots(figsize=(5.2, 3.6))
  styles = {
    "scratch": ("tab:gray", "o--"),
    "fine_tuned": ("tab:blue", "o-"),
    "deeplab_scratch": ("tab:olive", "s--"),
    "deeplab_imagenet": ("tab:red", "s-"),
  }
  for offset, (arm, label) in enumerate(arms(args).items()):
    points = [
      (k * 2 ** ((offset - 1.5) * 0.03), *summary[str(k)][arm][:2])
      for k in args.sizes
      if summary[str(k)][arm][0] is not None
    ]
    if points:
      x, mean, std = zip(*points)
      color, fmt = styles[arm]
      ax.errorbar(x, mean, yerr=std, fmt=fmt, color=color, capsize=3, label=label)
  ax.set_xscale("log", base=2)
  ax.set_xticks(list(args.sizes), [str(k) for k in args.sizes])
  ax.set_xlabel("MR training cases")
  ax.set_ylabel("MR test Dice (mean foreground)")
  ax.set_title(f"CT -> MR phantom, {args.seeds} seed(s): mean ± std", fontsize=9)
  ax.grid(alpha=0.3)
  ax.legend(fontsize=7)
  fig.tight_layout()
  _study.save_figure(fig, path, dpi=100)


def classes(runs: list[dict]) -> list[str]:
  test = next(r for r in runs if r["arm"] != "pretrain")["results"]["test"]
  return [k for k, v in test.items() if isinstance(v, dict) and "dice" in v and k != "mean_foreground"]


def markdown(meta, args, runs, summary, transfer_record) -> str:
  p = protocol(args)
  n = args.seeds
  names = classes(runs)
  pretrain_runs = [r for r in runs if r["arm"] == "pretrain"]
  lines = ["# Transfer learning: CT phantom -> MR phantom, fine-tuned against from scratch", ""]
  lines += _study.metadata_lines(meta)
  if meta["runs_finished"] < meta["runs_planned"]:
    lines.append(
      f"- PARTIAL: {meta['runs_finished']} of the {meta['runs_planned']} planned runs had finished "
      f"when this report was written ({len(pretrain_runs)} of {n} seeds); rerunning the command "
      "resumes the rest."
    )
  lines += (
    [
      f"- Pairing: a 2D U-Net (`configs/{UNET_CONFIG}.py`: features {p['features']}, depth {p['depth']}, batch norm, "
      f"ReLU) on axial slices of both phantoms. Source: `{SOURCE}` (1 channel), every training case "
      f"({train_cases(SOURCE, p['source_cases'])}), {p['pretrain_steps']} steps. Target: `{TARGET}` (T1 + T2), "
      f"k of its {train_cases(TARGET, p['target_cases'])} training cases (`data.max_train_cases`, nested subsets), "
      f"{p['target_steps']} steps for every arm; test split of {runs[-1]['results']['test']['num_cases']} MR cases.",
      f"- Every run: patch {p['patch_size'][0]} x {p['patch_size'][1]}, batch {p['batch_size']}, AdamW with "
      "`configs/unet_ct.py`'s learning rate and warm-up/cosine schedule (fine-tuning uses the same schedule, from a "
      "fresh optimiser state), final weights evaluated as `--mode=evaluate` does, without post-processing. "
      f"Seeds {', '.join(map(str, range(n)))}: one pretraining run per seed, reused for every k; same seed = same "
      "initialisation of the arrays not copied, and the same batches.",
      f"- Fine-tuned: `config.train.init_from=<pretraining run>`, checkpoint `latest`, exclude "
      f"`{', '.join(EXCLUDE)}`. {transfer_text(transfer_record)}",
      f"- torchvision arm: {torchvision_text(args)}",
      "",
      "## Result",
      "",
    ]
    + reading(summary, args)
    + [
      "",
      f"Test mean foreground Dice on MR (mean ± std over {n} seed(s)); paired difference = fine-tuned - scratch, "
      "same seed, mean ± std and 95% t interval:",
      "",
      "| MR training cases | " + " | ".join(arms(args).values()) + " | paired difference | 95% interval |",
      "|---|" + "---|" * len(arms(args)) + "---|---|",
    ]
  )
  for cases in args.sizes:
    row = summary[str(cases)]
    paired = row["fine_tuned_minus_scratch"]
    low, high = paired["ci95"]
    interval = "n/a" if low is None else f"[{low:+.4f}, {high:+.4f}]"
    lines.append(
      f"| {cases} | "
      + " | ".join(_study.fmt(row[arm], n, 4) for arm in arms(args))
      + f" | {_study.fmt(paired['stat'], n, 4)} | {interval} |"
    )
  if args.backbone:
    lines += [
      "",
      "DeepLab pair: paired difference ImageNet - scratch:",
      "",
      "| MR training cases | difference | 95% interval |",
      "|---|---|---|",
    ]
    for cases in args.sizes:
      paired = summary[str(cases)]["deeplab_imagenet_minus_deeplab_scratch"]
      low, high = paired["ci95"]
      lines.append(
        f"| {cases} | {_study.fmt(paired['stat'], n, 4)} | {'n/a' if low is None else f'[{low:+.4f}, {high:+.4f}]'} |"
      )
  lines += [
    "",
    "## Pretraining runs (CT test split)",
    "",
    "| seed | CT test mean foreground Dice | wall s | CPU s |",
    "|---|---|---|---|",
  ]
  for r in pretrain_runs:
    lines.append(f"| {r['seed']} | {dice(r):.4f} | {times(r)} |")
  lines += [
    "",
    "## Every target run (MR test split)",
    "",
    "| arm | k | seed | mean foreground Dice | " + " | ".join(f"Dice {c}" for c in names) + " | wall s | CPU s |",
    "|---|---|---|---|" + "---|" * (len(names) + 2),
  ]
  for r in runs:
    if r["arm"] == "pretrain":
      continue
    test = r["results"]["test"]
    per_class = " | ".join(
      "n/a" if test[c]["dice"] is None or math.isnan(test[c]["dice"]) else f"{test[c]['dice']:.4f}" for c in names
    )
    lines.append(f"| {r['arm']} | {r['cases']} | {r['seed']} | {dice(r):.4f} | {per_class} | {times(r)} |")
  lines += [
    "",
    "Wall s: the run's wall time on this (shared) machine; CPU s: the CPU time (all threads) it used.",
    "",
    f"Figure: `{args.output.name}.png` (test mean foreground Dice against k, mean ± std over seeds; "
    "points of the arms are shifted slightly sideways to keep the error bars apart).",
    "",
    "## Scales",
    "",
    "- `--quick`: 6-case phantoms, 32 x 32 patches, a few steps: exercises every stage, says nothing.",
    f"- `--scale=cpu` (committed): {PROTOCOLS['cpu']['pretrain_steps']} pretraining and "
    f"{PROTOCOLS['cpu']['target_steps']} target steps of {PROTOCOLS['cpu']['patch_size'][0]}-pixel patches, "
    f"k = {', '.join(map(str, PROTOCOLS['cpu']['sizes']))}, {PROTOCOLS['cpu']['seeds']} seeds; sized for "
    "about 15 minutes on an idle 2-core CPU. Short schedules: the absolute Dice is far below a converged "
    "model's, and the comparison is at this budget.",
    f"- `--scale=gpu`: features {PROTOCOLS['gpu']['features']}, {PROTOCOLS['gpu']['pretrain_steps']} / "
    f"{PROTOCOLS['gpu']['target_steps']} steps, {PROTOCOLS['gpu']['patch_size'][0]}-pixel patches, "
    f"k = {', '.join(map(str, PROTOCOLS['gpu']['sizes']))}, {PROTOCOLS['gpu']['seeds']} seeds.",
  ]
  return "\n".join(lines)


def times(run: dict) -> str:
  """'wall | CPU' seconds of a run (both of the process that trained it)."""
  cpu = "n/a" if run.get("cpu_seconds") is None else f"{run['cpu_seconds']:.0f}"  # A run from before the record.
  return f"{run['seconds']:.0f}{' (reused)' if run['reused'] else ''} | {cpu}"


def transfer_text(record: dict | None) -> str:
  if not record:
    return ""
  kept = "; ".join(record["kept"])
  return (
    f"It copied {record['num_copied']} arrays (params and batch statistics) and kept the new "
    f"initialisation of {record['num_kept']}: {kept}."
  )


def torchvision_text(args) -> str:
  if not args.backbone:
    return (
      "not run (no `--torchvision_weights` given; nothing is downloaded). With a local torchvision ResNet "
      "file it adds DeepLab v3+ from scratch against DeepLab v3+ from those ImageNet weights."
    )
  return (
    f"DeepLab v3+ (`configs/{DEEPLAB_CONFIG}.py`) with a {args.backbone} backbone of width "
    f"{args.backbone_width} from `{args.torchvision_weights}`: from scratch against `config.model.pretrained` "
    "(first convolution's RGB kernel repeated to T1 + T2 and scaled by 3/2; the images are z-scored, not "
    "ImageNet-normalised)."
  )


def cpu_seconds() -> float:
  usage = resource.getrusage(resource.RUSAGE_SELF)
  return usage.ru_utime + usage.ru_stime


def main(argv=None):
  args = parse_args(argv)
  start = time.time()
  _study.use_compilation_cache(args.workdir / "xla_cache")  # Every target run has the same shapes.
  runs = plan(args)  # Every config is built and validated before anything is trained.
  done = []
  for index, run in enumerate(runs):
    cpu = cpu_seconds()
    result = _study.run_training(run["config"], run["workdir"])
    # CPU time of this process (all threads) for the run: a load-independent measure of its cost, kept
    # beside the run's record so that a resumed study reports it too.
    cpu_record = pathlib.Path(run["workdir"]) / CPU_RECORD
    if not result["reused"]:
      _study.atomic_write(cpu_record, json.dumps({"cpu_seconds": round(cpu_seconds() - cpu, 1)}))
    result["cpu_seconds"] = json.loads(cpu_record.read_text())["cpu_seconds"] if cpu_record.exists() else None
    done.append({"arm": run["arm"], "seed": run["seed"], "cases": run["cases"], **result})
    print(
      f"{run['arm']} k={run['cases']} seed {run['seed']}: test mean foreground Dice {dice(done[-1]):.4f} "
      f"({'reused' if result['reused'] else 'trained'} {result['seconds']:.0f} s, CPU "
      f"{result['cpu_seconds'] or 0:.0f} s)",
      flush=True,
    )
    if index + 1 == len(runs) or runs[index + 1]["seed"] != run["seed"]:
      report(args, start, done, len(runs))  # After every seed: an interrupted study leaves its finished seeds.
  print(args.output.with_suffix(".md").read_text())


def report(args, start: float, done: list[dict], total: int) -> None:
  """Writes `<output>.md`, `.json` and `.png` from the finished runs `done` (of `total` planned)."""
  from jaxseg import train  # pylint: disable=g-import-not-at-top

  summary = summarise(done, args)
  tuned = next(r for r in done if r["arm"] == "fine_tuned")
  record_path = pathlib.Path(tuned["workdir"]) / train.INIT_FROM_RECORD
  transfer_record = json.loads(record_path.read_text()) if record_path.exists() else None
  args.output.parent.mkdir(parents=True, exist_ok=True)
  save_figure(args.output.with_suffix(".png"), summary, args)
  meta = _study.metadata(args, start)
  meta["runs_finished"], meta["runs_planned"] = len(done), total
  _study.write_report(
    args.output,
    markdown(meta, args, done, summary, transfer_record),
    {
      **meta,
      "source": SOURCE,
      "target": TARGET,
      "protocol": protocol(args),
      "target_cases": list(args.sizes),
      "arms": arms(args),
      "exclude": list(EXCLUDE),
      "init_from": transfer_record,
      "torchvision": {
        "weights": args.torchvision_weights or None,
        "backbone": args.backbone,
        "run": bool(args.backbone),
      },
      "summary": summary,
      "reading": reading(summary, args),
      "runs": [{k: v for k, v in r.items() if k != "config_hash"} for r in done],
    },
  )


if __name__ == "__main__":
  main()

"""Deep models against each other and against traditional segmentation methods, on the phantoms.

Deep models (U-Net, Attention U-Net, FCN-8s, DeepLab v3, DeepLab v3+, 3D U-Net) are trained at an equal
budget: on a dataset every model gets the same training recipe (data, augmentation, loss, optimiser,
learning rate and schedule of the dataset's shipped config: `configs/unet_ct.py`, `configs/unet_mr.py`,
`configs/unet_microscopy.py`), the same number of steps and the same voxels per batch (2D: batch x
patch; the 3D U-Net's 3D patch and batch hold as many voxels), and its own architecture (the `model`
section of its shipped config: `configs/unet_ct.py`, `attention_unet_ct.py`, `fcn_ct.py:8s`,
`deeplab_ct.py:v3` / `:v3plus`, `unet3d_ct.py`). 2D models train on axial slices of the 3D phantoms
(MR: both channels); the 3D U-Net does not apply to the 2D microscopy phantom (n/a). Every run's final
checkpoint is evaluated on the test split as `--mode=evaluate` does, in the original geometry, without
the largest-component post-processing (each method's own output; `config.eval.postprocess=False`) and
without test-time mirroring.

Traditional methods (`jaxseg/traditional.py`: intensity thresholding with connected components,
multi-Otsu, marker watershed, random walker, morphological Chan-Vese) are fitted on the preprocessed
TRAINING cases of the same prepared dataset (what each learns is in that module's docstring and in the
report), applied to the preprocessed test cases (the images the deep models see), and their label maps
go through the same `jaxseg.evaluate.Evaluator` (resampling to the raw grid, `metrics.case_metrics`
against the raw label files): identical scoring. They are deterministic: one run per dataset.

Reports mean ± std over seeds of test Dice, IoU, sensitivity, specificity and HD95 per class, parameters,
forward FLOPs per patch (counted from the jaxpr: every convolution and matmul, `jaxseg.benchmark.flops`),
training and total time; paired differences (same seed) of each model against the U-Net, and of the best
deep model against the best traditional method, with 95% t intervals.

  python experiments/compare_models.py              # --scale=cpu: the committed results
  python experiments/compare_models.py --quick      # the test suite's tiny protocol
  python experiments/compare_models.py --scale=gpu  # every model on every phantom, shipped sizes, 5 seeds
  python experiments/compare_models.py --report_only  # rewrite the report from the finished runs only

Writes `<output>.md`, `<output>.json` and `<output>.png` (default `experiments/results/compare_models`).
"""

from __future__ import annotations

import json
import math
import pathlib
import sys
import time

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
import _study  # pylint: disable=g-import-not-at-top,wrong-import-position

import numpy as np  # pylint: disable=g-import-not-at-top,wrong-import-position

NAME = "compare_models"
# Dataset -> the config file whose data and training recipe every model uses there.
DATASETS = {"ct_phantom": "unet_ct", "mr_phantom": "unet_mr", "microscopy_phantom": "unet_microscopy"}
IMAGE_DIMS = {"ct_phantom": 3, "mr_phantom": 3, "microscopy_phantom": 2}  # Spatial dimensions of the images.
# Model -> (config file, variant) whose `model` section is the architecture.
MODELS = {
  "unet": ("unet_ct", None),
  "attention_unet": ("attention_unet_ct", None),
  "fcn8s": ("fcn_ct", "8s"),
  "deeplabv3": ("deeplab_ct", "v3"),
  "deeplabv3plus": ("deeplab_ct", "v3plus"),
  "unet3d": ("unet3d_ct", None),
}
METRICS = ("dice", "iou", "sensitivity", "specificity", "hd95")
ALL_MODELS = tuple(MODELS)
# Per protocol: cases per phantom (0 = its default), patches and batches of equal voxels, steps, model
# size overrides (None: the config file's), default models per dataset, default seeds.
PROTOCOLS = {
  "quick": dict(
    num_cases={"ct_phantom": 6, "mr_phantom": 6, "microscopy_phantom": 6},
    patch_2d=(32, 32),
    batch_2d=2,
    patch_3d=(8, 16, 16),
    batch_3d=1,
    num_steps=3,
    features=4,
    depth=2,
    backbone_width=8,
    seeds=2,
    grid={"ct_phantom": ("unet", "fcn8s", "unet3d"), "microscopy_phantom": ("unet", "unet3d")},
  ),
  "cpu": dict(
    num_cases={"ct_phantom": 15, "mr_phantom": 10, "microscopy_phantom": 15},
    patch_2d=(64, 64),
    batch_2d=8,
    patch_3d=(8, 64, 64),
    batch_3d=1,
    num_steps=150,
    features=None,
    depth=None,
    backbone_width=None,
    seeds=3,
    grid={"ct_phantom": ALL_MODELS, "mr_phantom": ("unet", "unet3d"), "microscopy_phantom": ("unet",)},
  ),
  "gpu": dict(
    num_cases={"ct_phantom": 0, "mr_phantom": 0, "microscopy_phantom": 0},
    patch_2d=(128, 128),
    batch_2d=8,
    patch_3d=(32, 64, 64),
    batch_3d=1,
    num_steps=1000,
    features=None,
    depth=None,
    backbone_width=None,
    seeds=5,
    grid={d: ALL_MODELS for d in DATASETS},
  ),
}


def parse_args(argv=None):
  p = _study.parser(__doc__, NAME)
  p.add_argument("--models", default="", help="comma-separated (default: the protocol's grid): " + ", ".join(MODELS))
  p.add_argument("--datasets", default="", help="comma-separated (default: the protocol's): " + ", ".join(DATASETS))
  p.add_argument("--methods", default="", help="traditional methods, comma-separated (default: all; 'none' for none)")
  p.add_argument(
    "--report_only",
    action="store_true",
    help="train and fit nothing: rewrite the report from the runs that have finished in --workdir",
  )
  args = _study.parse(p, argv, default_seeds=None)
  from jaxseg import traditional  # pylint: disable=g-import-not-at-top

  proto = protocol(args)
  args.datasets = _study.split_names(args.datasets) or list(proto["grid"])
  _study.refuse_unknown(args.prog, "dataset", args.datasets, DATASETS)
  models = _study.split_names(args.models)
  _study.refuse_unknown(args.prog, "model", models, MODELS)
  methods = _study.split_names(args.methods)
  if methods == ["none"]:
    methods = []
  elif not methods:
    methods = list(traditional.METHODS)
  _study.refuse_unknown(args.prog, "method", methods, traditional.METHODS)
  args.methods = methods
  args.grid = {d: [m for m in (models or proto["grid"].get(d, ("unet",))) if applies(m, d)] for d in args.datasets}
  if args.seeds is None:
    args.seeds = proto["seeds"]
  return args


def protocol(args) -> dict:
  return PROTOCOLS["quick" if args.quick else args.scale]


def applies(model: str, dataset: str) -> bool:
  """Whether `model` can run on `dataset` (a 3D model needs 3D images)."""
  from jaxseg import models  # pylint: disable=g-import-not-at-top

  return models.spatial_dims(model) <= IMAGE_DIMS[dataset]


def run_config(model: str, dataset: str, seed: int, args):
  """One run's config: the dataset's recipe, the model's architecture, the protocol's equal budget."""
  from jaxseg import models  # pylint: disable=g-import-not-at-top

  p = protocol(args)
  three_d = models.spatial_dims(model) == 3
  sized = dict(
    num_cases=p["num_cases"][dataset],
    patch_size=p["patch_3d"] if three_d else p["patch_2d"],
    batch_size=p["batch_3d"] if three_d else p["batch_2d"],
    num_steps=p["num_steps"],
    features=None,
    depth=None,
  )
  config = _study.protocol_config(DATASETS[dataset], seed, args, sized)
  architecture = _study.load_config(*(MODELS[model][:1] if MODELS[model][1] is None else MODELS[model]))
  for key in architecture.model.keys():
    config.model[key] = architecture.model[key]
  for key in ("features", "depth", "backbone_width"):
    if p[key]:
      config.model[key] = p[key]
  if p["features"]:
    config.model.max_features = max(p["features"], 8 * p["features"])
  config.train.log_every_steps = max(1, min(config.train.log_every_steps, p["num_steps"]))
  config.train.checkpoint_every_steps = p["num_steps"]
  config.eval.postprocess = False  # Each method's own output.
  config.eval.mirror_axes = ()
  return _study.checked(config, args.prog)


# Deep models.


def model_size(config, workdir) -> dict:
  """Parameters of the model and forward FLOPs of one training patch (convolutions and matmuls of the jaxpr)."""
  import jax  # pylint: disable=g-import-not-at-top
  from jaxseg import experiment, steps  # pylint: disable=g-import-not-at-top
  from jaxseg.benchmark import flops  # pylint: disable=g-import-not-at-top

  exp = experiment.setup(config, workdir)
  state = exp.abstract_state()
  params = int(sum(math.prod(x.shape) for x in jax.tree.leaves(state.params)))
  patch = jax.ShapeDtypeStruct(exp.input_shape, np.float32)
  forward = flops.forward_flops(steps.make_predict_fn(exp.model), state.params, state.batch_stats, patch)
  return {
    "parameters": params,
    "forward_gflops_per_patch": forward / 1e9,
    "patch": list(exp.input_shape[1:-1]),
    "train_gflops_per_step": forward * flops.TRAIN_STEP_FACTOR * config.train.batch_size / 1e9,
  }


def training_seconds(workdir) -> float | None:
  """Seconds from the start of the run to its last training step (the `uptime` scalar; None if not logged)."""
  from jaxseg import writers  # pylint: disable=g-import-not-at-top

  uptime = writers.read_scalars(workdir).get("uptime")
  return float(uptime[-1][1]) if uptime else None


def deep_run(model: str, dataset: str, seed: int, args) -> dict:
  config = run_config(model, dataset, seed, args)
  workdir = args.workdir / f"{dataset}_{model}_seed{seed}"
  run = _study.run_training(config, workdir)
  size_path = workdir / "study_model_size.json"
  if size_path.exists():
    size = json.loads(size_path.read_text())
  else:
    size = model_size(config, workdir)
    _study.atomic_write(size_path, json.dumps(size))
  return {
    "kind": "deep",
    "method": model,
    "dataset": dataset,
    "seed": seed,
    "test": run["results"]["test"],
    "seconds": run["seconds"],
    "train_seconds": training_seconds(workdir),
    "reused": run["reused"],
    "cases": case_dice(workdir / "results" / "test" / "cases.csv"),
    **size,
  }


def case_dice(path: pathlib.Path) -> dict[str, dict[str, float]]:
  """{case id: {class: Dice}} from a run's `results/test/cases.csv`."""
  import csv  # pylint: disable=g-import-not-at-top

  out: dict[str, dict[str, float]] = {}
  with open(path, newline="") as f:
    for row in csv.DictReader(f):
      out.setdefault(row["case_id"], {})[row["class"]] = float(row["dice"])
  return out


# Traditional methods.


def traditional_runs(dataset: str, args) -> list[dict]:
  """Fits the methods on the training split once, then scores each method on the test split (resumable)."""
  from jaxseg import evaluate, experiment, postprocess, traditional  # pylint: disable=g-import-not-at-top
  from jaxseg.data import pipeline  # pylint: disable=g-import-not-at-top

  config = run_config("unet", dataset, 0, args)  # Only its data settings matter: the same prepared dataset.
  directory = args.workdir / f"{dataset}_traditional"
  key = {"data": config.data.to_dict(), "methods_version": TRADITIONAL_VERSION, "prepared_version": prepared_version()}
  exp = None
  fitted = fit_seconds = None
  runs = []
  for method in args.methods:
    record_path = directory / f"{method}.json"
    if record_path.exists():
      record = json.loads(record_path.read_text())
      if record["key"] == json.loads(json.dumps(key, default=str)):
        runs.append({**record["run"], "reused": True})
        continue
    if args.report_only:
      continue
    if exp is None:
      exp = experiment.setup(config, directory)
      squeeze = exp.prepared.ndim == 2
      start = time.time()
      fitted = traditional.fit(
        (
          (c.image[0], c.label[0]) if squeeze else (c.image, c.label)
          for c in pipeline.CaseSource(exp.prepared, "train", config.data.cache_cases)
        ),
        exp.prepared.num_classes,
      )
      fit_seconds = time.time() - start
    num_classes = exp.prepared.num_classes

    def probabilities(image, method=method):
      labels = traditional.segment(method, image[0] if squeeze else image, fitted)
      out = traditional.one_hot(labels, num_classes)
      return out[None] if squeeze else out

    start = time.time()
    evaluator = evaluate.Evaluator(exp, None, 0, probabilities=probabilities)
    source = pipeline.CaseSource(exp.prepared, "test", config.data.cache_cases)
    results = evaluator.score_split(source, postprocess.Postprocessing(step=0))
    rows = [{"case_id": r.case_id, "class": name, **scores} for r in results for name, scores in r.scores.items()]
    summary = evaluate.summarize(rows, list(evaluator.labels), 0)
    run = {
      "kind": "traditional",
      "method": method,
      "dataset": dataset,
      "seed": None,
      "test": summary,
      "seconds": time.time() - start,
      "train_seconds": fit_seconds,
      "parameters": None,
      "forward_gflops_per_patch": None,
      "fitted": fitted.summary(),
      "reused": False,
      "cases": {r.case_id: {n: s["dice"] for n, s in r.scores.items()} for r in results},
    }
    _study.atomic_write(record_path, json.dumps({"key": key, "run": run}, default=str))
    runs.append(run)
    print(
      f"{dataset} {method}: test mean foreground Dice {summary['mean_foreground']['dice']:.4f} "
      f"({run['seconds']:.0f} s)",
      flush=True,
    )
  return runs


TRADITIONAL_VERSION = 1  # Bump when jaxseg/traditional.py's methods change, so that records are redone.


def prepared_version() -> str:
  """The prepared-data format version (a record made on another version's data is redone)."""
  from jaxseg.data.builders import segmentation  # pylint: disable=g-import-not-at-top

  return str(segmentation.SegmentationBuilder.VERSION)


# Aggregation.


def classes_of(runs: list[dict], dataset: str) -> list[str]:
  test = next(r["test"] for r in runs if r["dataset"] == dataset)
  return [k for k, v in test.items() if isinstance(v, dict) and "dice" in v]


def aggregate(runs: list[dict]) -> dict:
  """{dataset: {method: {class: {metric: (mean, std, n)}, 'seconds'..., 'kind', 'n'}}} over seeds."""
  table = {}
  for dataset in dict.fromkeys(r["dataset"] for r in runs):
    classes = classes_of(runs, dataset)
    for method in dict.fromkeys(r["method"] for r in runs if r["dataset"] == dataset):
      picked = [r for r in runs if r["dataset"] == dataset and r["method"] == method]
      entry = {c: {m: _study.mean_std([r["test"][c][m] for r in picked]) for m in METRICS} for c in classes}
      entry.update(
        kind=picked[0]["kind"],
        n=len(picked),
        parameters=picked[0]["parameters"],
        forward_gflops_per_patch=picked[0]["forward_gflops_per_patch"],
        seconds=_study.mean_std([r["seconds"] for r in picked]),
        train_seconds=_study.mean_std([r["train_seconds"] for r in picked]),
      )
      table.setdefault(dataset, {})[method] = entry
  return table


def paired(runs: list[dict], dataset: str, a: str, b: str, classes: list[str]) -> dict:
  """Paired differences b - a of test Dice per class (same seed; a traditional method is seed-free and pairs
  with every seed)."""

  def by_seed(method):
    return {r["seed"]: r for r in runs if r["dataset"] == dataset and r["method"] == method}

  ra, rb = by_seed(a), by_seed(b)
  if None in ra:
    ra = {s: ra[None] for s in rb}
  if None in rb:
    rb = {s: rb[None] for s in ra}
  seeds = sorted(set(ra) & set(rb))
  return {
    c: _study.paired_interval([ra[s]["test"][c]["dice"] for s in seeds], [rb[s]["test"][c]["dice"] for s in seeds])
    for c in classes
  }


def best(table: dict, dataset: str, kind: str) -> str | None:
  """The method of `kind` with the highest mean test mean-foreground Dice on `dataset`."""
  scored = [
    (e["mean_foreground"]["dice"][0], m)
    for m, e in table[dataset].items()
    if e["kind"] == kind and e["mean_foreground"]["dice"][0] is not None
  ]
  return max(scored)[1] if scored else None


def comparisons(runs: list[dict], table: dict) -> dict:
  out = {}
  for dataset in table:
    classes = classes_of(runs, dataset)
    out[dataset] = {}
    for method, entry in table[dataset].items():
      if entry["kind"] == "deep" and method != "unet" and "unet" in table[dataset]:
        out[dataset][f"{method} - unet"] = paired(runs, dataset, "unet", method, classes)
    deep, trad = best(table, dataset, "deep"), best(table, dataset, "traditional")
    if deep and trad:
      out[dataset][f"{deep} - {trad}"] = paired(runs, dataset, trad, deep, classes)
      out[dataset][f"{deep} - {trad} (over test cases)"] = paired_cases(runs, dataset, trad, deep, classes)
  return out


def paired_cases(runs: list[dict], dataset: str, a: str, b: str, classes: list[str]) -> dict:
  """Paired differences b - a of test Dice per class over test cases (each method's Dice of a case averaged
  over its seeds; 'mean_foreground' per case = the mean over the foreground classes)."""

  def per_case(method):
    picked = [r["cases"] for r in runs if r["dataset"] == dataset and r["method"] == method]
    cases = sorted(set.intersection(*(set(c) for c in picked)))
    out = {}
    for case in cases:
      scores = {c: float(np.mean([p[case][c] for p in picked])) for c in picked[0][case]}
      scores["mean_foreground"] = float(np.mean([scores[c] for c in picked[0][case]]))
      out[case] = scores
    return out

  ca, cb = per_case(a), per_case(b)
  cases = sorted(set(ca) & set(cb))
  return {c: _study.paired_interval([ca[k][c] for k in cases], [cb[k][c] for k in cases]) for c in classes}


# Report.


def _fmt(stat, n: int, digits: int) -> str:
  """`_study.fmt`, but a single value (a traditional method, one seed) without '± 0'."""
  if stat[2] == 1 and n == 1:
    return f"{stat[0]:.{digits}f}"
  return _study.fmt(stat, n, digits)


def _ci(p: dict, digits: int = 3) -> str:
  mean, std, n = p["stat"]
  if mean is None:
    return "n/a"
  low, high = p["ci95"]
  interval = "" if low is None else f" [{low:+.{digits}f}, {high:+.{digits}f}]"
  return f"{mean:+.{digits}f}{interval} (n={n})"


def markdown(meta: dict, args, runs: list[dict], table: dict, compared: dict, status: dict | None = None) -> str:
  p = protocol(args)
  n = args.seeds
  lines = ["# Deep models against each other and against traditional methods (phantoms)", ""]
  if status and not status["complete"]:
    lines += [
      f"**INCOMPLETE: {status['deep_runs_finished']} of the {status['deep_runs_in_grid']} deep runs of this "
      "protocol's grid had finished when this report was written** (it is rewritten after every run; "
      "rerunning the command resumes the rest). Statistics below are over the finished runs only.",
      "",
    ]
  lines += _study.metadata_lines(meta)
  deep = [r for r in runs if r["kind"] == "deep"]
  trad = [r for r in runs if r["kind"] == "traditional"]
  fits = {r["dataset"]: r["train_seconds"] or 0.0 for r in trad}
  lines += [
    f"- Runs: {len(deep)} deep ({sum(r['reused'] for r in deep)} read back from an earlier invocation of the "
    f"command, which the wall time above does not include), {len(trad)} traditional "
    f"({sum(r['reused'] for r in trad)} read back); the runs' own wall times sum to "
    f"{sum(r['seconds'] for r in deep) / 60:.1f} min (deep) and "
    f"{(sum(r['seconds'] for r in trad) + sum(fits.values())) / 60:.1f} min (traditional, fitting included).",
    f"- Protocol `{meta['scale']}`: {p['num_steps']} training steps for every deep model; 2D models on "
    f"{p['patch_2d'][0]} x {p['patch_2d'][1]} patches, batch {p['batch_2d']}; the 3D U-Net on "
    f"{' x '.join(map(str, p['patch_3d']))} patches, batch {p['batch_3d']} (the same voxels per batch); "
    f"seeds {', '.join(map(str, range(n)))}; cases per phantom "
    + ", ".join(f"{d} {p['num_cases'][d] or 'default'}" for d in args.datasets)
    + " (split about 2/3 train, "
    "2/15 validation, 1/5 test).",
    "- Grid: "
    + "; ".join(f"{d}: {', '.join(args.grid[d]) or 'no deep model'}" for d in args.datasets)
    + f"; traditional methods: {', '.join(args.methods) or 'none'}. The 3D U-Net does not apply to the 2D "
    "microscopy phantom (n/a).",
    "- Each dataset's training recipe is that of its shipped config (`configs/unet_ct.py`, `unet_mr.py`, "
    "`unet_microscopy.py`); each model's architecture is its shipped config's `model` section"
    + (
      f" (reduced: features {p['features']}, depth {p['depth']}, backbone width {p['backbone_width']})"
      if p["features"]
      else ""
    )
    + ". Final checkpoint; test split scored in the original geometry, no "
    "largest-component post-processing, no mirroring.",
    "- Traditional methods: fitted on the preprocessed training cases (intensity histograms per class, "
    "decision weights maximising the training Dice of thresholding, component limits, Otsu bin classes; see "
    "`jaxseg/traditional.py`), applied to the preprocessed test cases, scored by the same evaluator. "
    "Deterministic: one run, no std.",
    "- FLOPs: forward pass of one training patch, every convolution and matmul of the jaxpr counted "
    "(`jaxseg.benchmark.flops`, 1 multiply-add = 2 FLOPs); a training step is about 3 x batch x that. "
    "Train s: from the run's start to its last training step (compilation included); total s: the whole "
    "train-and-evaluate call (traditional: fitting on the training cases, then segmenting and scoring the "
    "test cases).",
    "",
  ]
  for dataset in table:
    classes = classes_of(runs, dataset)
    entries = table[dataset]
    lines += [
      f"## {dataset}",
      "",
      f"Test metrics per class, mean ± std over seeds of each run's mean over test cases "
      f"({runs_cases(runs, dataset)} test cases; HD95 in mm, cases where one side is empty left out).",
      "",
      "| method | kind | " + " | ".join(f"Dice {c}" for c in classes) + " | parameters | GFLOPs/patch |"
      " train s | total s |",
      "|---|---|" + "---|" * (len(classes) + 4),
    ]
    for method, e in entries.items():
      k = e["n"]
      params = "-" if e["parameters"] is None else f"{e['parameters'] / 1e6:.2f} M"
      gflops = "-" if e["forward_gflops_per_patch"] is None else f"{e['forward_gflops_per_patch']:.3f}"
      lines.append(
        f"| {method} | {e['kind']} | "
        + " | ".join(_fmt(e[c]["dice"], k, 3) for c in classes)
        + f" | {params} | {gflops} | {_fmt(e['train_seconds'], k, 0)} | "
        f"{_fmt(e['seconds'], k, 0)} |"
      )
    lines.append("")
    for metric in ("iou", "sensitivity", "specificity", "hd95"):
      digits = 1 if metric == "hd95" else (4 if metric == "specificity" else 3)
      lines += [f"{metric} per class:", "", "| method | " + " | ".join(classes) + " |", "|---|" + "---|" * len(classes)]
      for method, e in entries.items():
        lines.append(f"| {method} | " + " | ".join(_fmt(e[c][metric], e["n"], digits) for c in classes) + " |")
      lines.append("")
    if compared.get(dataset):
      lines += [
        "Paired differences of test Dice (same seed; a traditional method pairs with every seed; '(over "
        "test cases)': pairs are test cases, each method's Dice of a case averaged over its seeds): mean "
        "[95% t interval] (n pairs):",
        "",
        "| comparison | " + " | ".join(classes) + " |",
        "|---|" + "---|" * len(classes),
      ]
      for name, per_class in compared[dataset].items():
        lines.append(f"| {name} | " + " | ".join(_ci(per_class[c]) for c in classes) + " |")
      lines.append("")
  lines += ["## Reading (generated from the numbers above)", ""] + reading(table, compared)
  fitted = {r["dataset"]: r["fitted"] for r in runs if r["kind"] == "traditional"}
  if fitted:
    lines += ["", "## What the traditional methods learned from the training cases", ""]
    for dataset, f in fitted.items():
      lines.append(f"- {dataset}: {json.dumps(f)}")
  lines += [
    "",
    f"Figure: `{args.output.name}.png` (mean foreground test Dice per method and dataset; error bars: std over seeds).",
  ]
  return "\n".join(lines)


def runs_cases(runs, dataset) -> int:
  return next(r["test"]["num_cases"] for r in runs if r["dataset"] == dataset)


def reading(table: dict, compared: dict) -> list[str]:
  lines = []
  for dataset, entries in table.items():
    ranked = sorted(
      ((e["mean_foreground"]["dice"][0], m) for m, e in entries.items() if e["mean_foreground"]["dice"][0] is not None),
      reverse=True,
    )
    text = f"- {dataset}: mean foreground Dice, best first: " + ", ".join(f"{m} {d:.3f}" for d, m in ranked) + "."
    deep, trad = best(table, dataset, "deep"), best(table, dataset, "traditional")
    if deep and trad:
      p = compared[dataset][f"{deep} - {trad}"]["mean_foreground"]
      low, high = p["ci95"]
      if low is None:
        verdict = "one seed, no interval"
      elif low > 0:
        verdict = "the interval excludes 0: the deep model is better"
      elif high < 0:
        verdict = "the interval excludes 0: the traditional method is better"
      else:
        verdict = "the interval includes 0: no difference distinguishable from seed noise"
      text += f" Best deep ({deep}) minus best traditional ({trad}): {_ci(p)} over seeds; {verdict}"
      q = compared[dataset][f"{deep} - {trad} (over test cases)"]["mean_foreground"]
      text += f"; over test cases {_ci(q)}."
    better = [
      name
      for name, per_class in compared.get(dataset, {}).items()
      if name.endswith(" - unet")
      and per_class["mean_foreground"]["ci95"][0] is not None
      and per_class["mean_foreground"]["ci95"][0] > 0
    ]
    worse = [
      name
      for name, per_class in compared.get(dataset, {}).items()
      if name.endswith(" - unet")
      and per_class["mean_foreground"]["ci95"][1] is not None
      and per_class["mean_foreground"]["ci95"][1] < 0
    ]
    if any(n.endswith(" - unet") for n in compared.get(dataset, {})):
      text += (
        f" Against the U-Net (mean foreground Dice, 95% interval excluding 0): better "
        f"{', '.join(n.split(' - ')[0] for n in better) or 'none'}; worse "
        f"{', '.join(n.split(' - ')[0] for n in worse) or 'none'}."
      )
    lines.append(text)
  return lines


def save_figure(path: pathlib.Path, table: dict) -> None:
  """Grouped bars: mean foreground test Dice per method, one group per dataset, std over seeds."""
  from jaxseg import visualize  # pylint: disable=g-import-not-at-top

  plt = visualize._pyplot()  # pylint: disable=protected-access
  methods = list(dict.fromkeys(m for entries in table.values() for m in entries))
  datasets = list(table)
  fig, ax = plt.subplots(figsize=(max(6.0, 0.55 * len(methods) * len(datasets) + 2), 3.6))
  width = 0.8 / max(1, len(datasets))
  for i, dataset in enumerate(datasets):
    means = [table[dataset][m]["mean_foreground"]["dice"][0] if m in table[dataset] else np.nan for m in methods]
    stds = [table[dataset][m]["mean_foreground"]["dice"][1] if m in table[dataset] else np.nan for m in methods]
    xs = np.arange(len(methods)) + (i - (len(datasets) - 1) / 2) * width
    ax.bar(
      xs,
      [np.nan if v is None else v for v in means],
      width,
      yerr=[0.0 if v is None or np.isnan(v) else v for v in stds],
      capsize=2,
      label=dataset,
    )
  ax.set_xticks(np.arange(len(methods)))
  ax.set_xticklabels(methods, rotation=30, ha="right", fontsize=8)
  ax.set_ylabel("mean foreground test Dice")
  ax.set_ylim(0, 1)
  ax.legend(fontsize=7)
  ax.grid(axis="y", alpha=0.3)
  fig.tight_layout()
  _study.save_figure(fig, path, dpi=90)


def main(argv=None):
  args = parse_args(argv)
  start = time.time()
  # Every config is built and validated before anything is trained.
  for dataset, models in args.grid.items():
    for model in models:
      for seed in range(args.seeds):
        run_config(model, dataset, seed, args)
  if args.methods:
    from jaxseg import traditional  # pylint: disable=g-import-not-at-top

    traditional._skimage()  # pylint: disable=protected-access  (a missing extra stops the study here)
  _study.use_compilation_cache(args.workdir / "jax_cache")  # The seeds of a model compile the same programs.
  runs = []
  for dataset in args.datasets:  # Traditional methods first: minutes, not hours.
    runs += traditional_runs(dataset, args) if args.methods else []
  expected = sum(len(models) for models in args.grid.values()) * args.seeds
  for dataset in args.datasets:
    for seed in range(args.seeds):
      for model in args.grid[dataset]:
        if args.report_only and not (args.workdir / f"{dataset}_{model}_seed{seed}" / _study.RUN_RECORD).exists():
          continue
        run = deep_run(model, dataset, seed, args)
        runs.append(run)
        print(
          f"{dataset} {model} seed {seed}: test mean foreground Dice {run['test']['mean_foreground']['dice']:.4f}"
          f" ({'reused' if run['reused'] else 'trained'} {run['seconds']:.0f} s)",
          flush=True,
        )
        if not run["reused"]:  # The report so far: a study stopped early still leaves its finished runs' numbers.
          report(args, runs, start, expected)
  if not runs:
    raise SystemExit(f"{args.prog}: --report_only: no finished runs in {args.workdir}")
  report(args, runs, start, expected)
  print(args.output.with_suffix(".md").read_text())


def report(args, runs: list[dict], start: float, expected: int) -> None:
  """Writes `<output>.md`, `.json` and `.png` from the runs so far (`expected`: deep runs of the full grid)."""
  table = aggregate(runs)
  compared = comparisons(runs, table)
  args.output.parent.mkdir(parents=True, exist_ok=True)
  save_figure(args.output.with_suffix(".png"), table)
  meta = _study.metadata(args, start)
  done = sum(r["kind"] == "deep" for r in runs)
  status = {"deep_runs_finished": done, "deep_runs_in_grid": expected, "complete": done == expected}
  _study.write_report(
    args.output,
    markdown(meta, args, runs, table, compared, status),
    {
      **meta,
      "status": status,
      "protocol": protocol(args),
      "grid": args.grid,
      "methods": args.methods,
      "table": table,
      "paired_dice_differences": compared,
      "reading": reading(table, compared),
      "runs": runs,
    },
  )


if __name__ == "__main__":
  main()

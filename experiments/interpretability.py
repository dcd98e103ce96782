"""Interpretability maps on the CT phantom: localisation and the sanity checks of Adebayo et al. (2018).

Trains (or reuses) each model of `--models` (default U-Net and Attention
U-Net, from `configs/unet_ct.py` and `configs/attention_unet_ct.py` at an
equal training budget) on the CT phantom, and the same architecture on a
copy of the phantom whose *training* labels are shuffled across cases
(`shuffled_label_dataset`: case i's image is paired with the label volume of
case pi(i), pi a random derangement of the training cases; validation and
test labels are untouched). Cases are generated independently, so a
shuffled label is independent of its image: the shuffled-label model can
learn where organs usually are, but nothing that the image shows (Adebayo
et al.'s "randomized labels" test, moved from image classes to label maps).

Then, on every test case (the first 3 in the cpu protocol) and every class of
`--classes` present in it, on
the axial slice with the most reference voxels of the class, every map of
`jaxseg.interpret` (saliency, SmoothGrad, integrated gradients, Grad-CAM at
the last feature map before the head, and for the Attention U-Net its
full-resolution attention gate) explains the class score S_k = sum of class
k's logits over `--region`: by default `all` pixels of the slice, the same
region for every model. (With the reference structure as the region, every
gradient map concentrates inside it whatever the weights, because the score
only reads logits there: localisation would then measure the region, not the
model. `--region=reference` and `--region=predicted` are there to show it.)
The study reports:

- localisation: the share of the map's positive mass inside the reference
  structure dilated by `--margin` voxels (2 by default, of the preprocessed
  grid, whose spacing the report states), for the trained, randomised and
  shuffled-label models, beside the share a uniform map would get (the
  dilated structure's area / the slice's area);
- Spearman rank correlation, over the slice's pixels, of the trained model's
  map with the same map of (a) the same architecture with freshly initialised
  weights (`interpret.randomized_variables`, Adebayo et al.'s cascading
  randomisation taken to the end) and (b) the shuffled-label model. Ranks are
  of the absolute values (Adebayo et al. do the same for signed maps; a no-op
  for the non-negative ones). A map that explains what the model learned
  should change when the model does: high correlations fail the check.

Writes `<output>.md`, `<output>.json` and `<output>.png` (maps of two test
cases: trained, randomised and shuffled-label rows per model).

  python experiments/interpretability.py              # --scale=cpu: the committed results
  python experiments/interpretability.py --quick      # the test suite's tiny protocol
  python experiments/interpretability.py --scale=gpu  # the shipped configs' steps and patches
"""

from __future__ import annotations

import json
import os
import pathlib
import shutil
import sys
import time

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
import _study  # pylint: disable=g-import-not-at-top,wrong-import-position

import jax  # pylint: disable=g-import-not-at-top,wrong-import-position
import jax.numpy as jnp  # pylint: disable=g-import-not-at-top,wrong-import-position
import nibabel as nib  # pylint: disable=g-import-not-at-top,wrong-import-position
import numpy as np  # pylint: disable=g-import-not-at-top,wrong-import-position
from scipy import ndimage  # pylint: disable=g-import-not-at-top,wrong-import-position

NAME = "interpretability"
MODEL_CONFIGS = {"unet": "unet_ct", "attention_unet": "attention_unet_ct"}
DATASETS = ("ct_phantom",)
GRADIENT_METHODS = ("saliency", "smoothgrad", "integrated_gradients", "grad_cam")
VARIANTS = ("trained", "randomised", "shuffled")
REGIONS = ("all", "reference", "predicted")
# Training budget per protocol (equal for every model; None keeps the config file's value).
PROTOCOLS = {
  "quick": dict(
    num_cases=8,
    patch_size=(64, 64),
    num_steps=4,
    batch_size=2,
    features=4,
    depth=2,
    smoothgrad_samples=2,
    ig_steps=2,
    classes="liver",
    max_cases=0,
  ),
  "cpu": dict(
    num_cases=0,
    patch_size=(96, 96),
    num_steps=150,
    batch_size=8,
    features=None,
    depth=None,
    smoothgrad_samples=8,
    ig_steps=16,
    classes="",
    max_cases=3,
  ),
  "gpu": dict(
    num_cases=0,
    patch_size=(128, 128),
    num_steps=600,
    batch_size=8,
    features=None,
    depth=None,
    smoothgrad_samples=50,
    ig_steps=64,
    classes="",
    max_cases=0,
  ),
}
SHUFFLE_SEED = 0
REGION_TEXT = {
  "all": "every pixel of the slice (`--region=all`)",
  "reference": "the class's reference structure (`--region=reference`)",
  "predicted": "the pixels each model assigns to the class (`--region=predicted`)",
}
SHUFFLED_MARKER = ".jaxseg_shuffled_labels_complete"


def parse_args(argv=None):
  p = _study.parser(__doc__, NAME)
  p.add_argument("--models", default=",".join(MODEL_CONFIGS), help="comma-separated: " + ", ".join(MODEL_CONFIGS))
  p.add_argument("--dataset", default="ct_phantom", help="one of " + ", ".join(DATASETS))
  p.add_argument("--classes", default=None, help="comma-separated foreground classes (default: all; quick: liver)")
  p.add_argument(
    "--region",
    default="all",
    choices=REGIONS,
    help="pixels whose class logits make the class "
    "score: all (default), reference (the class's reference structure), predicted (by each model)",
  )
  p.add_argument("--margin", type=int, default=2, help="dilation of the reference for localisation [voxels]")
  p.add_argument("--figure_cases", type=int, default=2, help="test cases shown in <output>.png")
  args = _study.parse(p, argv)
  args.models = _study.split_names(args.models)
  _study.refuse_unknown(args.prog, "model", args.models, MODEL_CONFIGS)
  _study.refuse_unknown(args.prog, "dataset", [args.dataset], DATASETS)
  from jaxseg.data import phantoms  # pylint: disable=g-import-not-at-top

  foreground = [n for n, v in phantoms.PHANTOMS[args.dataset].labels.items() if v != 0]
  protocol = PROTOCOLS["quick" if args.quick else args.scale]
  args.classes = _study.split_names(protocol["classes"] if args.classes is None else args.classes) or foreground
  _study.refuse_unknown(args.prog, "class", args.classes, foreground)
  if args.margin < 0:
    raise SystemExit(f"{args.prog}: --margin must be >= 0 voxels, got {args.margin}")
  return args


def protocol(args) -> dict:
  return PROTOCOLS["quick" if args.quick else args.scale]


def run_config(model: str, seed: int, args, shuffled_root: pathlib.Path | None = None):
  """One run's config: the model's config file, the protocol's equal budget, final-checkpoint test evaluation."""
  p = protocol(args)
  config = _study.protocol_config(MODEL_CONFIGS[model], seed, args, p)
  config.train.log_every_steps = max(1, min(config.train.log_every_steps, p["num_steps"]))
  config.train.checkpoint_every_steps = p["num_steps"]
  config.eval.postprocess = False  # The model's own output: the maps explain it, not a post-processed one.
  if shuffled_root is not None:
    config.data.name = "msd"
    config.data.root = str(shuffled_root)
  return _study.checked(config, args.prog)


def shuffled_label_dataset(
  source_root: pathlib.Path, target: pathlib.Path, seed: int = SHUFFLE_SEED
) -> tuple[pathlib.Path, dict[str, str]]:
  """A copy of the raw dataset at `source_root` whose training-split labels are a derangement of each other.

  Case i of splits.json's "train" gets the label volume of case pi(i) != i, stored with case i's own affine
  (the phantom volumes share one shape); validation and test labels and every image are copied unchanged.
  Built in a temporary sibling and renamed into place with a marker, so an interrupted copy is redone.
  Returns (target, {case: case whose labels it got}).
  """
  marker = target / SHUFFLED_MARKER
  if marker.exists():
    return target, json.loads(marker.read_text())["label_of"]
  meta = json.loads((source_root / "dataset.json").read_text())
  splits = json.loads((source_root / "splits.json").read_text())
  train_ids = list(splits["train"])
  rng = np.random.default_rng(seed)
  while True:  # A uniformly random derangement: nobody keeps their own labels.
    order = rng.permutation(len(train_ids))
    if len(train_ids) < 2 or not np.any(order == np.arange(len(train_ids))):
      break
  label_of = {case: train_ids[j] for case, j in zip(train_ids, order)}
  tmp = target.with_name(f".{target.name}.{os.getpid()}.tmp")
  shutil.rmtree(tmp, ignore_errors=True)
  shutil.copytree(source_root, tmp)
  for case, other in label_of.items():
    own = nib.load(source_root / "labelsTr" / f"{case}.nii.gz")
    theirs = np.asarray(nib.load(source_root / "labelsTr" / f"{other}.nii.gz").dataobj)
    if theirs.shape != own.shape:
      raise SystemExit(f"{source_root}: cases {case} and {other} differ in shape; labels cannot be exchanged")
    image = nib.Nifti1Image(theirs, own.affine, own.header)
    nib.save(image, tmp / "labelsTr" / f"{case}.nii.gz")
  meta["name"] = f"{meta['name']}_shuffled_labels"
  meta["description"] = (
    "COPY with the training split's labels shuffled across cases (jaxseg "
    f"experiments/interpretability.py, seed {seed}) of: {meta['description']}"
  )
  (tmp / "dataset.json").write_text(json.dumps(meta, indent=2))
  (tmp / SHUFFLED_MARKER).write_text(json.dumps({"seed": seed, "source": str(source_root), "label_of": label_of}))
  shutil.rmtree(target, ignore_errors=True)
  os.replace(tmp, target)
  return target, label_of


def restore(config, workdir):
  """(experiment, variables, step) of a finished run's final checkpoint."""
  exp, state, step = _study.restore_final(config, workdir)
  return exp, {"params": state.params, "batch_stats": state.batch_stats}, step


def all_maps(model_name, model, variables, images, class_index, region, args) -> dict[str, np.ndarray]:
  from jaxseg import interpret  # pylint: disable=g-import-not-at-top

  p = protocol(args)
  methods = GRADIENT_METHODS + (("attention",) if model_name == "attention_unet" else ())
  out = {}
  for method in methods:
    options = {}
    if method == "smoothgrad":
      options = dict(num_samples=p["smoothgrad_samples"])
    elif method == "integrated_gradients":
      options = dict(steps=p["ig_steps"])
    out[method] = np.asarray(
      interpret.compute(method, model, variables, images, class_index, region=region, rng=jax.random.key(0), **options)
    )[0]
  return out


def interpret_seed(model_name: str, seed: int, args, shuffled_root) -> tuple[list[dict], dict]:
  """Scores of every (test case, class, method) of one model and seed; the figure's maps of the first cases."""
  from jaxseg import interpret, visualize  # pylint: disable=g-import-not-at-top
  from jaxseg.data import pipeline  # pylint: disable=g-import-not-at-top

  exp, trained, _ = restore(run_config(model_name, seed, args), args.workdir / f"{model_name}_seed{seed}")
  _, shuffled, _ = restore(
    run_config(model_name, seed, args, shuffled_root), args.workdir / f"{model_name}_shuffled_seed{seed}"
  )
  source = pipeline.CaseSource(exp.prepared, "test", 8)
  labels = exp.prepared.labels
  randomised = None
  rows, figure = [], {}
  # Preprocessed slices differ in shape from case to case, and every shape compiles each method anew:
  # the cpu protocol explains the first `max_cases` test cases (0 = all).
  max_cases = protocol(args)["max_cases"] or len(source.case_ids)
  for index, case_id in enumerate(source.case_ids[:max_cases]):
    case = source[index]
    for class_name in args.classes:
      value = labels[class_name]
      if not np.any(case.label == value):
        continue
      z = visualize.most_foreground_slice(case.label == value)
      images = jnp.asarray(case.image[z][None], jnp.float32)
      reference = case.label[z] == value
      region = jnp.asarray(reference[None]) if args.region == "reference" else args.region
      if randomised is None:
        randomised = interpret.randomized_variables(exp.model, trained, images, seed + 1000)
      maps = {
        variant: all_maps(model_name, exp.model, variables, images, value, region, args)
        for variant, variables in (("trained", trained), ("randomised", randomised), ("shuffled", shuffled))
      }
      dilated = ndimage.binary_dilation(reference, iterations=args.margin) if args.margin else reference
      for method in maps["trained"]:
        row = {
          "model": model_name,
          "seed": seed,
          "case": case_id,
          "class": class_name,
          "slice": int(z),
          "method": method,
          "reference_pixels": int(reference.sum()),
          "uniform_localisation": float(dilated.mean()),
        }
        for variant in VARIANTS:
          row[f"localisation_{variant}"] = interpret.localisation_score(maps[variant][method], reference, args.margin)
        for variant in ("randomised", "shuffled"):
          row[f"rank_correlation_{variant}"] = interpret.rank_correlation(
            np.abs(maps["trained"][method]), np.abs(maps[variant][method])
          )
        rows.append(row)
      if seed == 0 and class_name == args.classes[0] and len(figure) < args.figure_cases and case_id not in figure:
        figure[case_id] = {
          "class": class_name,
          "slice": int(z),
          "image": np.asarray(case.image[z][..., 0]),
          "reference": np.asarray(case.label[z]),
          "maps": maps,
        }
  spacing = [float(s) for s in source[0].spacing] if len(source) else []
  return rows, {"figure": figure, "spacing": spacing}


def summarise(rows: list[dict]) -> dict:
  """Per model and method: mean ± std over every (seed, case, class) of each score."""
  keys = (
    ["uniform_localisation"]
    + [f"localisation_{v}" for v in VARIANTS]
    + [f"rank_correlation_{v}" for v in ("randomised", "shuffled")]
  )
  out = {}
  for model in dict.fromkeys(r["model"] for r in rows):
    for method in dict.fromkeys(r["method"] for r in rows if r["model"] == model):
      picked = [r for r in rows if r["model"] == model and r["method"] == method]
      out.setdefault(model, {})[method] = {
        "n": len(picked),
        **{k: _study.mean_std([r[k] for r in picked]) for k in keys},
      }
  return out


def save_figure(path: pathlib.Path, figures: dict[str, dict]) -> None:
  """Rows: (case, model, variant); columns: image with reference, then every map of that model."""
  from jaxseg import visualize  # pylint: disable=g-import-not-at-top

  plt = visualize._pyplot()  # pylint: disable=protected-access
  rows = [(case, model, variant) for model, per_case in figures.items() for case in per_case for variant in VARIANTS]
  columns = 1 + max(len(per_case[c]["maps"]["trained"]) for per_case in figures.values() for c in per_case)
  fig, axes = plt.subplots(len(rows), columns, figsize=(1.9 * columns, 1.9 * len(rows)), squeeze=False)
  for ax in axes.ravel():
    ax.axis("off")
  view = lambda a: a[::-1, ::-1]  # Radiological view (visualize.axial_view).
  for r, (case, model, variant) in enumerate(rows):
    item = figures[model][case]
    gray = visualize.to_gray(view(item["image"]))
    axes[r, 0].imshow(visualize.overlay(view(item["image"]), view(item["reference"])))
    axes[r, 0].set_title(f"{case} z={item['slice']}\n{model} {variant}", fontsize=6)
    for c, (method, values) in enumerate(item["maps"][variant].items(), start=1):
      values = view(np.abs(values) if method == "integrated_gradients" else values)
      axes[r, c].imshow(gray, cmap="gray")
      axes[r, c].imshow(values, cmap="inferno", vmin=0, vmax=float(values.max()) or 1.0, alpha=0.6)
      axes[r, c].set_title(method + (" |.|" if method == "integrated_gradients" else ""), fontsize=6)
  fig.tight_layout()
  _study.save_figure(fig, path, dpi=70)


def markdown(meta, args, runs, summary, spacing, label_of) -> str:
  p = protocol(args)
  cases = f"the first {p['max_cases']} test cases" if p["max_cases"] else "every test case"
  lines = ["# Interpretability maps on the CT phantom: localisation and sanity checks", ""]
  lines += _study.metadata_lines(meta)
  lines += [
    f"- Models: {', '.join(args.models)} (`configs/{MODEL_CONFIGS[args.models[0]]}.py`...), each trained "
    f"{p['num_steps']} steps of {p['patch_size'][0]} x {p['patch_size'][1]} patches, batch {p['batch_size']}, "
    f"seeds {', '.join(map(str, range(args.seeds)))}; final checkpoint, no post-processing.",
    f"- Shuffled-label models: the same runs on a copy of `{args.dataset}` whose {len(label_of)} training cases "
    "have each other's label volumes (a random derangement, seed "
    f"{SHUFFLE_SEED}); validation and test labels untouched. Labels are then independent of the image.",
    f"- Maps: class score = sum of the class's logits over {REGION_TEXT[args.region]}, on the slice of each test "
    f"case with the most voxels of the class ({cases}); "
    f"classes {', '.join(args.classes)}; SmoothGrad "
    f"{p['smoothgrad_samples']} samples (noise 0.15 of the range), integrated gradients {p['ig_steps']} steps "
    "from a zero image, Grad-CAM at the last feature map before the head, attention = the full-resolution gate.",
    f"- Localisation: share of the map's positive mass inside the reference dilated by {args.margin} pixels "
    f"(grid spacing {' x '.join(f'{s:.2f}' for s in spacing)} mm, z first); 'uniform' is what a constant map "
    "scores. Rank correlation: Spearman over the slice's pixels of |map|, trained model against the randomised "
    "(fresh initial weights) and the shuffled-label model; it should be low.",
    "",
    "## Test Dice of the models explained",
    "",
    "| model | labels | seed | mean foreground Dice | " + " | ".join(f"Dice {c}" for c in _classes(runs)) + " |",
    "|---|---|---|---|" + "---|" * len(_classes(runs)),
  ]
  for r in runs:
    test = r["results"]["test"]
    lines.append(
      f"| {r['model']} | {r['labels']} | {r['seed']} | {test['mean_foreground']['dice']:.4f} | "
      + " | ".join(f"{test[c]['dice']:.4f}" for c in _classes(runs))
      + " |"
    )
  lines += [
    "",
    "## Maps",
    "",
    "Mean ± std over every (seed, test case, class) pair (n of them); `n/a`: no map had positive mass "
    "or a map was constant.",
    "",
  ]
  for model, per_method in summary.items():
    lines += [
      f"### {model}",
      "",
      "| method | n | localisation trained | randomised | shuffled labels | uniform map | "
      "rank corr. vs randomised | rank corr. vs shuffled |",
      "|---|---|---|---|---|---|---|---|",
    ]
    for method, s in per_method.items():
      k = s["n"]
      lines.append(
        f"| {method} | {k} | {_study.fmt(s['localisation_trained'], k, 3)} | "
        f"{_study.fmt(s['localisation_randomised'], k, 3)} | {_study.fmt(s['localisation_shuffled'], k, 3)} | "
        f"{_study.fmt(s['uniform_localisation'], k, 3)} | {_study.fmt(s['rank_correlation_randomised'], k, 3)} | "
        f"{_study.fmt(s['rank_correlation_shuffled'], k, 3)} |"
      )
    lines.append("")
  lines += ["## Reading (generated from the numbers above)", ""] + reading(summary)
  lines += [
    "",
    f"Figure: `{args.output.name}.png` (rows: case, model, trained / randomised / shuffled labels; "
    "integrated gradients shown as |IG|).",
  ]
  return "\n".join(lines)


def _classes(runs) -> list[str]:
  test = runs[0]["results"]["test"]
  return [k for k, v in test.items() if isinstance(v, dict) and "dice" in v and k != "mean_foreground"]


def reading(summary) -> list[str]:
  """One generated line per model: methods ordered by their rank correlation with the randomised model."""
  lines = []
  for model, per_method in summary.items():
    ranked = sorted(
      (
        (s["rank_correlation_randomised"][0], m)
        for m, s in per_method.items()
        if s["rank_correlation_randomised"][0] is not None
      ),
      reverse=True,
    )
    better = [
      m
      for m, s in per_method.items()
      if s["localisation_trained"][0] is not None and s["localisation_trained"][0] > s["uniform_localisation"][0]
    ]
    lines.append(
      f"- {model}: rank correlation with the randomised model, highest (least sensitive to the weights) "
      f"first: {', '.join(f'{m} {c:+.3f}' for c, m in ranked) or 'none'}. Methods whose trained-model "
      f"maps localise better than a uniform map: {', '.join(better) or 'none'}."
    )
  return lines


def main(argv=None):
  args = parse_args(argv)
  start = time.time()
  from jaxseg.data import phantoms  # pylint: disable=g-import-not-at-top

  # Every config is built and validated before anything is trained.
  for model in args.models:
    for seed in range(args.seeds):
      run_config(model, seed, args)
  source_root = phantoms.ensure_phantom(args.dataset, args.data_dir, num_cases=protocol(args)["num_cases"] or None)
  shuffled_root, label_of = shuffled_label_dataset(source_root, args.data_dir / f"{args.dataset}_shuffled_labels")
  runs = []
  for seed in range(args.seeds):
    for model in args.models:
      for labels, root in (("real", None), ("shuffled", shuffled_root)):
        suffix = "_shuffled" if root else ""
        run = _study.run_training(run_config(model, seed, args, root), args.workdir / f"{model}{suffix}_seed{seed}")
        runs.append({"model": model, "labels": labels, "seed": seed, **run})
        print(
          f"{model} {labels} labels seed {seed}: test mean foreground Dice "
          f"{run['results']['test']['mean_foreground']['dice']:.4f} ({'reused' if run['reused'] else 'trained'} "
          f"{run['seconds']:.0f} s)",
          flush=True,
        )
  rows, figures, spacing = [], {}, []
  for model in args.models:
    for seed in range(args.seeds):
      seed_rows, extra = interpret_seed(model, seed, args, shuffled_root)
      rows += seed_rows
      spacing = extra["spacing"] or spacing
      if extra["figure"]:
        figures[model] = extra["figure"]
    print(f"{model}: maps done ({time.time() - start:.0f} s)", flush=True)
  summary = summarise(rows)
  args.output.parent.mkdir(parents=True, exist_ok=True)
  if figures:
    save_figure(args.output.with_suffix(".png"), figures)
  meta = _study.metadata(args, start)
  _study.write_report(
    args.output,
    markdown(meta, args, runs, summary, spacing, label_of),
    {
      **meta,
      "models": args.models,
      "dataset": args.dataset,
      "classes": args.classes,
      "region": args.region,
      "margin_voxels": args.margin,
      "protocol": protocol(args),
      "spacing_mm": spacing,
      "shuffled_labels": {"seed": SHUFFLE_SEED, "label_of": label_of},
      "runs": [{k: v for k, v in r.items() if k != "config_hash"} for r in runs],
      "summary": summary,
      "reading": reading(summary),
      "maps": rows,
    },
  )
  print(args.output.with_suffix(".md").read_text())


if __name__ == "__main__":
  main()

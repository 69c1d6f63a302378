"""The `genaug` command line (typer). Configuration errors print one line and exit with status 2."""
from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated, Optional

import typer

from .core.config import ConfigError, load_yaml, merge, parse_overrides

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="Generative data augmentation for image classification.")


def _fail(msg: str) -> None:
    typer.echo(f"error: {msg}", err=True)
    raise typer.Exit(2)


@app.command()
def methods() -> None:
    """List every registered method: its name, then a one-line description."""
    from .methods import get_method_class, list_methods

    names = list_methods()
    width = max(map(len, names))
    for name in names:
        typer.echo(f"{name:<{width}}  {get_method_class(name).description}")


def _run_config(config: Optional[Path], overrides: list[str], **flags) -> dict:
    """defaults < YAML file < flags and key=value overrides. Bare keys are method options; `input.*` keys
    configure input validation."""
    cfg = load_yaml(config) if config else {}
    over = parse_overrides(overrides)
    cfg = merge(cfg, {"input": over.pop("input")} if "input" in over else {})
    cfg = merge(cfg, {"options": over} if over else {})
    cfg.update({k: v for k, v in flags.items() if v is not None})
    return cfg


@app.command(context_settings={"allow_interspersed_args": True})
def augment(
    src: Annotated[Path, typer.Argument(help="ImageFolder directory, or a .csv / .jsonl manifest (path,label[,mask][,id])")],
    overrides: Annotated[Optional[list[str]], typer.Argument(help="method options as key=value; input.<key>=value for input checks")] = None,
    method: Annotated[Optional[str], typer.Option("--method", "-m", help="a generator from `genaug methods`")] = None,
    out: Annotated[Path, typer.Option("--out", "-o", help="output directory (rerun to resume)")] = ...,
    n: Annotated[Optional[int], typer.Option("-n", help="variants per source image [the method's default: the paper's M, else 1]")] = None,
    seed: Annotated[Optional[int], typer.Option("--seed", help="global seed [0]")] = None,
    batch_size: Annotated[Optional[int], typer.Option("--batch-size", help="images per method call [the method's default]")] = None,
    config: Annotated[Optional[Path], typer.Option("--config", help="YAML file with the same keys (method, n, seed, batch_size, options, input, models)")] = None,
    models: Annotated[Optional[Path], typer.Option("--models", help="folder of local models: components load from DIR/<component> (clip, blip, sd15, sd15-inpaint, sdxl, sd3, llm, grounding-dino, sam, flow; `genaug tiny-models DIR` writes one)")] = None,
    json_out: Annotated[Optional[Path], typer.Option("--json", help="also write the run summary as JSON")] = None,
    executor: Annotated[str, typer.Option("--executor", help="local (this process) or ray (a Ray Data actor pool)")] = "local",
    ray_address: Annotated[Optional[str], typer.Option("--ray-address", help="an existing Ray cluster (e.g. auto or ray://host:10001); default: start a local one")] = None,
    workers: Annotated[Optional[str], typer.Option("--workers", help="Ray actors: N, or MIN,MAX to autoscale [1]")] = None,
    num_gpus_per_worker: Annotated[Optional[float], typer.Option("--num-gpus-per-worker", help="GPUs per Ray actor (fractions share a GPU) [0]")] = None,
) -> None:
    """Write N new labelled images per source image, with provenance; resumes where a previous run stopped."""
    from .pipeline import augment as run_augment

    try:
        cfg = _run_config(config, overrides or [], method=method, n=n, seed=seed, batch_size=batch_size,
                          models=str(models) if models else None)
        if not cfg.get("method"):
            _fail("no method given: use --method NAME (see `genaug methods`) or `method:` in --config")
        unknown = set(cfg) - {"method", "n", "seed", "batch_size", "options", "input", "models"}
        if unknown:
            _fail(f"unknown top-level key(s) in config: {sorted(unknown)}")
        ray_flags = {k: v for k, v in dict(ray_address=ray_address, workers=workers,
                                           num_gpus_per_worker=num_gpus_per_worker).items() if v is not None}
        summary = run_augment(src, out, **cfg, executor=executor, **ray_flags)
    except ConfigError as e:
        _fail(str(e))
    typer.echo(str(summary))
    _write_json(json_out, summary.__dict__)


def _write_json(path: Optional[Path], data) -> None:
    if path:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(data, indent=2, default=str))


@app.command("export")
def export_dataset(
    name: Annotated[str, typer.Argument(help="a built-in real dataset: fashion-mnist or digits")],
    out: Annotated[Path, typer.Option("--out", "-o", help="folder for the PNGs and manifest.csv")] = ...,
    split: Annotated[str, typer.Option(help="train or test (fashion-mnist)")] = "train",
    per_class: Annotated[Optional[int], typer.Option(help="only this many images per class (stratified, seeded)")] = None,
    seed: Annotated[int, typer.Option(help="seed of the per-class subset")] = 0,
) -> None:
    """Write a built-in real dataset (offline) as class folders of PNGs plus manifest.csv (exact labels)."""
    from .data.builtin import export_images, load_builtin, stratified_subset

    if split not in ("train", "test"):
        _fail(f"--split must be train or test, got {split!r}")
    try:
        images, labels, classes = load_builtin(name, split)
    except ConfigError as e:
        _fail(str(e))
    idx = stratified_subset(labels, per_class, seed) if per_class else range(len(labels))
    manifest = export_images(images, labels, classes, idx, out)
    typer.echo(f"wrote {len(idx)} images of {len(classes)} classes: {manifest}")


@app.command()
def split(
    src: Annotated[Path, typer.Argument(help="ImageFolder directory or manifest")],
    more_seeds: Annotated[Optional[list[str]], typer.Argument(hidden=True)] = None,
    out: Annotated[Path, typer.Option("--out", "-o", help="folder for the split files")] = ...,
    shots: Annotated[Optional[int], typer.Option(help="K images per class (few-shot)")] = None,
    fraction: Annotated[Optional[float], typer.Option(help="this fraction of every class (low-data)")] = None,
    seeds: Annotated[Optional[list[str]], typer.Option("--seeds", help="one split per seed: --seeds 0 1 2 (or 0,1,2)")] = None,
    val: Annotated[int, typer.Option(help="also hold out N images per class (from the rest) as val.csv")] = 0,
) -> None:
    """Stratified few-shot / low-data splits, written as CSV manifests that later commands take."""
    from .data.splits import make_splits

    # `--seeds 0 1 2`: click gives the option its first value; the rest arrive as trailing arguments.
    tokens = [t for item in (seeds or []) + (more_seeds or []) for t in item.replace(",", " ").split()]
    if not all(t.lstrip("-").isdigit() for t in tokens):
        _fail(f"--seeds takes integers, got {' '.join(tokens)!r}")
    try:
        written = make_splits(src, out, [int(t) for t in tokens] or [0], shots=shots, fraction=fraction, val=val)
    except ConfigError as e:
        _fail(str(e))
    for p in written:
        typer.echo(str(p))


def _named_paths(items: list[str], flag: str) -> dict[str, Path]:
    named = {}
    for item in items:
        name, sep, path = item.partition("=")
        if not sep or not name or not path:
            _fail(f"{flag} takes name=PATH, got {item!r}")
        named[name] = Path(path)
    return named


@app.command()
def train(
    overrides: Annotated[Optional[list[str]], typer.Argument(help="training options as key=value (see README)")] = None,
    real: Annotated[Path, typer.Option("--real", help="real training images: a split file, manifest or ImageFolder")] = ...,
    synthetic: Annotated[Optional[list[Path]], typer.Option("--synthetic", help="a genaug augment output folder (repeatable)")] = None,
    val: Annotated[Optional[Path], typer.Option("--val", help="validation images (selects the best epoch)")] = None,
    test: Annotated[Optional[Path], typer.Option("--test", help="in-distribution test images")] = None,
    ood: Annotated[Optional[list[str]], typer.Option("--ood", help="out-of-distribution test set, name=PATH (repeatable)")] = None,
    out: Annotated[Path, typer.Option("--out", "-o", help="run directory")] = ...,
    config: Annotated[Optional[Path], typer.Option("--config", help="YAML file of training options")] = None,
    json_out: Annotated[Optional[Path], typer.Option("--json", help="also write the results as JSON")] = None,
) -> None:
    """Train a classifier on real (+ synthetic) images; evaluate on test and OOD sets."""
    from .train import train as run_train

    try:
        cfg = merge(load_yaml(config) if config else {}, parse_overrides(overrides or []))
        result = run_train(real, out, synthetic=synthetic or [], val=val, test=test,
                           ood=_named_paths(ood or [], "--ood"), config=cfg)
    except ConfigError as e:
        _fail(str(e))
    typer.echo(f"run: {out}  (best epoch {result['best_epoch']}, {result['n_real']} real + "
               f"{result['n_synthetic']} synthetic images, {result['train_seconds']:.0f} s)")
    for name, r in [("val", result.get("val")), ("test", result.get("test")), *result["ood"].items()]:
        if r:
            sic = r.get("sic", {}).get("sic") if r.get("sic") else None
            typer.echo(f"{name:>12}: accuracy {r['accuracy']:.4f}  (n={r['n']})" + (f"  SIC {sic:.3f}" if sic else ""))
    _write_json(json_out, {k: v for k, v in result.items() if k != "history"})


@app.command()
def metrics(
    real: Annotated[Path, typer.Option("--real", help="real images: ImageFolder, manifest or split file")] = ...,
    synthetic: Annotated[Path, typer.Option("--synthetic", help="a genaug augment output folder (or any image set)")] = ...,
    k: Annotated[int, typer.Option(help="nearest neighbours for precision / recall / density / coverage")] = 5,
    feature_size: Annotated[int, typer.Option(help="input size of the MobileNetV2 feature extractor")] = 224,
    per_class: Annotated[bool, typer.Option(help="also per class")] = True,
    clip: Annotated[Optional[str], typer.Option("--clip", help="a CLIP model (hub id or local dir): adds the CLIP score")] = None,
    features: Annotated[str, typer.Option(help="feature space: mobilenet_v2 (real ImageNet weights, offline), inception (FID's) or clip")] = "mobilenet_v2",
    inception_weights: Annotated[Optional[Path], typer.Option(help="local file of the FID Inception-v3 weights")] = None,
    prompt: Annotated[str, typer.Option(help="CLIP score text; {label} is replaced")] = "a photo of a {label}",
    json_out: Annotated[Optional[Path], typer.Option("--json", help="also write the figures as JSON")] = None,
) -> None:
    """Synthetic-data metrics: precision, recall, density, coverage, FID, KID; CLIP score with --clip."""
    from .scoring import synthetic_metrics

    if features not in ("mobilenet_v2", "inception", "clip"):
        _fail(f"--features must be mobilenet_v2, inception or clip, got {features!r}")
    if features == "clip" and not clip:
        _fail("--features clip needs --clip MODEL")
    try:
        clip_model = None
        if clip:
            from .components.clip import Clip

            clip_model = Clip(clip)
        extractor = clip_model.as_feature_extractor() if features == "clip" else None
        if features == "inception":
            from .features import InceptionFeatures

            extractor = InceptionFeatures(str(inception_weights) if inception_weights else None)
        r = synthetic_metrics(real, synthetic, extractor=extractor, k=k, feature_size=feature_size,
                              per_class=per_class, clip=clip_model, prompt=prompt)
    except ConfigError as e:
        _fail(str(e))
    keys = ["precision", "recall", "density", "coverage", "fid", "kid"] + (["clip_score"] if clip else [])
    typer.echo(f"{r['n_real']} real vs {r['n_synthetic']} synthetic images, {r['features']} features, k={k}")
    typer.echo(f"{'':<20}" + "".join(f"{h:>11}" for h in keys))
    rows = [("overall", r["overall"])] + list(r.get("per_class", {}).items())
    for name, vals in rows:
        typer.echo(f"{name[:20]:<20}" + "".join(f"{vals[h]:>11.4f}" if h in vals else f"{'-':>11}" for h in keys))
    _write_json(json_out, r)


@app.command()
def bench(
    config: Annotated[Path, typer.Argument(help="bench YAML: data, splits, methods, budget, train (see README)")],
    out: Annotated[Path, typer.Option("--out", "-o", help="run directory (rerun to resume)")] = ...,
    json_out: Annotated[Optional[Path], typer.Option("--json", help="also write the summary table as JSON")] = None,
) -> None:
    """Methods x splits x seeds, budget-matched, cached; writes results.csv and the report."""
    from .bench import load_summary, run_bench

    try:
        run_bench(load_yaml(config), out)
    except ConfigError as e:
        _fail(str(e))
    typer.echo((out / "report.md").read_text(encoding="utf-8").split("## Configuration")[0].rstrip())
    typer.echo(f"\nreport: {out / 'report.html'}")
    _write_json(json_out, load_summary(out))


@app.command()
def report(run_dir: Annotated[Path, typer.Argument(help="a genaug bench run directory")]) -> None:
    """Re-render report.md and report.html of a bench run from its results.csv."""
    from .bench import write_report

    try:
        typer.echo(str(write_report(run_dir)))
    except ConfigError as e:
        _fail(str(e))


@app.command()
def weight(
    synthetic: Annotated[Path, typer.Argument(help="a genaug augment output folder")],
    overrides: Annotated[Optional[list[str]], typer.Argument(help="classifier options as key=value (genaug train's)")] = None,
    real: Annotated[Path, typer.Option("--real", help="the real images (split file, manifest or ImageFolder)")] = ...,
    rule: Annotated[str, typer.Option(help="diagen (1 if p >= 0.5 else 2p) or confidence (p)")] = "diagen",
    holdout: Annotated[float, typer.Option(help="share of each class's real images held out for temperature scaling")] = 0.2,
    seed: Annotated[int, typer.Option(help="seed of the hold-out split and the classifier")] = 0,
    json_out: Annotated[Optional[Path], typer.Option("--json", help="also write the summary as JSON")] = None,
) -> None:
    """Weight synthetic images by a calibrated real-data classifier's confidence (DIAGen's weighting)."""
    from .scoring.weighting import weight_synthetic

    if rule not in ("diagen", "confidence"):
        _fail(f"--rule must be diagen or confidence, got {rule!r}")
    try:
        r = weight_synthetic(synthetic, real, rule=rule, holdout=holdout, seed=seed,
                             classifier=parse_overrides(overrides or []))
    except ConfigError as e:
        _fail(str(e))
    typer.echo(f"weighted {r['n_synthetic']} images ({r['rule']}): temperature {r['temperature']:.3f}, held-out NLL "
               f"{r['holdout_nll_before']:.4f} -> {r['holdout_nll_after']:.4f}, mean confidence "
               f"{r['mean_confidence']:.3f}, {r['zero_weight']} at weight 0")
    _write_json(json_out, r)


@app.command("fit-flow")
def fit_flow_cmd(
    src: Annotated[Path, typer.Argument(help="training images: ImageFolder, manifest or split file")],
    overrides: Annotated[Optional[list[str]], typer.Argument(help="training options as key=value (see README)")] = None,
    out: Annotated[Path, typer.Option("--out", "-o", help="model directory (rerun to resume)")] = ...,
    config: Annotated[Optional[Path], typer.Option("--config", help="YAML file of training options")] = None,
    json_out: Annotated[Optional[Path], typer.Option("--json", help="also write the result as JSON")] = None,
) -> None:
    """Train genaug's class-conditional flow-matching generator (resumable), for the semantic_flow method."""
    from .flow.train import fit_flow

    try:
        r = fit_flow(src, out, merge(load_yaml(config) if config else {}, parse_overrides(overrides or [])))
    except ConfigError as e:
        _fail(str(e))
    rec = r["reconstruction"]
    typer.echo(f"model: {out}  ({r['n_images']} images, {len(r['classes'])} classes, {r['image_size']} px, "
               f"{r['channels']} channel(s), steps {r['steps']}, {r['seconds']:.0f} s)")
    typer.echo(f"inversion + regeneration ({rec['solver']}, {rec['steps']} steps): MSE {rec['mse']:.4f}, "
               f"PSNR {rec['psnr_db']:.1f} dB, latent std {rec['latent_std']:.2f}")
    _write_json(json_out, r)


@app.command("tiny-models")
def tiny_models(out: Annotated[Path, typer.Argument(help="folder to write <component>/ model directories into")]) -> None:
    """Write tiny randomly initialised versions of the pretrained components (offline tests, smoke runs)."""
    from .testing.tiny import write_tiny_models

    for name, path in write_tiny_models(out).items():
        typer.echo(f"{name:<10} {path}")


@app.command()
def demo(
    out: Annotated[Path, typer.Option("--out", "-o", help="where the demo writes everything (rerun to resume)")] = Path("runs/demo"),
    quick: Annotated[bool, typer.Option(help="a much smaller run, for smoke tests")] = False,
    json_out: Annotated[Optional[Path], typer.Option("--json", help="also write the result table as JSON")] = None,
) -> None:
    """The main job, offline: Fashion-MNIST at 5 %, flow-matching augmentation vs classical, 3 seeds."""
    from .demo import format_table, run_demo

    try:
        result = run_demo(out, quick=quick)
    except ConfigError as e:
        _fail(str(e))
    typer.echo(format_table(result))
    typer.echo(f"\ngrid:   {result['grid']}\nreport: {result['report']}\ntime:   {result['seconds']:.0f} s")
    _write_json(json_out, {**result["arms"], "details": result})


def main() -> None:  # pragma: no cover
    app(prog_name="genaug")


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())

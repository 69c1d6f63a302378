"""The `genaug` command line (typer). Configuration errors print one line and exit with status 2.

One precedence for every command: built-in defaults < YAML file (`--config`) < flags < `key=value`.
"""
from __future__ import annotations

import dataclasses
import json
import os
import sys
import types
from pathlib import Path
from typing import Annotated, Any, Literal, Optional, Union, get_args, get_origin

import typer

from .core.config import ConfigError, load_yaml, merge, parse_overrides
from .core.files import atomic_write
from .core.log import set_progress, set_verbosity

# rich_markup_mode=None: rich reads "[0]" or "[the method's default]" in a help text as markup and drops it.
app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False, rich_markup_mode=None,
                  help="Generative data augmentation for image classification.")

# --no-progress, passed as `progress=` to every long library call (None: tqdm's rule, a bar on a terminal).
_progress: Optional[bool] = None


def _fail(msg: str) -> None:
    typer.echo(f"error: {msg}", err=True)
    raise typer.Exit(2)


def _print_version(value: bool) -> None:
    if value:
        from .core.version import __version__

        typer.echo(f"genaug {__version__}")
        raise typer.Exit()


@app.callback()
def _global_options(
    version: Annotated[bool, typer.Option("--version", callback=_print_version, is_eager=True, help="print the version and exit")] = False,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="log errors only")] = False,
    verbose: Annotated[int, typer.Option("--verbose", "-v", count=True, show_default=False, help="log info lines; -vv: debug too [GENAUG_VERBOSITY, else warnings]")] = 0,
    no_progress: Annotated[bool, typer.Option("--no-progress", help="draw no progress bar [a bar when stderr is a terminal]")] = False,
) -> None:
    global _progress
    if quiet and verbose:
        _fail("-q and -v contradict each other")
    # Set (or reset) on every call: the library's level and bar default are process-wide.
    set_verbosity("error" if quiet else "debug" if verbose > 1 else "info" if verbose else None)
    _progress = False if no_progress else None
    set_progress(_progress)


@app.command()
def methods(
    name: Annotated[Optional[str], typer.Argument(help="a generator or training transform: its paper and options")] = None,
) -> None:
    """List the generators (name, one-line description) and the training transforms; with NAME, that one's
    paper and options (type, default, allowed values)."""
    from .methods import get_method_class, list_methods
    from .train.transforms import IMAGE_TRANSFORMS, list_transforms, transform_class

    names, transforms = list_methods(), list_transforms()
    if name is None:
        width = max(map(len, names + transforms))
        for n in names:
            typer.echo(f"{n:<{width}}  {get_method_class(n).description}")
        typer.echo("\ntraining transforms, applied online by `genaug train augment=NAME` (and bench arms):")
        for n in transforms:
            if n not in IMAGE_TRANSFORMS:
                typer.echo(f"  {n:<{width}}{transform_class(n).description}")
        typer.echo(f"  {', '.join(n for n in transforms if n in IMAGE_TRANSFORMS)}: the generators above, per image")
        return
    if name not in names and name not in transforms:
        _fail(f"unknown method {name!r}; choose from {', '.join(sorted({*names, *transforms}))}")
    cls = get_method_class(name) if name in names else transform_class(name)
    typer.echo(f"{name}: {cls.description}")
    if getattr(cls, "paper", ""):
        typer.echo(f"paper: {cls.paper}")
    if name in names:
        typer.echo(f"generator: genaug augment --method {name}; -n {cls.default_n} (default_n, the paper's M), "
                   f"--batch-size {cls.default_batch_size} (default_batch_size)")
    if name in transforms:
        typer.echo(f"training transform: genaug train augment={name} augment_options={{...}}")
    typer.echo("")
    _echo_table(["option", "type", "default", "allowed"], _option_rows(cls.Config))


# ---- `genaug methods NAME`: a config dataclass as a table, from pydantic's own view of its fields ----------------
_BOUNDS = {"gt": ">", "ge": ">=", "lt": "<", "le": "<="}


def _option_rows(config_cls) -> list[list[str]]:
    from pydantic_core import PydanticUndefined

    rows = []
    for key, f in config_cls.__pydantic_fields__.items():
        default = f.default_factory() if f.default_factory else f.default
        shown = "(required)" if default is PydanticUndefined else _show(default)
        shown = shown if len(shown) <= 48 else shown[:45] + "..."
        allowed = ", ".join(dict.fromkeys(_allowed(f.annotation, f.metadata)))
        rows.append([key, _type_name(f.annotation), shown, allowed])
    return rows


def _type_name(tp) -> str:
    origin, args = get_origin(tp), get_args(tp)
    if tp is type(None):
        return "None"
    if origin is Annotated:
        return _type_name(args[0])
    if origin is Literal:
        return " | ".join(dict.fromkeys(type(a).__name__ for a in args))
    if origin in (Union, types.UnionType):
        return " | ".join(_type_name(a) for a in args)
    if origin is not None:
        inner = ", ".join("..." if a is Ellipsis else _type_name(a) for a in args)
        return f"{getattr(origin, '__name__', origin)}[{inner}]"
    return getattr(tp, "__name__", str(tp).replace("typing.", ""))


def _allowed(tp, metadata) -> list[str]:
    """Literal choices and the bounds found in any Annotated metadata (annotated_types' Ge, Interval, ...: any
    dataclass-like object is shown by its non-empty fields; validators, being callables, are left out)."""
    out = [c for m in metadata for c in [_constraint(m)] if c]
    origin, args = get_origin(tp), get_args(tp)
    if origin is Literal:
        out.append(" | ".join(map(_show, args)))
    elif origin is Annotated:
        out += _allowed(args[0], args[1:])
    else:
        out += [c for a in args if a is not Ellipsis for c in _allowed(a, ())]
    return out


def _constraint(m) -> str:
    from pydantic.fields import FieldInfo

    if isinstance(m, str):
        return m
    if isinstance(m, FieldInfo):  # a Field(ge=...) nested inside another type, e.g. a tuple's items
        return ", ".join(c for c in map(_constraint, m.metadata) if c)
    if type(m).__str__ is not object.__str__:
        return str(m)
    fields = ({f.name: getattr(m, f.name) for f in dataclasses.fields(m)} if dataclasses.is_dataclass(m)
              else dict(vars(m)) if hasattr(m, "__dict__") else {})
    return ", ".join(f"{_BOUNDS[k]} {_show(v)}" if k in _BOUNDS else f"{k}={_show(v)}"
                     for k, v in fields.items() if v is not None and not callable(v))


def _show(v) -> str:
    """A value as it would be typed in a key=value override (YAML)."""
    if isinstance(v, (tuple, list)):
        return "[" + ", ".join(map(_show, v)) + "]"
    if v is None:
        return "null"
    if isinstance(v, bool):
        return str(v).lower()
    if isinstance(v, float):
        return repr(v) if len(repr(v)) <= 8 else f"{v:.6g}"
    if isinstance(v, str) and not v:
        return '""'
    return str(v)


def _echo_table(header: list[str], rows: list[list[str]]) -> None:
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    for r in [header, *rows]:
        typer.echo("  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip())


def _layered(config: Optional[Path], overrides: dict, flags: Optional[dict] = None) -> dict:
    """The one precedence: built-in defaults (the library's) < YAML file < flags < key=value overrides."""
    cfg = merge(load_yaml(config) if config else {}, {k: v for k, v in (flags or {}).items() if v is not None})
    return merge(cfg, overrides)


def _run_config(config: Optional[Path], overrides: list[str], **flags) -> dict:
    """`augment`'s layers: bare key=value keys are method options (`options`), `input.*` keys input checks,
    `filter.*` keys the filter stage's options."""
    over = parse_overrides(overrides)
    nested = {k: over.pop(k) for k in ("input", "filter") if k in over}
    return _layered(config, {**nested, "options": over} if over else nested, flags)


@app.command(context_settings={"allow_interspersed_args": True})
def augment(
    src: Annotated[Path, typer.Argument(help="ImageFolder directory, or a .csv / .jsonl manifest (path,label[,mask][,id])")],
    overrides: Annotated[Optional[list[str]], typer.Argument(help="method options as key=value; input.<key>=value for input checks; filter.<key>=value for the filter stage (see `genaug filter`)")] = None,
    method: Annotated[Optional[str], typer.Option("--method", "-m", help="a generator from `genaug methods`")] = None,
    out: Annotated[Path, typer.Option("--out", "-o", help="output directory (rerun to resume)")] = ...,
    n: Annotated[Optional[int], typer.Option("-n", help="variants per source image [the method's default: the paper's M, else 1]")] = None,
    seed: Annotated[Optional[int], typer.Option("--seed", help="global seed [0]")] = None,
    batch_size: Annotated[Optional[int], typer.Option("--batch-size", help="images per method call [the method's default]")] = None,
    config: Annotated[Optional[Path], typer.Option("--config", help="YAML file with the same keys (method, n, seed, batch_size, options, input, models, filter)")] = None,
    filters: Annotated[Optional[str], typer.Option("--filter", help="after generating, run these filters (comma-separated: blank,duplicate,clip,agreement,cleanlab, or `default`) against the source; see `genaug filter`")] = None,
    models: Annotated[Optional[Path], typer.Option("--models", help="folder of local models: components load from DIR/<component> (clip, blip, sd15, sd15-inpaint, sdxl, sd3, llm, grounding-dino, sam, flow; `genaug tiny-models DIR` writes one)")] = None,
    json_out: Annotated[Optional[Path], typer.Option("--json", callback=_json_target, help="also write the run summary as JSON")] = None,
    executor: Annotated[Literal["local", "ray"], typer.Option("--executor", help="local (this process) or ray (a Ray Data actor pool)")] = "local",
    ray_address: Annotated[Optional[str], typer.Option("--ray-address", help="an existing Ray cluster (e.g. auto or ray://host:10001); default: start a local one")] = None,
    workers: Annotated[Optional[str], typer.Option("--workers", help="Ray actors: N, or MIN,MAX to autoscale [1]")] = None,
    num_gpus_per_worker: Annotated[Optional[float], typer.Option("--num-gpus-per-worker", help="GPUs per Ray actor (fractions share a GPU) [0]")] = None,
) -> None:
    """Write N new labelled images per source image, with provenance; resumes where a previous run stopped."""
    from .pipeline import augment as run_augment

    try:
        cfg = _run_config(config, overrides or [], method=method, n=n, seed=seed, batch_size=batch_size,
                          models=str(models) if models else None,
                          filter=None if filters is None else {"filters": _filter_names(filters)})
        if not cfg.get("method"):
            _fail("no method given: use --method NAME (see `genaug methods`) or `method:` in --config")
        unknown = set(cfg) - {"method", "n", "seed", "batch_size", "options", "input", "models", "filter"}
        if unknown:
            _fail(f"unknown top-level key(s) in config: {sorted(unknown)}")
        ray_flags = {k: v for k, v in dict(ray_address=ray_address, workers=workers,
                                           num_gpus_per_worker=num_gpus_per_worker).items() if v is not None}
        summary = run_augment(src, out, **cfg, executor=executor, progress=_progress, **ray_flags)
    except ConfigError as e:
        _fail(str(e))
    typer.echo(str(summary))
    _write_json(json_out, summary.__dict__)


def _filter_names(text: str) -> Optional[list[str]]:
    """`--filter a,b` -> ["a", "b"]; `default` -> None (the default filters)."""
    names = [t.strip() for t in text.split(",") if t.strip()]
    return None if names in ([], ["default"]) else names


def _json_target(path: Optional[Path]) -> Optional[Path]:
    """`--json PATH` is checked when the command line is read, not after a long run: not a folder, and its
    nearest existing parent a writable folder."""
    if path is None:
        return None
    if path.is_dir():
        raise typer.BadParameter(f"{path} is a folder; give a file name such as {path / 'summary.json'}")
    parent = next(p for p in path.absolute().parents if p.exists())
    if not parent.is_dir():
        raise typer.BadParameter(f"cannot write {path}: {parent} is a file, not a folder")
    if not os.access(parent, os.W_OK):
        raise typer.BadParameter(f"cannot write {path}: {parent} is not writable")
    return path


def _write_json(path: Optional[Path], data) -> None:
    if path:
        atomic_write(path, json.dumps(data, indent=2, default=str))


@app.command("export")
def export_dataset(
    name: Annotated[Literal["fashion-mnist", "digits"], typer.Argument(help="a built-in real dataset")],
    out: Annotated[Path, typer.Option("--out", "-o", help="folder for the PNGs and manifest.csv")] = ...,
    split: Annotated[Literal["train", "test"], typer.Option(help="which split (digits: genaug's fixed stratified third is test)")] = "train",
    per_class: Annotated[Optional[int], typer.Option(min=1, help="only this many images per class (stratified, seeded)")] = None,
    seed: Annotated[int, typer.Option(help="seed of the per-class subset")] = 0,
) -> None:
    """Write a built-in real dataset (offline) as class folders of PNGs plus manifest.csv (exact labels)."""
    from .data.builtin import export_images, load_builtin, stratified_subset

    try:
        images, labels, classes = load_builtin(name, split)
        idx = stratified_subset(labels, per_class, seed) if per_class else range(len(labels))
        manifest = export_images(images, labels, classes, idx, out)
    except ConfigError as e:
        _fail(str(e))
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
    if more_seeds and not seeds:  # only `--seeds 0 1 2` leaves trailing arguments: anything else is a mistake
        _fail(f"unexpected argument(s) {' '.join(more_seeds)!r}: split takes one SRC; several seeds: --seeds 0 1 2")
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
    synthetic: Annotated[Optional[list[Path]], typer.Option("--synthetic", help="a genaug augment output folder, or any labelled source whose images are drawn as the synthetic share, e.g. a pseudo-labelled manifest (repeatable)")] = None,
    val: Annotated[Optional[Path], typer.Option("--val", help="validation images (selects the best epoch)")] = None,
    test: Annotated[Optional[Path], typer.Option("--test", help="in-distribution test images")] = None,
    ood: Annotated[Optional[list[str]], typer.Option("--ood", help="out-of-distribution test set, name=PATH (repeatable)")] = None,
    out: Annotated[Path, typer.Option("--out", "-o", help="run directory")] = ...,
    config: Annotated[Optional[Path], typer.Option("--config", help="YAML file of training options")] = None,
    json_out: Annotated[Optional[Path], typer.Option("--json", callback=_json_target, help="also write the results as JSON")] = None,
) -> None:
    """Train a classifier on real (+ synthetic) images; evaluate on test and OOD sets."""
    from .train import train as run_train

    try:
        cfg = _layered(config, parse_overrides(overrides or []))
        result = run_train(real, out, synthetic=synthetic or [], val=val, test=test,
                           ood=_named_paths(ood or [], "--ood"), config=cfg, progress=_progress)
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
    k: Annotated[int, typer.Option(min=1, help="nearest neighbours for precision / recall / density / coverage")] = 5,
    feature_size: Annotated[int, typer.Option(min=32, help="input size of the MobileNetV2 feature extractor")] = 224,
    per_class: Annotated[bool, typer.Option(help="also per class")] = True,
    clip: Annotated[Optional[str], typer.Option("--clip", help="a CLIP model (hub id or local dir): adds CMMD and the CLIP score (the CMMD paper's model: openai/clip-vit-large-patch14-336)")] = None,
    features: Annotated[Literal["mobilenet_v2", "inception", "clip"], typer.Option(help="feature space: mobilenet_v2 (real ImageNet weights, offline), inception (FID's) or clip (needs --clip)")] = "mobilenet_v2",
    inception_weights: Annotated[Optional[Path], typer.Option(help="local file of the FID Inception-v3 weights")] = None,
    prompt: Annotated[str, typer.Option(help="CLIP score text; {label} is replaced")] = "a photo of a {label}",
    json_out: Annotated[Optional[Path], typer.Option("--json", callback=_json_target, help="also write the figures as JSON")] = None,
) -> None:
    """Synthetic-data metrics: precision, recall, density, coverage, Fréchet and kernel distances (FID / KID
    only in the FID Inception-v3's features); CMMD and the CLIP score with --clip."""
    from .scoring import synthetic_metrics

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
    keys = (["precision", "recall", "density", "coverage", r["distances"]["frechet"], r["distances"]["kernel"]]
            + (["cmmd", "clip_score"] if clip else []))
    widths = [max(11, len(h) + 2) for h in keys]
    typer.echo(f"{r['n_real']} real vs {r['n_synthetic']} synthetic images, {r['features']} features "
               f"({r['image_size']} px), k={k}")
    typer.echo(f"{'':<20}" + "".join(f"{h:>{w}}" for h, w in zip(keys, widths)))
    rows = [("overall", r["overall"])] + list(r.get("per_class", {}).items())
    for name, vals in rows:
        typer.echo(f"{name[:20]:<20}" + "".join(f"{vals[h]:>{w}.4f}" if h in vals else f"{'-':>{w}}"
                                                for h, w in zip(keys, widths)))
    _write_json(json_out, r)


@app.command()
def audit(
    synthetic: Annotated[Path, typer.Argument(help="a genaug augment output folder")],
    real: Annotated[Path, typer.Option("--real", help="the real training images: ImageFolder, manifest or split file")] = ...,
    test: Annotated[Optional[Path], typer.Option("--test", help="test images, for leakage")] = None,
    val: Annotated[Optional[Path], typer.Option("--val", help="validation images, for leakage")] = None,
    clip: Annotated[Optional[str], typer.Option("--clip", help="a CLIP model (hub id or local dir): its image embeddings as the feature space [the ImageNet MobileNetV2's, offline]")] = None,
    quantile: Annotated[float, typer.Option(help="near-copy threshold: this quantile of the similarities of training images to their nearest other training image")] = 0.99,
    threshold: Annotated[Optional[float], typer.Option(help="a fixed cosine threshold instead of the calibrated one")] = None,
    top_k: Annotated[int, typer.Option(help="closest pairs to record, and draw side by side in SYNTHETIC/audit_pairs.png")] = 20,
    feature_size: Annotated[int, typer.Option(min=32, help="input size of the MobileNetV2 feature extractor")] = 224,
    json_out: Annotated[Optional[Path], typer.Option("--json", callback=_json_target, help="also write the audit as JSON (it is always written to SYNTHETIC/audit.json)")] = None,
) -> None:
    """Memorisation and leakage: synthetic images that are near-copies of a training image (or of their own
    source), or closer to a test / validation image than to any training image, and near-duplicates among the
    synthetic images; writes SYNTHETIC/audit.json and the closest pairs as thumbnails, SYNTHETIC/audit_pairs.png."""
    from .scoring.audit import AUDIT, audit as run_audit

    try:
        clip_model = None
        if clip:
            from .components.clip import Clip

            clip_model = Clip(clip)
        r = run_audit(synthetic, real, test=test, val=val, clip=clip_model, quantile=quantile, threshold=threshold,
                      top_k=top_k, feature_size=feature_size)
    except ConfigError as e:
        _fail(str(e))
    t = r["threshold"]
    how = f"quantile {t['quantile']} of train nearest-neighbour similarities" if t["method"] == "quantile" else "fixed"
    typer.echo(f"{r['n_synthetic']} synthetic vs {r['n_train']} train"
               + "".join(f", {r[f'n_{k}']} {k}" for k in ("test", "val") if f"n_{k}" in r)
               + f" images, {r['features']} features; near-copy threshold {t['value']:.4f} ({how})")
    keys = ("near_copy", "source_copy", "leak", "duplicate")
    rows = [[c, str(v["n"]), *(str(v[k]) for k in keys)] for c, v in r["per_class"].items()]
    rows.append(["all", str(r["n_synthetic"]), *(str(r["counts"][k]) for k in keys)])
    _echo_table(["class", "n", "near-copy", "source-copy", "leak", "duplicate"], rows)
    flagged = [p for p in r["closest_pairs"] if p["flag"]][:5]
    if flagged:
        typer.echo("closest flagged pairs:")
        _echo_table(["synthetic", "real", "split", "similarity"],
                    [[p["synthetic"], p["real"], p["split"], f"{p['similarity']:.4f}"] for p in flagged])
    if r["pairs_image"]:
        typer.echo(f"closest pairs: {synthetic / r['pairs_image']}")
    typer.echo(f"audit: {synthetic / AUDIT}")
    _write_json(json_out, r)


@app.command(context_settings={"allow_interspersed_args": True})
def bench(
    config: Annotated[Path, typer.Argument(help="bench YAML: data, splits, methods, budget, train (see README)")],
    overrides: Annotated[Optional[list[str]], typer.Argument(help="bench options as key=value, over the YAML's (budget=5 train.epochs=10)")] = None,
    out: Annotated[Path, typer.Option("--out", "-o", help="run directory (rerun to resume)")] = ...,
    json_out: Annotated[Optional[Path], typer.Option("--json", callback=_json_target, help="also write the summary table as JSON")] = None,
) -> None:
    """Methods x splits x seeds, budget-matched, cached; writes results.csv and the report."""
    from .bench import load_summary, run_bench

    try:
        run_bench(_layered(config, parse_overrides(overrides or [])), out, progress=_progress)
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
def card(
    synthetic: Annotated[Path, typer.Argument(help="a genaug augment output folder")],
    real: Annotated[Optional[Path], typer.Option("--real", help="real images shown beside the synthetic ones and measured against them [the run's source, where it still exists]")] = None,
    out: Annotated[Optional[Path], typer.Option("--out", "-o", help="the HTML file to write [SYNTHETIC/card.html]")] = None,
    clip: Annotated[Optional[str], typer.Option("--clip", help="a CLIP model (hub id or local dir): adds CMMD and the CLIP score")] = None,
    per_class: Annotated[int, typer.Option(help="real and synthetic thumbnails shown per class")] = 6,
    no_metrics: Annotated[bool, typer.Option("--no-metrics", help="leave out the synthetic-data metrics (fast)")] = False,
    feature_size: Annotated[int, typer.Option(help="input size of the MobileNetV2 feature extractor of the metrics")] = 224,
) -> None:
    """Write the data card of an output folder: one self-contained HTML page with its configuration and models,
    real beside synthetic images per class, the metrics, the filter funnel, the weights and the audit."""
    from .bench.card import write_card

    try:
        typer.echo(str(write_card(synthetic, real=real, out=out, clip=clip, per_class=per_class,
                                  metrics=not no_metrics, feature_size=feature_size,
                                  progress=_progress)))
    except ConfigError as e:
        _fail(str(e))


@app.command()
def weight(
    synthetic: Annotated[Path, typer.Argument(help="a genaug augment output folder")],
    overrides: Annotated[Optional[list[str]], typer.Argument(help="classifier options as key=value (genaug train's)")] = None,
    real: Annotated[Path, typer.Option("--real", help="the real images (split file, manifest or ImageFolder)")] = ...,
    rule: Annotated[Literal["diagen", "confidence"], typer.Option(help="diagen (1 if p >= 0.5 else 2p) or confidence (p)")] = "diagen",
    holdout: Annotated[float, typer.Option(help="share of each class's real images held out for temperature scaling (without --val)")] = 0.2,
    val: Annotated[Optional[Path], typer.Option("--val", help="a validation split (DIAGen's): train on all real images, calibrate on this")] = None,
    backbone: Annotated[Literal["resnet50", "mobilenet_v2"], typer.Option(help="linear-probe backbone: resnet50 (DIAGen's; the offline mobilenet_v2 where its weights cannot be had) or mobilenet_v2")] = "resnet50",
    seed: Annotated[int, typer.Option(help="seed of the hold-out split and the classifier")] = 0,
    json_out: Annotated[Optional[Path], typer.Option("--json", callback=_json_target, help="also write the summary as JSON")] = None,
) -> None:
    """Weight synthetic images by a calibrated real-data classifier's confidence (DIAGen's weighting)."""
    from .scoring.probe import temperature_note
    from .scoring.weighting import weight_synthetic

    try:
        classifier = parse_overrides(overrides or [])
        # key=value beats the flag (the one precedence); the seed seeds the hold-out split and the classifier alike.
        seed = classifier.pop("seed", seed)
        r = weight_synthetic(synthetic, real, rule=rule, holdout=holdout, seed=seed, classifier=classifier,
                             progress=_progress, val=val, backbone=backbone)
    except ConfigError as e:
        _fail(str(e))
    where = "validation" if r["calibration"] == "val" else "held-out"
    typer.echo(f"weighted {r['n_synthetic']} images ({r['rule']}): temperature {r['temperature']:.3f}, {where} NLL "
               f"{r['holdout_nll_before']:.4f} -> {r['holdout_nll_after']:.4f}, mean confidence "
               f"{r['mean_confidence']:.3f}, {r['zero_weight']} at weight 0; classifier {r['backbone']} "
               f"({r['classifier']['model']}, {r['classifier']['image_size']} px)")
    if r["backbone_fallback"]:
        typer.echo(f"note: {r['backbone_fallback']}")
    if temperature_note(r["temperature"]):
        typer.echo(f"note: {temperature_note(r['temperature'])}")
    _write_json(json_out, r)


@app.command("filter")
def filter_cmd(
    synthetic: Annotated[Path, typer.Argument(help="a genaug augment output folder")],
    overrides: Annotated[Optional[list[str]], typer.Argument(help="filter options as key=value (see below), e.g. clip_match=any action=drop classifier.epochs=5")] = None,
    real: Annotated[Optional[Path], typer.Option("--real", help="the real training images [the folder's own source]")] = None,
    test: Annotated[Optional[Path], typer.Option("--test", help="test images: synthetic images closer to one than to any training image are removed (leakage)")] = None,
    val: Annotated[Optional[Path], typer.Option("--val", help="validation images: leakage as for --test; also calibrates the classifier (DIAGen)")] = None,
    filters: Annotated[Optional[str], typer.Option("--filters", help="comma-separated, in funnel order: blank,duplicate,clip,agreement,cleanlab [blank,duplicate,agreement,cleanlab, and clip with --clip]")] = None,
    action: Annotated[Optional[Literal["weight", "drop"]], typer.Option(help="weight: set a removed image's weight to 0 (reversible) [default]; drop: delete it (its row goes to filtered.jsonl)")] = None,
    clip: Annotated[Optional[str], typer.Option("--clip", help="a CLIP model (hub id or local dir) for the clip filter (ALIA's semantic filter) and the audit's features")] = None,
    config: Annotated[Optional[Path], typer.Option("--config", help="YAML file of filter options")] = None,
    json_out: Annotated[Optional[Path], typer.Option("--json", callback=_json_target, help="also write the summary as JSON (it is always written to SYNTHETIC/filters.json)")] = None,
) -> None:
    """Judge every synthetic image (blank, near-duplicate or leaked, off-class for CLIP, disagreeing with a
    real-only classifier, a confident-learning label issue); record each decision in the metadata and weight the
    removed images 0 (or drop them). Training, chained augmentation and weighting leave them out.

    Options (key=value): filters, action, quantile, threshold, duplicate_flags, clip, prompt, negative_prompts,
    clip_match (label | any), backbone, holdout, classifier (genaug train options), seed, cleanlab_filter_by."""
    from .scoring.filters import filter_folder

    try:
        over = parse_overrides(overrides or [])
        cfg = _layered(config, over, {"action": action, "clip": clip})
        if filters is not None and "filters" not in over:  # `--filters default` too overrides the YAML's list
            cfg["filters"] = _filter_names(filters)
        r = filter_folder(synthetic, real, test=test, val=val, config=cfg)
    except ConfigError as e:
        _fail(str(e))
    typer.echo(f"{r['n']} images, filters {', '.join(r['filters'])} (action {r['action']}): {r['kept']} kept")
    _echo_table(["filter", "fails alone", "removed in order", "remaining"],
                [[f["filter"], str(f["failed"]), str(f["removed"]), str(f["remaining"])] for f in r["funnel"]])
    if "probe" in r["models"]:
        typer.echo(f"classifier: {r['models']['probe']['backbone']}, right on "
                   f"{r['models']['probe']['holdout_accuracy']:.0%} of its held-out real images")
    for w in r["warnings"]:
        typer.echo(f"warning: {w}")
    typer.echo(f"decisions: {synthetic / 'metadata.jsonl'} (filters, filtered); summary: {synthetic / 'filters.json'}")
    _write_json(json_out, r)


@app.command("fit-flow")
def fit_flow_cmd(
    src: Annotated[Path, typer.Argument(help="training images: ImageFolder, manifest or split file")],
    overrides: Annotated[Optional[list[str]], typer.Argument(help="training options as key=value (see README)")] = None,
    out: Annotated[Path, typer.Option("--out", "-o", help="model directory (rerun to resume)")] = ...,
    unlabeled: Annotated[Optional[Path], typer.Option("--unlabeled", help="an unlabelled pool (any source, its labels ignored, or a folder of images): trains the \"no class\" model beside the labelled images (unlabeled_share of every batch)")] = None,
    config: Annotated[Optional[Path], typer.Option("--config", help="YAML file of training options")] = None,
    json_out: Annotated[Optional[Path], typer.Option("--json", callback=_json_target, help="also write the result as JSON")] = None,
) -> None:
    """Train genaug's class-conditional flow-matching generator (resumable), for the semantic_flow method."""
    from .flow.train import fit_flow

    try:
        r = fit_flow(src, out, _layered(config, parse_overrides(overrides or [])), progress=_progress,
                     unlabeled=unlabeled)
    except ConfigError as e:
        _fail(str(e))
    rec = r["reconstruction"]
    pool = f" + {r['n_unlabeled']} unlabelled" if r["n_unlabeled"] else ""
    typer.echo(f"model: {out}  ({r['n_images']} images{pool}, {len(r['classes'])} classes, {r['image_size']} px, "
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
    json_out: Annotated[Optional[Path], typer.Option("--json", callback=_json_target, help="also write the result table as JSON")] = None,
    ablation: Annotated[Optional[list[str]], typer.Option("--ablation", help="also run an ablation arm (repeatable): closed = the generator trained on the labelled images only")] = None,
    dataset: Annotated[Literal["auto", "fashion-mnist", "digits"], typer.Option(help="auto: Fashion-MNIST where installed, else scikit-learn's digits (10 % labelled, genaug's fixed test third)")] = "auto",
    workers: Annotated[Optional[int], typer.Option(min=1, help="processes running the demo's jobs side by side, one thread each (default: one per CPU, at most 8); 1 runs them in this process. The results do not depend on it")] = None,
    precision: Annotated[Optional[Literal["auto", "float32", "bfloat16"]], typer.Option(help="what the generator, its images and the classifiers compute in (default auto: bfloat16 where the CPU has AMX tiles or on a GPU, else float32); a folder is continued only in the precision it was made in")] = None,
) -> None:
    """The main job, offline: Fashion-MNIST at 1 %, flow-matching augmentation (its generator also sees the
    rest of the training set, labels withheld) vs classical and pseudo-labelling, 3 seeds."""
    from .demo import format_table, run_demo

    try:
        overrides: dict[str, Any] = {"ablations": list(ablation or []), "dataset": dataset, "workers": workers}
        if precision:
            overrides |= {stage: {"precision": precision} for stage in ("flow", "semantic_flow", "train")}
        result = run_demo(out, quick=quick, progress=_progress, overrides=overrides)
    except ConfigError as e:
        _fail(str(e))
    typer.echo(format_table(result))
    typer.echo(f"\ngrid:   {result['grid']}\nreport: {result['report']}\ntime:   {result['seconds']:.0f} s")
    _write_json(json_out, {**result["arms"], "details": result})


def main() -> None:
    """The `genaug` command: the app, with a missing optional dependency told as the extra that installs it."""
    from .core.extras import missing_extra

    try:
        app(prog_name="genaug")
    except ModuleNotFoundError as e:
        message = missing_extra(e)
        if message is None:
            raise
        typer.echo(f"error: {message}", err=True)
        sys.exit(2)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())

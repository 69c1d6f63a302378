"""The `genaug` command line (typer). Configuration errors print one line and exit with status 2."""
from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated, Optional

import typer

from .config import ConfigError, load_yaml, merge, parse_overrides

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="Generative data augmentation for image classification.")


def _fail(msg: str) -> None:
    typer.echo(f"error: {msg}", err=True)
    raise typer.Exit(2)


@app.command()
def methods() -> None:
    """List every registered method: its name, then a one-line description."""
    from .registry import get_method_class, list_methods

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
    n: Annotated[Optional[int], typer.Option("-n", help="variants per source image [1]")] = None,
    seed: Annotated[Optional[int], typer.Option("--seed", help="global seed [0]")] = None,
    batch_size: Annotated[Optional[int], typer.Option("--batch-size", help="images per method call [16]")] = None,
    config: Annotated[Optional[Path], typer.Option("--config", help="YAML file with the same keys (method, n, seed, batch_size, options, input)")] = None,
    json_out: Annotated[Optional[Path], typer.Option("--json", help="also write the run summary as JSON")] = None,
) -> None:
    """Write N new labelled images per source image, with provenance; resumes where a previous run stopped."""
    from .engine import augment as run_augment

    try:
        cfg = _run_config(config, overrides or [], method=method, n=n, seed=seed, batch_size=batch_size)
        if not cfg.get("method"):
            _fail("no method given: use --method NAME (see `genaug methods`) or `method:` in --config")
        unknown = set(cfg) - {"method", "n", "seed", "batch_size", "options", "input"}
        if unknown:
            _fail(f"unknown top-level key(s) in config: {sorted(unknown)}")
        summary = run_augment(src, out, **cfg)
    except ConfigError as e:
        _fail(str(e))
    typer.echo(str(summary))
    if json_out:
        json_out.write_text(json.dumps({**summary.__dict__, "out": str(summary.out)}, indent=2))


@app.command()
def demo(
    out: Annotated[Path, typer.Option("--out", "-o", help="where the demo writes everything")] = Path("runs/demo"),
    per_class: Annotated[int, typer.Option(help="real images per class")] = 50,
    n: Annotated[int, typer.Option("-n", help="synthetic variants per real image")] = 4,
    seed: Annotated[int, typer.Option(help="global seed")] = 0,
    json_out: Annotated[Optional[Path], typer.Option("--json", help="also write the result as JSON")] = None,
) -> None:
    """The main job, offline: a real dataset in, augmented dataset and a real-vs-synthetic grid out."""
    from .demo import run_demo

    try:
        result = run_demo(out, per_class=per_class, n=n, seed=seed)
    except ConfigError as e:
        _fail(str(e))
    typer.echo(f"dataset:   {result['dataset']} ({result['classes']} classes, {result['per_class']} real images each)")
    typer.echo(f"real:      {result['real']}")
    typer.echo(f"synthetic: {result['synthetic']} ({result['images_present']} images, method {result['method']})")
    typer.echo(f"grid:      {result['grid']}")
    if json_out:
        json_out.write_text(json.dumps(result, indent=2))


def main() -> None:  # pragma: no cover
    app(prog_name="genaug")


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())

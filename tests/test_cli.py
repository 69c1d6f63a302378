"""The command line explains itself: --version, -q / -v, --no-progress, `genaug methods NAME`, help text that
keeps its brackets and lists choices, and one precedence (defaults < YAML < flags < key=value)."""
import fcntl
import os
import pty
import struct
import subprocess
import sys
import termios
from typing import Annotated, Literal

import pytest
import yaml
from annotated_types import Gt
from pydantic import Field

from conftest import cli
from genaug import list_methods
from genaug.cli import _option_rows
from genaug.core.config import config_dataclass
from genaug.core.version import __version__
from genaug.methods import get_method_class
from genaug.train.transforms import list_transforms, transform_class

GENAUG = [sys.executable, "-m", "genaug.cli"]


def _env(**extra) -> dict:
    env = {k: v for k, v in os.environ.items() if k != "GENAUG_VERBOSITY"}
    return {**env, **extra}


def run(*args, env=None) -> subprocess.CompletedProcess:
    """A real `genaug` process: its logger writes to the process's own stderr."""
    r = subprocess.run(GENAUG + [str(a) for a in args], capture_output=True, text=True, env=env or _env(), timeout=300)
    assert r.returncode == 0, r.stderr
    return r


def run_on_terminal(*args) -> str:
    """A real `genaug` process whose stderr is a terminal (a pty), where tqdm draws bars; returns that stderr."""
    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 100, 0, 0))  # a 0-column pty gets empty bars
    proc = subprocess.Popen(GENAUG + [str(a) for a in args], stdout=subprocess.DEVNULL, stderr=slave, env=_env())
    os.close(slave)
    chunks = []
    while True:
        try:
            data = os.read(master, 65536)
        except OSError:  # EIO: the child closed the terminal
            break
        if not data:
            break
        chunks.append(data)
    os.close(master)
    assert proc.wait(timeout=300) == 0
    return b"".join(chunks).decode(errors="replace")


@pytest.fixture
def src_with_empty_class(imagefolder):
    (imagefolder / "9").mkdir()  # Source logs a warning for it
    return imagefolder


def test_version():
    assert cli("--version").output == f"genaug {__version__}\n"


def test_quiet_hides_warnings_even_when_the_environment_asks_for_more(src_with_empty_class, tmp_path):
    args = ("augment", src_with_empty_class, "--method", "flipcrop", "-n", 1)
    warning = "genaug WARNING: class folder '9' has no images"
    assert warning in run(*args, "--out", tmp_path / "a").stderr
    quiet = run("-q", *args, "--out", tmp_path / "b", env=_env(GENAUG_VERBOSITY="info")).stderr
    assert "genaug WARNING" not in quiet and "genaug INFO" not in quiet


def test_verbose_shows_info_lines(imagefolder, tmp_path):
    args = ("augment", imagefolder, "--method", "flipcrop", "-n", 1, "--out", tmp_path / "out")
    run(*args)
    info = "genaug INFO: dropped 1 incomplete metadata row(s)"
    for flags, shown in (((), False), (("-v",), True)):
        with open(tmp_path / "out" / "metadata.jsonl", "a") as f:
            f.write('{"file_name": "0/to')  # a row torn by a killed run: the rerun drops it and says so at info level
        assert (info in run(*flags, *args).stderr) is shown


def test_quiet_and_verbose_together_is_an_error():
    assert "contradict" in cli("-q", "-v", "methods", expect=2).output


@pytest.mark.parametrize("command, bars", [
    (("augment", "{src}", "--method", "flipcrop", "-n", 2, "--out", "{out}"), ["genaug flipcrop"]),
    # "load real" is drawn deep inside train, by a function that takes no `progress`
    (("train", "--real", "{src}", "--out", "{out}", "epochs=1", "image_size=16", "min_steps=0"),
     ["genaug train", "load real"]),
], ids=["augment", "train"])
def test_no_progress_draws_no_bar_even_on_a_terminal(imagefolder, tmp_path, command, bars):
    def args(out):
        return [str(a).format(src=imagefolder, out=tmp_path / out) for a in command]

    shown = run_on_terminal(*args("with-bars"))
    assert all(b in shown for b in bars), shown  # the terminal does get bars...
    hidden = run_on_terminal("--no-progress", *args("no-bars"))
    assert "%|" not in hidden and not any(b in hidden for b in bars), hidden  # ...unless told not to


def test_methods_name_shows_options_defaults_types_and_paper():
    out = cli("methods", "flipcrop").output
    assert "paper: Szegedy et al., Going Deeper with Convolutions" in out
    assert "-n 1 (default_n, the paper's M)" in out and "--batch-size 16 (default_batch_size)" in out
    rows = {line.split()[0]: line for line in out.splitlines() if line.split()}
    assert "tuple[float, float]" in rows["scale"] and "[0.5, 1.0]" in rows["scale"]
    assert rows["flip_p"].split() == ["flip_p", "float", "0.5", ">=", "0,", "<=", "1"]
    assert "imagenet | cifar10 | svhn" in cli("methods", "autoaugment").output  # Literal choices


@pytest.mark.parametrize("name", sorted({*list_methods(), *list_transforms()}))
def test_every_method_and_training_transform_explains_itself(name):
    out = cli("methods", name).output
    if name in list_methods():
        assert get_method_class(name).paper and "paper: " in out
    if name in list_transforms():
        assert f"genaug train augment={name}" in out
    cls = get_method_class(name) if name in list_methods() else transform_class(name)
    listed = [line.split()[0] for line in out.split("\n\n", 1)[1].splitlines()[1:]]
    assert listed == list(cls.Config.__pydantic_fields__)


def test_methods_lists_the_training_transforms_after_the_generators():
    generators, transforms = cli("methods").output.split("\n\n")
    assert "genaug train augment=NAME" in transforms
    assert "cutmix" in transforms and "mixup" in transforms and "cutmix" not in generators


def test_unknown_method_name_is_one_line_and_exit_2():
    out = cli("methods", "nope", expect=2).output
    assert out.startswith("error: unknown method 'nope'") and "flipcrop" in out and "cutmix" in out
    assert len(out.strip().splitlines()) == 1


def test_option_table_renders_whatever_metadata_is_present():
    @config_dataclass
    class Config:
        share: Annotated[float, Field(ge=0, le=1)] = 0.25
        pair: tuple[Annotated[float, Gt(0)], float] = (1.0, 2.0)
        mode: Literal["a", "b"] | None = None
        note: Annotated[int, "any label"] = 3
        steps: tuple[Annotated[float, Field(ge=0, lt=1)], ...] = (0.5,)

    rows = {r[0]: r[1:] for r in _option_rows(Config)}
    assert rows["share"] == ["float", "0.25", ">= 0, <= 1"]
    assert rows["pair"] == ["tuple[float, float]", "[1.0, 2.0]", "> 0"]
    assert rows["mode"] == ["str | None", "null", "a | b"]
    assert rows["note"] == ["int", "3", "any label"]
    assert rows["steps"] == ["tuple[float, ...]", "[0.5]", ">= 0, < 1"]


def test_help_keeps_bracketed_text_and_lists_choices():
    text = " ".join(cli("augment", "--help").output.split())  # undo the wrapping
    assert "[the method's default: the paper's M, else 1]" in text and "[the method's default]" in text
    assert "global seed [0]" in text and "<local|ray>" in text
    assert "<diagen|confidence>" in cli("weight", "--help").output
    assert "<mobilenet_v2|inception|clip>" in " ".join(cli("metrics", "--help").output.split())
    assert "<train|test>" in cli("export", "--help").output
    top = " ".join(cli("--help").output.split())
    assert all(flag in top for flag in ("--version", "--quiet", "--verbose", "--no-progress"))


def test_a_closed_choice_is_checked_by_the_parser(imagefolder, tmp_path):
    res = cli("augment", imagefolder, "--method", "flipcrop", "--out", tmp_path / "o", "--executor", "spark", expect=2)
    assert "'spark' is not one of 'local', 'ray'" in res.output


def test_bad_numbers_and_json_paths_are_refused_before_any_work(imagefolder, tmp_path):
    """One line, exit 2, before a model loads or an image is written — not a traceback, not after the run."""
    out = tmp_path / "o"
    assert "Invalid value for '--k'" in cli("metrics", "--real", imagefolder, "--synthetic", imagefolder, "--k", "0",
                                            expect=2).output
    assert "--feature-size" in cli("metrics", "--real", imagefolder, "--synthetic", imagefolder,
                                   "--feature-size", "0", expect=2).output
    assert "--per-class" in cli("export", "digits", "--out", out, "--per-class", "0", expect=2).output
    (tmp_path / "a-file").write_text("x")
    for target, why in ((tmp_path, "is a folder"), (tmp_path / "a-file" / "s.json", "is a file, not a folder")):
        res = cli("augment", imagefolder, "--method", "flipcrop", "--out", out, "--json", target, expect=2)
        assert why in res.output and "Traceback" not in res.output
    assert not out.exists()
    from genaug.scoring.metrics import synthetic_metrics
    from genaug.core.config import ConfigError
    with pytest.raises(ConfigError, match="k=0"):
        synthetic_metrics(imagefolder, imagefolder, k=0)


def test_export_replaces_an_earlier_export_whole(tmp_path):
    out = tmp_path / "digits"
    cli("export", "digits", "--out", out, "--per-class", "3")
    cli("export", "digits", "--out", out, "--per-class", "2", "--seed", "1")
    pngs = sorted(p.relative_to(out).as_posix() for p in out.rglob("*.png"))
    listed = sorted(line.split(",")[0] for line in (out / "manifest.csv").read_text().splitlines()[1:])
    assert pngs == listed and len(pngs) == 20  # no stale image of the first export left for an ImageFolder reader
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("keep me")
    assert "holds no genaug export" in cli("export", "digits", "--out", tmp_path / "mine", expect=2).output
    assert (tmp_path / "mine" / "notes.txt").read_text() == "keep me"


def test_precedence_defaults_yaml_flags_key_value(imagefolder, tmp_path):
    cfg = tmp_path / "aug.yaml"
    cfg.write_text("method: randaugment\nseed: 1\nn: 1\noptions: {magnitude: 5, num_ops: 1}\n")
    cli("augment", imagefolder, "--config", cfg, "--out", tmp_path / "a", "--seed", 2, "magnitude=7")
    resolved = yaml.safe_load((tmp_path / "a" / "config.yaml").read_text())
    assert resolved["seed"] == 2  # the flag beats the file
    assert resolved["options"]["magnitude"] == 7  # key=value beats the file
    assert resolved["options"]["num_ops"] == 1 and resolved["options"]["num_magnitude_bins"] == 31  # file, default
    cli("augment", imagefolder, "--config", cfg, "--out", tmp_path / "b")
    assert yaml.safe_load((tmp_path / "b" / "config.yaml").read_text())["seed"] == 1  # the file beats the default


def test_train_takes_the_same_precedence(imagefolder, tmp_path):
    cfg = tmp_path / "train.yaml"
    cfg.write_text("epochs: 3\nimage_size: 16\n")
    cli("--no-progress", "train", "--real", imagefolder, "--out", tmp_path / "run", "--config", cfg, "epochs=1",
        "min_steps=0")
    resolved = yaml.safe_load((tmp_path / "run" / "config.yaml").read_text())["train"]
    assert resolved["epochs"] == 1 and resolved["image_size"] == 16 and resolved["batch_size"] == 64


def test_bench_key_value_overrides_its_yaml(tmp_path):
    cfg = tmp_path / "bench.yaml"
    cfg.write_text("data: {train: digits}\nbudget: 2\ntrain: {epochs: 1}\n")
    assert "option 'budget'" in cli("bench", cfg, "--out", tmp_path / "run", "budget=0", expect=2).output
    assert "option 'epochs'" in cli("bench", cfg, "--out", tmp_path / "run", "train.epochs=0", expect=2).output

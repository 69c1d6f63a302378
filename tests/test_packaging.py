"""What a user installing genaug into their own environment relies on: the core install (no extras) runs the
classical methods; a missing extra is a one-line error naming it; pyproject and the extras map agree; no
module shadows the standard library; ImageNet weights come from torch's cache first."""
import subprocess
import sys
import tomllib
from importlib.metadata import packages_distributions
from pathlib import Path

import genaug
from conftest import make_imagefolder, read_rows
from genaug.core.extras import EXTRAS

ROOT = Path(__file__).resolve().parents[1]
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))

# Runs the `genaug` command with every optional dependency made unimportable, as in a core-only install:
# `import X` raises ModuleNotFoundError, and probes (importlib.util.find_spec, as torch makes) see a spec
# without an origin, which they skip.
CORE_ONLY = """
import importlib.abc, importlib.machinery, sys
BLOCKED = set(sys.argv[1].split(","))

class NotInstalled(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    def find_spec(self, name, path=None, target=None):
        if name.partition(".")[0] in BLOCKED:
            return importlib.machinery.ModuleSpec(name, self)

    def create_module(self, spec):
        raise ModuleNotFoundError(f"No module named {spec.name!r}", name=spec.name)

    def exec_module(self, module):
        pass

sys.meta_path.insert(0, NotInstalled())
sys.argv = ["genaug", *sys.argv[2:]]
from genaug.cli import main
main()
"""


def _core_only(*args) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", CORE_ONLY, ",".join(EXTRAS), *map(str, args)],
                          capture_output=True, text=True, timeout=300)


def _dist(requirement: str) -> str:
    name = requirement.split(";")[0].split("[")[0]
    for sep in "<>=!~ ":
        name = name.split(sep)[0]
    return name.strip().lower().replace("_", "-")


def test_the_core_install_runs_a_classical_method(tmp_path, digit_images):
    src = make_imagefolder(tmp_path / "data", digit_images, per_class=2)
    res = _core_only("--no-progress", "augment", src, "--out", tmp_path / "out", "--method", "randaugment", "-n", 2)
    assert res.returncode == 0, res.stderr
    assert len(read_rows(tmp_path / "out")) == 12


def test_a_missing_extra_is_named_with_its_install_line(tmp_path, digit_images):
    src = make_imagefolder(tmp_path / "data", digit_images, per_class=2)
    res = _core_only("--no-progress", "train", "--real", src, "--out", tmp_path / "run")
    assert res.returncode == 2, res.stderr
    assert "pip install 'genaug[train]'" in res.stderr and "Traceback" not in res.stderr


def test_every_optional_import_belongs_to_the_extra_pyproject_gives_it():
    extras = {name: {_dist(r) for r in reqs} for name, reqs in PYPROJECT["project"]["optional-dependencies"].items()}
    core = {_dist(r) for r in PYPROJECT["project"]["dependencies"]}
    installed = packages_distributions()
    for module, extra in EXTRAS.items():
        dists = {d.lower().replace("_", "-") for d in installed.get(module, [module])}
        assert dists & extras[extra], f"{module} (from {dists}) is not in the {extra!r} extra of pyproject.toml"
        assert not dists & core, f"{module} is a core dependency but listed as the {extra!r} extra"
    assert {"genaug[models,train,metrics,bench,hf,ray,speed]"} == set(PYPROJECT["project"]["optional-dependencies"]["all"])


def test_torch_is_a_range_so_a_users_own_build_stays():
    torch_reqs = [r for r in PYPROJECT["project"]["dependencies"] if _dist(r) in ("torch", "torchvision")]
    assert len(torch_reqs) == 2 and not any("==" in r for r in torch_reqs)  # the exact pins live in constraints.txt
    constraints = (ROOT / "constraints.txt").read_text().split()
    assert any(c.startswith("torch==") for c in constraints) and any(c.startswith("torchvision==") for c in constraints)


def test_no_module_shadows_the_standard_library():
    names = {p.stem for p in Path(genaug.__file__).parent.rglob("*.py")} - {"__init__", "__main__"}
    assert not names & sys.stdlib_module_names


def test_imagenet_weights_come_from_torchs_cache_first(tmp_path, monkeypatch):
    import torch

    from genaug.features import mobilenet_v2_imagenet_file

    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    packaged = mobilenet_v2_imagenet_file()  # nothing in this cache: the offline package's copy
    assert packaged.is_file() and tmp_path not in packaged.parents
    cached = Path(torch.hub.get_dir()) / "checkpoints" / packaged.name
    cached.parent.mkdir(parents=True)
    cached.write_bytes(packaged.read_bytes())
    assert mobilenet_v2_imagenet_file() == cached


def test_the_library_leaves_process_wide_state_alone():
    """Importing and using the pieces that used to patch third-party modules changes nothing global."""
    code = """
import logging, os, warnings
import numpy as np, torch, torchvision  # what they change themselves is theirs
before = (hasattr(np, "trapz"), len(warnings.filters), dict(os.environ))
import matplotlib
backend = matplotlib.get_backend()
import genaug.train.explain, genaug.engine.ray, genaug.components.diffusion, genaug.bench.report, genaug.cli
assert (hasattr(np, "trapz"), len(warnings.filters), dict(os.environ)) == before
assert matplotlib.get_backend() == backend
assert not logging.getLogger("diffusers.models.modeling_utils").filters
print("ok")
"""
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert res.returncode == 0 and res.stdout.strip() == "ok", res.stderr

"""Which optional install (`pip install 'genaug[EXTRA]'`) brings which import.

The core install (torch, torchvision, Pillow, pyarrow…) runs the classical methods, the engine, splits and the
output folder. Everything else is imported where it is used, so a missing extra fails only the command that
needs it, with the `pip install` line that fixes it (`missing_extra`). `pyproject.toml` lists the same extras;
a test keeps the two in agreement.
"""
from __future__ import annotations

# top-level module -> the extra that installs it
EXTRAS: dict[str, str] = {
    **dict.fromkeys(("diffusers", "transformers", "huggingface_hub", "accelerate", "compel", "torchdiffeq", "scipy",
                     "requests"), "models"),
    **dict.fromkeys(("timm", "sklearn", "matplotlib", "captum", "saliency", "cleanlab"), "train"),
    **dict.fromkeys(("torchmetrics", "torch_fidelity", "prdc"), "metrics"),
    **dict.fromkeys(("pandas", "tabulate", "jinja2"), "bench"),
    "datasets": "hf",
    "ray": "ray",
    **dict.fromkeys(("peft", "DeepCache"), "speed"),
}


def missing_extra(error: ModuleNotFoundError) -> str | None:
    """The message for an import that failed because an extra is not installed, else None."""
    top = (error.name or "").partition(".")[0]
    if top not in EXTRAS:
        return None
    return (f"this needs the Python package {top!r}, which comes with genaug's {EXTRAS[top]!r} extra: "
            f"pip install 'genaug[{EXTRAS[top]}]' (or 'genaug[all]')")

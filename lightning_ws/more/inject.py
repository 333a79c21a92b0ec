"""Inject MoRe adapters into any model's ``nn.Linear`` layers, save/load adapter-only weights, merge for export.

Works on any ``nn.Module`` (Hugging Face transformers, open_clip, plain torch) without PEFT. arXiv 2408.17383.
"""

from __future__ import annotations

import json
import math
import os
import re
import warnings
import zlib
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from lightning_ws.errors import ConfigError, DataError
from lightning_ws.io import load_tensors, save_tensors
from lightning_ws.more.layer import MoReLinear

__all__ = [
    "MoReConfig",
    "MoReParameterReport",
    "MoReTrace",
    "ExampleInputs",
    "inject_more",
    "verify_more_adapters",
    "default_example_inputs",
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
        verified: whether a traced forward (:func:`verify_more_adapters`) has confirmed that every adapter is called.
            Adapters that such a forward found never called are refused, so they are never counted here.
    """

    n_layers: int
    adapter_params: int
    bias_params: int
    other_trainable_params: int
    trainable_params: int
    total_params: int
    per_layer: dict[str, int]
    verified: bool = False

    def __str__(self) -> str:
        frac = 100.0 * self.trainable_params / max(self.total_params, 1)
        note = "" if self.verified else " [not yet verified by a traced forward: call verify_more_adapters()]"
        return (f"MoRe: {self.n_layers} layers, adapter params {self.adapter_params:,}, adapted-bias params "
                f"{self.bias_params:,}, other trainable {self.other_trainable_params:,}, trainable "
                f"{self.trainable_params:,} / total {self.total_params:,} ({frac:.4f}%){note}")


ExampleInputs = torch.Tensor | tuple | list | dict | Callable[[nn.Module], Any]
"""What a verification forward is run with: a tensor (``model(x)``), a tuple/list of positional arguments, a dict of
keyword arguments, or a callable ``fn(model)`` (e.g. ``lambda m: m.encode_image(x)``)."""


@dataclass
class MoReTrace:
    """Outcome of one traced forward over a MoRe-adapted model (:func:`verify_more_adapters`).

    Attributes:
        called: adapted layers whose forward ran.
        dead: ``{layer name: reason}`` for adapted layers whose forward never ran (their adapter gets no input and
            no gradient).
    """

    called: list[str]
    dead: dict[str, str]

    @property
    def ok(self) -> bool:
        """True when every adapter was called."""
        return not self.dead


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


def inject_more(model: nn.Module, config: MoReConfig | None = None, *, freeze_base: bool = True,
                example_inputs: ExampleInputs | None = None, verify: bool = True) -> nn.Module:
    """Replace the selected ``nn.Linear`` layers of ``model`` by :class:`MoReLinear` in place (arXiv 2408.17383).

    With ``freeze_base=True`` (default) every parameter of the model except the adapter factors (and the adapted
    biases when ``config.train_bias``) gets ``requires_grad=False``; unfreeze a head yourself afterwards. Base weights
    are never modified.

    **Every adapter must run.** A matched ``nn.Linear`` whose parent reads its ``.weight`` instead of calling it
    (open_clip's ``AttentionPool2d`` q/k/v/c_proj, timm BEiT/EVA ``qkv`` with separate q/v biases, Hugging Face
    WavLM ``q/k/v_proj`` or DeBERTa-v1 ``in_proj`` in some branches, anything passed to ``F.linear`` or
    ``F.multi_head_attention_forward``) would get an adapter that never sees an input and never gets a gradient. So
    after injection one forward is traced (eval mode, no grad, modes restored) with ``example_inputs`` (or, when
    ``None``, inputs built by :func:`default_example_inputs` for open_clip, timm and Hugging Face models); if any
    adapter was not called, the injection is undone (model and ``requires_grad`` flags as before) and a
    :class:`ConfigError` names each such module and why. For a model with no automatic inputs and no
    ``example_inputs``, the check runs on the model's first ``forward`` call instead (and raises there).
    ``nn.MultiheadAttention`` children are refused before injection.

    Args:
        model: any ``nn.Module``.
        config: :class:`MoReConfig` (default: q/k/v of BERT-style models, K=4, r=4).
        freeze_base: freeze all non-adapter parameters.
        example_inputs: inputs of the verification forward (see :data:`ExampleInputs`).
        verify: run the verification (default True); ``False`` skips it (the report then says "not verified").

    Returns:
        ``model`` (modified in place).

    Raises:
        ConfigError: when no module matches, a matched layer is already adapted, the config is invalid, or an adapter
            is never called by the traced forward.

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
    flags = {id(p): p.requires_grad for p in model.parameters()}
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
    if not verify:
        return model
    automatic = example_inputs is None
    if automatic:
        example_inputs = default_example_inputs(model)
    if example_inputs is None:
        _verify_on_first_forward(model)
        return model
    try:
        trace = verify_more_adapters(model, example_inputs)
    except Exception as exc:
        if not automatic:
            _undo_injection(model, names, flags)
            raise
        warnings.warn(f"MoRe: the verification forward with automatic example inputs failed ({type(exc).__name__}: "
                      f"{exc}); the adapters will be checked on the model's first forward call instead. Pass "
                      "example_inputs to inject_more to check them now.", UserWarning, stacklevel=2)
        _verify_on_first_forward(model)
        return model
    if not trace.ok:
        _undo_injection(model, names, flags)
        raise ConfigError(_dead_message(trace, config.target_modules, undone=True))
    return model


def _undo_injection(model: nn.Module, names: list[str], flags: dict[int, bool]) -> None:
    for name in names:
        parent_name, _, child = name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        layer = getattr(parent, child)
        if isinstance(layer, MoReLinear):
            setattr(parent, child, layer.base_layer)
    for p in model.parameters():
        if id(p) in flags:
            p.requires_grad_(flags[id(p)])
    if hasattr(model, "_more_config"):
        del model._more_config


def _dead_message(trace: MoReTrace, patterns: object, *, undone: bool) -> str:
    lines = [f"  {n}: {why}" for n, why in list(trace.dead.items())[:8]]
    more = f"\n  ... and {len(trace.dead) - 8} more" if len(trace.dead) > 8 else ""
    tail = ("The injection was undone; the model is as before. " if undone else "")
    return (f"target_modules {patterns!r} put MoRe adapters on {len(trace.dead)} linear layer(s) that a traced "
            f"forward never called, so they would get no input and no gradient (and a frozen model fails at the first "
            f"backward):\n" + "\n".join(lines) + more + f"\n{tail}Exclude these modules (a regex target, or a "
            "list naming only layers that are called, e.g. MLP layers), or pass example_inputs that exercise them.")


def _parent_class(model: nn.Module, name: str) -> str:
    parent_name = name.rpartition(".")[0]
    parent = model.get_submodule(parent_name) if parent_name else model
    return type(parent).__name__


def verify_more_adapters(model: nn.Module, example_inputs: ExampleInputs | None = None) -> MoReTrace:
    """Run one traced forward and report which MoRe adapters were called (arXiv 2408.17383 adapters must run).

    The forward runs in eval mode under ``torch.no_grad()`` (BatchNorm statistics and dropout untouched; each
    submodule's train/eval mode is restored afterwards). Every adapted layer counts its forward calls and the reads
    of its ``.weight``; a layer never called is "dead": its reason says whether its parent read the weight directly
    (a fused or functional use, e.g. ``F.multi_head_attention_forward(q_proj_weight=...)`` or a q/k/v concatenation),
    or whether this forward simply never reached it. Each layer's ``verified`` flag is set to the outcome.

    Args:
        model: a model adapted by :func:`inject_more`.
        example_inputs: see :data:`ExampleInputs`; ``None`` uses :func:`default_example_inputs`.

    Returns:
        A :class:`MoReTrace` (it does not raise on dead adapters; :func:`inject_more` does).

    Raises:
        ConfigError: when the model has no adapters, or no inputs were given and none can be built.
    """
    layers = _require_layers(model)
    if example_inputs is None:
        example_inputs = default_example_inputs(model)
        if example_inputs is None:
            raise ConfigError(f"cannot build example inputs for a {type(model).__name__}; pass example_inputs (a "
                              "tensor, a tuple of arguments, a dict of keyword arguments or a callable fn(model)).")
    modes = {m: m.training for m in model.modules()}
    for layer in layers.values():
        layer._trace = {"calls": 0, "weight_reads": 0}
    try:
        model.eval()
        with torch.no_grad():
            _call(model, example_inputs)
        counts = {n: dict(layer._trace) for n, layer in layers.items()}
    finally:
        for layer in layers.values():
            layer._trace = None
        for m, mode in modes.items():
            m.training = mode
    return _trace_from_counts(model, layers, counts)


def _trace_from_counts(model: nn.Module, layers: dict[str, MoReLinear], counts: dict[str, dict[str, int]]) -> MoReTrace:
    called, dead = [], {}
    for n, c in counts.items():
        layers[n].verified = c["calls"] > 0
        if c["calls"] > 0:
            called.append(n)
        elif c["weight_reads"] > 0:
            dead[n] = (f"its parent {_parent_class(model, n)} reads its weight directly (fused or functional use, "
                       "e.g. F.linear / F.multi_head_attention_forward / a q,k,v concatenation) and never calls it")
        else:
            dead[n] = (f"not called by the traced forward (its parent {_parent_class(model, n)} does not use it for "
                       "these inputs)")
    return MoReTrace(called=called, dead=dead)


def _call(model: nn.Module, example_inputs: ExampleInputs) -> Any:
    if callable(example_inputs) and not isinstance(example_inputs, (torch.Tensor, nn.Module)):
        return example_inputs(model)
    if isinstance(example_inputs, dict):
        return model(**example_inputs)
    if isinstance(example_inputs, (tuple, list)):
        return model(*example_inputs)
    return model(example_inputs)


def _verify_on_first_forward(model: nn.Module) -> None:
    """Trace the model's first ``forward`` call (with the user's own inputs) instead of an example forward."""
    # the hooks look the layers up on the module they fire for (not a captured dict), so a deep copy of the model
    # traces its own layers; a flag makes the check run once per model

    def pre(mod: nn.Module, _args: Any) -> None:
        if getattr(mod, "_more_first_forward_done", False):
            return
        for layer in more_layers(mod).values():
            layer._trace = {"calls": 0, "weight_reads": 0}

    def post(mod: nn.Module, _args: Any, _out: Any) -> None:
        if getattr(mod, "_more_first_forward_done", False):
            return
        mod._more_first_forward_done = True
        layers = more_layers(mod)
        counts = {n: dict(layer._trace or {"calls": 0, "weight_reads": 0}) for n, layer in layers.items()}
        for layer in layers.values():
            layer._trace = None
        # remove the hooks from this module's own dicts (a handle would point at the original's after a deep copy)
        mod._forward_pre_hooks.pop(ids[0], None)
        mod._forward_hooks.pop(ids[1], None)
        trace = _trace_from_counts(mod, layers, counts)
        if not trace.ok:
            raise ConfigError(_dead_message(trace, getattr(getattr(mod, "_more_config", None), "target_modules",
                                                           "?"), undone=False))

    ids = (model.register_forward_pre_hook(pre).id, model.register_forward_hook(post).id)


def default_example_inputs(model: nn.Module, seed: int = 0) -> ExampleInputs | None:
    """Small seeded inputs for one verification forward of an open_clip, timm or Hugging Face model.

    * open_clip ``CLIP``-like (``visual`` + ``encode_text``): ``model(image, text)`` with one image of
      ``visual.image_size`` and one random token sequence of ``context_length``;
    * Hugging Face ``PreTrainedModel``: from ``main_input_name``: ``input_ids`` (``dummy_inputs``, plus
      ``decoder_input_ids`` for encoder-decoders), ``pixel_values`` (``config.image_size``/``num_channels``) or
      ``input_values`` (audio long enough for the feature encoder);
    * timm (a ``pretrained_cfg``): one image of ``patch_embed.img_size`` when present, else the config's
      ``input_size``.

    Returns:
        Inputs as :data:`ExampleInputs`, or ``None`` for other models.
    """
    g = torch.Generator().manual_seed(int(seed))
    try:
        param = next(model.parameters())
        device, dtype = param.device, (param.dtype if param.is_floating_point() else torch.float32)
    except StopIteration:
        return None
    visual = getattr(model, "visual", None)
    if isinstance(visual, nn.Module) and hasattr(model, "encode_text") and hasattr(model, "context_length"):
        size = getattr(visual, "image_size", 224)
        h, w = (size, size) if isinstance(size, int) else tuple(size)
        image = torch.randn(1, 3, h, w, generator=g).to(device, dtype)
        vocab = int(getattr(model, "vocab_size", 0) or 49408)
        text = torch.randint(1, max(vocab, 2), (1, int(model.context_length)), generator=g).to(device)
        return (image, text)
    try:
        from transformers import PreTrainedModel
    except ImportError:  # pragma: no cover - transformers is a dependency
        PreTrainedModel = ()  # type: ignore[assignment]  # noqa: N806
    if PreTrainedModel and isinstance(model, PreTrainedModel):
        return _hf_example_inputs(model, g, device, dtype)
    cfg = getattr(model, "pretrained_cfg", None)
    if isinstance(cfg, dict) and cfg.get("input_size"):
        c, h, w = cfg["input_size"]
        pe = getattr(model, "patch_embed", None)
        if pe is not None and getattr(pe, "img_size", None) is not None:
            h, w = pe.img_size if not isinstance(pe.img_size, int) else (pe.img_size, pe.img_size)
        c = int(getattr(model, "in_chans", c) or c)
        return torch.randn(1, c, int(h), int(w), generator=g).to(device, dtype)
    return None


def _hf_example_inputs(model: nn.Module, g: torch.Generator, device: torch.device, dtype: torch.dtype
                       ) -> ExampleInputs | None:
    cfg = model.config
    main = getattr(model, "main_input_name", "input_ids")
    if main == "input_ids":
        vocab = int(getattr(cfg, "vocab_size", None) or getattr(getattr(cfg, "text_config", None), "vocab_size", 0)
                    or 100)
        ids = torch.randint(min(5, vocab - 1), vocab, (1, 8), generator=g).to(device)
        out: dict[str, torch.Tensor] = {"input_ids": ids, "attention_mask": torch.ones_like(ids)}
        if getattr(cfg, "is_encoder_decoder", False):
            out["decoder_input_ids"] = ids.clone()
        return out
    if main == "pixel_values":
        vcfg = getattr(cfg, "vision_config", cfg)
        size = getattr(vcfg, "image_size", 224)
        h, w = (size, size) if isinstance(size, int) else tuple(size)
        return {"pixel_values": torch.randn(1, int(getattr(vcfg, "num_channels", 3)), h, w, generator=g).to(device,
                                                                                                          dtype)}
    if main == "input_values":
        stride = math.prod(getattr(cfg, "conv_stride", (320,)))
        n = stride * 16 + sum(getattr(cfg, "conv_kernel", (400,)))
        return {"input_values": torch.randn(1, n, generator=g).to(device, dtype)}
    return None


def more_layers(model: nn.Module) -> dict[str, MoReLinear]:
    """``{module name: MoReLinear}`` of ``model``."""
    return {n: m for n, m in model.named_modules() if isinstance(m, MoReLinear)}


def _require_layers(model: nn.Module) -> dict[str, MoReLinear]:
    layers = more_layers(model)
    if not layers:
        raise ConfigError("model has no MoRe adapters; call inject_more(model, config) first.")
    return layers


def _refuse_dead(layers: dict[str, MoReLinear], what: str) -> None:
    dead = [n for n, m in layers.items() if m.verified is False]
    if dead:
        raise ConfigError(f"refusing to {what} MoRe adapters: a traced forward never called {dead[:4]} (their "
                          "parent reads the weight directly or never uses them), so they never train. Re-inject "
                          "without these modules.")


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
    _refuse_dead(layers, "save")
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
    """Exact integer parameter counts of an adapted model (see :class:`MoReParameterReport`).

    Raises:
        ConfigError: when a traced forward found adapters that are never called (they would be counted as trained).
    """
    layers = _require_layers(model)
    _refuse_dead(layers, "count")
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
                               total_params=total, per_layer=per_layer,
                               verified=all(m.verified for m in layers.values()))

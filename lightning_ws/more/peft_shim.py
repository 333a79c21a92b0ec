"""Opt-in PEFT integration of MoRe (arXiv 2408.17383): ``get_peft_model(model, MoRePeftConfig(...))``.

Route chosen (and why). PEFT's public ``register_peft_method`` refuses any name that is not already a member of its
closed ``PeftType`` enum, so there is no official out-of-tree path. The alternatives are (1) mutating the enum's
internals (``_member_map_``, ``_value2member_map_``, ``_member_names_``) and then calling ``register_peft_method``,
(2) disguising MoRe as LoRA through the experimental ``LoraConfig._register_custom_module`` (checkpoints then say
``"peft_type": "LORA"`` and cannot be loaded without hidden side information), or (3) an upstream PR. We use a
variant of (1) that touches **no enum internals**: the four public registries of :mod:`peft.mapping`
(``PEFT_TYPE_TO_{CONFIG,TUNER,PREFIX}_MAPPING`` and the mixed-model one, left empty for MoRe) are dicts looked up with
``config.peft_type``; PeftType is a ``str`` enum, so a plain string key ``"MORE"`` works for every lookup PEFT does
(creation, ``save_pretrained``, ``PeftConfig``/``PeftModel.from_pretrained``, ``merge_and_unload``). In peft 0.21 the
only place that requires an enum member is ``register_peft_method`` itself, which we bypass; adapter state-dict
selection is structural (tuner layers), not by enum. Saved configs say ``"peft_type": "MORE"``.

Constraints: call :func:`register_more_with_peft` (done automatically on import of this module) before loading a
saved MoRe adapter; the supported PEFT range is pinned to :data:`SUPPORTED_PEFT` (tested: 0.21.2), other versions
raise :class:`~lightning_ws.errors.ConfigError` unless ``allow_untested=True``. Mixed-adapter models
(``PeftMixedModel``) are not supported. Our own API (:mod:`lightning_ws.more.inject`) never needs PEFT.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from typing import Any, Literal, Optional, Union

import torch
from torch import nn

from lightning_ws.errors import ConfigError
from lightning_ws.more.functional import monarch_apply, monarch_delta_weight, monarch_shape
from lightning_ws.more.inject import layer_generator
from lightning_ws.more.layer import IncompleteMixingWarning, init_monarch_factors_

try:
    import peft
    from packaging.version import Version
    from peft.config import PeftConfig
    from peft.tuners.tuners_utils import BaseTuner, BaseTunerLayer, check_adapters_to_merge
except ImportError as exc:  # pragma: no cover - peft is a declared dependency
    raise ImportError("lightning_ws.more.peft_shim needs `peft` (pip install 'lightning-ws[more]'). The PEFT-free API "
                      "lightning_ws.more.inject_more works without it.") from exc

__all__ = [
    "MORE_PEFT_TYPE",
    "SUPPORTED_PEFT",
    "MoRePeftConfig",
    "MoRePeftLayer",
    "MoRePeftLinear",
    "MoRePeftModel",
    "register_more_with_peft",
    "check_peft_version",
]

#: The ``peft_type`` string MoRe adapters are saved with.
MORE_PEFT_TYPE = "MORE"
#: Half-open PEFT version range this shim is tested with: ``[0.21.0, 0.22.0)``.
SUPPORTED_PEFT = ("0.21.0", "0.22.0")
PREFIX = "more_"


def check_peft_version(version: str | None = None, *, allow_untested: bool = False) -> None:
    """Raise :class:`ConfigError` when the installed PEFT is outside :data:`SUPPORTED_PEFT`.

    Args:
        version: version string to check (default: the installed ``peft.__version__``).
        allow_untested: downgrade the error to a warning (at your own risk).
    """
    v = Version(version or peft.__version__)
    lo, hi = (Version(s) for s in SUPPORTED_PEFT)
    if lo <= v < hi:
        return
    msg = (f"lightning_ws's MoRe PEFT integration is tested with peft>={SUPPORTED_PEFT[0]},<{SUPPORTED_PEFT[1]}, found "
           f"peft {v}. Install a tested version (pip install 'peft>={SUPPORTED_PEFT[0]},<{SUPPORTED_PEFT[1]}'), "
           "use the "
           "PEFT-free API lightning_ws.more.inject_more, or pass allow_untested=True to try anyway.")
    if not allow_untested:
        raise ConfigError(msg)
    warnings.warn(msg, stacklevel=2)


@dataclass
class MoRePeftConfig(PeftConfig):
    """PEFT config of MoRe adapters (arXiv 2408.17383); ``peft_type`` is ``"MORE"``.

    Args:
        target_modules: module names/suffixes (list) or a full-match regex (str), PEFT's rule. Required.
        exclude_modules: modules never to adapt (same rules).
        nblocks: number of blocks ``K`` (default 4).
        blk_r: block rank ``r`` (default 4).
        blk_sz: optional input block size overriding ``nblocks``.
        more_dropout: dropout on the adapter output (default 0.0).
        scaling: factor on the update (default 1.0: no alpha, as in the paper).
        bias: ``"none"`` (default), ``"all"`` or ``"more_only"`` (train the adapted layers' biases, as the reference
            code does).
        seed: seed of the per-layer init generators (same scheme as :func:`lightning_ws.more.inject_more`, so both
            routes start from identical factors).
        modules_to_save: extra modules to train and save (e.g. ``["classifier"]``).
        layers_to_transform, layers_pattern: PEFT's layer-index filters.
    """

    target_modules: Optional[Union[list[str], str]] = field(default=None)
    exclude_modules: Optional[Union[list[str], str]] = field(default=None)
    target_parameters: Optional[list[str]] = field(default=None)
    nblocks: int = field(default=4)
    blk_r: int = field(default=4)
    blk_sz: Optional[int] = field(default=None)
    more_dropout: float = field(default=0.0)
    scaling: float = field(default=1.0)
    bias: Literal["none", "all", "more_only"] = field(default="none")
    seed: int = field(default=0)
    modules_to_save: Optional[list[str]] = field(default=None)
    layers_to_transform: Optional[Union[list[int], int]] = field(default=None)
    layers_pattern: Optional[Union[list[str], str]] = field(default=None)

    def __post_init__(self) -> None:
        super().__post_init__()
        self.peft_type = MORE_PEFT_TYPE
        if self.target_modules is None:
            raise ConfigError("MoRePeftConfig needs target_modules, e.g. ['query', 'key', 'value'] for BERT or "
                              "['q_proj', 'k_proj', 'v_proj'] for LLaMA.")
        if self.target_parameters:
            raise ConfigError("MoRe adapts nn.Linear modules only; target_parameters is not supported.")
        if self.bias not in ("none", "all", "more_only"):
            raise ConfigError(f"bias must be 'none', 'all' or 'more_only', got {self.bias!r}.")
        if isinstance(self.target_modules, list):
            self.target_modules = set(self.target_modules)
        if isinstance(self.exclude_modules, list):
            self.exclude_modules = set(self.exclude_modules)
        monarch_shape(max(self.nblocks, 1) if self.blk_sz is None else self.blk_sz, 1, self.nblocks, self.blk_r,
                      self.blk_sz)  # validates the integers
        if not 0.0 <= float(self.more_dropout) < 1.0:
            raise ConfigError(f"more_dropout must be in [0, 1), got {self.more_dropout!r}.")


class MoRePeftLayer(BaseTunerLayer):
    """PEFT tuner-layer mixin holding per-adapter MoRe factors ``more_A`` ``(K, r, p)`` and ``more_B`` ``(K, q, r)``."""

    adapter_layer_names = ("more_A", "more_B")
    other_param_names = ("more_shape", "more_scaling", "more_dropout")

    def __init__(self, base_layer: nn.Module, **kwargs: Any) -> None:
        self.base_layer = base_layer
        self.more_A = nn.ParameterDict({})
        self.more_B = nn.ParameterDict({})
        self.more_dropout = nn.ModuleDict({})
        self.more_shape: dict[str, Any] = {}
        self.more_scaling: dict[str, float] = {}
        self._disable_adapters = False
        self.merged_adapters: list[str] = []
        self._orig_weights: list[torch.Tensor] = []
        self.kwargs = kwargs
        base = self.get_base_layer()
        if not isinstance(base, nn.Linear):
            raise ConfigError(f"MoRe adapts nn.Linear layers only, got {type(base).__name__}.")
        self.in_features, self.out_features = base.in_features, base.out_features

    def update_layer(self, adapter_name: str, config: MoRePeftConfig, current_key: str) -> None:
        """Create (or re-create) the factors of ``adapter_name`` with the MoRe init (``B = 0``)."""
        shape = monarch_shape(self.in_features, self.out_features, config.nblocks, config.blk_r, config.blk_sz)
        if not shape.complete_mixing:
            warnings.warn(f"MoRe blk_r={shape.blk_r} < nblocks={shape.nblocks}: incomplete mixing (each output group "
                          f"sees {shape.blk_r} of {shape.nblocks} input blocks).", IncompleteMixingWarning,
                          stacklevel=3)
        weight = self.get_base_layer().weight
        dtype = torch.float32 if weight.dtype in (torch.float16, torch.bfloat16) else weight.dtype
        a = nn.Parameter(torch.empty(shape.a_shape, dtype=dtype, device=weight.device))
        b = nn.Parameter(torch.empty(shape.b_shape, dtype=dtype, device=weight.device))
        init_monarch_factors_(a, b, layer_generator(config.seed, current_key))
        self.more_A[adapter_name] = a
        self.more_B[adapter_name] = b
        self.more_dropout[adapter_name] = nn.Dropout(config.more_dropout) if config.more_dropout > 0 else nn.Identity()
        self.more_shape[adapter_name] = shape
        self.more_scaling[adapter_name] = float(config.scaling)
        self._move_adapter_to_device_of_base_layer(adapter_name)
        self.set_adapter(self.active_adapters, inference_mode=config.inference_mode)

    def get_delta_weight(self, adapter: str) -> torch.Tensor:
        """Dense ``scaling * dW`` of ``adapter`` (``d_out x d_in``) in the base weight's dtype."""
        a, b = self.more_A[adapter], self.more_B[adapter]
        dw = monarch_delta_weight(a, b, self.in_features, self.out_features) * self.more_scaling[adapter]
        return dw.to(self.get_base_layer().weight.dtype)


class MoRePeftLinear(nn.Module, MoRePeftLayer):
    """``nn.Linear`` + MoRe adapters for PEFT (arXiv 2408.17383); dropout on the adapter output, no alpha by default.

    ``merge`` keeps the pre-merge weight so ``unmerge`` restores it bit-exactly (PEFT's own layers subtract).
    """

    def __init__(self, base_layer: nn.Linear, adapter_name: str, config: MoRePeftConfig, current_key: str,
                 **kwargs: Any) -> None:
        super().__init__()
        MoRePeftLayer.__init__(self, base_layer, **kwargs)
        self._active_adapter = adapter_name
        self.update_layer(adapter_name, config, current_key)

    def merge(self, safe_merge: bool = False, adapter_names: Optional[list[str]] = None) -> None:
        """Fold the active (or given) adapters into the base weight."""
        adapter_names = check_adapters_to_merge(self, adapter_names)
        base = self.get_base_layer()
        for name in adapter_names:
            if name not in self.more_A:
                continue
            with torch.no_grad():
                new = base.weight.data + self.get_delta_weight(name)
                if safe_merge and not torch.isfinite(new).all():
                    raise ValueError(f"NaNs/infs in the merged weights; MoRe adapter {name!r} is broken.")
                self._orig_weights.append(base.weight.data.clone())
                base.weight.data = new
            self.merged_adapters.append(name)

    def unmerge(self) -> None:
        """Restore the weights saved by :meth:`merge` (bit-exact)."""
        if not self.merged:
            warnings.warn("Already unmerged. Nothing to do.", stacklevel=2)
            return
        base = self.get_base_layer()
        while self.merged_adapters:
            self.merged_adapters.pop()
            base.weight.data = self._orig_weights.pop()

    def forward(self, x: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
        """Base output plus every active adapter's update (nothing added while merged or disabled)."""
        if self.disable_adapters:
            if self.merged:
                self.unmerge()
            return self.base_layer(x, *args, **kwargs)
        result = self.base_layer(x, *args, **kwargs)
        if self.merged:
            return result
        for name in self.active_adapters:
            if name not in self.more_A:
                continue
            a, b = self.more_A[name], self.more_B[name]
            xin = x if torch.is_autocast_enabled(x.device.type) or x.dtype == a.dtype else x.to(a.dtype)
            out = self.more_dropout[name](monarch_apply(xin, a, b, self.out_features))
            scale = self.more_scaling[name]
            result = result + (out * scale if scale != 1.0 else out).to(result.dtype)
        return result

    def __repr__(self) -> str:
        return "more." + super().__repr__()


class MoRePeftModel(BaseTuner):
    """PEFT tuner that injects :class:`MoRePeftLinear` layers (arXiv 2408.17383); use via ``get_peft_model``."""

    prefix: str = PREFIX
    tuner_layer_cls = MoRePeftLayer
    target_module_mapping: dict[str, list[str]] = {
        "bert": ["query", "key", "value"],
        "roberta": ["query", "key", "value"],
        "deberta-v2": ["query_proj", "key_proj", "value_proj"],
        "llama": ["q_proj", "k_proj", "v_proj"],
    }

    def _create_and_replace(self, peft_config: MoRePeftConfig, adapter_name: str, target: nn.Module,
                            target_name: str, parent: nn.Module, current_key: str, **optional_kwargs: Any) -> None:
        if current_key is None:
            raise ValueError("current_key must not be None")
        if isinstance(target, MoRePeftLinear):
            target.update_layer(adapter_name, peft_config, current_key)
            return
        base = target.get_base_layer() if isinstance(target, BaseTunerLayer) else target
        if not isinstance(base, nn.Linear):
            raise ConfigError(f"MoRe supports nn.Linear targets only; {current_key} is {type(base).__name__}. "
                              "Narrow target_modules.")
        new = MoRePeftLinear(target, adapter_name, peft_config, current_key)
        if adapter_name not in self.active_adapters:
            new.requires_grad_(False)
        self._replace_module(parent, target_name, new, target)


def register_more_with_peft(*, allow_untested: bool = False) -> None:
    """Make ``"MORE"`` known to PEFT's registries (idempotent); see the module docstring for the route.

    Args:
        allow_untested: allow PEFT versions outside :data:`SUPPORTED_PEFT` (with a warning).

    Raises:
        ConfigError: on an untested PEFT version, or when another ``"MORE"`` method is already registered.
    """
    check_peft_version(allow_untested=allow_untested)
    from peft import mapping

    existing = mapping.PEFT_TYPE_TO_TUNER_MAPPING.get(MORE_PEFT_TYPE)
    if existing is MoRePeftModel:
        return
    if existing is not None or MORE_PEFT_TYPE in [m.value for m in peft.PeftType]:
        raise ConfigError(f"PEFT already defines a {MORE_PEFT_TYPE!r} method ({existing}); this peft version "
                          "probably ships MoRe natively. Use PEFT's own implementation.")
    if PREFIX in mapping.PEFT_TYPE_TO_PREFIX_MAPPING.values():
        raise ConfigError(f"PEFT already uses the parameter prefix {PREFIX!r}; cannot register MoRe.")
    mapping.PEFT_TYPE_TO_CONFIG_MAPPING[MORE_PEFT_TYPE] = MoRePeftConfig
    mapping.PEFT_TYPE_TO_TUNER_MAPPING[MORE_PEFT_TYPE] = MoRePeftModel
    mapping.PEFT_TYPE_TO_PREFIX_MAPPING[MORE_PEFT_TYPE] = PREFIX


register_more_with_peft()

"""Loading and checking Grad-Mimic reference weights (arXiv 2501.06708): plain torch, no Lightning import."""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from lightning_ws.errors import ConfigError, DataError, DataFileNotFoundError
from lightning_ws.io import load_tensors

__all__ = ["ReferenceRunner", "ReferenceSource", "check_same_architecture", "load_reference_state", "output_contains",
           "reference_forward_active", "reference_layer"]

#: What a reference can be: a checkpoint path (Lightning ``.ckpt``/``.pt`` or ``.safetensors``), a state dict, or a
#: module of the same architecture.
ReferenceSource = str | os.PathLike | Mapping[str, Tensor] | nn.Module


def load_reference_state(reference: ReferenceSource) -> dict[str, Tensor]:
    """Return the reference model's state dict (CPU tensors, detached).

    * ``nn.Module``: its ``state_dict()``;
    * a mapping: used as is, or its ``"state_dict"`` entry when it is a loaded Lightning checkpoint;
    * a path ending in ``.safetensors``: read with safetensors;
    * any other path: ``torch.load(..., weights_only=True)`` (a Lightning ``.ckpt`` or a plain ``torch.save``\\ d state
      dict); the ``"state_dict"`` entry is used when present. Pickled objects are refused (``weights_only``).

    Raises:
        DataFileNotFoundError: the path does not exist.
        DataError: the file cannot be read safely or holds no tensors.
        ConfigError: ``reference`` has an unsupported type.
    """
    if isinstance(reference, nn.Module):
        state: Mapping = reference.state_dict()
    elif isinstance(reference, Mapping):
        state = reference
    elif isinstance(reference, (str, os.PathLike)):
        path = Path(reference)
        if not path.is_file():
            raise DataFileNotFoundError(
                f"Grad-Mimic reference checkpoint not found: {path}. Train the reference model first (same "
                f"architecture, e.g. on clean labels with another seed) and pass its .ckpt or .safetensors path.")
        if path.suffix == ".safetensors":
            state, _ = load_tensors(path)
        else:
            try:
                state = torch.load(path, map_location="cpu", weights_only=True)
            except Exception as err:  # noqa: BLE001 - re-raised with a fix
                raise DataError(f"cannot load reference checkpoint {path} with torch.load(weights_only=True): {err}. "
                                f"Save the reference weights as safetensors (lightning_ws.io.save_tensors("
                                f"path, model.state_dict())) or as a plain state dict.") from err
    else:
        raise ConfigError(f"reference must be a checkpoint path, a state dict or an nn.Module, got "
                          f"{type(reference).__name__}.")
    if isinstance(state, Mapping) and isinstance(state.get("state_dict"), Mapping):
        state = state["state_dict"]
    if not isinstance(state, Mapping):
        raise DataError(f"the reference holds a {type(state).__name__}, not a state dict.")
    out = {str(k): v.detach().cpu() for k, v in state.items() if isinstance(v, Tensor)}
    if not out:
        raise DataError("the reference state dict holds no tensors.")
    return out


def check_same_architecture(reference: Mapping[str, Tensor], model_state: Mapping[str, Tensor], *,
                            keys: list[str] | None = None) -> None:
    """Raise :class:`ConfigError` naming missing/unexpected keys and shape mismatches between two state dicts.

    Args:
        reference: the reference state dict.
        model_state: the trained model's state dict.
        keys: check only these keys (e.g. the mimic layer's); ``None`` checks the full state dicts.
    """
    want = list(model_state) if keys is None else list(keys)
    missing = [k for k in want if k not in reference]
    unexpected = [k for k in reference if k not in model_state] if keys is None else []
    shapes = [f"{k}: reference {tuple(reference[k].shape)} vs model {tuple(model_state[k].shape)}"
              for k in want if k in reference and k in model_state
              and tuple(reference[k].shape) != tuple(model_state[k].shape)]
    if missing or unexpected or shapes:
        parts = []
        if missing:
            parts.append(f"missing in the reference: {missing[:10]}{' ...' if len(missing) > 10 else ''}")
        if unexpected:
            parts.append(f"not in the model: {unexpected[:10]}{' ...' if len(unexpected) > 10 else ''}")
        if shapes:
            parts.append(f"shape mismatches: {shapes[:10]}{' ...' if len(shapes) > 10 else ''}")
        raise ConfigError("the Grad-Mimic reference does not have the model's architecture (" + "; ".join(parts) +
                          "). Pass a reference of the same architecture (check the mimic layer name and any key "
                          "prefix), or strict_reference=False to check only the mimic layer.")


def reference_layer(reference: Mapping[str, Tensor], layer_name: str, *, has_bias: bool) -> tuple[Tensor, Tensor | None]:
    """The reference weight (and bias) of the layer called ``layer_name`` (keys ``<name>.weight``/``<name>.bias``)."""
    wk, bk = f"{layer_name}.weight", f"{layer_name}.bias"
    if wk not in reference:
        near = [k for k in reference if k.endswith(".weight")][:10]
        raise ConfigError(f"the reference has no '{wk}'; weight keys it has include {near}. Check mimic_layer.")
    if has_bias and bk not in reference:
        raise ConfigError(f"the mimic layer has a bias but the reference has no '{bk}'.")
    return reference[wk].float(), (reference[bk].float() if has_bias else None)


# > 0 while a ReferenceRunner runs a reference forward pass: every tracker of the mimic layer ignores those calls
_REFERENCE_FORWARD = [0]


def reference_forward_active() -> bool:
    """Whether a reference forward pass (:meth:`ReferenceRunner.run`) is running (its layer calls are not training
    calls)."""
    return _REFERENCE_FORWARD[0] > 0


def output_contains(output: Any, t: Tensor) -> bool:
    """Whether ``t`` (by identity) is ``output`` or one of its (nested) tuple/list/mapping values."""
    if output is t:
        return True
    if isinstance(output, Mapping):
        return any(output_contains(v, t) for v in output.values())
    if isinstance(output, (tuple, list)):
        return any(output_contains(v, t) for v in output)
    return False


class ReferenceRunner:
    """Runs the reference model on the training inputs and returns its own output of the mimic layer (arXiv
    2501.06708's reference, used for output-space scores, the alignment check and RHO-LOSS with trained layers below).

    The reference is the module ``forward_module`` of the trained model (the LightningModule when ``""``) called with
    the reference's tensors through ``torch.func.functional_call``, in eval mode, without gradient, on the arguments
    the training step passed to that module. The mimic layer's tracker hands every call it sees during the run to
    :meth:`observe`.

    Args:
        module: the forward module.
        reference: the full reference state dict (keys of the LightningModule).
        forward_module: the forward module's dotted name (``""``: the LightningModule).
        mimic_layer: the mimic layer's dotted name (inside ``forward_module``).
        ref_weight, ref_bias: the reference mimic layer (with any noise perturbation), which replace the reference's.

    Raises:
        ConfigError: the mimic layer is not inside ``forward_module``.
    """

    def __init__(self, module: nn.Module, reference: Mapping[str, Tensor], forward_module: str, mimic_layer: str,
                 ref_weight: Tensor, ref_bias: Tensor | None) -> None:
        prefix = f"{forward_module}." if forward_module else ""
        if not mimic_layer.startswith(prefix):
            raise ConfigError(f"the mimic layer {mimic_layer!r} is not inside forward_module {forward_module!r}; name "
                              f"the submodule whose call runs the mimic layer.")
        state = {k[len(prefix):]: v for k, v in reference.items() if k.startswith(prefix)}
        local = mimic_layer[len(prefix):]
        state[f"{local}.weight"] = ref_weight
        if ref_bias is not None:
            state[f"{local}.bias"] = ref_bias
        self.module, self.state, self.mimic_layer = module, state, mimic_layer
        self.name = forward_module or type(module).__name__
        self._placed: tuple[Any, ...] | None = None  # (device, dtype) the state was last moved to
        self._capture: Tensor | None = None
        self._running = False

    def observe(self, output: Any) -> None:
        """The mimic layer's output in a call made while :meth:`run` runs."""
        if self._running and isinstance(output, Tensor):
            self._capture = output.detach()

    def run(self, args: tuple[Any, ...], kwargs: dict[str, Any], like: Tensor, expect: tuple[int, ...]) -> Tensor:
        """The reference's mimic-layer output on ``module(*args, **kwargs)`` (``like``: the model's mimic weight, whose
        device and dtype the reference tensors follow; ``expect``: the model's output shape of the layer)."""
        key = (like.device, like.dtype)
        if self._placed != key:  # set up before Lightning moves the model (and before precision casts)
            own = {**dict(self.module.named_parameters()), **dict(self.module.named_buffers())}
            self.state = {k: v.to(own[k].device, own[k].dtype if v.is_floating_point() else v.dtype)
                          if k in own else v.to(like.device) for k, v in self.state.items()}
            self._placed = key
        flags = [(m, m.training) for m in self.module.modules()]
        self.module.train(False)
        self._capture, self._running = None, True
        _REFERENCE_FORWARD[0] += 1
        try:
            with torch.no_grad():
                torch.func.functional_call(self.module, self.state, args, kwargs, strict=False)
        finally:
            _REFERENCE_FORWARD[0] -= 1
            self._running = False
            for m, f in flags:
                m.training = f
        z_ref, self._capture = self._capture, None
        if z_ref is None:
            raise ConfigError(f"the reference forward through {self.name} did not call the mimic layer "
                              f"{self.mimic_layer!r}; set forward_module to the module that runs it.")
        if tuple(z_ref.shape) != tuple(expect):
            raise DataError(f"the reference's mimic-layer output has shape {tuple(z_ref.shape)}, the model's "
                            f"{tuple(expect)}; the reference must have the same architecture.")
        return z_ref

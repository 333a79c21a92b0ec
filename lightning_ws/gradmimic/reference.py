"""Loading and checking Grad-Mimic reference weights (arXiv 2501.06708): plain torch, no Lightning import."""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

import torch
from torch import Tensor, nn

from lightning_ws.errors import ConfigError, DataError, DataFileNotFoundError
from lightning_ws.io import load_tensors

__all__ = ["ReferenceSource", "load_reference_state", "check_same_architecture", "reference_layer"]

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

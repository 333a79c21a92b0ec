"""``lightning-ws export``: turn a training checkpoint into files other code loads without Lightning.

Formats (``--format``):

* ``safetensors`` (default): ``model.safetensors`` with the module's full ``state_dict`` (adapters unmerged);
* ``merged``: adapters folded into the base weights (MoRe or LoRA in :class:`~lightning_ws.modules.more.
  PeftSequenceClassifier`, MoRe in :class:`~lightning_ws.modules.TextClassifier`), no adapter tensors left;
* ``adapter``: only the trained tensors (adapter factors, trained biases, the head): a small file to ship beside the
  base model;
* ``hf``: a Hugging Face model folder (``config.json``, ``model.safetensors``, tokenizer) for text models: the merged
  ``AutoModelForSequenceClassification`` of a ``PeftSequenceClassifier``; for ``TextClassifier``/``WeaverCrossEncoder``
  the (merged) encoder, loadable with ``AutoModel``, plus ``head.safetensors`` and ``head.json`` (pooling, sizes);
* ``peft``: a PEFT adapter folder (``adapter_config.json``, ``adapter_model.safetensors``) for a LoRA or MoRe
  ``PeftSequenceClassifier``; it loads with plain ``peft.PeftModel.from_pretrained`` (MoRe: ``"peft_type": "MORE"``,
  which plain ``peft`` resolves once ``lightning_ws`` is installed, through the ``lightning_ws-peft.pth`` start-up hook
  of :mod:`lightning_ws._peft_hook`; or ``import lightning_ws.more.peft_shim`` first).

Every folder gets ``export.json`` (source checkpoint, model class, format, hyperparameters). The model class comes from
the checkpoint (``lightning-ws`` stamps it) or from ``-c CONFIG`` (``model.class_path``). Nothing is overwritten: an
existing non-empty ``--out`` folder is an error.

    lightning-ws export --ckpt_path runs/lightning-ws/<id>/checkpoints/last.ckpt --format hf --out artifacts/model
"""

from __future__ import annotations

import argparse
import importlib
import json
from pathlib import Path
from typing import Any

import torch

from lightning_ws.errors import ConfigError

__all__ = ["FORMATS", "export_checkpoint", "main"]

FORMATS = ("safetensors", "merged", "adapter", "hf", "peft")


def _model_class(ckpt: dict[str, Any], config: str | None) -> type:
    path = (ckpt.get("lightning_ws") or {}).get("model_class")
    if path is None and config is not None:
        import yaml

        cfg = yaml.safe_load(Path(config).read_text(encoding="utf-8")) or {}
        model = cfg.get("model") or {}
        path = model.get("class_path") if isinstance(model, dict) else None
    if path is None:
        raise ConfigError("the checkpoint does not say which model wrote it (it predates lightning-ws' stamp); pass "
                          "the config it was trained with: -c CONFIG.yaml.")
    module, _, name = path.rpartition(".")
    try:
        return getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError) as err:
        raise ConfigError(f"cannot import the model class {path} ({err}).") from None


def _load_model(ckpt_path: str | Path, config: str | None) -> tuple[Any, dict[str, Any]]:
    from lightning_ws.checkpoints import load_checkpoint

    ckpt = load_checkpoint(ckpt_path)
    cls = _model_class(ckpt, config)
    model = cls.load_from_checkpoint(str(ckpt_path), map_location="cpu", weights_only=False)
    model.eval()
    return model, ckpt


def _trainable_state(model: Any) -> dict[str, torch.Tensor]:
    names = {n for n, p in model.named_parameters() if p.requires_grad}
    return {k: v for k, v in model.state_dict().items() if k in names}


def _merged(model: Any) -> Any:
    """The module with adapters merged (in place)."""
    from lightning_ws.modules.more import PeftSequenceClassifier

    if isinstance(model, PeftSequenceClassifier):
        model.model = model.merge_and_unload()
        return model
    encoder = getattr(model, "encoder", None)
    if encoder is not None:
        from lightning_ws.more import more_layers
        from lightning_ws.more.inject import merge_and_unload

        if more_layers(encoder):
            model.encoder = merge_and_unload(encoder)
    return model


def _has_adapter(model: Any) -> bool:
    if getattr(model, "adapter", "none") not in (None, "none"):
        return True
    hp = getattr(model, "hparams", {})
    return hp.get("adapter", "none") not in (None, "none")


def _tokenizer_path(model: Any) -> str | None:
    hp = getattr(model, "hparams", {})
    path = hp.get("model_path") or hp.get("model_name_or_path")
    if path is None:
        from lightning_ws.sentence_embeddings import default_encoder_path

        path = default_encoder_path()
    return str(path)


def _save_tokenizer(model: Any, out: Path) -> None:
    from transformers import AutoTokenizer

    try:
        AutoTokenizer.from_pretrained(_tokenizer_path(model), local_files_only=True).save_pretrained(str(out))
    except OSError:
        pass  # a random-init test model may have no tokenizer files; the weights and config are still complete


def export_checkpoint(ckpt_path: str | Path, out: str | Path, fmt: str = "safetensors",
                      config: str | None = None) -> Path:
    """Export ``ckpt_path`` to the folder ``out`` in ``fmt`` (see the module docstring); return the folder."""
    from lightning_ws.io import save_json, save_tensors

    if fmt not in FORMATS:
        raise ConfigError(f"--format {fmt!r} is not one of {', '.join(FORMATS)}.")
    out = Path(out)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise ConfigError(f"--out {out} exists and is not an empty folder; choose a new folder (nothing is "
                          f"overwritten).")
    model, ckpt = _load_model(ckpt_path, config)
    name = type(model).__name__
    files: list[str] = []
    if fmt == "safetensors":
        save_tensors(out / "model.safetensors", model.state_dict(), metadata={"class": name})
        files.append("model.safetensors")
    elif fmt == "merged":
        model = _merged(model)
        save_tensors(out / "model.safetensors", model.state_dict(), metadata={"class": name, "merged": "true"})
        files.append("model.safetensors")
    elif fmt == "adapter":
        if not _has_adapter(model):
            raise ConfigError(f"this {name} has no adapter (adapter: none), so there is no adapter-only export; use "
                              f"--format safetensors or merged.")
        save_tensors(out / "adapter.safetensors", _trainable_state(model), metadata={"class": name})
        files.append("adapter.safetensors")
    elif fmt == "hf":
        files += _export_hf(model, out)
    else:
        files += _export_peft(model, out)
    hp = {k: v for k, v in dict(getattr(model, "hparams", {})).items() if _jsonable(v)}
    save_json(out / "export.json", {"checkpoint": str(ckpt_path), "model_class": f"{type(model).__module__}.{name}",
                                    "format": fmt, "files": files, "global_step": ckpt.get("global_step"),
                                    "hyper_parameters": hp})
    return out


def _jsonable(v: Any) -> bool:
    try:
        json.dumps(v)
        return True
    except TypeError:
        return False


def _export_hf(model: Any, out: Path) -> list[str]:
    from lightning_ws.io import save_json, save_tensors
    from lightning_ws.modules.more import PeftSequenceClassifier

    model = _merged(model)
    if isinstance(model, PeftSequenceClassifier):
        model.model.save_pretrained(str(out), safe_serialization=True)
        _save_tokenizer(model, out)
        return ["config.json", "model.safetensors"]
    encoder = getattr(model, "encoder", None)
    if encoder is None or not hasattr(encoder, "save_pretrained"):
        raise ConfigError(f"--format hf is for text models (a Hugging Face encoder); {type(model).__name__} has none. "
                          f"Use --format safetensors.")
    encoder.save_pretrained(str(out), safe_serialization=True)
    _save_tokenizer(model, out)
    head_name = "classifier" if hasattr(model, "classifier") else "head"
    head = getattr(model, head_name)
    save_tensors(out / "head.safetensors", {f"{head_name}.{k}": v for k, v in head.state_dict().items()},
                 metadata={"class": type(model).__name__})
    hp = dict(getattr(model, "hparams", {}))
    save_json(out / "head.json", {"pooling": hp.get("pooling", "cls" if head_name == "head" else "mean"),
                                  "model_class": f"{type(model).__module__}.{type(model).__name__}",
                                  "head": head_name, "num_classes": hp.get("num_classes")})
    return ["config.json", "model.safetensors", "head.safetensors", "head.json"]


def _export_peft(model: Any, out: Path) -> list[str]:
    import re

    from lightning_ws.modules.more import PeftSequenceClassifier

    adapter = getattr(model, "adapter", "none")
    if not isinstance(model, PeftSequenceClassifier) or adapter not in ("lora", "more"):
        raise ConfigError(
            f"--format peft writes a PEFT adapter folder, for a PeftSequenceClassifier with adapter: lora or more "
            f"(this is a {type(model).__name__} with adapter {adapter!r}). Use --format adapter (adapter tensors only; "
            f"MoRe loads with lightning_ws.more.load_more_adapter), merged or hf.")
    from lightning_ws.extras import require
    require("peft", "more", "PEFT export")
    from peft import LoraConfig, get_peft_model

    from lightning_ws.more.hf import build_sequence_classifier

    hp = model.hparams
    base = build_sequence_classifier(hp.model_path, hp.num_labels, "none", seed=hp.seed,
                                     config_overrides=hp.config_overrides)
    targets = hp.target_modules if hp.target_modules is not None else ["query", "key", "value"]
    if adapter == "lora":
        cfg = LoraConfig(r=hp.lora_r, lora_alpha=float(hp.lora_alpha), lora_dropout=hp.adapter_dropout,
                         target_modules=targets, task_type="SEQ_CLS")
    else:  # MoRe: saved with peft_type "MORE"; plain peft loads it once lightning_ws is installed (_peft_hook)
        from lightning_ws.more.peft_shim import MoRePeftConfig

        cfg = MoRePeftConfig(target_modules=targets, nblocks=hp.nblocks, blk_r=hp.blk_r, blk_sz=hp.blk_sz,
                             more_dropout=hp.adapter_dropout, bias="more_only" if hp.train_bias else "none",
                             seed=hp.seed, task_type="SEQ_CLS")
    base.config.name_or_path = _tokenizer_path(model)
    peft_model = get_peft_model(base, cfg)
    ours = model.model.state_dict()
    copied: set[str] = set()
    with torch.no_grad():
        for key, tensor in peft_model.state_dict().items():
            plain = key.removeprefix("base_model.model.").replace(".modules_to_save.default", "") \
                .replace(".original_module", "")
            plain = re.sub(r"\.(more_[AB])\.default$", r".\1", plain)
            if plain in ours and ours[plain].shape == tensor.shape:
                tensor.copy_(ours[plain])
                copied.add(plain)
    trained = {n.removeprefix("model.") for n, p in model.named_parameters() if p.requires_grad}
    missing = sorted(trained - copied)
    if missing:
        raise ConfigError(f"--format peft: {len(missing)} trained tensor(s) have no place in the PEFT model "
                          f"({', '.join(missing[:5])}...); export with --format adapter or merged instead.")
    peft_model.save_pretrained(str(out))
    return ["adapter_config.json", "adapter_model.safetensors"]


def main(argv: list[str]) -> int:
    """``lightning-ws export``."""
    parser = argparse.ArgumentParser(prog="lightning-ws export", description=__doc__.split("\n\n")[0])
    parser.add_argument("--ckpt_path", required=True, help="a .ckpt written by lightning-ws fit")
    parser.add_argument("--out", required=True, help="a new (or empty) folder")
    parser.add_argument("--format", default="safetensors", choices=FORMATS)
    parser.add_argument("-c", "--config", default=None, help="the training config (only for unstamped checkpoints)")
    args = parser.parse_args(argv)
    folder = export_checkpoint(args.ckpt_path, args.out, args.format, args.config)
    print(f"lightning-ws export: wrote {args.format} export to {folder}")
    return 0

"""Worker of :func:`tests.helpers.ddp.run_fit` (``python -m tests.helpers.ddp_worker spec.json``)."""

from __future__ import annotations

import importlib
import json
import sys
from pathlib import Path
from typing import Any

import numpy as np
import torch


def _flatten(state: Any, prefix: str, tensors: dict[str, torch.Tensor], leaves: dict[str, Any]) -> None:
    if isinstance(state, dict):
        for key, value in state.items():
            _flatten(value, f"{prefix}/{key}" if prefix else str(key), tensors, leaves)
    elif isinstance(state, torch.Tensor):
        tensors[prefix] = state.detach().cpu().contiguous()
    elif isinstance(state, np.ndarray):
        tensors[prefix] = torch.from_numpy(np.ascontiguousarray(state))
    elif isinstance(state, (list, tuple)) and state and all(isinstance(v, torch.Tensor) for v in state):
        for i, v in enumerate(state):
            tensors[f"{prefix}/{i}"] = v.detach().cpu().contiguous()
    else:
        leaves[prefix] = state if isinstance(state, (int, float, str, bool, type(None))) else json.loads(
            json.dumps(state, default=lambda o: o.tolist() if hasattr(o, "tolist") else str(o)))


def main(spec_file: str) -> None:
    import lightning.pytorch as pl
    from safetensors.torch import save_file

    spec = json.loads(Path(spec_file).read_text())
    module_name, func_name = spec["factory"].split(":")
    model, dm, callbacks = getattr(importlib.import_module(module_name), func_name)(**spec["factory_kwargs"])
    devices = int(spec["devices"])
    kwargs: dict[str, Any] = dict(
        max_steps=4, max_epochs=-1, accelerator="cpu", devices=devices, deterministic=True, logger=False,
        enable_progress_bar=False, enable_model_summary=False, enable_checkpointing=False, num_sanity_val_steps=0,
        limit_val_batches=0, callbacks=callbacks, default_root_dir=spec["out"],
    )
    if devices > 1:
        kwargs["strategy"] = "ddp"
    kwargs.update(spec["trainer_kwargs"])
    trainer = pl.Trainer(**kwargs)
    rank, out = trainer.global_rank, Path(spec["out"])
    if spec.get("stage", "fit") == "predict":
        trainer.predict(model, dm, return_predictions=False)
        written = {cb.state_key: [str(p) for p in cb.written] for cb in callbacks if hasattr(cb, "written")}
        (out / f"rank{rank}.json").write_text(json.dumps({"written": written}))
        return
    trainer.fit(model, dm)
    params = {k: v.detach().cpu().contiguous().clone() for k, v in model.state_dict().items()}
    save_file(params, str(out / f"rank{rank}_params.safetensors"))
    callback_files, callback_meta = {}, {}
    for i, cb in enumerate(callbacks):
        state = cb.state_dict()
        if not state:
            continue
        tensors: dict[str, torch.Tensor] = {}
        leaves: dict[str, Any] = {}
        _flatten(state, "", tensors, leaves)
        fname = f"rank{rank}_cb{i}.safetensors"
        save_file(tensors, str(out / fname))
        callback_files[cb.state_key] = fname
        callback_meta[cb.state_key] = leaves
    metrics = {k: float(v) for k, v in trainer.callback_metrics.items() if v.numel() == 1}
    (out / f"rank{rank}.json").write_text(json.dumps({
        "callback_files": callback_files, "callback_meta": callback_meta, "metrics": metrics,
        "global_step": trainer.global_step}))


if __name__ == "__main__":
    main(sys.argv[1])

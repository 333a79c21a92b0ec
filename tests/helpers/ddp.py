"""DDP helper: run a tiny fit on several CPU processes (gloo) and collect what each rank ends with.

``run_fit("tests.test_x:make_case", tmp_path, devices=2)`` starts ``python -m tests.helpers.ddp_worker`` in a
subprocess from the repository root. The worker builds ``(model, datamodule, callbacks)`` with the factory, fits with
``strategy="ddp", accelerator="cpu", devices=devices`` (Lightning relaunches the script once per extra rank), and
every rank writes its parameters (safetensors), callback states and logged metrics (JSON) to ``tmp_path``. Run with
``devices=1`` for the single-process reference. ``run_predict`` does the same with ``trainer.predict`` (prediction
writers: each rank reports the files its callbacks list in ``written``). No pickle crosses processes.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from safetensors.torch import load_file

REPO_ROOT = Path(__file__).resolve().parents[2]


def run_fit(
    factory: str,
    tmp_path: Path,
    *,
    devices: int,
    factory_kwargs: Mapping[str, Any] | None = None,
    trainer_kwargs: Mapping[str, Any] | None = None,
    timeout: float = 300.0,
) -> list[dict[str, Any]]:
    """Fit with ``devices`` CPU processes; return one dict per rank: ``rank``, ``params``, ``callbacks``, ``metrics``.

    Args:
        factory: ``"package.module:function"`` returning ``(model, datamodule, callbacks)``; called with
            ``**factory_kwargs`` on every rank.
        tmp_path: where the ranks write their results (a sub-folder per call).
        devices: number of processes (1 = the single-process reference, same code path).
        factory_kwargs: JSON-serialisable keyword arguments for the factory.
        trainer_kwargs: JSON-serialisable ``Trainer`` arguments (override the defaults: ``max_steps=4``, no logger,
            no checkpointing, deterministic).
        timeout: seconds before the run is killed (a hang fails the test instead of blocking the suite).
    """
    out, metas = _run("fit", factory, tmp_path, devices, factory_kwargs, trainer_kwargs, timeout)
    results = []
    for rank, meta in enumerate(metas):
        params = load_file(str(out / f"rank{rank}_params.safetensors"))
        callbacks = {}
        for key, fname in meta["callback_files"].items():
            callbacks[key] = _unflatten(load_file(str(out / fname)), meta["callback_meta"][key])
        results.append({"rank": rank, "params": params, "callbacks": callbacks, "metrics": meta["metrics"],
                        "global_step": meta["global_step"]})
    return results


def _run(stage: str, factory: str, tmp_path: Path, devices: int, factory_kwargs: Mapping[str, Any] | None,
         trainer_kwargs: Mapping[str, Any] | None, timeout: float) -> tuple[Path, list[dict[str, Any]]]:
    """Launch the worker for ``stage`` (``"fit"`` or ``"predict"``) in a fresh sub-folder of ``tmp_path``; return the
    folder and every rank's JSON result (raise with the worker's stderr when a rank wrote none)."""
    tag = abs(hash((factory, json.dumps(factory_kwargs or {}, sort_keys=True))))
    out = Path(tmp_path) / f"{'ddp' if stage == 'fit' else stage}_{devices}_{tag}"
    out.mkdir(parents=True, exist_ok=True)
    spec = {"factory": factory, "devices": devices, "factory_kwargs": dict(factory_kwargs or {}),
            "trainer_kwargs": dict(trainer_kwargs or {}), "out": str(out), "stage": stage}
    proc = _launch(spec, out, timeout)
    metas = []
    for rank in range(devices):
        meta_file = out / f"rank{rank}.json"
        if not meta_file.is_file():
            raise AssertionError(f"rank {rank} wrote no result.\nstderr:\n{proc.stderr[-8000:]}")
        metas.append(json.loads(meta_file.read_text()))
    return out, metas


def _launch(spec: Mapping[str, Any], out: Path, timeout: float) -> subprocess.CompletedProcess:
    """Run the worker on ``spec`` (written to ``out/spec.json``); raise with its output when it fails."""
    spec_file = out / "spec.json"
    spec_file.write_text(json.dumps(spec))
    env = dict(os.environ)
    env["PYTHONPATH"] = str(REPO_ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    env.setdefault("OMP_NUM_THREADS", "1")
    env["WANDB_MODE"] = "disabled"
    for var in ("MASTER_PORT", "MASTER_ADDR", "LOCAL_RANK", "NODE_RANK", "WORLD_SIZE", "RANK"):
        env.pop(var, None)
    proc = subprocess.run([sys.executable, "-m", "tests.helpers.ddp_worker", str(spec_file)], cwd=REPO_ROOT,
                          env=env, capture_output=True, text=True, timeout=timeout)
    if proc.returncode != 0:
        raise AssertionError(f"DDP run failed (exit {proc.returncode}).\nstdout:\n{proc.stdout[-4000:]}\n"
                             f"stderr:\n{proc.stderr[-8000:]}")
    return proc


def run_predict(
    factory: str,
    tmp_path: Path,
    *,
    devices: int,
    factory_kwargs: Mapping[str, Any] | None = None,
    trainer_kwargs: Mapping[str, Any] | None = None,
    timeout: float = 300.0,
) -> list[dict[str, Any]]:
    """``trainer.predict`` with ``devices`` CPU processes (gloo), for prediction writers; returns one dict per rank:
    ``rank`` and ``written`` (``{callback state_key: [paths]}`` of every callback with a ``written`` list)."""
    _, metas = _run("predict", factory, tmp_path, devices, factory_kwargs, trainer_kwargs, timeout)
    return [{"rank": rank, **meta} for rank, meta in enumerate(metas)]


def _unflatten(tensors: Mapping[str, Any], meta: Mapping[str, Any]) -> dict[str, Any]:
    """Rebuild a nested state from flattened tensors (``a/b`` keys) and JSON leaves."""
    out: dict[str, Any] = {}
    for key, value in list(tensors.items()) + list(meta.items()):
        parts = key.split("/")
        node = out
        for p in parts[:-1]:
            node = node.setdefault(p, {})
        node[parts[-1]] = value
    return out

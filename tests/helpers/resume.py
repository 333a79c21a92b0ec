"""Resume helper: an uninterrupted run must equal an interrupted-then-resumed run.

``assert_resume_equivalent(build, total_steps=N, interrupt_step=k, tmp_path=...)`` trains ``N`` optimizer steps in
one go, then trains a fresh copy for ``k`` steps, checkpoints, builds a third copy and resumes from that checkpoint to
``N``. It compares every parameter and every callback's ``state_dict`` (exactly by default, or to ``atol``/``rtol``).
Gradient accumulation is on (``accumulate_grad_batches=2``) by default, like Lightning's own callback tests.
Every trainer also gets :class:`lightning_ws.resume.RNGStateCallback` (as ``lightning-ws`` runs do), so models with
dropout resume exactly; pass ``rng_states=False`` to see what a run without it does.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import numpy as np
import torch
from lightning.pytorch.callbacks import ModelCheckpoint

from lightning_ws.resume import RNGStateCallback

Build = Callable[[], tuple[pl.LightningModule, pl.LightningDataModule, list[pl.Callback]]]


@dataclass
class ResumeResult:
    """Parameters and callback states of both runs, for extra assertions."""

    full_params: dict[str, torch.Tensor]
    resumed_params: dict[str, torch.Tensor]
    full_callbacks: dict[str, Any]
    resumed_callbacks: dict[str, Any]
    checkpoint: Path


def _trainer(tmp: Path, max_steps: int, accumulate: int, extra: Mapping[str, Any] | None,
             callbacks: list[pl.Callback], rng_states: bool = True) -> pl.Trainer:
    if rng_states:
        callbacks = [*callbacks, RNGStateCallback()]
    kwargs: dict[str, Any] = dict(
        default_root_dir=str(tmp), max_steps=max_steps, max_epochs=-1, accumulate_grad_batches=accumulate,
        accelerator="cpu", devices=1, deterministic=True, logger=False, enable_progress_bar=False,
        enable_model_summary=False, enable_checkpointing=False, num_sanity_val_steps=0, limit_val_batches=0,
        callbacks=callbacks,
    )
    kwargs.update(extra or {})
    return pl.Trainer(**kwargs)


class _StopAt(pl.Callback):
    """Stop training once ``trainer.global_step`` reaches ``step`` (simulates an interruption)."""

    def __init__(self, step: int) -> None:
        self.step = step

    def on_train_batch_end(self, trainer: pl.Trainer, *args: Any) -> None:
        if trainer.global_step >= self.step:
            trainer.should_stop = True


def callback_states(callbacks: list[pl.Callback]) -> dict[str, Any]:
    """``{state_key: state_dict}`` of the callbacks that have state."""
    return {cb.state_key: cb.state_dict() for cb in callbacks
            if not isinstance(cb, (_StopAt, RNGStateCallback)) and cb.state_dict()}


def assert_state_equal(a: Any, b: Any, *, atol: float = 0.0, rtol: float = 0.0, path: str = "state") -> None:
    """Recursive equality of nested dicts/lists/tensors/arrays/numbers, with a message naming the differing key."""
    if isinstance(a, Mapping):
        assert isinstance(b, Mapping), f"{path}: mapping vs {type(b).__name__}"
        assert set(a) == set(b), f"{path}: keys differ: {sorted(set(a) ^ set(b), key=str)}"
        for key in a:
            assert_state_equal(a[key], b[key], atol=atol, rtol=rtol, path=f"{path}.{key}")
    elif isinstance(a, (list, tuple)):
        assert isinstance(b, (list, tuple)) and len(a) == len(b), f"{path}: sequences differ in type or length"
        for i, (x, y) in enumerate(zip(a, b)):
            assert_state_equal(x, y, atol=atol, rtol=rtol, path=f"{path}[{i}]")
    elif isinstance(a, torch.Tensor):
        assert isinstance(b, torch.Tensor) and a.shape == b.shape, f"{path}: tensor shapes differ"
        if atol == 0 and rtol == 0:
            assert torch.equal(a, b), f"{path}: tensors differ (max abs diff {(a.double() - b.double()).abs().max()})"
        else:
            diff = (a.double() - b.double()).abs().max().item() if a.numel() else 0.0
            torch.testing.assert_close(a, b, atol=atol, rtol=rtol, msg=f"{path}: tensors differ (max abs diff {diff})")
    elif isinstance(a, np.ndarray):
        np.testing.assert_allclose(a, b, atol=atol, rtol=rtol, err_msg=path)
    elif isinstance(a, float) and isinstance(b, float):
        assert abs(a - b) <= atol + rtol * abs(b) or (np.isnan(a) and np.isnan(b)), f"{path}: {a} != {b}"
    else:
        assert a == b, f"{path}: {a!r} != {b!r}"


def assert_resume_equivalent(
    build: Build,
    *,
    total_steps: int,
    interrupt_step: int,
    tmp_path: Path,
    accumulate_grad_batches: int = 2,
    trainer_kwargs: Mapping[str, Any] | None = None,
    atol: float = 0.0,
    rtol: float = 0.0,
    rng_states: bool = True,
) -> ResumeResult:
    """Train ``total_steps`` uninterrupted vs. ``interrupt_step`` + checkpoint + resume; assert they agree.

    Args:
        build: returns a fresh ``(model, datamodule, callbacks)``; it must build identical initial states each call
            (seed inside, e.g. with ``torch.manual_seed`` in the test or a seeded init).
        total_steps: optimizer steps of the full run.
        interrupt_step: optimizer steps before the checkpoint (``0 < interrupt_step < total_steps``).
        tmp_path: scratch folder.
        accumulate_grad_batches: micro-batches per optimizer step.
        trainer_kwargs: extra ``Trainer`` arguments (override the defaults).
        atol, rtol: tolerances (0 = bit-exact).
        rng_states: add :class:`~lightning_ws.resume.RNGStateCallback` to every trainer (default ``True``).
    """
    assert 0 < interrupt_step < total_steps, "need 0 < interrupt_step < total_steps"
    tmp_path = Path(tmp_path)

    model, dm, cbs = build()
    _trainer(tmp_path / "full", total_steps, accumulate_grad_batches, trainer_kwargs, cbs, rng_states).fit(model, dm)
    full_params = {k: v.detach().clone() for k, v in model.state_dict().items()}
    full_cb = callback_states(cbs)

    model, dm, cbs = build()
    # The checkpoint is written by ModelCheckpoint inside the training loop (on_train_batch_end of step k), as in a
    # real run that is later interrupted; a checkpoint saved after fit() returned would mark the epoch as finished.
    # The first leg is configured exactly like the full run (same max_steps, so LR schedules that depend on the
    # run's length agree) and is stopped at step k, as a crash would stop it.
    ckpt_cb = ModelCheckpoint(dirpath=tmp_path / "part", filename="interrupt", every_n_train_steps=interrupt_step,
                              save_top_k=-1, save_last=False)
    first = _trainer(tmp_path / "part", total_steps, accumulate_grad_batches,
                     {**(trainer_kwargs or {}), "enable_checkpointing": True}, [*cbs, _StopAt(interrupt_step), ckpt_cb],
                     rng_states)
    first.fit(model, dm)
    assert first.global_step == interrupt_step, f"first leg stopped at step {first.global_step}"
    ckpt = tmp_path / "part" / "interrupt.ckpt"
    assert ckpt.is_file(), f"no checkpoint written at step {interrupt_step}"

    model, dm, cbs = build()
    second = _trainer(tmp_path / "resumed", total_steps, accumulate_grad_batches, trainer_kwargs, cbs, rng_states)
    second.fit(model, dm, ckpt_path=str(ckpt))
    assert second.global_step == total_steps, f"resumed run stopped at step {second.global_step}"
    resumed_params = {k: v.detach().clone() for k, v in model.state_dict().items()}
    resumed_cb = callback_states(cbs)

    assert_state_equal(full_params, resumed_params, atol=atol, rtol=rtol, path="params")
    assert_state_equal(full_cb, resumed_cb, atol=atol, rtol=rtol, path="callbacks")
    return ResumeResult(full_params, resumed_params, full_cb, resumed_cb, ckpt)

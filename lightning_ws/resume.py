"""Resume a run exactly: random-number-generator states in the checkpoint, and finding a named run's last checkpoint.

Lightning checkpoints hold weights, optimiser, schedulers, loop counters, callback and data-loader states, but not the
random number generators, so dropout (and anything else that draws from ``torch``/``numpy``/``random``) takes a
different path after a resume. :class:`RNGStateCallback` stores the global generators (``torch`` CPU, every CUDA
device, ``numpy``'s legacy global state, ``random``) and the *per-component* generators it finds on the module, its
submodules, the datamodule and the other callbacks (attributes that are ``torch.Generator``, ``numpy.random.Generator``
/``RandomState`` or ``random.Random``) in the checkpoint, and restores them at the point of the resumed run that
corresponds to the moment they were saved:

* a checkpoint written during an epoch (``ModelCheckpoint(every_n_train_steps=...)``, a crash-safety ``last.ckpt``)
  is restored right before the next training batch, i.e. after the resumed run has rebuilt its data loader iterator
  (which itself draws a seed from the global generator);
* a checkpoint written at the end of an epoch is restored at the start of the next epoch.

Validation runs inside a fit are isolated from the training stream (the states are put back when validation ends, as
Lightning does for its sanity check), so where a checkpoint falls relative to a validation pass does not matter, and
our :class:`~lightning_ws.datamodules.resumable.ResumableDataLoader` starts epochs without drawing from the global
generator.

So an interrupted-and-resumed run draws the same dropout masks as an uninterrupted one (tests/test_lifecycle.py kills a
CLI run mid-epoch and checks parameters, metrics and callback states against the uninterrupted run, dropout on).
``lightning-ws`` adds this callback to every training run; add it yourself when you build your own ``Trainer``.

Under DDP every rank's states are saved: Lightning writes callback states from rank 0 only, so
:meth:`RNGStateCallback.state_dict` gathers the states of all ranks (``all_gather_object``; Lightning builds the
checkpoint on every rank, so the collective is matched) and each rank restores its own on resume. Ranks whose streams
diverged (a rank-dependent number of draws, per-rank augmentation) therefore continue exactly as in an uninterrupted
run. Resuming on a different number of ranks restores rank ``r``'s states where the checkpoint has them and otherwise
rank 0's, with a warning (the streams cannot match then). Nothing here reseeds a generator: states are only saved and
put back.
"""

from __future__ import annotations

import json
import os
import random
import warnings
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import numpy as np
import torch
from lightning.pytorch.callbacks import ModelCheckpoint

__all__ = ["LastCheckpoint", "RNGStateCallback", "add_last_checkpoint", "collect_rng_states", "restore_rng_states",
           "find_last_checkpoint"]

_FORMAT = 2  # 2: {"ranks": [state of rank 0, rank 1, ...]}; 1: one state at the top level


def _numpy_state() -> dict[str, Any]:
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    return {"kind": kind, "keys": torch.from_numpy(np.asarray(keys, dtype=np.int64)), "pos": int(pos),
            "has_gauss": int(has_gauss), "cached": float(cached)}


def _set_numpy_state(state: dict[str, Any]) -> None:
    keys = state["keys"].numpy().astype(np.uint32)
    np.random.set_state((state["kind"], keys, state["pos"], state["has_gauss"], state["cached"]))


def _python_state() -> dict[str, Any]:
    version, internal, gauss = random.getstate()
    return {"version": int(version), "internal": torch.tensor(internal, dtype=torch.int64), "gauss": gauss}


def _set_python_state(state: dict[str, Any]) -> None:
    random.setstate((state["version"], tuple(int(v) for v in state["internal"].tolist()), state["gauss"]))


def collect_rng_states() -> dict[str, Any]:
    """The global generators' states: ``torch`` CPU, all CUDA devices (when initialised), ``numpy``, ``random``.

    Everything is a tensor, number or string, so the states load with ``torch.load(weights_only=True)``.
    """
    states: dict[str, Any] = {"torch": torch.get_rng_state(), "numpy": _numpy_state(), "python": _python_state()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        states["cuda"] = torch.cuda.get_rng_state_all()
    return states


def restore_rng_states(states: dict[str, Any]) -> None:
    """Put back what :func:`collect_rng_states` returned (CUDA states only when CUDA is available)."""
    torch.set_rng_state(states["torch"].cpu() if isinstance(states["torch"], torch.Tensor) else states["torch"])
    _set_numpy_state(states["numpy"])
    _set_python_state(states["python"])
    if "cuda" in states and torch.cuda.is_available():
        cuda = list(states["cuda"])
        if len(cuda) == torch.cuda.device_count():
            torch.cuda.set_rng_state_all([s.cpu() for s in cuda])


def _component_generators(owners: dict[str, Any]) -> dict[str, Any]:
    """``{"<owner>.<attr>": generator}`` for generator attributes of the given objects (and of nn.Module children)."""
    found: dict[str, Any] = {}
    for prefix, owner in owners.items():
        if owner is None:
            continue
        objects = [(prefix, owner)]
        if isinstance(owner, torch.nn.Module):
            objects = [(f"{prefix}.{n}" if n else prefix, m) for n, m in owner.named_modules()]
        for name, obj in objects:
            for attr, value in list(vars(obj).items()):
                if isinstance(value, (torch.Generator, np.random.Generator, np.random.RandomState, random.Random)):
                    found[f"{name}.{attr}"] = value
    return found


def _generator_state(gen: Any) -> Any:
    if isinstance(gen, torch.Generator):
        return {"type": "torch", "state": gen.get_state()}
    if isinstance(gen, np.random.Generator):
        return {"type": "numpy_generator", "state": json.dumps(gen.bit_generator.state, default=int)}
    if isinstance(gen, np.random.RandomState):
        kind, keys, pos, has_gauss, cached = gen.get_state()
        return {"type": "numpy_randomstate", "kind": kind, "keys": torch.from_numpy(np.asarray(keys, dtype=np.int64)),
                "pos": int(pos), "has_gauss": int(has_gauss), "cached": float(cached)}
    version, internal, gauss = gen.getstate()
    return {"type": "python", "version": int(version), "internal": torch.tensor(internal, dtype=torch.int64),
            "gauss": gauss}


def _set_generator_state(gen: Any, state: dict[str, Any]) -> None:
    kind = state["type"]
    if kind == "torch" and isinstance(gen, torch.Generator):
        gen.set_state(state["state"])
    elif kind == "numpy_generator" and isinstance(gen, np.random.Generator):
        gen.bit_generator.state = json.loads(state["state"])
    elif kind == "numpy_randomstate" and isinstance(gen, np.random.RandomState):
        gen.set_state((state["kind"], state["keys"].numpy().astype(np.uint32), state["pos"], state["has_gauss"],
                       state["cached"]))
    elif kind == "python" and isinstance(gen, random.Random):
        gen.setstate((state["version"], tuple(int(v) for v in state["internal"].tolist()), state["gauss"]))


def _to_cpu(obj: Any) -> Any:
    """``obj`` with every tensor on the CPU (CUDA generator states are CPU tensors already; this is for safety)."""
    if isinstance(obj, torch.Tensor):
        return obj.cpu()
    if isinstance(obj, dict):
        return {k: _to_cpu(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(_to_cpu(v) for v in obj)
    return obj


class RNGStateCallback(pl.Callback):
    """Save the random generators in the checkpoint and restore them on resume (see the module docstring).

    Args:
        components: also save the per-component generators found on the module, datamodule and callbacks
            (default ``True``).
    """

    def __init__(self, components: bool = True) -> None:
        self.components = bool(components)
        self._trainer: pl.Trainer | None = None
        self._pending: dict[str, Any] | None = None
        self._before_validation: dict[str, Any] | None = None

    @property
    def state_key(self) -> str:  # one per trainer, whatever the arguments
        return "RNGStateCallback"

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:  # noqa: D102
        self._trainer = trainer

    def _owners(self) -> dict[str, Any]:
        trainer = self._trainer
        if trainer is None:
            return {}
        owners: dict[str, Any] = {"model": trainer.lightning_module, "datamodule": trainer.datamodule}
        for i, cb in enumerate(trainer.callbacks):
            if cb is not self:
                owners[f"callbacks[{i}]:{type(cb).__name__}"] = cb
        return owners

    def _at_epoch_end(self) -> bool:
        trainer = self._trainer
        if trainer is None:
            return False
        done = trainer.fit_loop.epoch_loop.batch_progress.current.processed
        total = trainer.num_training_batches
        return isinstance(total, int) and done >= total

    def _rank_state(self) -> dict[str, Any]:
        state: dict[str, Any] = {"global": collect_rng_states(),
                                 "restore_at": "epoch_start" if self._at_epoch_end() else "batch_start"}
        if self.components:
            state["components"] = {k: _generator_state(g) for k, g in _component_generators(self._owners()).items()}
        return state

    def state_dict(self) -> dict[str, Any]:
        """Every rank's generator states now (Lightning calls this on every rank while writing a checkpoint).

        ``{"format": 2, "ranks": [rank 0's states, rank 1's, ...]}``; under DDP the ranks' states are gathered to
        every rank (a collective: call it on all ranks, as Lightning's checkpointing does).
        """
        if self._trainer is None:
            return {}
        own = self._rank_state()
        world = int(getattr(self._trainer, "world_size", 1) or 1)
        ranks = [own]
        if world > 1 and torch.distributed.is_available() and torch.distributed.is_initialized():
            gathered: list[Any] = [None] * torch.distributed.get_world_size()
            torch.distributed.all_gather_object(gathered, _to_cpu(own))
            ranks = gathered
        return {"format": _FORMAT, "ranks": ranks}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Keep the states until the resumed run reaches the point where they were saved."""
        self._pending = dict(state_dict) if state_dict else None

    def _own_state(self) -> dict[str, Any] | None:
        """This rank's part of the pending checkpoint state (format 1 checkpoints hold one state for all ranks)."""
        pending = self._pending
        if pending is None or "ranks" not in pending:
            return pending
        ranks = list(pending["ranks"])
        if not ranks:
            return None
        rank = int(getattr(self._trainer, "global_rank", 0) or 0)
        world = int(getattr(self._trainer, "world_size", 1) or 1)
        if world != len(ranks):
            whose = "its own" if rank < len(ranks) else "rank 0's"
            warnings.warn(f"RNGStateCallback: the checkpoint holds random-generator states of {len(ranks)} rank(s) but "
                          f"this run has {world}; rank {rank} restores {whose} states, so random draws "
                          "(dropout, augmentation) will not match an uninterrupted run. Resume on the same number of "
                          "devices for an exact continuation.", UserWarning, stacklevel=3)
        self._pending = ranks[rank] if rank < len(ranks) else ranks[0]  # select once (and warn once)
        return self._pending

    def _restore(self, where: str) -> None:
        state = self._own_state()
        if state is None or state.get("restore_at") != where:
            return
        self._pending = None
        restore_rng_states(state["global"])
        gens = _component_generators(self._owners()) if state.get("components") else {}
        for key, gstate in (state.get("components") or {}).items():
            if key in gens:
                _set_generator_state(gens[key], gstate)

    def on_validation_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:  # noqa: D102
        if trainer.state.fn == "fit" and not trainer.sanity_checking:
            self._before_validation = collect_rng_states()

    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:  # noqa: D102
        if self._before_validation is not None:
            restore_rng_states(self._before_validation)
            self._before_validation = None

    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:  # noqa: D102
        self._restore("epoch_start")

    def on_train_batch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any,
                             batch_idx: int) -> None:  # noqa: D102
        self._restore("batch_start")
        self._restore("epoch_start")  # a checkpoint saved after the last batch but resumed inside the epoch


def find_last_checkpoint(save_dir: str | os.PathLike, project: str, name: str | None) -> tuple[str, Path] | None:
    """The newest run of ``name`` under ``<save_dir>/<project>`` that has ``checkpoints/last.ckpt``.

    Runs are recognised by the ``run.json`` that ``lightning-ws`` writes into each run folder. Returns
    ``(run_id, last_checkpoint)`` or ``None``.
    """
    root = Path(save_dir) / project
    best: tuple[float, str, Path] | None = None
    for info_file in root.glob("*/run.json"):
        try:
            info = json.loads(info_file.read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError):
            continue
        if info.get("name") != name:
            continue
        last = info_file.parent / "checkpoints" / "last.ckpt"
        if last.is_file():
            mtime = last.stat().st_mtime
            if best is None or mtime > best[0]:
                best = (mtime, str(info.get("id") or info_file.parent.name), last)
    return None if best is None else (best[1], best[2])


class LastCheckpoint(ModelCheckpoint):
    """``last.ckpt`` for crash safety: every ``every_n_train_steps`` optimizer steps and at the end of every epoch.

    Lightning's ``ModelCheckpoint(save_last=True)`` saves ``last.ckpt`` only when that callback saves (every N steps
    *or* every epoch, not both), and two such callbacks in one folder collide (``last-v1.ckpt``). This one keeps a
    single ``last.ckpt`` in the run's ``checkpoints/`` folder that is never older than N steps and always holds the
    final weights, so ``--ckpt_path last`` continues a killed run from at most N steps back (mid-epoch, exactly: see
    :class:`RNGStateCallback` and :class:`~lightning_ws.datamodules.resumable.ResumableDataLoader`). Use it beside a
    ``ModelCheckpoint(monitor=...)`` that keeps the best weights. ``lightning-ws fit`` adds one (every 50 steps) to a run
    whose config has no callback writing ``last.ckpt`` (:func:`add_last_checkpoint`).

    Args:
        every_n_train_steps: optimizer steps between saves (``0``: only at epoch ends).
        dirpath: folder (default: the run's ``checkpoints/`` folder, as ``ModelCheckpoint``).
    """

    def __init__(self, every_n_train_steps: int = 50, dirpath: str | os.PathLike | None = None) -> None:
        if every_n_train_steps < 0:
            from lightning_ws.errors import ConfigError

            raise ConfigError(f"every_n_train_steps must be >= 0, got {every_n_train_steps}.")
        super().__init__(dirpath=dirpath, save_top_k=0, save_last=True,
                         every_n_train_steps=every_n_train_steps or None, every_n_epochs=None if every_n_train_steps
                         else 1)

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:  # noqa: D102
        super().on_train_epoch_end(trainer, pl_module)
        if not self._should_skip_saving_checkpoint(trainer):
            self._save_last_checkpoint(trainer, self._monitor_candidates(trainer))


def add_last_checkpoint(trainer_config: dict[str, Any], callbacks: list[Any]) -> list[LastCheckpoint]:
    """``[LastCheckpoint()]`` when a ``fit`` would otherwise leave no ``last.ckpt``, else ``[]``.

    ``lightning-ws fit`` calls this so that ``--ckpt_path last`` continues every run, whatever its config lists:
    nothing is added when checkpointing is off (``enable_checkpointing: false``, ``fast_dev_run``) or when a callback
    already writes ``last.ckpt`` (a :class:`LastCheckpoint`, or a ``ModelCheckpoint`` with ``save_last``).
    """
    if trainer_config.get("enable_checkpointing") is False or trainer_config.get("fast_dev_run"):
        return []
    if any(isinstance(cb, ModelCheckpoint) and cb.save_last for cb in callbacks):
        return []
    return [LastCheckpoint()]

"""Shared piece of the overhead benchmarks: a callback that acts on every other step only.

With/without steps alternate inside one fit, so both see the same machine state (the issues' measure: "step time with
the callback / without, same run"). Used by ``bench_gradmimic.py`` and ``bench_rnb.py``.
"""

from __future__ import annotations

from typing import Any


class AlternatingSteps:
    """Mixin placed before a Lightning ``Callback`` class: its step hooks run on even batches only.

    On odd batches ``on_train_batch_start``, ``on_after_backward``, ``on_before_optimizer_step`` and
    ``on_train_batch_end`` return at once (the callback then never starts capturing, so its layer hooks return at once
    too); ``flags`` records, per batch, whether the callback acted.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.flags: list[bool] = []
        self._on = False

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        self._on = batch_idx % 2 == 0
        self.flags.append(self._on)
        if self._on:
            super().on_train_batch_start(trainer, pl_module, batch, batch_idx)

    def on_after_backward(self, trainer, pl_module) -> None:
        if self._on:
            super().on_after_backward(trainer, pl_module)

    def on_before_optimizer_step(self, trainer, pl_module, optimizer) -> None:
        if self._on:
            super().on_before_optimizer_step(trainer, pl_module, optimizer)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if self._on:
            super().on_train_batch_end(trainer, pl_module, outputs, batch, batch_idx)


def split_on_off(series: list[float], flags: list[bool], drop: int) -> tuple[list[float], list[float]]:
    """The values of ``series`` after the first ``drop`` steps, split into (steps with the callback, steps without)."""
    pairs = list(zip(series[drop:], flags[drop:]))
    return [v for v, f in pairs if f], [v for v, f in pairs if not f]

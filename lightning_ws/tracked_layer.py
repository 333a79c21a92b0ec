"""Lightning-free pieces shared by callbacks that track one ``nn.Linear`` (R&B, Grad-Mimic, later ones).

* :class:`LayerTap`: the one forward hook and the one output-gradient hook of a tracked layer, shared by every
  tracker of that layer. Trackers never register hooks on the layer themselves, so two trackers on one layer cannot
  see each other's work: every gradient observer gets the layer's *plain* output gradient (what autograd computed),
  whatever the registration order, and at most one tracker may rewrite that gradient (Grad-Mimic's in-graph
  re-weighting), after all observers have read it.
* :func:`resolve_linear`: find the tracked layer by its dotted name, with errors that list the candidates.
* :class:`StateVersionError` / :func:`check_state_version`: one error for a checkpoint state written by newer code.
* :class:`LossReweighter`: the protocol of a callback that re-weights the whole training loss per sample.
"""

from __future__ import annotations

import weakref
from collections.abc import Callable
from typing import Any, ClassVar, Protocol, runtime_checkable

import torch
from torch import nn

from lightning_ws.errors import ConfigError, DataError

__all__ = ["LayerTap", "LossReweighter", "StateVersionError", "TapHandle", "check_state_version", "resolve_linear"]

#: ``fn(module, inputs, output)``: a tracker's view of one forward call of the layer.
ForwardFn = Callable[[nn.Module, tuple[Any, ...], Any], None]


@runtime_checkable
class LossReweighter(Protocol):
    """A callback that sets the training loss from per-sample losses while ``reweights_loss`` is true (Grad-Mimic's
    ``all_params`` mode). Every per-example gradient then carries its weight: trackers that read per-example gradients
    of the plain loss (R&B) refuse to run alongside one."""

    @property
    def reweights_loss(self) -> bool: ...

    def reduce_loss(self, per_sample_loss: torch.Tensor) -> torch.Tensor: ...


class StateVersionError(ConfigError, DataError):
    """A callback's checkpoint state was written by a newer version of lightning_ws (or is not this callback's)."""


def check_state_version(state: dict[str, Any], current: int, owner: str) -> int:
    """The ``version`` of a callback state (1 when absent); raises :class:`StateVersionError` when it is newer than
    ``current`` (this code cannot know what it means)."""
    version = int(state.get("version", 1))
    if version > current:
        raise StateVersionError(f"{owner} state version {version} is newer than this code ({current}); upgrade "
                                f"lightning_ws to resume from this checkpoint.")
    return version


def resolve_linear(root: nn.Module, name: str, *, what: str = "layer", method: str = "this callback") -> nn.Linear:
    """``root.get_submodule(name)``, checked to be an ``nn.Linear``; the error names the ``nn.Linear`` layers there
    are (``what``: the argument's name in the message, ``method``: who needs the layer)."""
    try:
        module = root.get_submodule(name)
    except AttributeError:
        names = [n for n, mod in root.named_modules() if isinstance(mod, nn.Linear)]
        raise ConfigError(f"{what} {name!r} not found: it is not a submodule of {type(root).__name__}; its nn.Linear "
                          f"layers are {names[:20]}.") from None
    if not isinstance(module, nn.Linear):
        raise ConfigError(f"{what} {name!r} is a {type(module).__name__}; {method}'s closed-form per-example gradients "
                          f"need an nn.Linear.")
    return module


class _GradDispatch:
    """The tensor hook of one forward call's output: observers read the plain gradient, then the rewriter (if any)."""

    __slots__ = ("observers", "rewriter")

    def __init__(self) -> None:
        self.observers: list[Callable[[torch.Tensor], None]] = []
        self.rewriter: Callable[[torch.Tensor], torch.Tensor | None] | None = None

    def __call__(self, grad: torch.Tensor) -> torch.Tensor | None:
        for fn in self.observers:
            fn(grad)
        return self.rewriter(grad) if self.rewriter is not None else None


class TapHandle:
    """A tracker's registration on a :class:`LayerTap`; :meth:`remove` ends it (idempotent)."""

    def __init__(self, tap: LayerTap, key: int) -> None:
        self.tap: LayerTap | None = tap
        self._key = key

    def watch_grad(self, fn: Callable[[torch.Tensor], None]) -> None:
        """Inside this tracker's forward callback: call ``fn`` with the plain output gradient of the current call."""
        self.tap._current().observers.append(fn)

    def rewrite_grad(self, fn: Callable[[torch.Tensor], torch.Tensor | None]) -> None:
        """Inside the forward callback: ``fn(plain_grad)`` may return the gradient that flows on (``None``: unchanged).
        Runs after every observer; only a tracker attached with ``rewrites=True`` may call it."""
        if self._key not in self.tap.rewriters:
            raise ConfigError("this tracker was attached without rewrites=True and may not rewrite the gradient.")
        call = self.tap._current()
        if call.rewriter is not None:  # attach() already refuses two rewriters; a second call is a bug
            raise ConfigError("two rewrites of one layer's output gradient in one call.")
        call.rewriter = fn

    @property
    def others_rewrite(self) -> bool:
        """Whether another tracker of this layer may rewrite its output gradient (then a backward that is fed the
        output gradient, such as R&B's fused one, sees the rewritten one)."""
        return self.tap is not None and any(k != self._key for k in self.tap.rewriters)

    def remove(self) -> None:
        if self.tap is not None:
            self.tap._remove(self._key)
            self.tap = None


class LayerTap:
    """The shared forward hook of one tracked layer (at most one per module; see the module docstring).

    Trackers :meth:`attach` a forward callback; in it they may ask for the output gradient of that call
    (:meth:`TapHandle.watch_grad`) or rewrite it (:meth:`TapHandle.rewrite_grad`). The tap registers one tensor hook
    per call that has any such request. Forward callbacks run in attachment order; observers always receive the
    gradient autograd computed, the rewriter runs last, so the result does not depend on the order of the callbacks.
    A deep copy or pickle of the module carries an inert tap (no trackers).
    """

    _taps: ClassVar[weakref.WeakKeyDictionary[nn.Module, LayerTap]] = weakref.WeakKeyDictionary()

    def __init__(self, module: nn.Module) -> None:
        self.owners: dict[int, ForwardFn] = {}
        self.rewriters: set[int] = set()
        self._call: _GradDispatch | None = None
        self._next = 0
        self._hook = module.register_forward_hook(self._forward)
        self._module = weakref.ref(module)

    @classmethod
    def attach(cls, module: nn.Module, on_forward: ForwardFn, *, rewrites: bool = False,
               who: str = "a tracker") -> TapHandle:
        """Register ``on_forward`` on ``module``'s tap (created on first use). ``rewrites``: this tracker may rewrite
        the output gradient; a second such tracker on the same layer is refused (their rewrites would compound)."""
        tap = cls._taps.get(module)
        if tap is None:
            tap = cls._taps[module] = cls(module)
        if rewrites and tap.rewriters:
            raise ConfigError(f"{who}: another callback already re-weights the output gradient of this layer; two "
                              f"re-weightings of one layer would compound. Track different layers.")
        key = tap._next
        tap._next += 1
        tap.owners[key] = on_forward
        if rewrites:
            tap.rewriters.add(key)
        return TapHandle(tap, key)

    def _current(self) -> _GradDispatch:
        if self._call is None:
            raise ConfigError("watch_grad / rewrite_grad can only be called inside the tracker's forward callback.")
        return self._call

    def _forward(self, module: nn.Module, inputs: tuple[Any, ...], output: Any) -> None:
        if not self.owners:
            return
        self._call = call = _GradDispatch()
        try:
            for fn in list(self.owners.values()):
                fn(module, inputs, output)
        finally:
            self._call = None
        if (call.observers or call.rewriter is not None) and isinstance(output, torch.Tensor) and output.requires_grad:
            output.register_hook(call)

    def _remove(self, key: int) -> None:
        self.owners.pop(key, None)
        self.rewriters.discard(key)
        if not self.owners:
            self._hook.remove()
            module = self._module()
            if module is not None and self._taps.get(module) is self:
                del self._taps[module]

    def __getstate__(self) -> dict[str, Any]:  # copies of the module get an inert tap
        return {"owners": {}, "rewriters": set(), "_call": None, "_next": 0, "_hook": _NoHook(), "_module": _dead}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)


class _NoHook:
    def remove(self) -> None:
        pass


def _dead() -> None:
    return None

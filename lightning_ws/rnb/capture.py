"""Capturing one tracked ``nn.Linear``'s per-domain gradient sums during training micro-batches (R&B, arXiv
2505.00358, Alg. 1 step 2), by the fused backward where it is valid and by hooks otherwise. Lightning-free: a
training loop (or :class:`~lightning_ws.callbacks.RnBCallback`) calls :meth:`DomainGradCapture.start` per
micro-batch, routes the layer's forward hook to :meth:`~DomainGradCapture.on_forward` and its fused forward to
:meth:`~DomainGradCapture.plan`, and calls :meth:`~DomainGradCapture.flush` after the backward.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from lightning_ws.errors import ConfigError
from lightning_ws.rnb.accumulate import DomainAccumulator, accumulate_domain_grads, example_scale, token_mean_scale
from lightning_ws.rnb.fused import DomainGradSink, fused_accumulation_mode, fused_call_blocker

__all__ = ["DomainGradCapture"]


class DomainGradCapture:
    """Per-micro-batch capture of a tracked layer into a :class:`~lightning_ws.rnb.accumulate.DomainAccumulator`.

    Args:
        acc: the accumulator (its width includes the bias column when ``include_bias``).
        loss_reduction, ignore_index: how the batch loss reduces per-example losses
            (:func:`~lightning_ws.rnb.accumulate.example_scale`).
        include_bias: the accumulator tracks the bias.
        force_fused: ``accumulation="fused"``: ignore the per-example size limit of the fused backward.

    Attributes:
        capture_counts: layer calls captured per path: ``per_example`` / ``grouped`` (fused) and ``hooks``.
        fallback_reason: why the last call used the hook path instead of the fused one (``None``: never).
        fallbacks: how many training calls fell back to the hook path.
    """

    def __init__(self, acc: DomainAccumulator, *, loss_reduction: str = "mean", ignore_index: int = -100,
                 include_bias: bool = True, force_fused: bool = False) -> None:
        self.acc, self.loss_reduction, self.ignore_index = acc, loss_reduction, int(ignore_index)
        self.include_bias, self.force_fused = bool(include_bias), bool(force_fused)
        self.capture_counts = {"per_example": 0, "grouped": 0, "hooks": 0}
        self.fallback_reason: str | None = None
        self.fallbacks = 0
        self.stop()

    @classmethod
    def for_layer(cls, module: nn.Linear, m: int, *, include_bias: bool, sketch_dim: list[int] | None, seed: int,
                  distributed: bool, loss_reduction: str, ignore_index: int, force_fused: bool,
                  previous: DomainAccumulator | None = None) -> DomainGradCapture:
        """A capture of ``module`` into a fresh :class:`DomainAccumulator` for ``m`` domains (bias column when
        ``include_bias`` and the layer has a bias), keeping ``previous``'s sums when their shapes match."""
        use_bias = bool(include_bias and module.bias is not None)
        acc = DomainAccumulator(m, module.out_features, module.in_features + use_bias, sketch_dim=sketch_dim,
                                seed=seed, distributed=distributed)
        if previous is not None and previous.sums.shape == acc.sums.shape:
            acc.load(previous.sums, previous.counts)
        return cls(acc, loss_reduction=loss_reduction, ignore_index=ignore_index, include_bias=use_bias,
                   force_fused=force_fused)

    def start_batch(self, batch: Any, domain_key: str, target_key: str | None, factor: float, *,
                    who: str = "RnBCallback") -> None:
        """:meth:`start` from a dict batch: its ``domain_key`` ids and, for ``token_mean``, its ``target_key``
        targets (``ConfigError`` when they are missing)."""
        if not isinstance(batch, dict) or domain_key not in batch:
            raise ConfigError(f"{who} needs dict batches with a {domain_key!r} key of (B,) domain ids; "
                              f"got {type(batch).__name__} (keys {list(batch) if isinstance(batch, dict) else '-'}).")
        if self.loss_reduction == "token_mean" and target_key not in batch:
            raise ConfigError(f"loss_reduction='token_mean' needs batch[{target_key!r}].")
        self.start(batch[domain_key], batch.get(target_key) if target_key else None, factor)

    def start(self, domains: Any, targets: Any = None, factor: float = 1.0) -> None:
        """Begin a training micro-batch: its ``(B,)`` domain ids, ``(B, T)`` targets (``token_mean``) and the loss
        factor ``accumulate_grad_batches``. The token-mean factors depend on the batch only: they are made here
        (cheaper than inside the forward, measured) and reused by the fused forward and the hook path."""
        self.stop()
        self.domains, self.targets, self.factor = torch.as_tensor(domains).reshape(-1), targets, float(factor)
        if self.loss_reduction == "token_mean":
            t = torch.as_tensor(targets)
            if t.dim() == 2:
                self._scale = (self.factor, t.device, tuple(t.shape), token_mean_scale(t, self.ignore_index,
                                                                                        self.factor))

    def stop(self) -> None:
        """No micro-batch is being captured (evaluation, or between batches)."""
        self.domains, self.targets, self.factor, self._scale = None, None, 1.0, None
        self._acts: list[torch.Tensor] = []
        self._grads: dict[int, torch.Tensor] = {}
        self._sinks: list[DomainGradSink] = []
        self._fused_ran = False

    def scale(self, shape: tuple[int, ...], device: torch.device,
              factor: float) -> tuple[torch.Tensor | float, torch.Tensor | None]:
        """:func:`~lightning_ws.rnb.accumulate.example_scale` for a layer input of ``shape`` (token-mean factors
        reused from :meth:`start`)."""
        cached = self._scale
        if self.loss_reduction == "token_mean" and cached is not None and cached[0] == factor \
                and cached[1] == device and cached[2] == shape[:2] and len(shape) == 3:
            return cached[3]
        return example_scale(self.loss_reduction, shape, factor, self.targets, self.ignore_index)

    def _check_batch_size(self, b: int) -> None:
        """The tracked layer must see one row per example of the micro-batch (one domain id each)."""
        if b != self.domains.numel():
            raise ConfigError(f"the tracked layer saw {b} examples but the batch has {self.domains.numel()} domain "
                              f"ids; track a layer applied once per example.")

    def on_forward(self, inputs: tuple[torch.Tensor, ...], output: torch.Tensor,
                   watch_grad: Callable[[Callable[[torch.Tensor], None]], None]) -> None:
        """Hook path: keep a training call's input and ask for its output gradient (``watch_grad(fn)``); calls that
        ran the fused backward are skipped."""
        if self._fused_ran:  # this call ran the fused backward; nothing to capture
            self._fused_ran = False
            return
        if self.domains is None or not torch.is_grad_enabled() or not output.requires_grad:
            return
        self.capture_counts["hooks"] += 1
        pos, grads = len(self._acts), self._grads
        self._acts.append(inputs[0].detach())
        watch_grad(lambda grad: grads.__setitem__(pos, grad.detach()))

    def plan(self, module: nn.Linear, x: torch.Tensor, *, scaler_active: bool,
             others_rewrite: bool = False) -> DomainGradSink | None:
        """For the layer's fused forward: a sink for the fused backward, or ``None`` (a plain forward; the hook path
        captures the call; :attr:`fallback_reason` says why when it is a training call)."""
        if self.domains is None or not torch.is_grad_enabled():
            return None
        if not (x.requires_grad or module.weight.requires_grad
                or (module.bias is not None and module.bias.requires_grad)):
            return None
        reason = fused_call_blocker(x, module.weight, scaler_active=scaler_active)
        if reason is None and others_rewrite:
            reason = "another callback re-weights this layer's output gradient (the fused backward would see it)"
        if reason is None:
            b = x.shape[0]
            self._check_batch_size(b)
            scale, valid = self.scale(tuple(x.shape), x.device, self.factor)
            uniform = not isinstance(scale, torch.Tensor) and valid is None
            width = module.in_features + int(module.bias is not None or self.include_bias)
            mode = fused_accumulation_mode(b, module.out_features, width, uniform_scale=uniform,
                                           force=self.force_fused)
            if mode is None:
                reason = ("per-example scales (token_mean) on a layer whose (B, d_out, d_in + 1) per-example tensor "
                          "exceeds FUSED_PER_EXAMPLE_MAX_ELEMENTS")
        if reason is not None:
            self.fallback_reason = reason
            self.fallbacks += 1
            return None
        sums, counts = self.acc.buffers(x.device)
        sink = DomainGradSink(sums, counts, self.domains, example_scale=scale, valid=valid,
                              include_bias=self.include_bias, mode=mode)
        self._sinks.append(sink)
        self._fused_ran = True
        self.capture_counts[mode] += 1
        return sink

    def flush(self, loss_scale: float | None = None) -> bool:
        """After the backward: add the hooked calls' per-example gradients into the per-domain sums (fused calls were
        added by their backward). One batched matmul + ``index_add_`` (small layers) or one GEMM per present domain
        (large layers). ``loss_scale``: the AMP GradScaler's scale (a micro-batch with non-finite gradients, a
        skipped step, adds nothing). Returns ``False`` when the layer got no gradient at all."""
        acts, grads, sinks = self._acts, self._grads, self._sinks
        self._acts, self._grads, self._sinks = [], {}, []
        pairs = [(acts[i], grads[i]) for i in range(len(acts)) if i in grads]
        if not pairs:
            return any(s.calls for s in sinks)
        factor = self.factor
        if loss_scale is not None:
            if not all(bool(torch.isfinite(delta).all()) for _, delta in pairs):
                return True  # AMP overflow: the optimizer step is skipped, so is this contribution
            factor /= loss_scale
        sums, counts = self.acc.buffers(pairs[0][0].device)
        for a, delta in pairs:
            self._check_batch_size(a.shape[0])
            scale, valid = self.scale(tuple(a.shape), a.device, factor)
            accumulate_domain_grads(sums, counts, a, delta, self.domains, example_scale=scale,
                                    include_bias=self.include_bias, sketch=self.acc.sketch, valid=valid)
        return True

"""R&B callback arguments, round update and checkpoint state, without Lightning (used by
:class:`~lightning_ws.callbacks.RnBCallback`, which only wires them to the Trainer's hooks).

Defaults for what the paper leaves open (arXiv 2505.00358, spec §15), as the callback applies them:

* tracked layer: ``"classifier"`` (the head of :class:`lightning_ws.modules.TextClassifier`); bias included;
* round length ``steps_per_round=10`` optimizer steps (choose it so ``K * B / m >= 20``); ``lam=3`` (the one value
  the paper reports); normalised logits (main text; ``normalize=False`` gives the appendix's Algorithm 3);
* per-example loss (:func:`~lightning_ws.rnb.accumulate.example_scale`): ``loss_reduction="mean"`` multiplies
  ``delta`` by the micro-batch size (and by ``accumulate_grad_batches``, which Lightning divides the loss by);
  ``"token_mean"`` (with ``target_key``) weights example ``i`` by ``N_tokens / n_i`` so each example's loss is the
  mean over its own target tokens; ``"sum"`` applies no factor;
* AMP: output gradients are divided by the active GradScaler's scale; under loss scaling, micro-batches with
  non-finite gradients (skipped AMP steps) are not accumulated (without a GradScaler there is no such check: the
  optimizer applies those gradients too, and a round whose Gram matrix is non-finite keeps ``p``);
* empty domain in a round: it is left out of ``G p_eval`` and keeps its previous probability; ``||G p_eval|| = 0``
  or non-finite: ``p`` is kept; ``prob_floor`` (default 0) mixes in uniform so that ``p_i >= prob_floor / m``;
  ``warmup_rounds=1``: the first round trains on the initial mixture (uniform, as in the paper);
* memory: exact accumulators ``m x d_out x (d_in + 1)`` fp32, or a Kronecker random-projection sketch
  (``sketch_dim=(k_out, k_in)`` or an int for both), an unbiased estimate of ``G`` (not in the paper).

Collecting the exact per-domain sums (``accumulation``): ``"hooks"`` captures ``a`` and ``delta`` and calls
:func:`~lightning_ws.rnb.accumulate.accumulate_domain_grads` after the backward (about one extra weight-gradient
computation of the layer); ``"fused"`` routes the layer's forward through :func:`~lightning_ws.rnb.fused.fused_linear`
while a training micro-batch is captured (an instance-level ``forward`` set in ``setup`` and removed in ``teardown``
/ ``on_exception``), whose backward derives autograd's weight gradient from the per-example products and adds the
per-domain sums as a by-product (about no extra GEMM). ``"auto"`` uses fused where it is valid and cheap and the hooks
otherwise (the callback's ``fused_fallback_reason`` says why): with a ``sketch_dim``; for a layer that is not exactly
``nn.Linear`` or already has an instance ``forward``; per call under autocast or an active GradScaler, for inputs
that are not 2-D/3-D or not float32/float64, for ``token_mean`` above
:data:`~lightning_ws.rnb.fused.FUSED_PER_EXAMPLE_MAX_ELEMENTS`, and while another callback re-weights the same
layer's output gradient (Grad-Mimic's in-graph path: the fused backward would see the re-weighted gradient).
``"fused"`` ignores the size limit, raises ``ConfigError`` for a sketch or a non-``nn.Linear`` layer, and warns once
when a call falls back. The fused backward is once-differentiable.
"""

from __future__ import annotations

from typing import Any

import torch

from lightning_ws.errors import ConfigError
from lightning_ws.rnb.fused import fused_blocker
from lightning_ws.rnb.mixture import (
    domain_gram,
    gram_stats,
    mixture_entropy,
    multiplicative_update,
    rnb_update,
    validate_mixture,
)
from lightning_ws.tracked_layer import check_state_version

__all__ = [
    "ACCUMULATIONS",
    "GRAD_METHODS",
    "METHODS",
    "REDUCTIONS",
    "STATE_VERSION",
    "check_rnb_args",
    "fused_unavailable",
    "pack_state",
    "resolve_p_eval",
    "round_log_values",
    "round_update",
    "unpack_state",
]

#: Mixture rules behind the same interface.
METHODS = ("rnb", "doge", "stratified", "proportional")
#: The methods that read gradients (the others are fixed mixtures: no hooks, no cost).
GRAD_METHODS = ("rnb", "doge")
#: Ways to collect the per-domain sums (see the module docstring).
ACCUMULATIONS = ("auto", "fused", "hooks")
REDUCTIONS = ("mean", "token_mean", "sum")
STATE_VERSION = 1


def check_rnb_args(*, layer: Any, method: Any, lam: Any, steps_per_round: Any, num_domains: Any, sketch_dim: Any,
                   prob_floor: Any, warmup_rounds: Any, loss_reduction: Any, target_key: Any, doge_lr: Any,
                   plot_every_n_rounds: Any, accumulation: Any) -> list[int] | None:
    """Check :class:`~lightning_ws.callbacks.RnBCallback`'s arguments (``ConfigError``); return ``sketch_dim`` as
    ``[k_out, k_in]`` (or ``None``). LightningCLI checks the ``Literal`` choices; direct Python use is checked here."""
    for name, value, options in (("method", method, METHODS), ("loss_reduction", loss_reduction, REDUCTIONS),
                                 ("accumulation", accumulation, ACCUMULATIONS)):
        if value not in options:
            raise ConfigError(f"{name} must be one of {options}, got {value!r}.")
    if not isinstance(layer, str) or not layer:
        raise ConfigError(f"layer must be the dotted name of an nn.Linear (e.g. 'classifier'), got {layer!r}.")
    for name, value, ok, need in (
            ("lam", lam, float(lam) > 0, "be > 0"), ("steps_per_round", steps_per_round, int(steps_per_round) >= 1,
                                                     "be >= 1"),
            ("prob_floor", prob_floor, 0.0 <= float(prob_floor) < 1.0, "lie in [0, 1)"),
            ("num_domains", num_domains, num_domains is None or int(num_domains) >= 1, "be >= 1"),
            ("doge_lr", doge_lr, float(doge_lr) > 0, "be > 0"),
            ("plot_every_n_rounds", plot_every_n_rounds, int(plot_every_n_rounds) >= 0, "be >= 0")):
        if not ok:
            raise ConfigError(f"{name} must {need}, got {value}.")
    if int(warmup_rounds) < 1:
        raise ConfigError(f"warmup_rounds must be >= 1 (1 = the paper: the first round uses the initial "
                          f"mixture), got {warmup_rounds}.")
    if loss_reduction == "token_mean" and not target_key:
        raise ConfigError("loss_reduction='token_mean' needs target_key (the batch key of the (B, T) targets).")
    if accumulation == "fused" and sketch_dim is not None:
        raise ConfigError("accumulation='fused' is exact accumulation; with sketch_dim the sketch is built from "
                          "the hooked factors (use accumulation='auto' or 'hooks').")
    if sketch_dim is None:
        return None
    dims = [int(sketch_dim)] * 2 if isinstance(sketch_dim, int) else [int(v) for v in sketch_dim]
    if len(dims) != 2 or min(dims) < 1:
        raise ConfigError(f"sketch_dim must be a positive int or [k_out, k_in], got {sketch_dim!r}.")
    return dims


def round_update(method: str, sums: torch.Tensor, counts: torch.Tensor, p: torch.Tensor, p_eval: torch.Tensor, *,
                 lam: float, doge_lr: float, normalize: bool, prob_floor: float,
                 with_stats: bool) -> tuple[torch.Tensor, bool, dict[str, float]]:
    """One round's mixture update from the per-domain sums: ``(new p, whether it changed, Gram statistics)`` (the
    statistics only ``with_stats``: they are made to be logged)."""
    gram, present = domain_gram(sums.cpu(), counts.cpu())
    update = rnb_update if method == "rnb" else multiplicative_update
    rate = {"lam": lam} if method == "rnb" else {"lr": doge_lr}
    p_new, updated = update(gram, p_eval, p.double(), present=present, normalize=normalize, prob_floor=prob_floor,
                            **rate)
    return p_new.cpu(), updated, gram_stats(gram) if with_stats else {}


def round_log_values(p: torch.Tensor, domain_names: list[str], round_: int, updated: bool, stats: dict[str, float],
                     counts: torch.Tensor | None, elapsed_ms: float) -> dict[str, float]:
    """The ``rnb/*`` values logged at the end of a round."""
    values = {f"rnb/p_{name}": float(v) for name, v in zip(domain_names, p)}
    values.update({"rnb/entropy": mixture_entropy(p), "rnb/round": float(round_), "rnb/updated": float(updated),
                   "rnb/update_ms": elapsed_ms})
    values.update({f"rnb/{k}": v for k, v in stats.items()})
    if counts is not None:
        values.update({f"rnb/n_{name}": float(c) for name, c in zip(domain_names, counts.cpu())})
    return values


def pack_state(method: str, p: torch.Tensor | None, round_: int, steps_in_round: int, last_global_step: int,
               history: list[list[float]], acc: Any = None) -> dict[str, Any]:
    """The callback's checkpoint state: ``p``, accumulators (``acc.sums``/``acc.counts``), counters, history."""
    state: dict[str, Any] = {
        "version": STATE_VERSION, "method": method, "p": None if p is None else p.clone().cpu(), "round": round_,
        "steps_in_round": steps_in_round, "last_global_step": last_global_step, "history": [list(h) for h in history],
    }
    if acc is not None:
        state["sums"] = acc.sums.detach().clone().cpu()
        state["counts"] = acc.counts.detach().clone().cpu()
    return state


def unpack_state(state: dict[str, Any], method: str, m: int | None) -> dict[str, Any]:
    """Check a :func:`pack_state` dict (version, method, number of domains ``m`` if known) and return its plain
    values: ``p`` (float64 or ``None``), ``round``, ``steps_in_round``, ``last_global_step``, ``history`` and, if
    saved, ``sums``/``counts``."""
    check_state_version(state, STATE_VERSION, "RnBCallback")
    if state.get("method", method) != method:
        raise ConfigError(f"checkpoint state is for method={state['method']!r}, this callback uses {method!r}.")
    p = None if state.get("p") is None else torch.as_tensor(state["p"], dtype=torch.float64).clone()
    if p is not None and m is not None and p.numel() != m:
        raise ConfigError(f"checkpoint mixture has {p.numel()} domains, the data has {m}.")
    out = {"p": p, "round": int(state["round"]), "steps_in_round": int(state["steps_in_round"]),
           "last_global_step": int(state["last_global_step"]),
           "history": [list(h) for h in state.get("history", [])]}
    out.update({k: state[k] for k in ("sums", "counts") if k in state})
    return out


def fused_unavailable(accumulation: str, sketch_dim: list[int] | None, module: Any, layer: str) -> str | None:
    """Why the fused backward cannot serve ``module`` (``None``: it can); ``ConfigError`` for
    ``accumulation="fused"``, which demands it."""
    reason = "sketch_dim is set (the sketch is built from the hooked factors)" if sketch_dim is not None \
        else fused_blocker(module, layer)
    if reason is not None and accumulation == "fused":
        raise ConfigError(f"accumulation='fused' is not possible: {reason}; use accumulation='auto' or 'hooks'.")
    return reason


def resolve_p_eval(p_eval_arg: Any, datamodule_p_eval: Any, m: int) -> torch.Tensor:
    """The evaluation proportions: the callback's argument, else the datamodule's (``ConfigError`` if neither)."""
    pe = p_eval_arg if p_eval_arg is not None else datamodule_p_eval
    if pe is None:
        raise ConfigError("R&B needs p_eval (evaluation proportions per domain): pass p_eval= or give the "
                          "datamodule evaluation domains.")
    return validate_mixture(pe, m, name="p_eval")

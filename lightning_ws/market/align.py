"""Weight matching: permute a seller's hidden units to line up with the buyer's before interpolating.

Train 'n Trade (arXiv 2312.04740) aligns the seller's network to the buyer's with weight matching in the style of Git
Re-Basin (Ainsworth et al., arXiv 2209.04836): every hidden axis gets a permutation ``P_l`` and

    max_{P} sum_l < W^A_l , P_l W^B_l P_{l-1}^T >_F

is solved by coordinate ascent: visit the permutations in a seeded random order; for each, sum over the tensors that
touch its axis the products ``W^A_(axis, .) (W^B_(axis, .))^T`` (every other permutation already applied to B) and
solve the linear assignment that maximises it (``scipy.optimize.linear_sum_assignment``); stop after a sweep that
improves nothing, or after ``max_sweeps`` (300, as in the reference code).

Where it applies (said plainly):

* :func:`sequential_permutation_spec` builds the permutation spec of a **feed-forward chain**: ``nn.Linear`` and
  ``nn.Conv2d`` layers whose forward pass runs them in registration order, each feeding the next, with element-wise
  activations, pooling, dropout and flattening between them, and per-channel normalisation layers after a layer
  (``BatchNorm1d/2d``, ``LayerNorm`` over the features, ``GroupNorm(1, C)``). A ``Conv2d`` feeding an ``nn.Linear``
  through a flatten is handled (channel blocks of ``H*W`` inputs).
* It does **not** apply to residual connections (ResNets need permutations shared across a residual stream; write
  the spec by hand with :class:`PermutationSpec`), attention, embeddings, recurrent layers, ``GroupNorm`` with more
  than one group, or any model whose ``forward`` is not the registration-order chain. The builder raises
  :class:`AlignmentNotApplicable` for modules it does not know, and the callback additionally checks on real inputs
  that the permuted seller computes the same function (:func:`function_preserved`) before it uses an alignment;
  when the check fails it trades without alignment and says so.
* BatchNorm running statistics are permuted with their channels. Interpolating two aligned models still changes the
  statistics of the hidden activations; the callback can re-estimate them after a purchase (``repair_batchnorm``).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import Tensor, nn

from lightning_ws.errors import LightningWSError

__all__ = ["AlignmentNotApplicable", "PermutationSpec", "sequential_permutation_spec", "weight_matching",
           "apply_permutation", "function_preserved"]

#: One axis of a tensor: ``None`` (not permuted), a permutation name, or ``(name, block)`` for an axis that holds
#: ``block`` consecutive entries per permuted unit (a flattened conv feature map feeding a linear layer).
Axis = str | tuple[str, int] | None


class AlignmentNotApplicable(LightningWSError):
    """The model has layers that weight matching by a feed-forward permutation spec cannot handle."""


@dataclass
class PermutationSpec:
    """Which axis of which tensor each permutation acts on.

    Attributes:
        axes: ``{state-dict key: (axis spec per dimension)}``; keys not listed are never permuted.
        sizes: ``{permutation name: number of units}``.
    """

    axes: dict[str, tuple[Axis, ...]]
    sizes: dict[str, int] = field(default_factory=dict)

    def perm_to_axes(self) -> dict[str, list[tuple[str, int, int]]]:
        """``{perm: [(key, axis, block), ...]}``."""
        out: dict[str, list[tuple[str, int, int]]] = {p: [] for p in self.sizes}
        for key, spec in self.axes.items():
            for axis, a in enumerate(spec):
                if a is None:
                    continue
                name, block = (a, 1) if isinstance(a, str) else a
                out.setdefault(name, []).append((key, axis, block))
        return out


_NORMS = (nn.BatchNorm1d, nn.BatchNorm2d, nn.LayerNorm, nn.GroupNorm)
_FREE = (nn.ReLU, nn.GELU, nn.Tanh, nn.Sigmoid, nn.SiLU, nn.LeakyReLU, nn.ELU, nn.Softplus, nn.Identity, nn.Dropout,
         nn.Dropout2d, nn.MaxPool2d, nn.AvgPool2d, nn.AdaptiveAvgPool2d, nn.AdaptiveMaxPool2d, nn.Flatten,
         nn.LogSoftmax, nn.Softmax, nn.Sequential, nn.ModuleList)


def sequential_permutation_spec(model: nn.Module) -> PermutationSpec:
    """The permutation spec of a feed-forward chain of ``Linear``/``Conv2d`` layers (see the module docstring).

    Raises:
        AlignmentNotApplicable: a module with parameters that is not a ``Linear``/``Conv2d``/per-channel norm, a
            ``GroupNorm`` with several groups, a norm before the first layer, or layer widths that do not chain.
    """
    layers: list[tuple[str, nn.Module]] = []
    norms_after: dict[int, list[tuple[str, nn.Module]]] = {}
    for name, mod in model.named_modules():
        if isinstance(mod, (nn.Linear, nn.Conv2d)):
            if isinstance(mod, nn.Conv2d) and mod.groups != 1:
                raise AlignmentNotApplicable(f"{name}: grouped convolutions are not supported by weight matching.")
            layers.append((name, mod))
        elif isinstance(mod, _NORMS):
            if not layers:
                raise AlignmentNotApplicable(f"{name}: a normalisation layer before the first weight layer.")
            if isinstance(mod, nn.GroupNorm) and mod.num_groups != 1:
                raise AlignmentNotApplicable(f"{name}: GroupNorm with {mod.num_groups} groups mixes the statistics of "
                                             f"channel groups; permuting channels would change the function.")
            if isinstance(mod, nn.LayerNorm) and len(mod.normalized_shape) != 1:
                raise AlignmentNotApplicable(f"{name}: LayerNorm over several dimensions is not supported.")
            norms_after.setdefault(len(layers) - 1, []).append((name, mod))
        elif isinstance(mod, _FREE) or mod is model:
            continue
        elif any(True for _ in mod.parameters(recurse=False)) or any(True for _ in mod.buffers(recurse=False)):
            raise AlignmentNotApplicable(f"{name} ({type(mod).__name__}) has parameters that a feed-forward "
                                         f"permutation spec does not cover; weight matching does not apply to this "
                                         f"model.")
    if len(layers) < 2:
        raise AlignmentNotApplicable("weight matching needs at least two weight layers (one hidden axis).")

    def pre(name: str) -> str:
        return f"{name}." if name else ""

    axes: dict[str, tuple[Axis, ...]] = {}
    sizes: dict[str, int] = {}
    for i, (name, mod) in enumerate(layers):
        out_perm = f"P{i}" if i < len(layers) - 1 else None
        in_perm: Axis = f"P{i - 1}" if i > 0 else None
        if i > 0:
            prev = layers[i - 1][1]
            prev_out = prev.out_features if isinstance(prev, nn.Linear) else prev.out_channels
            this_in = mod.in_features if isinstance(mod, nn.Linear) else mod.in_channels
            if this_in != prev_out:
                if isinstance(prev, nn.Conv2d) and isinstance(mod, nn.Linear) and this_in % prev_out == 0:
                    in_perm = (f"P{i - 1}", this_in // prev_out)
                else:
                    raise AlignmentNotApplicable(f"{name} takes {this_in} inputs but {layers[i - 1][0]} gives "
                                                 f"{prev_out}: the layers do not form a chain.")
        if out_perm is not None:
            sizes[out_perm] = mod.weight.shape[0]
        w_axes: list[Axis] = [out_perm, in_perm] + [None] * (mod.weight.dim() - 2)
        axes[f"{pre(name)}weight"] = tuple(w_axes)
        if mod.bias is not None:
            axes[f"{pre(name)}bias"] = (out_perm,)
        for nname, norm in norms_after.get(i, []):
            if out_perm is None:
                continue  # a norm after the output layer: nothing to permute
            for pname, _ in list(norm.named_parameters(recurse=False)) + list(norm.named_buffers(recurse=False)):
                if pname == "num_batches_tracked":
                    continue
                axes[f"{pre(nname)}{pname}"] = (out_perm,)
    return PermutationSpec(axes=axes, sizes=sizes)


def _permute(t: Tensor, axis: int, block: int, perm: Tensor) -> Tensor:
    if block == 1:
        return t.index_select(axis, perm)
    shape = list(t.shape)
    view = t.reshape(*shape[:axis], shape[axis] // block, block, *shape[axis + 1:])
    return view.index_select(axis, perm).reshape(shape)


def _unit_rows(t: Tensor, axis: int, block: int) -> Tensor:
    """``t`` with the permuted axis first (units as rows) and everything else flattened."""
    shape = list(t.shape)
    if block != 1:
        t = t.reshape(*shape[:axis], shape[axis] // block, block, *shape[axis + 1:])
    return t.movedim(axis, 0).reshape(t.shape[axis], -1)


def apply_permutation(spec: PermutationSpec, perms: Mapping[str, Tensor],
                      params: Mapping[str, Tensor], *, skip: str | None = None) -> dict[str, Tensor]:
    """Permute ``params`` by ``perms`` along the spec's axes (``skip``: a permutation to leave out)."""
    out = dict(params)
    for key, spec_axes in spec.axes.items():
        if key not in out:
            continue
        t = out[key]
        for axis, a in enumerate(spec_axes):
            if a is None:
                continue
            name, block = (a, 1) if isinstance(a, str) else a
            if name == skip or name not in perms:
                continue
            t = _permute(t, axis, block, perms[name])
        out[key] = t
    return out


def weight_matching(spec: PermutationSpec, params_a: Mapping[str, Tensor], params_b: Mapping[str, Tensor], *,
                    max_sweeps: int = 300, seed: int = 0) -> dict[str, Tensor]:
    """Permutations ``{name: LongTensor}`` that make ``params_b`` match ``params_a`` (coordinate ascent).

    Apply them with :func:`apply_permutation` (``apply_permutation(spec, perms, params_b)``). Keys of the spec missing
    from either state dict are ignored. Deterministic for a given ``seed`` (a private numpy generator orders the
    sweep).
    """
    from scipy.optimize import linear_sum_assignment

    a = {k: v.detach().double().cpu() for k, v in params_a.items() if k in spec.axes}
    b = {k: v.detach().double().cpu() for k, v in params_b.items() if k in spec.axes}
    p2a = spec.perm_to_axes()
    perms = {p: torch.arange(n) for p, n in spec.sizes.items()}
    rng = np.random.default_rng(seed)
    names = sorted(spec.sizes)
    for _ in range(max_sweeps):
        improved = False
        for idx in rng.permutation(len(names)):
            p = names[idx]
            n = spec.sizes[p]
            b_others = apply_permutation(spec, perms, b, skip=p)
            score = torch.zeros(n, n, dtype=torch.float64)
            for key, axis, block in p2a.get(p, []):
                if key not in a or key not in b_others:
                    continue
                score += _unit_rows(a[key], axis, block) @ _unit_rows(b_others[key], axis, block).T
            rows, cols = linear_sum_assignment(score.numpy(), maximize=True)
            new = torch.as_tensor(cols[np.argsort(rows)], dtype=torch.long)
            old_val = score[torch.arange(n), perms[p]].sum().item()
            new_val = score[torch.arange(n), new].sum().item()
            if new_val > old_val + 1e-12 * max(1.0, abs(old_val)):
                perms[p] = new
                improved = True
        if not improved:
            break
    return perms


@torch.no_grad()
def function_preserved(model: nn.Module, original: Mapping[str, Tensor], permuted: Mapping[str, Tensor],
                       inputs: Sequence[Tensor], *, rtol: float = 1e-4, atol: float = 1e-5) -> bool:
    """Whether ``model`` computes the same outputs with ``permuted`` as with ``original`` (eval mode) on ``inputs``.

    The check that a permutation spec fits the model's real forward pass (a wrong spec changes the function).
    """
    from torch.func import functional_call

    was_training = model.training
    model.eval()
    try:
        for x in inputs:
            ya = functional_call(model, dict(original), (x,))
            yb = functional_call(model, dict(permuted), (x,))
            if not torch.allclose(ya, yb, rtol=rtol, atol=atol):
                return False
        return True
    finally:
        model.train(was_training)

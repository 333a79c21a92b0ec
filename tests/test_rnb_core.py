"""Lightning-free tests of R&B's core (arXiv 2505.00358): gradient accumulation, Gram/update maths, sampler, regroup."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from torch import nn

from lightning_ws.errors import ConfigError, DataError, DataFileNotFoundError
from lightning_ws.rnb import (
    DomainGradSink,
    DomainMixtureSampler,
    KroneckerSketch,
    RegroupResult,
    SemanticRegrouper,
    TfidfSvdEmbedder,
    accumulate_domain_grads,
    domain_gram,
    fused_accumulation_mode,
    fused_linear,
    install_fused_forward,
    multiplicative_update,
    per_example_linear_grads,
    rnb_scores,
    rnb_update,
)
from lightning_ws.rnb.cli import main as rnb_cli


# ----------------------------------------------------------------------------- per-example gradients
def _func_per_sample_grads(layer: nn.Linear, a: torch.Tensor, y: torch.Tensor, seq: bool) -> torch.Tensor:
    """Reference: torch.func per-sample gradients of each example's own loss, [W | b] flattened per example."""
    from torch.func import functional_call, grad, vmap

    params = {k: v.detach() for k, v in layer.named_parameters()}

    def loss_one(p, a_i, y_i):
        out = functional_call(layer, p, (a_i.unsqueeze(0),))
        if seq:  # mean over the example's target tokens (ignore -100)
            return nn.functional.cross_entropy(out.reshape(-1, out.shape[-1]), y_i.reshape(-1), ignore_index=-100)
        return nn.functional.cross_entropy(out, y_i.unsqueeze(0))

    g = vmap(grad(loss_one), in_dims=(None, 0, 0))(params, a, y)
    return torch.cat([g["weight"], g["bias"].unsqueeze(-1)], dim=-1)


def _hook_grads(layer: nn.Linear, a: torch.Tensor, y: torch.Tensor, seq: bool):
    """Run the ordinary batch loss; capture the layer input and output gradient like the callback does."""
    captured = {}
    out = layer(a)
    out.register_hook(lambda g: captured.__setitem__("delta", g))
    if seq:
        loss = nn.functional.cross_entropy(out.reshape(-1, out.shape[-1]), y.reshape(-1), ignore_index=-100)
    else:
        loss = nn.functional.cross_entropy(out, y)
    loss.backward()
    return a.detach(), captured["delta"]


def test_hook_gradients_equal_torch_func_classification():
    torch.manual_seed(0)
    layer = nn.Linear(5, 3).double()
    a, y = torch.randn(7, 5, dtype=torch.float64), torch.randint(0, 3, (7,))
    ref = _func_per_sample_grads(layer, a, y, seq=False)
    a_, delta = _hook_grads(layer, a, y, seq=False)
    got = per_example_linear_grads(a_, delta, example_scale=torch.full((7,), 7.0))  # undo the batch mean
    assert torch.allclose(got, ref, rtol=1e-6, atol=1e-12)
    # the per-domain sums (what the callback keeps) equal the brute-force loop over examples
    domains = torch.tensor([0, 2, 2, 1, 0, 2, 0])
    sums, counts = torch.zeros(3, 3, 6, dtype=torch.float64), torch.zeros(3, dtype=torch.float64)
    accumulate_domain_grads(sums, counts, a_, delta, domains, example_scale=torch.full((7,), 7.0))
    for d in range(3):
        assert torch.allclose(sums[d], ref[domains == d].sum(0), rtol=1e-6, atol=1e-12)
    assert counts.tolist() == [3.0, 1.0, 3.0]


def test_hook_gradients_equal_torch_func_sequences_token_mean():
    torch.manual_seed(1)
    b, t = 4, 6
    layer = nn.Linear(5, 4).double()
    a, y = torch.randn(b, t, 5, dtype=torch.float64), torch.randint(0, 4, (b, t))
    y[0, 3:] = -100  # examples of different lengths
    y[2, 1:] = -100
    ref = _func_per_sample_grads(layer, a, y, seq=True)
    a_, delta = _hook_grads(layer, a, y, seq=True)
    n_i = (y != -100).sum(1).double()
    scale = (y != -100).sum().double() / n_i  # turns the batch token-mean into each example's own token-mean
    got = per_example_linear_grads(a_, delta, example_scale=scale)
    assert torch.allclose(got, ref, rtol=1e-6, atol=1e-12)
    sums, counts = torch.zeros(2, 4, 6, dtype=torch.float64), torch.zeros(2, dtype=torch.float64)
    accumulate_domain_grads(sums, counts, a_, delta, torch.tensor([1, 0, 1, 1]), example_scale=scale)
    assert torch.allclose(sums[1], ref[[0, 2, 3]].sum(0), rtol=1e-6, atol=1e-12)
    assert torch.allclose(sums[0], ref[1], rtol=1e-6, atol=1e-12)


def test_accumulate_rejects_bad_domains_and_shapes():
    sums, counts = torch.zeros(2, 3, 5), torch.zeros(2)
    with pytest.raises(ConfigError, match="domain ids must lie"):
        accumulate_domain_grads(sums, counts, torch.randn(2, 4), torch.randn(2, 3), torch.tensor([0, 2]))
    with pytest.raises(ConfigError, match="accumulator has per-domain shape"):
        accumulate_domain_grads(sums, counts, torch.randn(2, 4), torch.randn(2, 3), torch.tensor([0, 1]),
                                include_bias=False)


@pytest.mark.parametrize("include_bias", [True, False])
@pytest.mark.parametrize("seq", [False, True])
def test_accumulate_strategies_agree_with_brute_force(include_bias, seq):
    """Both accumulation strategies (per-example bmm + index_add_, grouped GEMMs) equal a loop over examples, with
    per-example scales, a scalar scale, a validity mask and an absent domain."""
    g = torch.Generator().manual_seed(3)
    b, t, d_in, d_out, m = 9, 5, 6, 4, 4
    shape = (b, t) if seq else (b,)
    a = torch.randn(*shape, d_in, generator=g, dtype=torch.float64)
    delta = torch.randn(*shape, d_out, generator=g, dtype=torch.float64)
    domains = torch.tensor([2, 0, 2, 3, 0, 0, 3, 2, 0])  # domain 1 absent
    scale = torch.rand(b, generator=g, dtype=torch.float64) + 0.5
    valid = torch.tensor([True, True, False, True, True, True, True, True, False])
    per = per_example_linear_grads(a, delta, include_bias=include_bias, example_scale=scale)
    width = d_in + int(include_bias)
    ref = torch.zeros(m, d_out, width, dtype=torch.float64)
    ref_n = torch.zeros(m, dtype=torch.float64)
    for i in range(b):
        if valid[i]:
            ref[domains[i]] += per[i]
            ref_n[domains[i]] += 1
    for strategy in ("per_example", "grouped", "auto"):
        s, n = torch.zeros(m, d_out, width, dtype=torch.float64), torch.zeros(m, dtype=torch.float64)
        accumulate_domain_grads(s, n, a, delta, domains, example_scale=scale, include_bias=include_bias, valid=valid,
                                strategy=strategy)
        assert torch.allclose(s, ref, rtol=1e-12, atol=1e-12), strategy
        assert n.tolist() == ref_n.tolist()
        # a float scale is the same as a constant per-example tensor
        s2, s3 = torch.zeros_like(s), torch.zeros_like(s)
        accumulate_domain_grads(s2, torch.zeros(m), a, delta, domains, example_scale=2.5, include_bias=include_bias,
                                strategy=strategy)
        accumulate_domain_grads(s3, torch.zeros(m), a, delta, domains, example_scale=torch.full((b,), 2.5),
                                include_bias=include_bias, strategy=strategy)
        assert torch.allclose(s2, s3, rtol=1e-12, atol=1e-12)
    with pytest.raises(ConfigError, match="strategy"):
        accumulate_domain_grads(s, n, a, delta, domains, strategy="loop")


def test_grouped_accumulation_takes_views_for_domain_sorted_batches():
    """A batch already grouped by domain (the mixture sampler's order): the grouped path slices views instead of
    gathering, and gives the same sums as for the same examples in shuffled order."""
    from lightning_ws.rnb.functional import _domain_row_groups, _host_group_sizes

    g = torch.Generator().manual_seed(5)
    a, delta = torch.randn(7, 3, 6, generator=g, dtype=torch.float64), torch.randn(7, 3, 4, generator=g,
                                                                                  dtype=torch.float64)
    domains = torch.tensor([0, 0, 2, 2, 2, 3, 3])  # sorted, domain 1 absent
    assert _host_group_sizes(domains, 4) == ([2, 0, 3, 2], True)
    assert _host_group_sizes(torch.tensor([2, 0, 2]), 4) == ([1, 0, 2, 0], False)
    groups = list(_domain_row_groups(a, delta, domains, [2, 0, 3, 2], presorted=True))
    assert [d for d, _, _ in groups] == [0, 2, 3]
    storage = a.untyped_storage().data_ptr()
    assert all(a_d.untyped_storage().data_ptr() == storage for _, _, a_d in groups)  # views of the batch, no copy
    perm = torch.tensor([4, 0, 6, 2, 1, 5, 3])
    out = []
    for idx in (torch.arange(7), perm):
        s, n = torch.zeros(4, 4, 7, dtype=torch.float64), torch.zeros(4, dtype=torch.float64)
        accumulate_domain_grads(s, n, a[idx], delta[idx], domains[idx], example_scale=2.0, strategy="grouped")
        out.append((s, n))
        sink_s, sink_n = torch.zeros(4, 4, 7, dtype=torch.float64), torch.zeros(4, dtype=torch.float64)
        x = a[idx].clone().requires_grad_(True)
        w = torch.randn(4, 6, generator=g, dtype=torch.float64, requires_grad=True)
        bias = torch.zeros(4, dtype=torch.float64, requires_grad=True)
        y = fused_linear(x, w, bias, DomainGradSink(sink_s, sink_n, domains[idx], example_scale=2.0, mode="grouped"))
        y.backward(delta[idx])
        assert torch.allclose(sink_s, s, rtol=1e-12, atol=1e-12)
        assert torch.allclose(w.grad, torch.einsum("btd,bti->di", delta, a), rtol=1e-12, atol=1e-12)
    assert torch.allclose(out[0][0], out[1][0], rtol=1e-12, atol=1e-12) and out[0][1].tolist() == [2, 0, 3, 2]


def test_auto_strategy_switches_on_layer_size(monkeypatch):
    """Large layers take the grouped path (no (B, d_out, d_in) tensor): the result must not change at the switch."""
    import lightning_ws.rnb.accumulate as fn

    g = torch.Generator().manual_seed(4)
    a, delta = torch.randn(6, 3, 7, generator=g), torch.randn(6, 3, 5, generator=g)
    domains = torch.tensor([0, 1, 1, 0, 2, 1])
    out = []
    for limit in (10**9, 1):
        monkeypatch.setattr(fn, "PER_EXAMPLE_MAX_ELEMENTS", limit)
        s, n = torch.zeros(3, 5, 8), torch.zeros(3)
        fn.accumulate_domain_grads(s, n, a, delta, domains, example_scale=6.0)
        out.append(s)
    assert torch.allclose(out[0], out[1], rtol=1e-5, atol=1e-6)


def test_sketch_projects_bias_column_without_materialising_it():
    g = torch.Generator().manual_seed(5)
    sk = KroneckerSketch(5, 8, 3, 4, seed=2)
    a, delta = torch.randn(6, 4, 7, generator=g), torch.randn(6, 4, 5, generator=g)
    a1 = torch.cat([a, torch.ones(6, 4, 1)], dim=-1)
    got_a, got_d = sk.project_factors(a, delta, bias_column=True)
    ref_a, ref_d = sk.project(a1, delta)
    assert torch.allclose(got_a, ref_a, atol=1e-6) and torch.allclose(got_d, ref_d)
    with pytest.raises(ConfigError, match="bias column"):
        sk.project_factors(a1, delta, bias_column=True)



# ----------------------------------------------------------------------------- fused accumulation
def _fused_vs_plain(layer: nn.Linear, a: torch.Tensor, grad_out: torch.Tensor, sink: DomainGradSink):
    """Gradients of (a, W, b) from plain autograd and from ``fused_linear`` for the same output gradient."""
    out = []
    for fused in (False, True):
        x = a.detach().clone().requires_grad_(True)
        layer.zero_grad(set_to_none=True)
        y = fused_linear(x, layer.weight, layer.bias, sink) if fused else layer(x)
        y.backward(grad_out)
        out.append([x.grad, layer.weight.grad] + ([layer.bias.grad] if layer.bias is not None else []))
    return out


@pytest.mark.parametrize("seq", [False, True])
@pytest.mark.parametrize("bias,include_bias", [(True, True), (True, False), (False, False)])
@pytest.mark.parametrize("mode", ["per_example", "grouped"])
def test_fused_linear_grads_equal_autograd_and_sums_equal_hooks(seq, bias, include_bias, mode):
    """The fused backward gives autograd's gradients (float tolerance) and the hook path's per-domain sums."""
    g = torch.Generator().manual_seed(7)
    b, t, d_in, d_out, m = 9, 5, 6, 4, 4
    shape = (b, t) if seq else (b,)
    torch.manual_seed(0)
    layer = nn.Linear(d_in, d_out, bias=bias)
    a = torch.randn(*shape, d_in, generator=g)
    grad_out = torch.randn(*shape, d_out, generator=g)
    domains = torch.tensor([2, 0, 2, 3, 0, 0, 3, 2, 0])  # domain 1 absent
    if mode == "per_example":
        scale, valid = torch.rand(b, generator=g, dtype=torch.float64) + 0.5, torch.rand(b, generator=g) > 0.2
    else:
        scale, valid = 3.0, None
    width = d_in + int(include_bias)
    sums, counts = torch.zeros(m, d_out, width), torch.zeros(m, dtype=torch.float64)
    sink = DomainGradSink(sums, counts, domains, example_scale=scale, valid=valid, include_bias=include_bias,
                          mode=mode)
    plain, fused = _fused_vs_plain(layer, a, grad_out, sink)
    for p, f in zip(plain, fused):
        assert torch.allclose(f, p, rtol=1e-5, atol=1e-6)
    assert sink.calls == 1
    ref, ref_n = torch.zeros_like(sums), torch.zeros_like(counts)
    accumulate_domain_grads(ref, ref_n, a, grad_out, domains, example_scale=scale, valid=valid,
                            include_bias=include_bias)
    assert torch.allclose(sums, ref, rtol=1e-5, atol=1e-6) and torch.equal(counts, ref_n)


@pytest.mark.parametrize("seq", [False, True])
def test_fused_linear_sums_equal_torch_func_per_example_gradients(seq):
    """Per-domain sums out of the fused backward equal torch.func per-sample gradients (mean CE per example; token
    mean for sequences), as the hook path's do."""
    torch.manual_seed(2)
    b, t = 6, 5
    layer = nn.Linear(5, 4).double()
    a = torch.randn(b, t, 5, dtype=torch.float64) if seq else torch.randn(b, 5, dtype=torch.float64)
    y = torch.randint(0, 4, (b, t) if seq else (b,))
    if seq:
        y[0, 2:] = -100
        y[3, 1:] = -100
        n_i = (y != -100).sum(1).double()
        scale = (y != -100).sum().double() / n_i
    else:
        scale = torch.full((b,), float(b), dtype=torch.float64)
    ref = _func_per_sample_grads(layer, a, y, seq=seq)
    domains = torch.tensor([1, 0, 1, 2, 2, 1])
    sums, counts = torch.zeros(3, 4, 6, dtype=torch.float64), torch.zeros(3, dtype=torch.float64)
    sink = DomainGradSink(sums, counts, domains, example_scale=scale)
    out = fused_linear(a, layer.weight, layer.bias, sink)
    if seq:
        loss = nn.functional.cross_entropy(out.reshape(-1, 4), y.reshape(-1), ignore_index=-100)
    else:
        loss = nn.functional.cross_entropy(out, y)
    loss.backward()
    for d in range(3):
        assert torch.allclose(sums[d], ref[domains == d].sum(0), rtol=1e-6, atol=1e-12)
    assert counts.tolist() == [1.0, 3.0, 2.0]


def test_fused_linear_tied_weight_gets_both_gradients():
    """A head tied to the input embedding: autograd adds the fused head gradient to the embedding's."""
    grads = []
    for fused in (False, True):
        torch.manual_seed(3)
        emb, head = nn.Embedding(11, 6), nn.Linear(6, 11)
        head.weight = emb.weight
        ids, y = torch.randint(0, 11, (4, 7)), torch.randint(0, 11, (4, 7))
        h = torch.tanh(emb(ids))
        sink = DomainGradSink(torch.zeros(2, 11, 7), torch.zeros(2), torch.tensor([0, 1, 1, 0]))
        logits = fused_linear(h, head.weight, head.bias, sink) if fused else head(h)
        nn.functional.cross_entropy(logits.reshape(-1, 11), y.reshape(-1)).backward()
        grads.append((emb.weight.grad.clone(), head.bias.grad.clone()))
    assert torch.allclose(grads[1][0], grads[0][0], rtol=1e-5, atol=1e-7)
    assert torch.allclose(grads[1][1], grads[0][1], rtol=1e-5, atol=1e-7)


def test_fused_mode_choice_and_sink_validation():
    from lightning_ws.rnb.functional import FUSED_PER_EXAMPLE_MAX_ELEMENTS as fused_limit
    from lightning_ws.rnb.functional import PER_EXAMPLE_MAX_ELEMENTS as limit

    assert fused_accumulation_mode(2, 3, 4, uniform_scale=False) == "per_example"
    assert fused_accumulation_mode(limit, 2, 3, uniform_scale=True) == "grouped"
    # token_mean between the two limits (a small LM head): still the per-example fused backward
    assert fused_accumulation_mode(limit, 2, 1, uniform_scale=False) == "per_example"
    assert fused_accumulation_mode(32, 257, 129, uniform_scale=False) == "per_example"
    limit = fused_limit
    assert fused_accumulation_mode(limit, 2, 3, uniform_scale=False) is None  # token_mean on a large layer
    assert fused_accumulation_mode(limit, 2, 3, uniform_scale=False, force=True) == "per_example"
    sums, counts = torch.zeros(2, 3, 5), torch.zeros(2)
    with pytest.raises(ConfigError, match="one scale"):
        DomainGradSink(sums, counts, torch.tensor([0, 1]), example_scale=torch.ones(2), mode="grouped")
    with pytest.raises(ConfigError, match="domain ids must lie"):
        DomainGradSink(sums, counts, torch.tensor([0, 2]))
    with pytest.raises(ConfigError, match="mode"):
        DomainGradSink(sums, counts, torch.tensor([0, 1]), mode="loop")
    with pytest.raises(ConfigError, match="\\(B, d\\)"):
        fused_linear(torch.randn(2, 3, 4, 4), torch.randn(3, 4), None,
                     DomainGradSink(sums, counts, torch.tensor([0, 1])))


def test_install_fused_forward_keeps_hooks_state_dict_and_copies_plain():
    import copy
    import pickle

    torch.manual_seed(4)
    layer = nn.Linear(4, 3)
    keys = list(layer.state_dict())
    seen = []
    layer.register_forward_hook(lambda mod, inp, out: seen.append(out.shape))
    sums, counts = torch.zeros(2, 3, 5), torch.zeros(2)
    sinks = []

    def planner(mod, x):
        sinks.append(DomainGradSink(sums, counts, torch.tensor([0, 1, 1])))
        return sinks[-1]

    handle = install_fused_forward(layer, planner)
    assert type(layer) is nn.Linear and list(layer.state_dict()) == keys
    x = torch.randn(3, 4)
    layer(x).sum().backward()
    assert seen == [(3, 3)] and sinks[0].calls == 1 and float(counts.sum()) == 3
    plain = layer.weight.grad.clone()
    layer.zero_grad()
    copy.deepcopy(layer)(x).sum().backward()  # a copy runs the plain layer: no sink asked for, counts unchanged
    other = nn.Linear(4, 3)  # (no local-lambda hook, so it pickles)
    other_handle = install_fused_forward(other, planner)
    restored = pickle.loads(pickle.dumps(other))
    restored(x).sum().backward()
    assert len(sinks) == 1 and float(counts.sum()) == 3
    other_handle.remove()
    with pytest.raises(ConfigError, match="instance-level forward"):
        install_fused_forward(layer, planner)
    handle.remove()
    handle.remove()  # idempotent
    assert "forward" not in layer.__dict__
    layer.zero_grad()
    layer(x).sum().backward()
    assert torch.allclose(layer.weight.grad, plain, rtol=1e-6) and len(sinks) == 1

    class MyLinear(nn.Linear):
        pass

    with pytest.raises(ConfigError, match="exactly"):
        install_fused_forward(MyLinear(2, 2), planner)


# ----------------------------------------------------------------------------- Gram and update
def _random_gram(m: int, d: int = 6, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    sums = torch.randn(m, 3, d, generator=g, dtype=torch.float64)
    counts = torch.randint(1, 5, (m,), generator=g).double()
    gram, present = domain_gram(sums, counts)
    return gram, present, sums


def test_gram_symmetric_psd_and_matches_means():
    gram, present, sums = _random_gram(6)
    assert torch.equal(gram, gram.T)
    assert torch.linalg.eigvalsh(gram).min() > -1e-10
    assert present.all()
    g = torch.Generator().manual_seed(0)
    torch.randn(6, 3, 6, generator=g, dtype=torch.float64)  # _random_gram's draws, to recover its counts
    means = sums.reshape(6, -1) / torch.randint(1, 5, (6,), generator=g).double()[:, None]
    torch.testing.assert_close(gram, means @ means.T)


def test_gram_of_float32_sums_is_float64_and_survives_float32_overflow():
    sums = torch.randn(4, 5, 7, generator=torch.Generator().manual_seed(1))
    counts = torch.tensor([3.0, 0.0, 1.0, 2.0], dtype=torch.float64)
    gram, present = domain_gram(sums, counts)
    ref, _ = domain_gram(sums.double(), counts)
    assert gram.dtype == torch.float64 and present.tolist() == [True, False, True, True]
    torch.testing.assert_close(gram, ref, rtol=1e-5, atol=1e-6)
    assert not gram[1].any() and not gram[:, 1].any()  # an empty domain's row and column are zero
    big, _ = domain_gram(sums * 1e21, counts)  # float32 products overflow (1e42 > 3.4e38): redone in float64
    assert torch.isfinite(big).all()
    torch.testing.assert_close(big, ref * 1e42, rtol=1e-5, atol=0.0)


def test_update_scale_invariant_and_bounded():
    gram, _, _ = _random_gram(5, seed=3)
    p_eval = torch.tensor([0.5, 0.2, 0.1, 0.1, 0.1], dtype=torch.float64)
    uniform = torch.full((5,), 0.2, dtype=torch.float64)
    p1, ok = rnb_update(gram, p_eval, uniform, lam=3.0)
    p2, _ = rnb_update(gram * 1e-6, p_eval, uniform, lam=3.0)  # gradients scaled by 1e-3 -> G by 1e-6
    assert ok and torch.allclose(p1, p2, rtol=1e-10, atol=1e-12)
    logits = 3.0 * rnb_scores(gram, p_eval)
    assert logits.abs().max() <= 3.0 + 1e-12
    assert float(p1.max() / p1.min()) <= math.exp(6.0) + 1e-9
    assert abs(float(p1.sum()) - 1.0) < 1e-12


def test_uniform_when_gram_is_identity_and_concentrates_for_large_lambda():
    p_eval = torch.full((4,), 0.25, dtype=torch.float64)
    prev = torch.tensor([0.7, 0.1, 0.1, 0.1], dtype=torch.float64)
    p, ok = rnb_update(2.5 * torch.eye(4, dtype=torch.float64), p_eval, prev, lam=3.0)
    assert ok and torch.allclose(p, torch.full((4,), 0.25, dtype=torch.float64))  # replaces, does not accumulate
    # domain 2 is aligned with the evaluation proxy; lambda -> inf puts all mass there
    means = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0], [-1.0, 0.0]], dtype=torch.float64)
    gram = means @ means.T
    pe = torch.tensor([0.5, 0.5, 0.0, 0.0], dtype=torch.float64)
    p_big, _ = rnb_update(gram, pe, p_eval, lam=200.0)
    assert p_big.argmax() == 2 and p_big[2] > 0.999


def test_no_nan_with_empty_or_disjoint_domains():
    gram, present, _ = _random_gram(4, seed=5)
    prev = torch.tensor([0.4, 0.3, 0.2, 0.1], dtype=torch.float64)
    # domain 3 saw no example this round: it keeps its probability, the rest is renormalised among the others
    present = torch.tensor([True, True, True, False])
    gram_masked = gram.clone()
    gram_masked[3] = 0
    gram_masked[:, 3] = 0
    p, ok = rnb_update(gram_masked, torch.full((4,), 0.25, dtype=torch.float64), prev, present=present)
    assert ok and torch.isfinite(p).all() and abs(float(p.sum()) - 1) < 1e-12 and float(p[3]) == pytest.approx(0.1)
    # evaluation mass only on a domain with no training gradient: G p_eval = 0 -> keep p
    pe = torch.tensor([0.0, 0.0, 0.0, 1.0], dtype=torch.float64)
    p2, ok2 = rnb_update(gram_masked, pe, prev, present=present)
    assert not ok2 and torch.equal(p2, prev)
    # zero gradients everywhere: keep p
    p3, ok3 = rnb_update(torch.zeros(4, 4, dtype=torch.float64), torch.full((4,), 0.25, dtype=torch.float64), prev)
    assert not ok3 and torch.equal(p3, prev)
    # nothing present
    p4, ok4 = rnb_update(gram, pe, prev, present=torch.zeros(4, dtype=torch.bool))
    assert not ok4 and torch.equal(p4, prev)
    # empty accumulators give zero rows and no NaN in the Gram matrix
    g5, pres5 = domain_gram(torch.zeros(3, 2, 2), torch.tensor([0.0, 2.0, 0.0]))
    assert torch.isfinite(g5).all() and pres5.tolist() == [False, True, False]


def test_prob_floor_and_multiplicative_update_accumulates():
    gram, _, _ = _random_gram(4, seed=7)
    pe = torch.full((4,), 0.25, dtype=torch.float64)
    u = torch.full((4,), 0.25, dtype=torch.float64)
    p, _ = rnb_update(gram, pe, u, lam=50.0, prob_floor=0.2)
    assert float(p.min()) >= 0.2 / 4 - 1e-12
    p_once, _ = multiplicative_update(gram, pe, u, lr=1.0)
    p_twice, _ = multiplicative_update(gram, pe, p_once, lr=1.0)
    p_rnb, _ = rnb_update(gram, pe, p_once, lam=1.0)
    assert torch.allclose(p_once, p_rnb)  # from uniform, one multiplicative step = the R&B softmax with lam = lr
    assert not torch.allclose(p_twice, p_rnb)  # ... but it accumulates, R&B replaces
    assert torch.allclose(p_twice, rnb_update(gram, pe, u, lam=2.0)[0])


def test_kronecker_sketch_approximates_exact_gram():
    torch.manual_seed(0)
    m, b, d_in, d_out = 4, 64, 48, 40
    a = torch.randn(b, d_in)
    # domain-specific signal so that G has structure
    delta = torch.randn(b, d_out) * 0.3
    domains = torch.arange(b) % m
    basis = torch.randn(m, d_out)
    delta += basis[domains]
    exact_s, exact_n = torch.zeros(m, d_out, d_in + 1), torch.zeros(m)
    accumulate_domain_grads(exact_s, exact_n, a, delta, domains)
    g_exact, _ = domain_gram(exact_s, exact_n)
    errs = []
    for k in (8, 32):
        sk = KroneckerSketch(d_out, d_in + 1, k, k, seed=1)
        s, n = torch.zeros(m, sk.k_out, sk.k_in), torch.zeros(m)
        accumulate_domain_grads(s, n, a, delta, domains, sketch=sk)
        # projecting the factors equals sketching the full per-domain matrices
        assert torch.allclose(s, sk.sketch_matrix(exact_s), rtol=1e-4, atol=1e-3)
        g_sk, _ = domain_gram(s, n)
        errs.append(float(torch.linalg.matrix_norm(g_sk - g_exact) / torch.linalg.matrix_norm(g_exact)))
    assert errs[1] < 0.15, errs  # stated tolerance: 15% relative Frobenius error at 32 x 32 on this problem
    assert errs[1] < errs[0]
    # k >= d gives the identity projection: exact
    full = KroneckerSketch(d_out, d_in + 1, d_out, d_in + 1)
    s, n = torch.zeros(m, d_out, d_in + 1), torch.zeros(m)
    accumulate_domain_grads(s, n, a, delta, domains, sketch=full)
    assert torch.allclose(s, exact_s)


# ----------------------------------------------------------------------------- sampler
def _chi2_pvalue(observed: np.ndarray, expected: np.ndarray) -> float:
    from scipy.stats import chisquare

    return float(chisquare(observed, expected).pvalue)


def test_sampler_frequencies_match_p():
    domains = np.repeat(np.arange(4), [5, 50, 20, 1])
    p = [0.1, 0.2, 0.3, 0.4]
    s = DomainMixtureSampler(domains, p, batch_size=50, num_samples=20_000, seed=3)
    idx = np.fromiter(iter(s), dtype=np.int64)
    counts = np.bincount(domains[idx], minlength=4)
    assert counts.sum() == 20_000
    assert _chi2_pvalue(counts, np.asarray(p) * 20_000) > 1e-3
    # uniform within the chosen domain
    within = np.bincount(idx[domains[idx] == 1] - 5, minlength=50)
    assert _chi2_pvalue(within, np.full(50, within.sum() / 50)) > 1e-3


def test_sampler_groups_each_batch_by_domain():
    domains = np.arange(60) % 5
    grouped = DomainMixtureSampler(domains, batch_size=8, num_samples=80, seed=2)
    drawn = DomainMixtureSampler(domains, batch_size=8, num_samples=80, seed=2, group_by_domain=False)
    a, b = list(grouped), list(drawn)
    assert a != b  # a different order within batches ...
    for lo in range(0, 80, 8):
        ids = domains[a[lo:lo + 8]]
        assert (np.diff(ids) >= 0).all()  # ... grouped by domain ...
        assert sorted(a[lo:lo + 8]) == sorted(b[lo:lo + 8])  # ... of the same examples


def test_sampler_seeding_ranks_epochs_and_mutation():
    domains = np.arange(40) % 4
    a = list(DomainMixtureSampler(domains, batch_size=4, seed=0))
    assert a == list(DomainMixtureSampler(domains, batch_size=4, seed=0))
    r1 = DomainMixtureSampler(domains, batch_size=4, seed=0, rank=1, world_size=2)
    r0 = DomainMixtureSampler(domains, batch_size=4, seed=0, rank=0, world_size=2)
    assert list(r0) != list(r1) and len(r0) == 20
    s = DomainMixtureSampler(domains, batch_size=4, seed=0)
    s.set_epoch(1)
    assert list(s) != a
    # mutating p mid-iteration takes effect at the next drawn chunk, without a new iterator
    s = DomainMixtureSampler(domains, batch_size=4, seed=0)
    it = iter(s)
    first = [next(it) for _ in range(4)]
    s.set_mixture([0, 0, 1, 0])
    rest = list(it)
    assert len(first) == 4 and all(domains[i] == 2 for i in rest)
    # empty domains get no mass; all mass on empty domains is an error
    s2 = DomainMixtureSampler([0, 0, 2], num_domains=3, batch_size=2)
    assert s2.mixture.tolist() == [0.5, 0.0, 0.5]
    with pytest.raises(ConfigError, match="without examples"):
        s2.set_mixture([0, 1, 0])
    with pytest.raises(ConfigError, match="entries but there are"):
        s2.set_mixture([1, 1])
    with pytest.raises(ConfigError):
        DomainMixtureSampler([], batch_size=2)


def test_sampler_resume_replays_pending_chunks():
    domains = np.arange(30) % 3
    s = DomainMixtureSampler(domains, batch_size=3, num_samples=30, seed=5, track_consumption=True)
    it = iter(s)
    batches = []
    for step in range(4):
        batches.append([next(it) for _ in range(3)])
        if step == 1:
            s.set_mixture([1, 0, 0])
        if step < 3:
            s.advance()  # three batches consumed; the fourth was drawn (prefetched) but not consumed
    state = json.loads(json.dumps(s.state_dict()))  # plain types only
    rest_full = [next(it) for _ in range(6)]
    s2 = DomainMixtureSampler(domains, batch_size=3, num_samples=30, seed=5, track_consumption=True)
    s2.load_state_dict(state)
    resumed = list(iter(s2))[:9]
    assert resumed[:3] == batches[3]  # the prefetched chunk is replayed with the mixture it was drawn with
    assert resumed[3:] == rest_full
    with pytest.raises(ConfigError, match="seed"):
        DomainMixtureSampler(domains, batch_size=3, seed=6).load_state_dict(state)


class _StreamInWorkers(torch.utils.data.IterableDataset):
    """A dataset that runs the sampler inside each worker process (the mixture must be shared memory)."""

    def __init__(self, sampler: DomainMixtureSampler, domains: torch.Tensor) -> None:
        self.sampler, self.domains = sampler, domains

    def __iter__(self):
        info = torch.utils.data.get_worker_info()
        wid = info.id if info is not None else 0
        for chunk in range(wid, 10_000, info.num_workers if info else 1):
            yield self.domains[self.sampler.draw_chunk(chunk)]


def test_mixture_changes_reach_worker_processes():
    domains = torch.arange(40) % 4
    sampler = DomainMixtureSampler(domains, [1, 0, 0, 0], batch_size=8, seed=0)
    loader = torch.utils.data.DataLoader(_StreamInWorkers(sampler, domains), batch_size=None, num_workers=2,
                                         prefetch_factor=1, multiprocessing_context="fork")
    it = iter(loader)
    assert all(int(d) == 0 for d in next(it))
    sampler.set_mixture([0, 0, 0, 1])  # the main process changes p; workers read the shared tensor
    seen = [next(it) for _ in range(8)]
    assert all(int(d) == 3 for batch in seen[-4:] for d in batch)  # prefetched batches may still be old
    del it


# ----------------------------------------------------------------------------- regroup
def _planted(n_per: int = 40, k: int = 4, dim: int = 8, seed: int = 0):
    rng = np.random.default_rng(seed)
    centers = rng.normal(0, 5.0, size=(k, dim))
    labels = np.repeat(np.arange(k), n_per)
    x = centers[labels] + rng.normal(0, 0.5, size=(len(labels), dim))
    return x, labels, centers


def test_regroup_recovers_planted_clusters_and_maps_eval_points():
    from sklearn.metrics import adjusted_rand_score

    x, labels, centers = _planted()
    rng = np.random.default_rng(1)
    eval_lab = np.array([0] * 30 + [2] * 10)
    xe = centers[eval_lab] + rng.normal(0, 0.5, size=(40, centers.shape[1]))
    res = SemanticRegrouper([2, 3, 4, 6, 8], seed=0, progress=False).fit(x, xe)
    assert res.k == 4
    assert adjusted_rand_score(labels, res.train_domains) > 0.99
    assert adjusted_rand_score(eval_lab, res.eval_domains) > 0.99
    assert sorted(np.round(res.p_eval, 3).tolist()) == [0.0, 0.0, 0.25, 0.75]
    assert [r["k"] for r in res.table] == [2, 3, 4, 6, 8] and all(r["silhouette"] is not None for r in res.table)
    # eval points land in the training cluster of their planted centre
    for c in (0, 2):
        assert len(set(res.eval_domains[eval_lab == c])) == 1
        assert res.eval_domains[eval_lab == c][0] == np.bincount(res.train_domains[labels == c]).argmax()


def test_regroup_hook_selection_save_load(tmp_path):
    x, _, _ = _planted(n_per=20, k=3, seed=2)
    calls = []

    def hook(k, train_domains, eval_domains):
        calls.append(k)
        return abs(k - 5)  # pretend a stratified run over k clusters gives this eval loss

    res = SemanticRegrouper([2, 5, 7], selection=hook, progress=False).fit(x, x[:10])
    assert calls == [2, 5, 7] and res.k == 5 and res.table[1]["hook_loss"] == 0
    res.save(tmp_path / "r")
    assert not list((tmp_path / "r").glob("*.pkl"))
    back = RegroupResult.load(tmp_path / "r")
    assert back.k == 5 and np.array_equal(back.train_domains, res.train_domains)
    assert np.allclose(back.p_eval, res.p_eval) and back.table == res.table
    with pytest.raises(DataFileNotFoundError):
        RegroupResult.load(tmp_path / "missing")
    with pytest.raises(ConfigError, match="k_grid"):
        SemanticRegrouper([1, 2])
    with pytest.raises(DataError, match="dimension|-d"):
        SemanticRegrouper([2], progress=False).fit(x, x[:, :3])


def test_regroup_cli_jsonl_tfidf(tmp_path, capsys):
    rows = []
    topics = {"cooking": "pan oven bake flour sugar recipe", "football": "goal match striker league referee pitch",
              "space": "rocket orbit planet nasa launch astronaut"}
    rng = np.random.default_rng(0)
    for name, words in topics.items():
        w = words.split()
        for i in range(25):
            rows.append({"text": " ".join(rng.choice(w, size=6)), "label": i % 2, "domain": "all"})
    src = tmp_path / "texts.jsonl"
    src.write_text("\n".join(json.dumps(r) for r in rows))
    code = rnb_cli(["regroup", "--source", str(src), "--k", "2", "3", "4", "--embedder", "tfidf", "--tfidf-dim", "8",
                    "--test-fraction", "0",
                    "--out", str(tmp_path / "out"), "--no-progress"])
    assert code == 0
    res = RegroupResult.load(tmp_path / "out")
    assert res.k == 3 and res.metadata["embedder"] == "tfidf-svd8" and res.metadata["source"] == str(src)
    assert "chosen k = 3" in capsys.readouterr().out
    assert rnb_cli(["show", str(tmp_path / "out")]) == 0
    with pytest.raises(SystemExit):
        rnb_cli(["regroup"])  # --out is required


def test_tfidf_embedder_is_fitted_once():
    emb = TfidfSvdEmbedder(4)
    a = emb(["red apple", "green apple", "blue sky", "grey sky", "red sky"])
    b = emb(["red apple"])
    assert a.shape == (5, 4) and np.allclose(a[0], b[0])


def test_token_mean_scale_cpu_matches_definition_and_detects_equal_lengths():
    from lightning_ws.rnb.functional import token_mean_scale

    t = torch.tensor([[1, 2, -100, -100], [3, -100, -100, -100], [-100] * 4, [4, 5, 6, 7]])
    scale, valid = token_mean_scale(t, -100, factor=2.0)
    n = torch.tensor([2.0, 1.0, 0.0, 4.0])
    expected = torch.where(n > 0, 2.0 * n.sum() / n.clamp_min(1), torch.zeros(()))
    torch.testing.assert_close(scale, expected.double())
    assert valid.tolist() == [True, True, False, True]
    # equal target counts (packed batches): one float, B * factor, and no mask
    assert token_mean_scale(torch.ones(3, 5, dtype=torch.long), -100, factor=2.0) == (6.0, None)
    # every example has a target but lengths differ: a per-example scale and no mask (nothing to drop)
    t = torch.tensor([[1, 2, 3], [4, -100, -100], [5, 6, -100]])
    scale, valid = token_mean_scale(t, -100, factor=0.5)
    assert valid is None
    torch.testing.assert_close(scale, 0.5 * 6.0 / torch.tensor([3.0, 1.0, 2.0], dtype=torch.float64))
    # no examples at all
    scale, valid = token_mean_scale(torch.zeros(0, 4, dtype=torch.long))
    assert scale.numel() == 0 and valid.numel() == 0
    with pytest.raises(ConfigError, match=r"\(B, T\)"):
        token_mean_scale(torch.ones(3, dtype=torch.long))


def test_sink_rejects_bad_domain_ids_and_builds_counts_and_mixing_matrix():
    sums, counts = torch.zeros(2, 3, 5), torch.zeros(2, dtype=torch.float64)
    with pytest.raises(ConfigError, match="domain ids must lie in 0..1"):
        DomainGradSink(sums, counts, torch.tensor([0, 2]))
    with pytest.raises(ConfigError, match="domain ids must lie in 0..1"):
        DomainGradSink(sums, counts, torch.tensor([-1, 0]))
    sink = DomainGradSink(sums, counts, torch.tensor([0, 1, 1]), example_scale=torch.tensor([2.0, 3.0, 0.0]),
                          valid=torch.tensor([True, True, False]))
    assert sink.per_domain.tolist() == [1.0, 1.0]
    assert sink.mix.tolist() == [[2.0, 0.0, 0.0], [0.0, 3.0, 0.0], [1.0, 1.0, 1.0]]


def test_cpu_l2_size_is_read_from_sysfs_with_a_fallback(tmp_path):
    from lightning_ws.rnb.functional import _cpu_l2_bytes

    for i, (level, kind, size) in enumerate([("1", "Data", "48K"), ("1", "Instruction", "64K"),
                                             ("2", "Unified", "2048K"), ("3", "Unified", "480M")]):
        d = tmp_path / "cache" / f"index{i}"
        d.mkdir(parents=True)
        (d / "level").write_text(level + "\n")
        (d / "type").write_text(kind + "\n")
        (d / "size").write_text(size + "\n")
    assert _cpu_l2_bytes(root=str(tmp_path / "cache")) == 2 << 20
    assert _cpu_l2_bytes(default=12345, root=str(tmp_path / "missing")) == 12345
    (tmp_path / "cache" / "index2" / "size").write_text("junk\n")
    assert _cpu_l2_bytes(default=7, root=str(tmp_path / "cache")) == 7

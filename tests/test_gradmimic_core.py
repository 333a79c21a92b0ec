"""Unit tests of the Lightning-free Grad-Mimic core (arXiv 2501.06708): scores, weights, filters, reference checks."""

from __future__ import annotations

import math
import sys
import types

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call, grad, vmap

from lightning_ws.errors import ConfigError, DataError, DataFileNotFoundError
from lightning_ws.gradmimic import (
    MimicScoreFilter,
    ScoreLog,
    TargetDirection,
    aggregate_votes,
    batch_softmax_weights,
    batch_softmax_weights_checked,
    binarize,
    check_same_architecture,
    gmm_1d,
    grand_scores,
    load_reference_state,
    mimic_scores,
    per_sample_layer_grads,
    rho_scores,
    target_direction,
    top_p_indices,
    two_means_1d,
    vote_matrix,
    weighted_layer_grad,
)
from lightning_ws.io import save_tensors


def _vmap_per_sample(layer: nn.Linear, a: torch.Tensor, y: torch.Tensor, seq: bool):
    """Reference per-sample gradients of the layer's weight and bias with torch.func (vmap over grad)."""
    params = {k: v.detach() for k, v in layer.named_parameters()}

    def loss_one(p, ai, yi):
        z = functional_call(layer, p, (ai.unsqueeze(0),))
        if seq:  # token-level CE summed over positions, plus a nonlinear pooled term
            return F.cross_entropy(z[0], yi, reduction="sum") + z[0].mean(0).pow(2).sum()
        return F.cross_entropy(z, yi.unsqueeze(0))

    g = vmap(grad(loss_one), in_dims=(None, 0, 0))(params, a, y)
    return g["weight"], g["bias"]


def _closed_form_inputs(layer: nn.Linear, a: torch.Tensor, y: torch.Tensor, seq: bool):
    z = layer(a)
    if seq:
        loss = sum(F.cross_entropy(z[i], y[i], reduction="sum") + z[i].mean(0).pow(2).sum() for i in range(len(a)))
    else:
        loss = F.cross_entropy(z, y, reduction="sum")
    (delta,) = torch.autograd.grad(loss, z)
    return delta


@pytest.mark.parametrize("seq", [False, True])
@pytest.mark.parametrize("variant", ["proj", "cos"])
def test_closed_form_scores_equal_vmap(seq: bool, variant: str) -> None:
    torch.manual_seed(0)
    b, t, d_in, d_out = 7, 5, 6, 4
    layer = nn.Linear(d_in, d_out).double()
    a = torch.randn(b, t, d_in, dtype=torch.float64) if seq else torch.randn(b, d_in, dtype=torch.float64)
    y = torch.randint(0, d_out, (b, t) if seq else (b,))
    ref = nn.Linear(d_in, d_out).double()
    gw, gb = _vmap_per_sample(layer, a, y, seq)
    vw, vb = ref.weight.detach() - layer.weight.detach(), ref.bias.detach() - layer.bias.detach()
    vnorm = math.sqrt(float(vw.pow(2).sum() + vb.pow(2).sum()))
    dots = (gw * vw).sum((1, 2)) + (gb * vb).sum(1)
    expected = -dots / vnorm
    if variant == "cos":
        expected = expected / (gw.pow(2).sum((1, 2)) + gb.pow(2).sum(1)).sqrt()
    delta = _closed_form_inputs(layer, a, y, seq)
    v_w, v_b, norm = target_direction(ref.weight, layer.weight, ref.bias, layer.bias)
    got = mimic_scores(a, delta, v_w, v_b, variant=variant, v_norm=norm)
    torch.testing.assert_close(got.double(), expected, rtol=1e-5, atol=1e-6)
    # GraNd = per-sample gradient norm; also via the materialised reference
    norms = (gw.pow(2).sum((1, 2)) + gb.pow(2).sum(1)).sqrt()
    torch.testing.assert_close(grand_scores(a, delta).double(), norms, rtol=1e-5, atol=1e-6)
    pw, pb = per_sample_layer_grads(a, delta)
    torch.testing.assert_close(pw.double(), gw, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(pb.double(), gb, rtol=1e-5, atol=1e-6)


def test_grad_norm_long_sequence_route_matches_materialised() -> None:
    torch.manual_seed(1)
    a, d = torch.randn(3, 40, 5), torch.randn(3, 40, 2)  # T^2 (in+out) > in*out -> materialised route
    pw, pb = per_sample_layer_grads(a, d)
    torch.testing.assert_close(grand_scores(a, d), (pw.pow(2).sum((1, 2)) + pb.pow(2).sum(1)).sqrt(), rtol=1e-4,
                               atol=1e-5)


def test_weighted_layer_grad_equals_weighted_sum_of_per_sample_grads() -> None:
    torch.manual_seed(2)
    a, d = torch.randn(6, 3, 5), torch.randn(6, 3, 4)
    c = torch.rand(6)
    pw, pb = per_sample_layer_grads(a, d)
    gw, gb = weighted_layer_grad(a, d, c)
    torch.testing.assert_close(gw, (c[:, None, None] * pw).sum(0), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(gb, (c[:, None] * pb).sum(0), rtol=1e-5, atol=1e-5)


def test_zero_direction_gives_uniform_weights() -> None:
    layer = nn.Linear(5, 3)
    v_w, v_b, norm = target_direction(layer.weight, layer.weight, layer.bias, layer.bias)
    assert norm == 0.0
    s = mimic_scores(torch.randn(8, 5), torch.randn(8, 3), v_w, v_b, v_norm=norm)
    torch.testing.assert_close(batch_softmax_weights(s, 0.01), torch.full((8,), 1 / 8))


def test_softmax_weights_properties() -> None:
    s = torch.tensor([0.3, -1.0, 2.0, 0.0])
    w = batch_softmax_weights(s, 0.5)
    assert abs(float(w.sum()) - 1) < 1e-6 and int(w.argmax()) == 2
    torch.testing.assert_close(batch_softmax_weights(s + 123.0, 0.5), w)  # shift invariance
    torch.testing.assert_close(batch_softmax_weights(s, float("inf")), torch.full((4,), 0.25))
    torch.testing.assert_close(batch_softmax_weights(s, 1e6), torch.full((4,), 0.25), atol=1e-5, rtol=0)
    assert float(batch_softmax_weights(s, 1e-4)[2]) > 0.999  # tau -> 0: the best sample takes it all
    torch.testing.assert_close(batch_softmax_weights(torch.tensor([1.0, float("nan")]), 1.0), torch.tensor([.5, .5]))
    w2, finite = batch_softmax_weights_checked(s.double().reshape(2, 2), 0.5)  # any shape/dtype -> flat float32
    assert finite and w2.dtype == torch.float32
    torch.testing.assert_close(w2, w)
    for bad_score in (float("nan"), float("inf"), -float("inf")):
        w3, finite = batch_softmax_weights_checked(torch.tensor([1.0, bad_score, 0.0]), 1.0)
        assert not finite
        torch.testing.assert_close(w3, torch.full((3,), 1 / 3))
    assert batch_softmax_weights_checked(torch.tensor([3.0e38, 3.0e38]), 1.0)[1]  # large but finite: no overflow
    for bad in (0.0, -1.0, float("nan")):
        with pytest.raises(ConfigError, match="tau"):
            batch_softmax_weights(s, bad)


def test_rho_scores() -> None:
    logits = torch.tensor([[2.0, 0.0], [0.0, 2.0]])
    ref = torch.tensor([[0.0, 0.0], [0.0, 0.0]])
    y = torch.tensor([0, 0])
    own = F.cross_entropy(logits, y, reduction="none")
    torch.testing.assert_close(rho_scores(logits, ref, y), own - math.log(2))
    soft = torch.tensor([[1.0, 0.0], [1.0, 0.0]])
    torch.testing.assert_close(rho_scores(logits, ref, soft), own - math.log(2))


def test_score_shape_errors() -> None:
    with pytest.raises(DataError, match="agree"):
        mimic_scores(torch.randn(4, 5), torch.randn(3, 2), torch.zeros(2, 5))
    with pytest.raises(DataError, match="target direction"):
        mimic_scores(torch.randn(4, 5), torch.randn(4, 2), torch.ones(3, 5))
    with pytest.raises(ConfigError, match="variant"):
        mimic_scores(torch.randn(4, 5), torch.randn(4, 2), torch.ones(2, 5), variant="dot")
    with pytest.raises(DataError, match="shape"):
        target_direction(torch.zeros(2, 3), torch.zeros(3, 2))


# ---------------------------------------------------------------- binarisers and filters


def _bimodal(n_lo: int = 300, n_hi: int = 700, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    x = np.concatenate([rng.normal(0.4, 0.1, n_lo), rng.normal(1.6, 0.3, n_hi)])
    truth = np.concatenate([np.zeros(n_lo, bool), np.ones(n_hi, bool)])
    perm = rng.permutation(x.size)
    return x[perm], truth[perm]


def test_threshold_binarizer_is_strictly_above() -> None:
    v = np.array([1.0, 1.0001, 0.5, np.nan, 3.0])
    assert binarize(v, "threshold").tolist() == [0, 1, 0, -1, 1]
    assert binarize(v, "threshold", threshold=2.0).tolist() == [0, 0, 0, -1, 1]


@pytest.mark.parametrize("method", ["kmeans", "gmm"])
def test_cluster_binarizers_separate_bimodal_data(method: str) -> None:
    x, truth = _bimodal()
    votes = binarize(x, method)
    assert (votes.astype(bool) == truth).mean() > 0.98


def test_two_means_is_exact_and_gmm_handles_unequal_spread() -> None:
    x = np.array([0.0, 0.1, 0.2, 5.0, 5.1])
    assert 0.2 < two_means_1d(x) < 5.0
    assert two_means_1d(np.ones(4)) == math.inf and binarize(np.ones(4), "kmeans").tolist() == [1, 1, 1, 1]
    # a narrow low mode next to a wide high mode: GMM posterior puts the boundary near the narrow mode
    rng = np.random.default_rng(3)
    x = np.concatenate([rng.normal(0.0, 0.05, 500), rng.normal(1.0, 0.6, 500)])
    post = gmm_1d(x)
    assert post[:500].mean() < 0.1 and post[500:].mean() > 0.8


def test_majority_and_last_aggregation() -> None:
    L = np.array([[1, 1, 0], [0, -1, 0], [-1, -1, -1], [0, 1, -1]])
    assert aggregate_votes(L, "majority").tolist() == [2 / 3, 0.0, 0.5, 0.5]
    assert aggregate_votes(L, "last").tolist() == [0.0, 0.0, 0.5, 1.0]
    with pytest.raises(DataError, match="only -1"):
        aggregate_votes(np.array([[2]]), "majority")
    with pytest.raises(ConfigError, match="aggregator"):
        aggregate_votes(L, "mean")


def test_label_model_path_uses_make_label_model_api(monkeypatch: pytest.MonkeyPatch) -> None:
    """The label-model aggregator calls make_label_model(name, **kw).fit(L).predict_proba(L) on covered rows."""
    calls = {}

    class _Probe:
        def __init__(self, **kw):
            calls["kw"] = kw

        def fit(self, L):
            calls["fit"] = L.copy()
            return self

        def predict_proba(self, L):
            p = (L == 1).sum(1) / np.maximum((L != -1).sum(1), 1)
            return np.stack([1 - p, p], 1)

    fake = types.ModuleType("lightning_ws.labelmodels")
    fake.make_label_model = lambda name, **kw: (calls.setdefault("name", name), _Probe(**kw))[1]
    monkeypatch.setitem(sys.modules, "lightning_ws.labelmodels", fake)
    L = np.array([[1, 1, 0], [-1, -1, -1], [0, 0, 1]])
    prob = aggregate_votes(L, "label_model", label_model="ds", label_model_kwargs={"seed": 3})
    assert calls["name"] == "ds" and calls["kw"] == {"seed": 3, "num_classes": 2} and calls["fit"].shape == (2, 3)
    np.testing.assert_allclose(prob, [2 / 3, 0.5, 1 / 3])


def test_label_model_recovers_majority_on_independent_equal_voters() -> None:
    """Spec §11.7: with independent, equally accurate voters the label model's decision equals majority vote."""
    rng = np.random.default_rng(0)
    y = rng.random(2000) < 0.6
    L = np.stack([np.where(rng.random(2000) < 0.8, y, ~y) for _ in range(5)], 1).astype(np.int64)
    mv = aggregate_votes(L, "majority") >= 0.5
    lm = aggregate_votes(L, "label_model") >= 0.5
    assert (mv == lm).mean() > 0.98


def test_filter_end_to_end_and_top_p() -> None:
    x, truth = _bimodal(200, 800, seed=5)
    rng = np.random.default_rng(6)
    table = np.stack([x + rng.normal(0, 0.05, x.size) for _ in range(4)])
    table[1, :50] = np.nan  # unseen in a round
    for binz in ("threshold", "kmeans", "gmm"):
        res = MimicScoreFilter(binz, "majority").fit(table)
        assert (res.keep_mask == truth).mean() > 0.97, binz
        assert abs(res.quality - 0.8) < 0.03
    res = MimicScoreFilter("gmm", "last").fit(table)
    top = res.top_p(0.5)
    assert top.size == 500 and truth[top].all()
    assert top_p_indices(np.array([0.1, np.nan, 0.5, 0.5]), 0.75).tolist() == [2, 3, 0]
    with pytest.raises(ConfigError):
        MimicScoreFilter("otsu")
    with pytest.raises(DataError):
        MimicScoreFilter().fit(np.zeros(3))
    assert vote_matrix(table[:0]).shape == (table.shape[1], 0)


def test_score_log_table_and_state_roundtrip() -> None:
    log = ScoreLog()
    log.append(torch.tensor([0, 2]), torch.tensor([0.25, 0.75]), torch.tensor([-1.0, 1.0]), batch_size=2, epoch=0,
               step=0)
    log.append(torch.tensor([1, 2]), torch.tensor([0.5, 0.5]), torch.tensor([0.0, 0.0]), batch_size=2, epoch=1, step=1)
    t = log.table(num_samples=4)
    np.testing.assert_allclose(t, [[0.5, np.nan, 1.5, np.nan], [np.nan, 1.0, 1.0, np.nan]])
    np.testing.assert_allclose(log.table(value="score", by="step")[1], [np.nan, 0.0, 0.0])
    other = ScoreLog()
    other.load_state_dict(log.state_dict())
    for k, v in log.tensors().items():
        assert torch.equal(v, other.tensors()[k])
    with pytest.raises(DataError):
        log.table(num_samples=2)


# ---------------------------------------------------------------- reference loading


def test_reference_loading_and_mismatch_errors(tmp_path) -> None:
    model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 3))
    sd = model.state_dict()
    save_tensors(tmp_path / "ref.safetensors", sd)
    torch.save({"state_dict": sd, "epoch": 3}, tmp_path / "ref.ckpt")
    for src in (model, sd, {"state_dict": sd}, tmp_path / "ref.safetensors", str(tmp_path / "ref.ckpt")):
        got = load_reference_state(src)
        assert set(got) == set(sd) and all(torch.equal(got[k], sd[k]) for k in sd)
    with pytest.raises(DataFileNotFoundError, match="not found"):
        load_reference_state(tmp_path / "nope.ckpt")
    torch.save({"obj": types.SimpleNamespace(a=1)}, tmp_path / "pickled.pt")
    with pytest.raises(DataError, match="weights_only"):
        load_reference_state(tmp_path / "pickled.pt")
    other = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 5)).state_dict()
    with pytest.raises(ConfigError, match=r"2\.weight: reference \(5, 8\) vs model \(3, 8\)"):
        check_same_architecture(other, sd)
    renamed = {"model." + k: v for k, v in sd.items()}
    with pytest.raises(ConfigError, match="missing in the reference"):
        check_same_architecture(renamed, sd)
    check_same_architecture({"2.weight": sd["2.weight"]}, sd, keys=["2.weight"])
    with pytest.raises(ConfigError, match="nn.Module"):
        load_reference_state(42)


# ---------------------------------------------------------------- step-path helpers (overhead work, issue 6)


@pytest.mark.parametrize("seq", [False, True])
@pytest.mark.parametrize("variant", ["proj", "cos"])
def test_grad_scale_equals_prescaled_gradients(seq: bool, variant: str) -> None:
    torch.manual_seed(3)
    shape = (6, 4) if seq else (6,)
    a, d = torch.randn(*shape, 5), torch.randn(*shape, 3)
    layer, ref = nn.Linear(5, 3), nn.Linear(5, 3)
    v_w, v_b, norm = target_direction(ref.weight, layer.weight, ref.bias, layer.bias)
    for bias in (v_b, None):
        want = mimic_scores(a, d * 7.5, v_w, bias, variant=variant, v_norm=norm)
        got = mimic_scores(a, d, v_w, bias, variant=variant, v_norm=norm, grad_scale=7.5)
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)
    with pytest.raises(ConfigError, match="grad_scale"):
        mimic_scores(a, d, v_w, v_b, grad_scale=0.0)


def test_target_direction_buffer_matches_function_and_is_reused() -> None:
    torch.manual_seed(4)
    layer, ref = nn.Linear(5, 3), nn.Linear(5, 3)
    td = TargetDirection(ref.weight, ref.bias)
    v_w, v_b, norm = td(layer.weight, layer.bias)  # grad mode on: parameters are detached internally
    w2, b2, n2 = target_direction(ref.weight, layer.weight, ref.bias, layer.bias)
    torch.testing.assert_close(v_w, w2)
    torch.testing.assert_close(v_b, b2)
    assert abs(norm - n2) < 1e-5 and not v_w.requires_grad
    with torch.no_grad():
        layer.weight.add_(1.0)
    v_w2, _, norm2 = td(layer.weight, layer.bias)
    assert v_w2.data_ptr() == v_w.data_ptr()  # same buffer, recomputed in place
    torch.testing.assert_close(v_w2, ref.weight.detach() - layer.weight.detach())
    assert abs(norm2 - target_direction(ref.weight, layer.weight, ref.bias, layer.bias)[2]) < 1e-4
    nb = TargetDirection(ref.weight)
    assert nb(layer.weight)[1] is None
    with pytest.raises(DataError, match="bias"):
        nb(layer.weight, layer.bias)
    with pytest.raises(DataError, match="shape"):
        td(torch.zeros(3, 4), layer.bias)


def test_score_log_consolidates_pending_batches() -> None:
    rng = torch.Generator().manual_seed(5)
    log, rows = ScoreLog(flush_every=3), []
    for step in range(8):  # two consolidations (after 3 and 6 batches) and two pending batches
        n = 2 + step % 3
        idx, w, s = torch.randperm(10, generator=rng)[:n], torch.rand(n, generator=rng), torch.randn(n, generator=rng)
        log.append(idx, w.double(), s, batch_size=n, epoch=step // 4, step=step)
        rows.append((idx, w, s, n, step // 4, step))
    assert len(log) == sum(r[3] for r in rows)
    t = log.tensors()
    assert torch.equal(t["idx"], torch.cat([r[0] for r in rows]))
    assert torch.equal(t["weight"], torch.cat([r[1] for r in rows])) and t["weight"].dtype == torch.float32
    assert torch.equal(t["score"], torch.cat([r[2] for r in rows]))
    for j, k in ((3, "batch_size"), (4, "epoch"), (5, "step")):
        assert t[k].tolist() == [r[j] for r in rows for _ in range(r[3])], k
    log.append(torch.tensor([1]), torch.tensor([1.0]), torch.tensor([0.5]), batch_size=1, epoch=2, step=8)
    assert log.tensors()["step"][-1] == 8 and len(log) == t["idx"].numel() + 1
    other = ScoreLog()
    other.load_state_dict(log.state_dict())
    assert all(torch.equal(v, other.tensors()[k]) for k, v in log.tensors().items())
    with pytest.raises(DataError, match="flush_every"):
        ScoreLog(flush_every=0)

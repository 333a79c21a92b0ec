"""Grad-Mimic where the layers below the mimic layer train (issue 24, point 1): signal checks and output-space scores.

The failing cases of the issue, on digits: the paper's weight-space direction with a body trained from another
initialisation (or from the reference's own initialisation) gives *mislabelled* samples more weight, and the filter
reported a confident clean fraction from such weights. Now: the alignment check refuses or warns, ``space="auto"``
scores in output space (where the signal is), and the filter refuses tables without signal.
"""

from __future__ import annotations

import math

import lightning.pytorch as pl
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch.func import functional_call, grad, vmap

from lightning_ws.callbacks.gradmimic import GradMimicCallback, GradMimicSignalWarning
from lightning_ws.datamodules.gradmimic import NoisyImageDataModule
from lightning_ws.errors import ConfigError, DataError
from lightning_ws.gradmimic import (
    MimicScoreFilter,
    alignment_counts,
    kappa_from_counts,
    output_mimic_scores,
    reducible_loss_selection,
    table_signal,
)
from lightning_ws.modules.gradmimic import GradMimicClassifier
from tests.test_gradmimic_callback import GradProbe, SequentialDigits, _batches, _trainer


def _auc(pos: np.ndarray, neg: np.ndarray) -> float:
    """P(a clean sample's value > a mislabelled one's), ties count half."""
    allv = np.concatenate([pos, neg])
    order = allv.argsort(kind="stable")
    ranks = np.empty(allv.size)
    ranks[order] = np.arange(1, allv.size + 1)
    for v in np.unique(allv):  # average ranks of ties
        m = allv == v
        ranks[m] = ranks[m].mean()
    return float((ranks[: pos.size].sum() - pos.size * (pos.size + 1) / 2) / (pos.size * neg.size))


@pytest.fixture(scope="module")
def digits() -> NoisyImageDataModule:
    return NoisyImageDataModule("digits", noise_rate=0.4, noise_seed=1, batch_size=32, val_fraction=0.0)


def _mlp(seed: int, lr: float = 3e-3) -> GradMimicClassifier:
    torch.manual_seed(seed)
    return GradMimicClassifier(64, 10, [32], lr=lr)


def _clean_reference(dm: NoisyImageDataModule, seed: int) -> GradMimicClassifier:
    """The paper's oracle reference: same architecture, trained on the clean labels (full batch, seconds)."""
    ref = _mlp(seed)
    x, y = dm.train_dataset().x, torch.from_numpy(dm.clean_train_labels)
    opt = torch.optim.Adam(ref.parameters(), lr=0.01)
    for _ in range(150):
        opt.zero_grad()
        F.cross_entropy(ref(x), y).backward()
        opt.step()
    return ref


@pytest.fixture(scope="module")
def other_init_ref(digits) -> GradMimicClassifier:
    return _clean_reference(digits, seed=123)


@pytest.fixture(scope="module")
def same_init_ref(digits) -> GradMimicClassifier:
    return _clean_reference(digits, seed=0)  # the student below starts from seed 0 too


def _fit(dm, cb, epochs: int = 2, seed: int = 0) -> GradMimicClassifier:
    model = _mlp(seed)
    _trainer([cb], steps=epochs * math.ceil(dm.num_train / dm.batch_size)).fit(model, dm)
    return model


def _weight_auc(cb: GradMimicCallback, dm: NoisyImageDataModule) -> float:
    mean = np.nanmean(cb.score_table(num_samples=dm.num_train), axis=0)
    return _auc(mean[~dm.noisy_mask], mean[dm.noisy_mask])


@pytest.mark.parametrize("ref_name", ["other_init_ref", "same_init_ref"])
def test_weight_space_with_trained_body_is_refused_at_the_start(digits, ref_name, request) -> None:
    """Issue 24.1: body trained, reference from another (or the same) init -> no signal; refused before training."""
    ref = request.getfixturevalue(ref_name)
    cb = GradMimicCallback("head", reference=ref, tau=0.5, space="weights")
    model = _mlp(0)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(ConfigError, match="not in the reference's feature space.*kappa"):
        _trainer([cb], steps=5).fit(model, digits)
    assert not cb.signal["ok"] and cb.signal["alignment"][0][1] < 0.5
    for k, v in model.state_dict().items():  # refused on the first batch, before any update
        assert torch.equal(v, before[k]), k


def test_weight_space_inverts_and_filter_refuses_while_output_space_recovers(digits, other_init_ref) -> None:
    """The issue's numbers in small: weight space gives mislabelled samples more weight (AUC < 0.5) and the filter
    reported a clean fraction; output space (what space='auto' picks here) separates them; the filter refuses the
    first and estimates the second."""
    warned = GradMimicCallback("head", reference=other_init_ref, tau=0.5, space="weights", on_no_signal="warn")
    with pytest.warns(GradMimicSignalWarning, match="feature space"):
        _fit(digits, warned)
    assert _weight_auc(warned, digits) < 0.5  # inverted: what main did silently
    with pytest.raises(DataError, match="no per-sample signal.*feature space"):
        warned.filter("gmm", "majority", num_samples=digits.num_train)
    with pytest.warns(GradMimicSignalWarning):
        res = warned.filter("gmm", "majority", num_samples=digits.num_train, on_no_signal="warn")
    assert not res.reliable and math.isnan(res.quality) and res.keep_mask.all()

    auto = GradMimicCallback("head", reference=other_init_ref, tau=1.0)
    _fit(digits, auto)
    assert auto.signal == {"ok": True, "space": "outputs", "reasons": [], "alignment": []}
    assert _weight_auc(auto, digits) > 0.9
    res = auto.filter("threshold", "majority", num_samples=digits.num_train)
    assert res.reliable and abs(res.quality - 0.6) < 0.1
    pred_noisy = ~res.keep_mask
    recall = (pred_noisy & digits.noisy_mask).sum() / digits.noisy_mask.sum()
    precision = (pred_noisy & digits.noisy_mask).sum() / pred_noisy.sum()
    assert recall > 0.8 and precision > 0.8, (precision, recall)


def test_output_space_matches_per_sample_reference(other_init_ref) -> None:
    """Output space: head grad = sum_i w_i g_i, w = softmax(m / tau), m_i = -delta_i . (z_ref_i - z_i) / ||V|| with
    z_ref from the reference's own forward (eval mode); the body keeps the mean gradient."""
    dm = SequentialDigits("digits", noise_rate=0.4, noise_seed=1, batch_size=8, val_fraction=0.0)
    model, probe = _mlp(0), GradProbe()
    cb = GradMimicCallback("head", reference=other_init_ref.state_dict(), tau=0.3, space="outputs")
    _trainer([cb, probe], steps=1).fit(model, dm)
    (batch,) = _batches(dm, 1)
    params = probe.params[0]
    x, y = batch["x"], batch["labels"]

    def loss_one(p, xi, yi):
        return F.cross_entropy(functional_call(model, p, (xi.unsqueeze(0),)), yi.unsqueeze(0))

    g = vmap(grad(loss_one), in_dims=(None, 0, 0))(params, x, y)
    z = functional_call(model, params, (x,)).detach()
    delta = torch.softmax(z, -1) - F.one_hot(y, 10).float()
    other_init_ref.eval()
    z_ref = other_init_ref(x).detach()
    ref_sd = other_init_ref.state_dict()
    v_norm = math.sqrt(float((ref_sd["head.weight"] - params["head.weight"]).pow(2).sum()
                             + (ref_sd["head.bias"] - params["head.bias"]).pow(2).sum()))
    m = -(delta * (z_ref - z)).sum(1) / v_norm
    w = torch.softmax(m / 0.3, 0)
    rec = cb.score_log.tensors()
    torch.testing.assert_close(rec["score"], m, rtol=1e-4, atol=1e-5)
    got = probe.grads[0]
    torch.testing.assert_close(got["head.weight"], (w[:, None, None] * g["head.weight"]).sum(0), rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(got["body.0.weight"], g["body.0.weight"].mean(0), rtol=1e-4, atol=1e-6)
    assert model.training  # the reference forward ran in eval mode and restored the flags


def test_output_space_equals_weight_space_on_a_shared_frozen_body(other_init_ref) -> None:
    """With the reference's own (frozen) body the two spaces are the same numbers; 'auto' picks weight space then."""
    dm = SequentialDigits("digits", noise_rate=0.4, noise_seed=1, batch_size=8, val_fraction=0.0)
    ref = other_init_ref.state_dict()
    records = {}
    for space in ("weights", "outputs", "auto"):
        model = _mlp(0)
        model.body.load_state_dict(other_init_ref.body.state_dict())
        model.body.requires_grad_(False)
        cb = GradMimicCallback("head", reference=ref, tau=0.3, space=space)
        _trainer([cb], steps=3).fit(model, dm)
        records[space] = cb.score_log.tensors()["score"]
        assert cb.signal["space"] == ("weights" if space == "auto" else space)
    torch.testing.assert_close(records["outputs"], records["weights"], rtol=1e-4, atol=1e-5)
    assert torch.equal(records["auto"], records["weights"])


def test_alignment_drop_during_training_warns_and_filter_refuses(digits, other_init_ref) -> None:
    """Monitoring: the body starts as the reference's (kappa 1) and is then replaced mid-run: the next check warns."""

    class ReplaceBody(pl.Callback):
        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
            if trainer.global_step == 6 and batch_idx == 6:
                torch.manual_seed(99)
                for m in pl_module.body:
                    if hasattr(m, "reset_parameters"):
                        m.reset_parameters()

    model = _mlp(0, lr=1e-4)
    model.load_state_dict(other_init_ref.state_dict())
    torch.manual_seed(0)
    model.head.reset_parameters()
    cb = GradMimicCallback("head", reference=other_init_ref, tau=0.5, space="weights", check_every_n_steps=5)
    with pytest.warns(GradMimicSignalWarning, match="fell at step 10"):
        _trainer([ReplaceBody(), cb], steps=12).fit(model, digits)
    steps = [a[0] for a in cb.signal["alignment"]]
    kappas = [a[1] for a in cb.signal["alignment"]]
    assert steps == [0, 5, 10] and kappas[0] > 0.9 and kappas[1] > 0.9 and kappas[2] < 0.5
    with pytest.raises(DataError, match="fell at step 10"):
        cb.filter(num_samples=digits.num_train)
    state = cb.state_dict()  # the verdict is part of the state (resume keeps it)
    fresh = GradMimicCallback("head", reference=other_init_ref, space="weights")
    fresh.load_state_dict(state)
    assert not fresh.signal["ok"] and fresh.signal["alignment"] == cb.signal["alignment"]


def test_outputs_space_refuses_an_inner_layer(digits, other_init_ref) -> None:
    cb = GradMimicCallback("body.0", reference=other_init_ref, space="outputs")
    with pytest.raises(ConfigError, match="only for the output layer"):
        _trainer([cb]).fit(_mlp(0), digits)


def test_outputs_space_needs_the_forward_module_to_run(digits, other_init_ref) -> None:
    class CallsSubmodulesDirectly(GradMimicClassifier):
        def training_step(self, batch, batch_idx):
            logits = self.head(self.body(batch["x"].float()))
            return F.cross_entropy(logits, batch["labels"])

    torch.manual_seed(0)
    model = CallsSubmodulesDirectly(64, 10, [32])
    with pytest.raises(ConfigError, match="was not called with them.*forward_module"):
        _trainer([GradMimicCallback("head", reference=other_init_ref)]).fit(model, digits)


def test_rho_uses_the_reference_outputs_when_the_body_is_not_shared(other_init_ref) -> None:
    """RHO-LOSS (softmax variant): the reference loss is the reference model's own loss, not the reference head's
    loss on the model's features (what main computed with a trained body)."""
    dm = SequentialDigits("digits", noise_rate=0.4, noise_seed=1, batch_size=8, val_fraction=0.0)
    model, probe = _mlp(0), GradProbe()
    cb = GradMimicCallback("head", reference=other_init_ref, tau=0.5, score="rho")
    _trainer([cb, probe]).fit(model, dm)
    (batch,) = _batches(dm, 1)
    x, y = batch["x"], batch["labels"]
    own = F.cross_entropy(functional_call(model, probe.params[0], (x,)), y, reduction="none")
    other_init_ref.eval()
    ref = F.cross_entropy(other_init_ref(x), y, reduction="none")
    torch.testing.assert_close(cb.score_log.tensors()["score"], (own - ref).detach(), rtol=1e-4, atol=1e-5)


# ------------------------------------------------------------------------------------------------ core functions


def test_filter_refuses_flat_and_inconsistent_tables() -> None:
    rng = np.random.default_rng(0)
    n = 400
    flat = np.ones((3, n))
    with pytest.raises(DataError, match="flat"):
        MimicScoreFilter("gmm").fit(flat)
    noise = rng.lognormal(0, 0.5, size=(4, n))  # each round independent: batch noise, no per-sample signal
    with pytest.raises(DataError, match="not reproduced between rounds"):
        MimicScoreFilter("threshold").fit(noise)
    with pytest.warns(GradMimicSignalWarning):
        res = MimicScoreFilter("threshold", on_no_signal="warn").fit(noise)
    assert not res.reliable and math.isnan(res.quality) and res.keep_mask.all() and res.signal["consistency"] < 0.1
    clean = rng.random(n) > 0.4  # a real per-sample signal, reproduced each round
    good = np.where(clean, 1.6, 0.3)[None, :] + rng.normal(0, 0.2, size=(4, n))
    res = MimicScoreFilter("threshold").fit(good)
    assert res.reliable and abs(res.quality - clean.mean()) < 0.02 and res.signal["consistency"] > 0.5
    with pytest.raises(DataError, match="found in training"):
        MimicScoreFilter("threshold").fit(good, no_signal_reasons=["found in training"])


def test_table_signal_and_kappa() -> None:
    t = np.array([[1.0, 2.0, 3.0, np.nan], [1.1, 2.1, 2.9, 4.0]])
    sig = table_signal(t)
    assert sig["consistency"] == pytest.approx(1.0) and sig["spread"] > 0
    assert math.isnan(table_signal(t[:1])["consistency"])
    torch.manual_seed(0)
    z = torch.randn(500, 10)
    assert kappa_from_counts(alignment_counts(z, z)) == pytest.approx(1.0)
    assert abs(kappa_from_counts(alignment_counts(z, torch.randn(500, 10)))) < 0.1
    assert math.isnan(kappa_from_counts(torch.zeros(22)))
    # counts add over batches (and ranks)
    c = alignment_counts(z[:200], z[:200] + 0.5 * torch.randn(200, 10)) + alignment_counts(z[200:], -z[200:])
    assert c[0] == 500 and 0 < kappa_from_counts(c) < 0.5


def test_output_scores_reduce_to_weight_scores_with_shared_inputs() -> None:
    from lightning_ws.gradmimic import mimic_scores, target_direction

    torch.manual_seed(0)
    a, d = torch.randn(6, 5), torch.randn(6, 3)
    w, b, w_ref, b_ref = torch.randn(3, 5), torch.randn(3), torch.randn(3, 5), torch.randn(3)
    vw, vb, nrm = target_direction(w_ref, w, b_ref, b)
    for variant in ("proj", "cos"):
        expected = mimic_scores(a, d, vw, vb, variant=variant, v_norm=nrm, grad_scale=2.0)
        got = output_mimic_scores(d, a @ w_ref.T + b_ref, a @ w.T + b, v_norm=nrm, variant=variant, inputs=a,
                                  grad_scale=2.0)
        torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)
    assert output_mimic_scores(d, d, d, v_norm=0.0).abs().sum() == 0
    with pytest.raises(DataError):
        output_mimic_scores(d, d[:, :2], d, v_norm=1.0)


def test_reducible_loss_selection() -> None:
    loss = torch.tensor([2.0, 0.5, 3.0, 1.0])
    il = torch.tensor([0.1, 0.4, 2.9, 0.2])  # reducible: 1.9, 0.1, 0.1, 0.8
    w = reducible_loss_selection(loss, il, 0.5)
    assert w.tolist() == [0.5, 0.0, 0.0, 0.5]
    assert reducible_loss_selection(loss, il, 1.0).tolist() == [0.25] * 4
    with pytest.raises(ConfigError):
        reducible_loss_selection(loss, il, 0.0)


def test_flat_weights_during_training_warn_and_filter_refuses(digits, other_init_ref) -> None:
    """A temperature far above the score scale makes the re-weighting uniform: warned at the epoch's end, and neither
    the callback's filter nor the table check report a clean fraction."""
    cb = GradMimicCallback("head", reference=other_init_ref, tau=1e6)
    with pytest.warns(GradMimicSignalWarning, match="flat in epoch 0"):
        _trainer([cb], steps=math.ceil(digits.num_train / 32), log_every_n_steps=5).fit(_mlp(0), digits)
    with pytest.raises(DataError, match="flat"):
        cb.filter("gmm", num_samples=digits.num_train)

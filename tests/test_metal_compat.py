"""Tests of the ``metal_compat`` label model (Weaver's fixed-step MeTaL recipe, arXiv 2506.18203 spec Step 5).

The main check (spec §16) runs the recipe through an *independent* NumPy implementation written here from the
spec's equations - hand-derived gradient, explicit momentum buffer, clamping - and compares it with the library's
torch-autograd implementation on the same synthetic votes.
"""

from __future__ import annotations

import numpy as np
import pytest

from lightning_ws.errors import ConfigError
from lightning_ws.labelmodels import LabelModel, MetalCompat, make_label_model, make_synthetic_label_matrix
from lightning_ws.weaver import Weaver, make_synthetic_verification


def _numpy_recipe(L: np.ndarray, p: np.ndarray, *, lr: float = 1e-5, steps: int = 1000, momentum: float = 0.9,
                  prec: float = 0.7, w: float = 10.0, r: float) -> np.ndarray:
    """Straightforward NumPy version of the spec's Step 5 (binary, no abstains in the one-hot)."""
    n, m = L.shape
    k = 2
    psi = np.zeros((n, m * k))
    for i in range(m):
        for a in range(k):
            psi[:, i * k + a] = L[:, i] == a
    O = psi.T @ psi / n
    M = np.ones((m * k, m * k))
    for i in range(m):
        M[i * k:(i + 1) * k, i * k:(i + 1) * k] = 0.0
    mu = np.zeros((m * k, k))
    for i in range(m):
        for a in range(k):
            mu[i * k + a, a] = min(max(O[i * k + a, i * k + a] * prec / p[a], 0.0), 1.0)
    mu *= r
    P = np.diag(p)
    v = np.zeros_like(mu)
    for _ in range(steps):
        R = M * (mu @ P @ mu.T - O)
        g = 4.0 * R @ mu @ P
        g += 2.0 * np.outer(mu @ p - np.diag(O), p)
        for i in range(m):
            for y in range(k):
                s = mu[i * k:(i + 1) * k, y].sum()
                g[i * k:(i + 1) * k, y] += -2.0 * w * (1.0 - s)
        v = momentum * v + g
        mu = np.clip(mu - lr * v, 0.0, 1.0)
    return mu


def _numpy_posterior(L: np.ndarray, mu: np.ndarray, p: np.ndarray) -> np.ndarray:
    out = np.zeros((L.shape[0], 2))
    for x in range(L.shape[0]):
        for y in range(2):
            s = p[y]
            for i in range(L.shape[1]):
                if L[x, i] >= 0:
                    s *= min(max(mu[i * 2 + L[x, i], y], 0.01), 0.99)
            out[x, y] = s
    return out / out.sum(1, keepdims=True)


@pytest.fixture(scope="module")
def votes() -> tuple[np.ndarray, np.ndarray]:
    d = make_synthetic_label_matrix(3000, [0.85, 0.75, 0.7, 0.65, 0.6, 0.8], [1.0] * 6, [0.65, 0.35], seed=3)
    return d.L.astype(np.int64), d.y


def test_matches_independent_numpy_recipe(votes: tuple[np.ndarray, np.ndarray]) -> None:
    L, _ = votes
    p = np.array([0.65, 0.35])
    lm = MetalCompat(seed=0).fit(L, class_balance=p)
    ref = _numpy_recipe(L, p, r=0.5488135039273248)
    np.testing.assert_allclose(lm.mu_, ref, atol=1e-10, rtol=0)
    assert lm.fit_report_["init_scale"] == pytest.approx(0.5488135039273248, abs=1e-15)
    assert lm.class_balance_source == "given" and lm.fit_report_["n_iter"] == 1000
    # larger lr: the iterates move far from the init and some hit the clamp; still identical
    lm2 = MetalCompat(lr=2e-3, n_epochs=300, seed=5).fit(L, class_balance=p)
    r5 = float(np.random.RandomState(5).random_sample())
    ref2 = _numpy_recipe(L, p, lr=2e-3, steps=300, r=r5)
    np.testing.assert_allclose(lm2.mu_, ref2, atol=1e-9, rtol=0)
    assert np.abs(ref2 - _numpy_recipe(L, p, lr=2e-3, steps=0, r=r5)).max() > 0.05
    # inference: naive Bayes with mu clipped to [0.01, 0.99]
    np.testing.assert_allclose(lm.predict_proba(L[:50]), _numpy_posterior(L[:50], lm.mu_, p), atol=1e-12)


def test_objective_gradient_matches_autograd_and_torch_sgd(votes: tuple[np.ndarray, np.ndarray]) -> None:
    import torch

    from lightning_ws.labelmodels.matrix import overlap_matrix
    from lightning_ws.labelmodels.metal_compat import metal_compat_init, metal_compat_loss, metal_compat_objective
    from lightning_ws.labelmodels.moment_matching import off_diagonal_block_mask

    L, _ = votes
    p = np.array([0.6, 0.4])
    O = overlap_matrix(L, 2)
    mask = off_diagonal_block_mask(L.shape[1], 2)
    rng = np.random.default_rng(0)
    mu = rng.random((O.shape[0], 2))
    mu0 = metal_compat_init(O, p, 2)
    f, g = metal_compat_objective(mu, O, p, mask, l2=0.3, mu_init=mu0)
    t = torch.tensor(mu, requires_grad=True)
    loss = metal_compat_loss(t, *(torch.from_numpy(a) for a in (O, p, mask)), l2=0.3, mu_init=torch.from_numpy(mu0))
    loss.backward()
    assert f == pytest.approx(float(loss.detach()), rel=1e-12)
    np.testing.assert_allclose(g, t.grad.numpy(), atol=1e-11)
    # torch.optim.SGD with momentum + clamp, 200 steps, equals the fitted mu
    lm = MetalCompat(lr=1e-3, n_epochs=200, init_scale=0.8).fit(L, class_balance=p)
    param = torch.nn.Parameter(torch.from_numpy(mu0 * 0.8))
    opt = torch.optim.SGD([param], lr=1e-3, momentum=0.9)
    tO, tp, tm = (torch.from_numpy(a) for a in (O, p, mask))
    for _ in range(200):
        opt.zero_grad()
        metal_compat_loss(param, tO, tp, tm).backward()
        opt.step()
        with torch.no_grad():
            param.clamp_(0.0, 1.0)
    np.testing.assert_allclose(lm.mu_, param.detach().numpy(), atol=1e-10)


def test_init_scale_is_seeded_and_leaves_global_rng_alone(votes: tuple[np.ndarray, np.ndarray]) -> None:
    L, _ = votes
    np.random.seed(123)
    before = np.random.get_state()[1].copy()
    a = MetalCompat(n_epochs=5, seed=7).fit(L, class_balance=[0.5, 0.5])
    b = MetalCompat(n_epochs=5, seed=7).fit(L, class_balance=[0.5, 0.5])
    c = MetalCompat(n_epochs=5, seed=8).fit(L, class_balance=[0.5, 0.5])
    np.testing.assert_array_equal(np.random.get_state()[1], before)
    np.testing.assert_array_equal(a.mu_, b.mu_)
    assert a.fit_report_["init_scale"] != c.fit_report_["init_scale"]
    d = MetalCompat(n_epochs=0, init_scale=1.0).fit(L, class_balance=[0.5, 0.5])
    marg = (L == 1).mean(0)
    np.testing.assert_allclose(d.mu_[1::2, 1], np.clip(marg * 0.7 / 0.5, 0, 1))
    assert (d.mu_[0::2, 1] == 0).all() and (d.mu_[1::2, 0] == 0).all()


def test_class_balance_handling(votes: tuple[np.ndarray, np.ndarray]) -> None:
    L, y = votes
    lm = MetalCompat(n_epochs=3).fit(L, class_balance=[1.0, 0.0])
    np.testing.assert_allclose(lm.class_balance_, [0.99, 0.01])
    assert lm.fit_report_["class_balance_clipped"] is True
    uni = MetalCompat(n_epochs=3).fit(L)  # no labels: the reference falls back to a uniform prior
    np.testing.assert_allclose(uni.class_balance_, [0.5, 0.5])
    em = MetalCompat(n_epochs=3, class_balance_estimator="em").fit(L)
    assert abs(em.class_balance_[1] - y.mean()) < 0.05
    dev = MetalCompat(n_epochs=3).fit(L, dev_L=L[:100], dev_y=y[:100])
    assert dev.class_balance_source == "dev"


def test_unconverged_vs_converged_recovery() -> None:
    """Spec §13 in miniature: the fixed-step recipe leaves a large parameter error that moment matching removes."""
    tpr = np.array([0.75, 0.7, 0.65, 0.6, 0.55, 0.7, 0.95, 0.95])
    tnr = np.array([0.7, 0.6, 0.65, 0.55, 0.6, 0.5, 0.15, 0.15])
    rng = np.random.default_rng(0)
    n = 20000
    y = (rng.random(n) < 0.4).astype(np.int64)
    L = np.where(y[:, None] == 1, rng.random((n, 8)) < tpr, rng.random((n, 8)) >= tnr).astype(np.int64)
    p = np.array([1 - y.mean(), y.mean()])
    errs = {}
    for name in ("metal_compat", "moment_matching"):
        lm = make_label_model(name, seed=0).fit(L, class_balance=p)
        conf = lm.lf_confusions  # [j, y, vote + 1]
        errs[name] = 0.5 * (np.abs(conf[:, 1, 2] - tpr).mean() + np.abs(conf[:, 0, 1] - tnr).mean())
    assert errs["moment_matching"] < 0.02
    assert errs["metal_compat"] > 0.04
    assert errs["metal_compat"] > 3 * errs["moment_matching"]


def test_weaver_metal_compat_mode_and_persistence(tmp_path) -> None:
    data = make_synthetic_verification(60, 6, [0.9, 0.8, 0.7, 0.6], [0.85, 0.8, 0.6, 0.6], seed=1)
    w = Weaver("metal_compat", label_model_kwargs={"n_epochs": 50}).fit(data, "transductive")
    assert w.report_["label_model"] == "metal_compat"
    sel = w.select(data)
    assert sel.shape == (60,)
    w.save(tmp_path / "w")
    w2 = Weaver.load(tmp_path / "w")
    np.testing.assert_array_equal(w2.score(data), w.score(data))
    lm = LabelModel.load(tmp_path / "w" / "label_model")
    assert isinstance(lm, MetalCompat) and lm.n_epochs == 50
    lf = Weaver("metal_compat", label_model_kwargs={"n_epochs": 50}).fit(data, "label_free")
    assert lf.report_["class_balance"] == pytest.approx(0.5)


@pytest.mark.parametrize("kwargs", [{"lr": 0.0}, {"n_epochs": -1}, {"momentum": 1.5}, {"prec_init": 0.0},
                                    {"class_balance_estimator": "labels"}, {"init_scale": -1.0}])
def test_bad_config(kwargs: dict) -> None:
    with pytest.raises(ConfigError):
        MetalCompat(**kwargs)

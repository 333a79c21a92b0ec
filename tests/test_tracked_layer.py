"""The shared tracked-layer machinery (issue 18): one hook owner per layer, and R&B + Grad-Mimic on one layer in one
Trainer giving the same results as each alone, in either order."""

from __future__ import annotations

import copy
import pickle

import lightning.pytorch as pl
import pytest
import torch
from torch import nn

from lightning_ws.callbacks.gradmimic import GradMimicCallback
from lightning_ws.callbacks.rnb import RnBCallback
from lightning_ws.datamodules.rnb import TensorMixtureDataModule
from lightning_ws.errors import ConfigError, DataError
from lightning_ws.tracked_layer import LayerTap, StateVersionError, check_state_version, resolve_linear
from tests.helpers.tiny import TinyClassifier

# ----------------------------------------------------------------------------------------------- LayerTap, unit


def _recording_tracker(tap_out: list, store: list, *, rewrite=None):
    """A forward callback that watches (or, with ``rewrite``, rewrites) the output gradient of every call."""

    def on_forward(module, inputs, output):
        handle = tap_out[0]
        if rewrite is not None:
            handle.rewrite_grad(lambda g: (store.append(g.clone()), rewrite(g))[1])
        else:
            handle.watch_grad(lambda g: store.append(g.clone()))

    return on_forward


@pytest.mark.parametrize("rewriter_first", [True, False])
def test_observers_see_the_plain_gradient_whatever_the_order(rewriter_first):
    layer = nn.Linear(3, 2)
    x = torch.randn(4, 3)
    plain_grad = torch.randn(4, 2)
    seen_w, seen_r, hw, hr = [], [], [None], [None]
    attach_r = lambda: hr.__setitem__(0, LayerTap.attach(layer, _recording_tracker(hr, seen_r, rewrite=lambda g: 3 * g),
                                                          rewrites=True))
    attach_w = lambda: hw.__setitem__(0, LayerTap.attach(layer, _recording_tracker(hw, seen_w)))
    for f in ((attach_r, attach_w) if rewriter_first else (attach_w, attach_r)):
        f()
    out = layer(x)
    out.backward(plain_grad)
    torch.testing.assert_close(seen_w[0], plain_grad)  # the observer: the plain gradient
    torch.testing.assert_close(seen_r[0], plain_grad)  # the rewriter gets the plain gradient too ...
    torch.testing.assert_close(layer.weight.grad, (3 * plain_grad).T @ x)  # ... and its result flows on
    assert hw[0].others_rewrite and not hr[0].others_rewrite
    hw[0].remove()
    hr[0].remove()
    assert not layer._forward_hooks and layer not in LayerTap._taps


def test_two_rewriters_are_refused_and_only_declared_trackers_may_rewrite():
    layer = nn.Linear(3, 2)
    h1 = LayerTap.attach(layer, lambda *a: None, rewrites=True)
    with pytest.raises(ConfigError, match="already re-weights"):
        LayerTap.attach(layer, lambda *a: None, rewrites=True, who="second")
    holder = [None]
    holder[0] = LayerTap.attach(layer, lambda m, i, o: holder[0].rewrite_grad(lambda g: g))
    with pytest.raises(ConfigError, match="rewrites=True"):
        layer(torch.randn(2, 3, requires_grad=True))
    holder[0].remove()
    h1.remove()
    with pytest.raises(ConfigError, match="inside the tracker's forward"):
        LayerTap.attach(layer, lambda *a: None).watch_grad(lambda g: None)


def test_copies_of_a_tracked_layer_carry_an_inert_tap():
    layer = nn.Linear(3, 2)
    calls = []
    h = LayerTap.attach(layer, lambda m, i, o: calls.append(1))
    for clone in (copy.deepcopy(layer), pickle.loads(pickle.dumps(layer))):
        clone(torch.randn(1, 3))
    assert calls == []
    layer(torch.randn(1, 3))
    assert calls == [1]
    h.remove()


def test_resolve_linear_and_state_versions():
    model = nn.Sequential(nn.Linear(2, 3), nn.ReLU(), nn.Linear(3, 1))
    assert resolve_linear(model, "2") is model[2]
    with pytest.raises(ConfigError, match=r"not found.*\['0', '2'\]"):
        resolve_linear(model, "head")
    with pytest.raises(ConfigError, match="ReLU.*need an nn.Linear"):
        resolve_linear(model, "1", method="R&B")
    assert check_state_version({}, 2, "X") == 1
    with pytest.raises(StateVersionError, match="newer"):
        check_state_version({"version": 3}, 2, "X")
    assert issubclass(StateVersionError, ConfigError) and issubclass(StateVersionError, DataError)
    with pytest.raises(StateVersionError):  # both callbacks raise the one error class
        RnBCallback().load_state_dict({"version": 99, "method": "rnb", "round": 0})
    with pytest.raises(StateVersionError):
        GradMimicCallback("classifier", reference={}).load_state_dict({"version": 99})


def test_nothing_is_computed_at_import_of_the_rnb_core(monkeypatch):
    """Executing ``lightning_ws/rnb/fused.py`` reads no file (the sysfs L2 size is read at the first fused backward)."""
    import builtins
    import glob
    import importlib.util

    from lightning_ws.rnb import fused

    def refuse(*args, **kwargs):
        raise AssertionError(f"file access at import: {args}")

    spec = importlib.util.spec_from_file_location("_fused_import_probe", fused.__file__)
    copy_of_fused = importlib.util.module_from_spec(spec)
    monkeypatch.setattr(builtins, "open", refuse)
    monkeypatch.setattr(glob, "glob", refuse)
    spec.loader.exec_module(copy_of_fused)
    monkeypatch.undo()
    assert copy_of_fused.cpu_chunk_bytes.cache_info().currsize == 0


# ------------------------------------------------------------------------------- R&B + Grad-Mimic on one layer

_STEPS, _K = 7, 2  # the last round is unfinished: its partial sums are compared too


def _data():
    gen = torch.Generator().manual_seed(7)
    n = 64
    dom = torch.arange(n) % 4
    x = torch.randn(n, 8, generator=gen) + dom.unsqueeze(1).float()
    y = (x[:, 0] > dom.float()).long() + (dom == 3).long()
    return TensorMixtureDataModule(x, y, dom, eval_x=x[:20], eval_labels=y[:20],
                                   eval_domains=torch.tensor([0] * 12 + [1] * 4 + [2] * 4), num_domains=4,
                                   batch_size=8, seed=0)


def _probe_model(lr: float) -> TinyClassifier:
    """The Grad-Mimic config's setup: a frozen body (linear probe), so Grad-Mimic re-weights inside backward."""
    torch.manual_seed(0)
    model = TinyClassifier(lr=lr)
    for p in model.body.parameters():
        p.requires_grad_(False)
    return model


def _reference() -> dict[str, torch.Tensor]:
    ref = {k: v.clone() for k, v in _probe_model(0.1).state_dict().items()}
    g = torch.Generator().manual_seed(3)
    ref["classifier.weight"] = ref["classifier.weight"] + torch.randn(ref["classifier.weight"].shape, generator=g)
    return ref


class _ReplayMixture(pl.Callback):
    """Pushes a recorded R&B trajectory into the data module at the same points R&B does (Grad-Mimic's solo run
    then sees the same batches as in the joint run)."""

    def __init__(self, history: list[list[float]], k: int) -> None:
        self.history, self.k, self.last_step = history, k, 0

    def on_train_start(self, trainer, pl_module):
        trainer.datamodule.set_mixture(torch.full((4,), 0.25, dtype=torch.float64))

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        step = trainer.global_step  # optimizer steps, as R&B counts them
        if step != self.last_step and step % self.k == 0:
            trainer.datamodule.set_mixture(self.history[step // self.k - 1])
        self.last_step = step


def _fit(callbacks, lr: float, accumulate: int = 1) -> None:
    trainer = pl.Trainer(max_steps=_STEPS, max_epochs=-1, accelerator="cpu", devices=1, logger=False,
                         enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                         num_sanity_val_steps=0, limit_val_batches=0, accumulate_grad_batches=accumulate,
                         callbacks=callbacks)
    trainer.fit(_probe_model(lr), _data())


def _rnb(accumulation: str) -> RnBCallback:
    return RnBCallback(layer="classifier", steps_per_round=_K, accumulation=accumulation)


def _gm() -> GradMimicCallback:
    return GradMimicCallback("classifier", reference=_reference(), tau=0.05)


@pytest.mark.parametrize("accumulate", [1, 2])
@pytest.mark.parametrize("accumulation", ["hooks", "auto"])
def test_rnb_and_gradmimic_on_one_layer_match_their_solo_runs_in_either_order(accumulation, accumulate):
    """lr = 0 keeps the weights fixed, so neither callback's effect on training changes the other's inputs; every
    difference would be interference through the shared layer (before the shared tap: R&B's per-domain sums saw
    Grad-Mimic's re-weighted output gradient, so its mixture moved differently, and the result depended on the
    order)."""
    solo_rnb = _rnb(accumulation)
    _fit([solo_rnb], lr=0.0, accumulate=accumulate)
    solo_gm = _gm()
    _fit([_ReplayMixture(solo_rnb.history, _K), solo_gm], lr=0.0, accumulate=accumulate)
    assert solo_gm._in_graph and solo_gm.reweighted_steps == _STEPS  # Grad-Mimic really re-weighted in-graph
    assert len(solo_rnb.history) == _STEPS // _K and float(solo_rnb.counts.sum()) > 0
    moved = torch.tensor(solo_rnb.history[-1], dtype=torch.float64)
    assert not torch.allclose(moved, torch.full((4,), 0.25, dtype=torch.float64))  # the mixture moved
    gm_log = solo_gm.score_log.tensors()
    # hooks: bit-for-bit the solo trajectory; auto: solo R&B ran the fused backward, the joint run the hooks (same sums
    # up to float summation order)
    tol = 1e-12 if accumulation == "hooks" else 1e-6
    for order in ("rnb_first", "gm_first"):
        rnb, gm = _rnb(accumulation), _gm()
        _fit([rnb, gm] if order == "rnb_first" else [gm, rnb], lr=0.0, accumulate=accumulate)
        assert rnb.capture_counts["hooks"] > 0  # the fused path steps aside while Grad-Mimic rewrites the gradient
        if accumulation == "auto":
            assert "re-weights this layer's output gradient" in rnb.fused_fallback_reason
        torch.testing.assert_close(torch.tensor(rnb.history, dtype=torch.float64),
                                   torch.tensor(solo_rnb.history, dtype=torch.float64), rtol=tol, atol=tol)
        torch.testing.assert_close(rnb.sums, solo_rnb.sums, rtol=1e-6, atol=1e-7)
        torch.testing.assert_close(rnb.counts, solo_rnb.counts)
        got = gm.score_log.tensors()
        assert got.keys() == gm_log.keys()
        for key in gm_log:
            torch.testing.assert_close(got[key], gm_log[key], rtol=1e-6, atol=1e-7)
        assert gm.reweighted_steps == solo_gm.reweighted_steps


def test_joint_training_does_not_depend_on_the_callback_order():
    """With lr > 0 both act on training (Grad-Mimic's weights move the head, R&B's mixture moves the batches): the
    joint result is the same in either order and with either R&B accumulation path (up to float summation order)."""
    a_rnb, a_gm = _rnb("auto"), _gm()
    _fit([a_rnb, a_gm], lr=0.1)
    b_rnb, b_gm = _rnb("hooks"), _gm()
    _fit([b_gm, b_rnb], lr=0.1)
    torch.testing.assert_close(torch.tensor(a_rnb.history, dtype=torch.float64),
                               torch.tensor(b_rnb.history, dtype=torch.float64), rtol=1e-9, atol=1e-9)
    for key, val in a_gm.score_log.tensors().items():
        torch.testing.assert_close(b_gm.score_log.tensors()[key], val, rtol=1e-5, atol=1e-6)


def test_rnb_refuses_a_callback_that_reweights_the_whole_loss():
    """Grad-Mimic's all_params mode weights every per-example gradient; R&B says so instead of reading them."""
    from lightning_ws.tracked_layer import LossReweighter

    gm = GradMimicCallback("classifier", reference=_reference(), mode="all_params")
    assert isinstance(gm, LossReweighter) and gm.reweights_loss
    assert not GradMimicCallback("classifier", reference=_reference()).reweights_loss
    with pytest.raises(ConfigError, match="mode='layer_only'"):
        _fit([_rnb("auto"), gm], lr=0.1)

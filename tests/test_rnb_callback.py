"""RnBCallback (arXiv 2505.00358) and the mixture data modules under Lightning: hooks, accumulation, resume, DDP."""

from __future__ import annotations

import math
from types import SimpleNamespace

import lightning.pytorch as pl
import numpy as np
import pytest
import torch
from torch import nn

from lightning_ws.callbacks.rnb import RnBCallback
from lightning_ws.datamodules.rnb import MixtureDataModule, TensorMixtureDataModule
from lightning_ws.errors import ConfigError
from tests.helpers.ddp import run_fit
from tests.helpers.resume import assert_resume_equivalent
from tests.helpers.tiny import TinyClassifier, TinyDataModule


def make_case(method: str = "rnb", lr: float = 0.1, batch_size: int = 8, steps_per_round: int = 2, seed: int = 0,
              identical_within_domain: bool = False, sketch_dim=None, num_domains: int = 4, p_eval=None,
              prob_floor: float = 0.0, accumulation: str = "auto"):
    """``(model, datamodule, [callback])``: 4 domains of 16 examples, 3 classes, an MLP whose head is ``classifier``."""
    gen = torch.Generator().manual_seed(1234)
    n = 64
    dom = torch.arange(n) % 4
    if identical_within_domain:  # every example of a domain is the same point: mean gradients do not depend on draws
        x = torch.randn(4, 8, generator=gen)[dom]
        y = torch.tensor([0, 1, 2, 1])[dom]
    else:
        x = torch.randn(n, 8, generator=gen) + dom.unsqueeze(1).float()
        y = (x[:, 0] > dom.float()).long() + (dom == 3).long()
    eval_dom = torch.tensor([0] * 12 + [1] * 4 + [2] * 4)
    dm = TensorMixtureDataModule(x, y, dom, eval_x=x[:20], eval_labels=y[:20], eval_domains=eval_dom,
                                 num_domains=num_domains, batch_size=batch_size, seed=seed)
    torch.manual_seed(seed)
    model = TinyClassifier(lr=lr)
    cb = RnBCallback(method=method, steps_per_round=steps_per_round, sketch_dim=sketch_dim, p_eval=p_eval,
                     prob_floor=prob_floor, accumulation=accumulation)
    return model, dm, [cb]


def _fit(model, dm, callbacks, max_steps: int, accumulate: int = 1, **kw) -> pl.Trainer:
    trainer = pl.Trainer(max_steps=max_steps, max_epochs=-1, accelerator="cpu", devices=1, logger=False,
                         enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                         num_sanity_val_steps=0, limit_val_batches=0, accumulate_grad_batches=accumulate,
                         callbacks=callbacks, **kw)
    trainer.fit(model, dm)
    return trainer


class _BatchRecorder(pl.Callback):
    def __init__(self) -> None:
        self.batches = []

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        self.batches.append({k: v.clone() for k, v in batch.items()})


@pytest.mark.parametrize("accumulation", ["hooks", "fused"])
def test_callback_sums_equal_torch_func_per_example_gradients(accumulation):
    """Hooked (or fused) activation x output-gradient, rescaled for the batch mean and accumulation, equals
    torch.func."""
    from torch.func import functional_call, grad, vmap

    model, dm, (cb,) = make_case(lr=0.0, steps_per_round=100, accumulation=accumulation)
    rec = _BatchRecorder()
    _fit(model, dm, [cb, rec], max_steps=2, accumulate=2)  # 4 micro-batches, lr 0: parameters stay fixed
    assert len(rec.batches) == 4
    head = model.classifier
    params = {k: v.detach() for k, v in head.named_parameters()}

    def loss_one(p, h, y):
        return nn.functional.cross_entropy(functional_call(head, p, (h.unsqueeze(0),)), y.unsqueeze(0))

    ref = torch.zeros(4, 3, 17)
    counts = torch.zeros(4)
    for b in rec.batches:
        with torch.no_grad():
            h = model.body(b["x"])
        g = vmap(grad(loss_one), in_dims=(None, 0, 0))(params, h, b["labels"])
        per = torch.cat([g["weight"], g["bias"].unsqueeze(-1)], dim=-1)
        for d in range(4):
            ref[d] += per[b["domain"] == d].sum(0)
        counts += torch.bincount(b["domain"], minlength=4)
    assert torch.allclose(cb.sums, ref, rtol=1e-4, atol=1e-6)
    assert torch.equal(cb.counts.float(), counts)
    path = "hooks" if accumulation == "hooks" else "per_example"
    assert cb.capture_counts[path] == 4 and sum(cb.capture_counts.values()) == 4
    gram = cb.gram()
    assert torch.allclose(gram, gram.T) and torch.linalg.eigvalsh(gram).min() > -1e-8


def test_gradient_accumulation_updates_once_per_optimizer_step():
    model, dm, (cb,) = make_case(steps_per_round=2)
    _fit(model, dm, [cb], max_steps=5, accumulate=3)
    assert cb.round == 2 and cb.steps_in_round == 1 and len(cb.history) == 2
    # the open round holds exactly one optimizer step = 3 micro-batches of 8 examples
    assert float(cb.counts.sum()) == 3 * 8
    assert not torch.allclose(cb.p, torch.full((4,), 0.25, dtype=torch.float64))  # the mixture moved
    assert torch.allclose(dm.mixture, cb.p)  # ... and was pushed into the sampler
    assert abs(float(cb.p.sum()) - 1) < 1e-12


@pytest.mark.parametrize("interrupt_step", [3, 4])  # mid-round, and right after an update
def test_resume_equivalent(tmp_path, interrupt_step):
    assert_resume_equivalent(lambda: make_case(steps_per_round=2), total_steps=7, interrupt_step=interrupt_step,
                             tmp_path=tmp_path, accumulate_grad_batches=2)


@pytest.mark.ddp
@pytest.mark.slow  # two subprocess fits (~60-100 s on a loaded 2-core box)
def test_ddp_two_processes_match_one_process(tmp_path):
    """Two ranks x batch 8 give the same mixture as one process x batch 16, and identical state on every rank."""
    # lr 0 and identical examples within a domain make the domain mean gradients independent of which examples the
    # differently seeded rank streams draw; the floor keeps every domain present in every round (64 draws per round)
    kwargs = {"lr": 0.0, "identical_within_domain": True, "steps_per_round": 4, "prob_floor": 0.5}
    two = run_fit("tests.test_rnb_callback:make_case", tmp_path, devices=2,
                  factory_kwargs={**kwargs, "batch_size": 8}, trainer_kwargs={"max_steps": 9})
    one = run_fit("tests.test_rnb_callback:make_case", tmp_path, devices=1,
                  factory_kwargs={**kwargs, "batch_size": 16}, trainer_kwargs={"max_steps": 9})
    (key,) = two[0]["callbacks"]
    s0, s1, ref = two[0]["callbacks"][key], two[1]["callbacks"][key], one[0]["callbacks"][key]
    for name in ("p", "sums", "counts"):
        assert torch.equal(s0[name], s1[name]), name  # rank-consistent state
    assert s0["round"] == s1["round"] == ref["round"] == 2
    # open round: one optimizer step of the global batch (2 x 8 = 16), all-reduced
    assert float(s0["counts"].sum()) == float(ref["counts"].sum()) == 16
    assert torch.allclose(s0["p"], ref["p"], atol=1e-6)
    assert np.allclose(np.asarray(s0["history"]), np.asarray(ref["history"]), atol=1e-6)
    assert not torch.allclose(ref["p"], torch.full((4,), 0.25, dtype=torch.float64), atol=1e-3)


def test_baselines_same_interface():
    for method in ("stratified", "proportional", "doge"):
        model, dm, (cb,) = make_case(method=method, steps_per_round=2)
        # unbalanced domain sizes for the proportional rule
        dm.train_domains = np.asarray([0] * 40 + [1] * 12 + [2] * 8 + [3] * 4)
        _fit(model, dm, [cb], max_steps=4)
        assert cb.round == 2 and torch.isfinite(cb.p).all()
        if method == "stratified":
            assert torch.allclose(cb.p, torch.full((4,), 0.25, dtype=torch.float64)) and cb.sums is None
        elif method == "proportional":
            assert torch.allclose(cb.p, torch.tensor([40, 12, 8, 4], dtype=torch.float64) / 64)
        else:
            assert not torch.allclose(cb.p, torch.full((4,), 0.25, dtype=torch.float64))
        assert torch.allclose(dm.mixture, cb.p)


def test_disjoint_eval_domain_and_empty_domain_keep_p_without_nan():
    # 5 domains, the fifth has no training data and all the evaluation mass: G p_eval = 0 -> p is kept
    model, dm, (cb,) = make_case(num_domains=5, p_eval=[0, 0, 0, 0, 1], steps_per_round=2)
    _fit(model, dm, [cb], max_steps=4)
    assert torch.allclose(cb.p, torch.tensor([0.25, 0.25, 0.25, 0.25, 0.0], dtype=torch.float64))
    # with a normal p_eval the empty fifth domain keeps probability 0 and nothing is NaN
    model, dm, (cb,) = make_case(num_domains=5, p_eval=[0.4, 0.3, 0.2, 0.1, 0.0], steps_per_round=2)
    _fit(model, dm, [cb], max_steps=4)
    assert torch.isfinite(cb.p).all() and float(cb.p[4]) == 0.0 and abs(float(cb.p.sum()) - 1) < 1e-12


def test_sketched_callback_wiring():
    # sketch sizes >= the layer's sizes use identity projections: the sketched callback must equal the exact one
    model, dm, (cb,) = make_case(lr=0.0, steps_per_round=100, sketch_dim=[3, 17])
    _fit(model, dm, [cb], max_steps=2)
    model, dm, (exact,) = make_case(lr=0.0, steps_per_round=100)
    _fit(model, dm, [exact], max_steps=2)
    assert torch.allclose(cb.sums, exact.sums, atol=1e-6) and torch.allclose(cb.gram(), exact.gram(), atol=1e-6)
    # a compressing sketch runs end to end and keeps a valid mixture (accuracy vs k: test_rnb_core)
    model, dm, (small,) = make_case(steps_per_round=2, sketch_dim=[2, 8])
    _fit(model, dm, [small], max_steps=4)
    assert tuple(small.sums.shape) == (4, 2, 8) and small.round == 2 and torch.isfinite(small.p).all()


def test_amp_scale_is_read_from_grad_scaler():
    cb = RnBCallback()
    scaler = torch.amp.GradScaler("cpu", init_scale=256.0)
    assert cb._amp_scale(SimpleNamespace(precision_plugin=SimpleNamespace(scaler=scaler))) == 256.0
    # no loss scaling: no scale, hence no finiteness check
    assert cb._amp_scale(SimpleNamespace(precision_plugin=SimpleNamespace())) is None


def test_logging_and_wandb_trajectory_image(tmp_path):
    from lightning.pytorch.loggers import CSVLogger, WandbLogger

    model, dm, (cb,) = make_case(steps_per_round=2)
    trainer = pl.Trainer(max_steps=4, accelerator="cpu", logger=[CSVLogger(tmp_path), WandbLogger(
        mode="disabled", save_dir=str(tmp_path))], enable_checkpointing=False, enable_progress_bar=False,
        enable_model_summary=False, limit_val_batches=0, callbacks=[cb], log_every_n_steps=1)
    trainer.fit(model, dm)
    logged = trainer.logged_metrics
    assert {"rnb/p_0", "rnb/entropy", "rnb/round", "rnb/gram_diag_mean"} <= set(logged)
    assert float(logged["rnb/entropy"]) <= math.log(4) + 1e-6
    img = cb.trajectory_image()
    assert img.ndim == 3 and img.shape[2] == 3 and img.dtype == np.uint8 and img.std() > 0


def test_validation_errors():
    for kwargs, match in [({"method": "aioli"}, "method"), ({"lam": 0}, "lam"), ({"steps_per_round": 0}, "steps"),
                          ({"prob_floor": 1.0}, "prob_floor"), ({"warmup_rounds": 0}, "warmup"),
                          ({"loss_reduction": "token_mean"}, "target_key"), ({"sketch_dim": [1, 2, 3]}, "sketch"),
                          ({"p_eval": [0.5, -0.5]}, "p_eval"), ({"accumulation": "fast"}, "accumulation"),
                          ({"accumulation": "fused", "sketch_dim": 4}, "sketch")]:
        with pytest.raises(ConfigError, match=match):
            RnBCallback(**kwargs)
    model, dm, _ = make_case()
    with pytest.raises(ConfigError, match="nn.Linear"):
        _fit(model, dm, [RnBCallback(layer="body")], max_steps=1)
    with pytest.raises(ConfigError, match="not found"):
        _fit(*make_case()[:2], [RnBCallback(layer="nope")], max_steps=1)
    with pytest.raises(ConfigError, match="set_mixture"):
        _fit(TinyClassifier(), TinyDataModule(), [RnBCallback()], max_steps=1)


def test_state_key_identity_and_two_instances():
    a, b = RnBCallback(lam=3.0), RnBCallback(lam=1.0)
    assert a.state_key != b.state_key and "lam" in a.state_key
    with pytest.raises(ConfigError, match="method"):
        RnBCallback(method="stratified").load_state_dict({"version": 1, "method": "rnb", "round": 0})


def test_mixture_datamodule_youtube_with_text_classifier(tiny_encoder_overrides):
    from lightning_ws.modules import TextClassifier

    dm = MixtureDataModule("youtube_comments", batch_size=8, max_length=16, num_samples_per_epoch=64)
    assert dm.num_domains == 5 and dm.domain_names[0] == "Psy" and abs(float(dm.p_eval.sum()) - 1) < 1e-9
    model = TextClassifier(num_classes=2, pretrained=False, config_overrides=tiny_encoder_overrides)
    cb = RnBCallback(layer="classifier", steps_per_round=2)
    rec = _BatchRecorder()
    _fit(model, dm, [cb, rec], max_steps=4)
    b = rec.batches[0]
    assert set(b) >= {"input_ids", "attention_mask", "labels", "idx", "domain"}
    assert b["input_ids"].dtype == torch.long and b["domain"].shape == (8,)
    assert cb.round == 2 and torch.allclose(dm.mixture, cb.p)
    with pytest.raises(ConfigError, match="5 domains"):
        dm.set_mixture([1.0, 0.0])


def test_mixture_datamodule_regroup_dir(tmp_path):
    from lightning_ws.rnb import RegroupResult

    dm0 = MixtureDataModule("youtube_comments")
    n_tr, n_ev = len(dm0.data.train_texts), len(dm0.data.eval_texts)
    rng = np.random.default_rng(0)
    from lightning_ws.rnb.data import texts_fingerprint

    res = RegroupResult(k=3, train_domains=rng.integers(0, 3, n_tr), eval_domains=rng.integers(0, 3, n_ev),
                        p_eval=np.array([0.5, 0.3, 0.2]), centroids=np.zeros((3, 4)),
                        metadata={"data_hash": texts_fingerprint(dm0.data.train_texts, dm0.data.eval_texts)})
    res.save(tmp_path / "rg")
    dm = MixtureDataModule("youtube_comments", regroup_dir=str(tmp_path / "rg"))
    assert dm.num_domains == 3 and dm.domain_names == ["c0", "c1", "c2"]
    assert torch.allclose(dm.p_eval, torch.tensor([0.5, 0.3, 0.2], dtype=torch.float64))
    from lightning_ws.errors import DataError

    with pytest.raises(DataError, match="same source"):
        MixtureDataModule("youtube_comments", regroup_dir=str(tmp_path / "rg"), eval_fraction=0.3)


def test_config_parses_and_runs_fast_dev_run(tiny_encoder_overrides, tmp_path):
    import json
    from pathlib import Path

    from lightning_ws.cli import main

    cfg = Path(__file__).resolve().parents[1] / "configs" / "rnb_youtube.yaml"
    code = main(["fit", "-c", str(cfg), "--trainer.fast_dev_run=2", "--trainer.logger=false",
                 "--model.init_args.pretrained=false",
                 f"--model.init_args.config_overrides={json.dumps(tiny_encoder_overrides)}",
                 "--data.init_args.max_length=16", "--data.init_args.batch_size=4",
                 "--trainer.callbacks.init_args.steps_per_round=1", f"--trainer.default_root_dir={tmp_path}"])
    assert code == 0


class _TinyTokenModel(pl.LightningModule):
    """Embedding -> tanh -> per-token head ``lm_head``; loss = mean over all target tokens of the batch."""

    def __init__(self) -> None:
        super().__init__()
        self.emb = nn.Embedding(11, 6)
        self.lm_head = nn.Linear(6, 11)

    def hidden(self, ids):
        return torch.tanh(self.emb(ids))

    def training_step(self, batch, batch_idx):
        logits = self.lm_head(self.hidden(batch["x"]))
        return nn.functional.cross_entropy(logits.reshape(-1, 11), batch["labels"].reshape(-1), ignore_index=-100)

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.0)


class _ShiftedTargetsModel(_TinyTokenModel):
    """Labels one token longer than the inputs (shifted inside the step): misaligned with what lm_head sees."""

    def training_step(self, batch, batch_idx):
        logits = self.lm_head(self.hidden(batch["x"]))
        return nn.functional.cross_entropy(logits.reshape(-1, 11), batch["labels"][:, 1:].reshape(-1))


@pytest.mark.parametrize("accumulation", ["hooks", "fused"])
def test_token_mean_rejects_targets_not_aligned_with_the_layer(accumulation):
    gen = torch.Generator().manual_seed(0)
    x, y = torch.randint(0, 11, (12, 4), generator=gen), torch.randint(0, 11, (12, 5), generator=gen)
    dm = TensorMixtureDataModule(x, y, torch.arange(12) % 3, p_eval=[0.5, 0.3, 0.2], batch_size=4)
    cb = RnBCallback(layer="lm_head", steps_per_round=100, loss_reduction="token_mean", target_key="labels",
                     accumulation=accumulation)
    with pytest.raises(ConfigError, match=r"targets \(4, 5\) must be \(B, T\) aligned with the tracked layer input "
                                          r"\(4, 4, 6\)"):
        _fit(_ShiftedTargetsModel(), dm, [cb], max_steps=1)


@pytest.mark.parametrize("accumulation", ["hooks", "fused", "auto"])
@pytest.mark.parametrize("grouped", [False, True])
def test_token_mean_sequences_in_a_lightning_run(grouped, accumulation, monkeypatch):
    """Per-example gradient = mean over the example's own target tokens, summed per domain (spec §5); both
    accumulation strategies (``grouped``: the large-layer path, forced by a tiny size limit) and both paths (``auto``
    falls back to the hooks for token_mean above the size limit, ``fused`` keeps the per-example fused backward)."""
    from torch.func import functional_call, grad, vmap

    if grouped:
        import lightning_ws.rnb.accumulate as fn  # the size limits live in accumulate / fused
        import lightning_ws.rnb.fused as fused_mod

        monkeypatch.setattr(fn, "PER_EXAMPLE_MAX_ELEMENTS", 1)
        monkeypatch.setattr(fused_mod, "FUSED_PER_EXAMPLE_MAX_ELEMENTS", 1)

    gen = torch.Generator().manual_seed(0)
    n, t = 24, 5
    x = torch.randint(0, 11, (n, t), generator=gen)
    y = torch.randint(0, 11, (n, t), generator=gen)
    lengths = torch.randint(1, t + 1, (n,), generator=gen)
    y[torch.arange(t).unsqueeze(0) >= lengths.unsqueeze(1)] = -100
    dm = TensorMixtureDataModule(x, y, torch.arange(n) % 3, p_eval=[0.5, 0.3, 0.2], batch_size=6)
    torch.manual_seed(0)
    model = _TinyTokenModel()
    cb = RnBCallback(layer="lm_head", steps_per_round=100, loss_reduction="token_mean", target_key="labels",
                     accumulation=accumulation)
    rec = _BatchRecorder()
    _fit(model, dm, [cb, rec], max_steps=2, accumulate=2)
    head = model.lm_head
    params = {k: v.detach() for k, v in head.named_parameters()}

    def loss_one(p, h, yy):
        out = functional_call(head, p, (h,))
        return nn.functional.cross_entropy(out, yy, ignore_index=-100)

    ref = torch.zeros(3, 11, 7)
    for b in rec.batches:
        with torch.no_grad():
            h = model.hidden(b["x"])
        g = vmap(grad(loss_one), in_dims=(None, 0, 0))(params, h, b["labels"])
        per = torch.cat([g["weight"], g["bias"].unsqueeze(-1)], dim=-1)
        for d in range(3):
            ref[d] += per[b["domain"] == d].sum(0)
    assert torch.allclose(cb.sums, ref, rtol=1e-4, atol=1e-6)
    assert float(cb.counts.sum()) == 4 * 6
    hooks = accumulation == "hooks" or (accumulation == "auto" and grouped)
    assert cb.capture_counts["hooks" if hooks else "per_example"] == 4
    assert (cb.fused_fallback_reason is not None) == (accumulation == "auto" and grouped)


# ----------------------------------------------------------------------------- fused accumulation
class _GradProbe(pl.LightningModule):
    """Embedding -> Linear -> tanh -> ``head``: 3-D ``(B, T, 6)`` head inputs (``seq``) or 2-D ``(B, 6)`` (mean over
    tokens); loss = CE with ``reduction`` "mean" / "sum" (token-level CE ignoring -100 when ``seq``); ``tied``: the
    head's weight is the embedding's."""

    def __init__(self, seq: bool, reduction: str, tied: bool = False, lr: float = 0.0) -> None:
        super().__init__()
        self.seq, self.reduction, self.lr = seq, reduction, lr
        self.emb = nn.Embedding(11, 6)
        self.body = nn.Linear(6, 6)
        self.head = nn.Linear(6, 11)
        if tied:
            self.head.weight = self.emb.weight

    def training_step(self, batch, batch_idx):
        h = torch.tanh(self.body(self.emb(batch["x"])))
        if not self.seq:
            h = h.mean(1)
        logits = self.head(h)
        return nn.functional.cross_entropy(logits.reshape(-1, 11), batch["labels"].reshape(-1), ignore_index=-100,
                                           reduction=self.reduction)

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=self.lr)


class _GradRecorder(pl.Callback):
    def __init__(self) -> None:
        self.grads = []

    def on_before_optimizer_step(self, trainer, pl_module, optimizer):
        self.grads.append({n: p.grad.clone() for n, p in pl_module.named_parameters() if p.grad is not None})


def _probe_run(seq: bool, loss_reduction: str, accumulation: str, tied: bool = False, lr: float = 0.0,
               max_steps: int = 2, full_length: bool = False):
    gen = torch.Generator().manual_seed(0)
    n, t = 24, 5
    x = torch.randint(0, 11, (n, t), generator=gen)
    if seq:
        y = torch.randint(0, 11, (n, t), generator=gen)
        if not full_length:
            lengths = torch.randint(1, t + 1, (n,), generator=gen)
            y[torch.arange(t).unsqueeze(0) >= lengths.unsqueeze(1)] = -100
    else:
        y = torch.randint(0, 11, (n,), generator=gen)
    dm = TensorMixtureDataModule(x, y, torch.arange(n) % 3, p_eval=[0.5, 0.3, 0.2], batch_size=6)
    torch.manual_seed(0)
    model = _GradProbe(seq, "sum" if loss_reduction == "sum" else "mean", tied=tied, lr=lr)
    cb = RnBCallback(layer="head", steps_per_round=100, loss_reduction=loss_reduction, accumulation=accumulation,
                     target_key="labels" if loss_reduction == "token_mean" else None)
    rec = _GradRecorder()
    _fit(model, dm, [cb, rec], max_steps=max_steps, accumulate=2)
    return model, cb, rec


def _assert_grads_close(a: list[dict], b: list[dict]) -> None:
    assert len(a) == len(b) and a
    for ga, gb in zip(a, b):
        assert set(ga) == set(gb)
        for name in ga:
            assert torch.allclose(ga[name], gb[name], rtol=1e-5, atol=1e-7), name


@pytest.mark.parametrize("seq,loss_reduction,tied", [(False, "mean", False), (False, "sum", False),
                                                     (True, "mean", False), (True, "sum", False),
                                                     (True, "token_mean", False), (True, "token_mean", True)])
def test_fused_gradients_and_sums_equal_the_hook_path(seq, loss_reduction, tied):
    """With accumulation='fused' every parameter's gradient equals plain autograd's (the hook path does not touch
    the graph) and the per-domain sums equal the hook path's; 2-D and 3-D head inputs, mean / sum / token_mean,
    accumulate_grad_batches=2, and a head tied to the input embedding."""
    _, hooks, rec_h = _probe_run(seq, loss_reduction, "hooks", tied=tied)
    model, fused, rec_f = _probe_run(seq, loss_reduction, "fused", tied=tied)
    _assert_grads_close(rec_f.grads, rec_h.grads)
    assert torch.allclose(fused.sums, hooks.sums, rtol=1e-5, atol=1e-6)
    assert torch.equal(fused.counts, hooks.counts) and float(fused.counts.sum()) == 4 * 6
    assert fused.capture_counts == {"per_example": 4, "grouped": 0, "hooks": 0}
    assert hooks.capture_counts == {"per_example": 0, "grouped": 0, "hooks": 4}
    assert "forward" not in model.head.__dict__  # restored in teardown


def test_fused_token_mean_with_equal_lengths_uses_the_grouped_backward(monkeypatch):
    """token_mean where every example has all its target tokens (packed LM batches) has one scale for all examples:
    above the per-example size limit the fused path takes the grouped backward (not the hooks) with the same
    gradients and sums as the hook path; with ragged lengths it stays per-example."""
    import lightning_ws.rnb.accumulate as fn  # the size limits live in accumulate / fused

    monkeypatch.setattr(fn, "PER_EXAMPLE_MAX_ELEMENTS", 1)
    _, hooks, rec_h = _probe_run(True, "token_mean", "hooks", full_length=True)
    _, fused, rec_f = _probe_run(True, "token_mean", "auto", full_length=True)
    assert fused.capture_counts == {"per_example": 0, "grouped": 4, "hooks": 0}
    _assert_grads_close(rec_f.grads, rec_h.grads)
    assert torch.allclose(fused.sums, hooks.sums, rtol=1e-5, atol=1e-6)
    _, ragged, _ = _probe_run(True, "token_mean", "auto")
    assert ragged.capture_counts == {"per_example": 4, "grouped": 0, "hooks": 0}


def test_fused_grouped_path_for_large_layers_with_uniform_scale(monkeypatch):
    """Above the size limit, mean / sum losses use the grouped fused backward (one GEMM per domain = autograd's
    gradient); token_mean under 'auto' falls back to the hooks there."""
    import lightning_ws.rnb.accumulate as fn  # the size limits live in accumulate / fused
    import lightning_ws.rnb.fused as fused_mod

    monkeypatch.setattr(fn, "PER_EXAMPLE_MAX_ELEMENTS", 1)
    monkeypatch.setattr(fused_mod, "FUSED_PER_EXAMPLE_MAX_ELEMENTS", 1)
    _, hooks, rec_h = _probe_run(True, "mean", "hooks")
    _, fused, rec_f = _probe_run(True, "mean", "auto")
    assert fused.capture_counts == {"per_example": 0, "grouped": 4, "hooks": 0}
    _assert_grads_close(rec_f.grads, rec_h.grads)
    assert torch.allclose(fused.sums, hooks.sums, rtol=1e-5, atol=1e-6)
    _, auto, _ = _probe_run(True, "token_mean", "auto")
    assert auto.capture_counts["hooks"] == 4 and "token_mean" in auto.fused_fallback_reason


def test_fused_training_trajectory_matches_hooks():
    """A few real SGD steps: fused and hook runs stay together (float summation order only)."""
    m_h, hooks, _ = _probe_run(True, "token_mean", "hooks", lr=0.5, max_steps=4)
    m_f, fused, _ = _probe_run(True, "token_mean", "fused", lr=0.5, max_steps=4)
    for (name, p), q in zip(m_h.named_parameters(), m_f.parameters()):
        assert torch.allclose(p, q, rtol=1e-5, atol=1e-6), name
    assert torch.allclose(fused.sums, hooks.sums, rtol=1e-4, atol=1e-5)


def test_fused_fallbacks_and_errors():
    """'auto' keeps the hooks for a sketch, a non-nn.Linear layer and autocast; 'fused' refuses what it cannot do."""
    model, dm, (cb,) = make_case(steps_per_round=100, sketch_dim=[2, 8])
    _fit(model, dm, [cb], max_steps=1)
    assert cb.capture_counts["hooks"] == 1 and "sketch" in cb.fused_fallback_reason

    class _Head(nn.Linear):
        pass

    model, dm, (cb,) = make_case(steps_per_round=100)
    model.classifier = _Head(16, 3)
    _fit(model, dm, [cb], max_steps=1)
    assert cb.capture_counts["hooks"] == 1 and "_Head" in cb.fused_fallback_reason
    model, dm, _ = make_case()
    model.classifier = _Head(16, 3)
    with pytest.raises(ConfigError, match="not exactly nn.Linear"):
        _fit(model, dm, [RnBCallback(accumulation="fused")], max_steps=1)
    assert "forward" not in model.classifier.__dict__
    # autocast (CPU bf16-mixed): per-call fallback to the hooks, with a one-time warning for 'fused'
    model, dm, (cb,) = make_case(steps_per_round=100, accumulation="fused")
    with pytest.warns(UserWarning, match="autocast"):
        _fit(model, dm, [cb], max_steps=2, precision="bf16-mixed")
    assert cb.capture_counts == {"per_example": 0, "grouped": 0, "hooks": 2} and float(cb.counts.sum()) == 16
    assert torch.isfinite(cb.sums).all()


class _UserHook(pl.Callback):
    """Checks, during training, that the tracked layer's state_dict keys are unchanged and a user hook still runs."""

    def __init__(self) -> None:
        self.calls, self.keys, self.installed = 0, [], []

    def on_fit_start(self, trainer, pl_module):
        self.keys.append(list(pl_module.state_dict()))
        pl_module.classifier.register_forward_hook(lambda mod, inp, out: setattr(self, "calls", self.calls + 1))

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        self.keys.append(list(pl_module.state_dict()))
        self.installed.append("forward" in pl_module.classifier.__dict__)


class _Boom(pl.Callback):
    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        if trainer.global_step >= 2:
            raise RuntimeError("boom")


def test_fused_forward_is_installed_only_during_fit_and_restored_on_errors():
    model, dm, (cb,) = make_case(steps_per_round=2)
    keys = list(model.state_dict())
    user = _UserHook()
    _fit(model, dm, [cb, user], max_steps=3)
    assert user.calls == 3 and all(user.installed) and all(k == keys for k in user.keys)
    assert "forward" not in model.classifier.__dict__ and list(model.state_dict()) == keys
    model, dm, (cb,) = make_case(steps_per_round=2)
    with pytest.raises(RuntimeError, match="boom"):
        _fit(model, dm, [cb, _Boom()], max_steps=5)
    assert "forward" not in model.classifier.__dict__ and not model.classifier._forward_hooks

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
              prob_floor: float = 0.0):
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
                     prob_floor=prob_floor)
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


def test_callback_sums_equal_torch_func_per_example_gradients():
    """Hooked activation x output-gradient, rescaled for the batch mean and accumulation, equals torch.func."""
    from torch.func import functional_call, grad, vmap

    model, dm, (cb,) = make_case(lr=0.0, steps_per_round=100)
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
                          ({"p_eval": [0.5, -0.5]}, "p_eval")]:
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
    res = RegroupResult(k=3, train_domains=rng.integers(0, 3, n_tr), eval_domains=rng.integers(0, 3, n_ev),
                        p_eval=np.array([0.5, 0.3, 0.2]), centroids=np.zeros((3, 4)))
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


@pytest.mark.parametrize("grouped", [False, True])
def test_token_mean_sequences_in_a_lightning_run(grouped, monkeypatch):
    """Per-example gradient = mean over the example's own target tokens, summed per domain (spec §5); both
    accumulation strategies (``grouped``: the large-layer path, forced by a tiny size limit)."""
    from torch.func import functional_call, grad, vmap

    if grouped:
        import lightning_ws.rnb.functional as fn

        monkeypatch.setattr(fn, "PER_EXAMPLE_MAX_ELEMENTS", 1)

    gen = torch.Generator().manual_seed(0)
    n, t = 24, 5
    x = torch.randint(0, 11, (n, t), generator=gen)
    y = torch.randint(0, 11, (n, t), generator=gen)
    lengths = torch.randint(1, t + 1, (n,), generator=gen)
    y[torch.arange(t).unsqueeze(0) >= lengths.unsqueeze(1)] = -100
    dm = TensorMixtureDataModule(x, y, torch.arange(n) % 3, p_eval=[0.5, 0.3, 0.2], batch_size=6)
    torch.manual_seed(0)
    model = _TinyTokenModel()
    cb = RnBCallback(layer="lm_head", steps_per_round=100, loss_reduction="token_mean", target_key="labels")
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

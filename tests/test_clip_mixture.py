"""Domain mixtures on the webdataset CLIP data module (R&B, arXiv 2505.00358) and Grad-Mimic on the CLIP module."""

from __future__ import annotations

import lightning.pytorch as pl
import numpy as np
import pytest
import torch

from lightning_ws.contracts import DOMAIN, SupportsMixture, is_mixture_datamodule
from lightning_ws.datacomp import pool, shards
from lightning_ws.datacomp.clip import TINY_CLIP_CONFIG
from lightning_ws.errors import ConfigError

TINY = {**TINY_CLIP_CONFIG, "embed_dim": 32,
        "vision_cfg": {**TINY_CLIP_CONFIG["vision_cfg"], "width": 32, "layers": 1, "patch_size": 8, "head_width": 16},
        "text_cfg": {**TINY_CLIP_CONFIG["text_cfg"], "width": 32, "layers": 1, "context_length": 16}}
LAYER = "model.visual.transformer.resblocks.0.mlp.c_proj"


def _trainer(**kw) -> pl.Trainer:
    args = dict(accelerator="cpu", devices=1, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                enable_model_summary=False, num_sanity_val_steps=0, deterministic=True, limit_val_batches=0)
    args.update(kw)
    return pl.Trainer(**args)


@pytest.fixture(scope="module")
def domains(tmp_path_factory):
    """Three domains of real CIFAR-10 pairs: clean captions, junk captions, mismatched captions (30, 20, 20)."""
    root = tmp_path_factory.mktemp("domains")
    src = pool.load_cifar10_subset("pool")
    specs = {"clean": (src[:30], pool.NoiseSpec(0, 0, 0, 0)), "junk": (src[30:50], pool.NoiseSpec(0, 1.0, 0, 0)),
             "mismatch": (src[50:70], pool.NoiseSpec(1.0, 0, 0, 0))}
    out = {}
    for name, (imgs, noise) in specs.items():
        samples = pool.build_pool(imgs, noise, seed=len(name))
        shards.write_shards(samples, root / name, samples_per_shard=8)
        out[name] = str(root / name)
    return out


def _dm(domains, **kw):
    from lightning_ws.datamodules.webdataset import WebDatasetDataModule

    args = dict(batch_size=6, context_length=16, zeroshot=None, retrieval=None, shuffle_buffer=0, seed=3)
    args.update(kw)
    return WebDatasetDataModule(domains, **args)


def test_webdataset_module_satisfies_supports_mixture(domains):
    dm = _dm(domains)
    assert isinstance(dm, SupportsMixture) and is_mixture_datamodule(dm)
    assert dm.num_domains == 3 and dm.domain_names == ["clean", "junk", "mismatch"]
    assert dm.domain_sizes.tolist() == [30, 20, 20]
    torch.testing.assert_close(dm.p_eval, torch.tensor([30, 20, 20], dtype=torch.float64) / 70)
    torch.testing.assert_close(dm.mixture, torch.full((3,), 1 / 3, dtype=torch.float64))
    with pytest.raises(ConfigError):
        dm.set_mixture([0.5, 0.5])
    with pytest.raises(ConfigError, match="needs domains"):
        _dm(domains["clean"]).set_mixture([1.0])
    with pytest.raises(ConfigError, match="domain_field"):
        _dm(domains, domain_field="label")


def test_set_mixture_takes_effect_without_rebuilding_the_loader(domains):
    dm = _dm(domains, batches_per_epoch=12, mixture=[1.0, 0.0, 0.0], mixture_lag=2)
    dm.setup("fit")
    loader = dm.train_dataloader()
    it = iter(loader)
    first = [next(it) for _ in range(3)]
    assert all((b[DOMAIN] == 0).all() for b in first)  # only "clean" before the change
    # what a callback does mid-epoch: the trainer has consumed 3 batches; the change applies from batch 3 + lag
    dm._schedule.set([0.0, 0.0, 1.0], epoch=0, next_batch=3)
    rest = list(it)
    assert len(rest) == 9
    assert all((b[DOMAIN] == 0).all() for b in rest[:2]) and all((b[DOMAIN] == 2).all() for b in rest[2:])
    uids = [u for b in first + rest for u in b["uid"]]
    by_domain = {d: {s.uid for s in shards.iter_shards(p)} for d, p in enumerate(domains.values())}
    for b in first + rest:
        for u, d in zip(b["uid"], b[DOMAIN].tolist()):
            assert u in by_domain[d]
    assert len(uids) == 72
    # a mixed p draws every domain
    dm2 = _dm(domains, batches_per_epoch=20, mixture=[0.2, 0.3, 0.5])
    dm2.setup("fit")
    counts = np.bincount(torch.cat([b[DOMAIN] for b in dm2.train_dataloader()]).numpy(), minlength=3)
    assert counts.sum() == 120 and (counts > 10).all() and counts[2] > counts[0]


def test_mixture_stream_is_identical_with_workers(domains):
    """The schedule fixes which mixture each batch uses, so 0 and 2 workers give the same domain sequence."""
    seqs = []
    for workers in (0, 2):
        dm = _dm(domains, batches_per_epoch=8, mixture=[0.5, 0.25, 0.25], num_workers=workers, mixture_lag=3)
        dm.setup("fit")
        dm._stream_started = True
        dm._schedule.set([0.0, 1.0, 0.0], epoch=0, next_batch=2)  # applies from batch 5
        seqs.append([b[DOMAIN].tolist() for b in dm.train_dataloader()])
    assert seqs[0] == seqs[1]
    assert all(d == 1 for b in seqs[0][5:] for d in b) and any(d != 1 for b in seqs[0][:5] for d in b)


class _SetMixtureAt(pl.Callback):
    """Changes the data module's mixture at fixed optimizer steps (deterministic stand-in for a mixture rule)."""

    def __init__(self) -> None:
        self.plan = {1: [0.7, 0.2, 0.1], 3: [0.1, 0.1, 0.8]}
        self.domains: list[int] = []
        self.done: list[int] = []

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        self.domains += batch[DOMAIN].tolist()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        p = self.plan.get(trainer.global_step)
        if p is not None and trainer.global_step not in self.done:
            trainer.datamodule.set_mixture(p)
            self.done.append(trainer.global_step)

    def state_dict(self) -> dict:
        return {"domains": list(self.domains), "done": list(self.done)}

    def load_state_dict(self, state: dict) -> None:
        self.domains, self.done = list(state["domains"]), list(state["done"])


def _mixture_resume_build(domains):
    from lightning_ws.modules.clip import CLIPModule

    def build():
        torch.manual_seed(0)
        model = CLIPModule(model_config=TINY, lr=2e-3, warmup_steps=2, total_steps=6)
        return model, _dm(domains, batches_per_epoch=5, shuffle_buffer=4), [_SetMixtureAt()]

    return build


@pytest.mark.parametrize("interrupt_step", [2, 3])
def test_mixture_resume_equals_uninterrupted(domains, tmp_path, interrupt_step):
    """Mixture changes at steps 1 and 3, 5 batches per epoch, 2 micro-batches per step (interruption at the end of
    epoch 0's second step, and in epoch 1): the resumed run draws the same domains and samples (the schedule is in
    the checkpoint)."""
    from tests.helpers.resume import assert_resume_equivalent

    res = assert_resume_equivalent(_mixture_resume_build(domains), total_steps=6, interrupt_step=interrupt_step,
                                   tmp_path=tmp_path, atol=1e-6, rtol=1e-5)
    seen = next(iter(res.full_callbacks.values()))["domains"]
    # 5 batches per epoch -> 3 optimizer steps per epoch (the last one on a single micro-batch): 10 batches in all
    assert len(seen) == 60, len(seen)
    assert sum(d == 2 for d in seen[-12:]) >= 8, seen  # the last change (0.8 on domain 2) reached the data


def test_rnb_callback_changes_the_clip_mixture_and_trains(domains):
    from lightning_ws.callbacks import RnBCallback
    from lightning_ws.modules.clip import CLIPModule

    torch.manual_seed(0)
    model = CLIPModule(model_config=TINY, lr=2e-3, warmup_steps=1)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    dm = _dm(domains, batches_per_epoch=6, shuffle_buffer=4)
    cb = RnBCallback(layer=LAYER, steps_per_round=2, lam=3.0)
    seen = _SetMixtureAt()
    seen.plan = {}
    trainer = _trainer(max_steps=8, max_epochs=-1, callbacks=[cb, seen])
    trainer.fit(model, dm)
    assert trainer.global_step == 8
    p = dm.mixture
    assert p.shape == (3,) and abs(float(p.sum()) - 1) < 1e-6
    assert (p - 1 / 3).abs().max() > 1e-3  # R&B moved the mixture away from the uniform start
    torch.testing.assert_close(p.float(), torch.as_tensor(cb.p).float())
    assert set(seen.domains) == {0, 1, 2}
    assert any(not torch.equal(before[k], v) for k, v in model.state_dict().items())  # it trained
    assert np.isfinite(float(trainer.callback_metrics["train/loss"]))


# ---------------------------------------------------------------------------------------------------- Grad-Mimic
def _fit_steps(model, shard_dir: str, steps: int, callbacks=(), seed: int = 0):
    from lightning_ws.datamodules.webdataset import WebDatasetDataModule

    dm = WebDatasetDataModule(shard_dir, batch_size=8, context_length=16, zeroshot=None, retrieval=None, seed=seed)
    trainer = _trainer(max_steps=steps, max_epochs=-1, callbacks=list(callbacks))
    trainer.fit(model, dm)
    return trainer


def test_gradmimic_on_clip_fine_tuned_from_the_references_start(domains, tmp_path):
    """The supported Grad-Mimic configuration on CLIP (docs/datacomp.md): the paper's full fine-tuning setting. The
    reference is the common starting point fine-tuned on clean data; the model fine-tunes from the same starting
    point on the noisy pool; ``space="weights"`` with ``forward_module="model.visual"`` (the tower that runs the mimic
    layer, so the callback can run the reference on the same images and check the alignment). The check passes and
    every step is re-weighted. A model from another init is refused by the same check (tests/test_clip.py)."""
    from lightning_ws.callbacks import GradMimicCallback
    from lightning_ws.modules.clip import CLIPModule

    torch.manual_seed(0)
    start = CLIPModule(model_config=TINY, lr=2e-4, warmup_steps=1).state_dict()
    reference = CLIPModule(model_config=TINY, lr=2e-4, warmup_steps=1)
    reference.load_state_dict(start)
    _fit_steps(reference, domains["clean"], 4)
    torch.save(reference.state_dict(), tmp_path / "reference.pt")

    model = CLIPModule(model_config=TINY, lr=2e-4, warmup_steps=1)
    model.load_state_dict(start)
    cb = GradMimicCallback(LAYER, reference=str(tmp_path / "reference.pt"), space="weights",
                           forward_module="model.visual", check_every_n_steps=2)
    _fit_steps(model, domains["junk"], 4, [cb])
    sig = cb.signal
    assert sig["ok"] and sig["space"] == "weights" and sig["alignment"], sig
    assert all(k >= 0.5 for _, k, _ in sig["alignment"])
    assert cb.state_dict()["reweighted_steps"] == 4
    table = cb.score_table(num_samples=20, by="step")
    assert table.shape == (4, 20) and np.isfinite(table).sum() == 32  # 4 steps x 8 pairs scored


class _DomainLog(pl.Callback):
    """Per-rank record of the uids and domains read, and of the data module's mixture at the end."""

    def __init__(self) -> None:
        self.uids: list[str] = []
        self.domains: list[int] = []
        self.final: list[float] = []

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        self.uids += list(batch["uid"])
        self.domains += batch[DOMAIN].tolist()

    def on_train_end(self, trainer, pl_module) -> None:
        self.final = trainer.datamodule.mixture.tolist()

    def state_dict(self) -> dict:
        return {"uids": ",".join(self.uids), "domains": self.domains, "final": self.final}


def make_rnb_ddp_case(domains: dict):
    from lightning_ws.callbacks import RnBCallback
    from lightning_ws.modules.clip import CLIPModule

    torch.manual_seed(0)
    model = CLIPModule(model_config=TINY, lr=2e-3, warmup_steps=1)
    dm = _dm(domains, batches_per_epoch=4, shuffle_buffer=4)
    return model, dm, [RnBCallback(layer=LAYER, steps_per_round=2, lam=3.0), _DomainLog()]


@pytest.mark.ddp
@pytest.mark.slow
def test_rnb_on_clip_under_two_process_ddp(domains, tmp_path):
    """2 gloo ranks: both hold the same mixture at the end (R&B's broadcast + the same schedule positions), read
    disjoint samples in the first epoch, and draw every domain."""
    from tests.helpers.ddp import run_fit

    res = run_fit("tests.test_clip_mixture:make_rnb_ddp_case", tmp_path, devices=2,
                  factory_kwargs={"domains": domains}, trainer_kwargs={"max_steps": 6, "max_epochs": -1})
    logs = [next(v for k, v in r["callbacks"].items() if k.startswith("_DomainLog")) for r in res]
    assert [r["global_step"] for r in res] == [6, 6]
    assert logs[0]["final"] == pytest.approx(logs[1]["final"]) and max(abs(x - 1 / 3) for x in logs[0]["final"]) > 1e-3
    first = [set(lg["uids"].split(",")[:24]) for lg in logs]  # epoch 0: 4 batches x 6 per rank (split fixed per epoch)
    assert not first[0] & first[1]
    assert set(logs[0]["domains"]) | set(logs[1]["domains"]) == {0, 1, 2}

"""CLIP: loss, metrics, module, webdataset datamodule, DDP (2 CPU processes), resume, filter-signal predict pass."""

from __future__ import annotations

import math
import re

import lightning.pytorch as pl
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from lightning_ws.datacomp import pool, shards
from lightning_ws.datacomp.clip import TINY_CLIP_CONFIG, build_clip, clip_contrastive_loss
from lightning_ws.metrics.clip import RetrievalRecallAtK, ZeroShotAccuracy

TINY = {**TINY_CLIP_CONFIG, "embed_dim": 32,
        "vision_cfg": {**TINY_CLIP_CONFIG["vision_cfg"], "width": 32, "layers": 1, "patch_size": 8, "head_width": 16},
        "text_cfg": {**TINY_CLIP_CONFIG["text_cfg"], "width": 32, "layers": 1, "context_length": 16}}


def _trainer(**kw) -> pl.Trainer:
    args = dict(accelerator="cpu", devices=1, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                enable_model_summary=False, num_sanity_val_steps=0, deterministic=True)
    args.update(kw)
    return pl.Trainer(**args)


@pytest.fixture(scope="module")
def pool_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("pool")
    samples = pool.build_pool(pool.load_cifar10_subset("pool")[:60], seed=0)
    shards.write_shards(samples, d, samples_per_shard=20)
    return d


def test_local_loss_equals_full_loss_and_gradient():
    torch.manual_seed(0)
    fi = F.normalize(torch.randn(8, 16), dim=-1).requires_grad_()
    ft = F.normalize(torch.randn(8, 16), dim=-1).requires_grad_()
    scale = torch.tensor(math.log(10.0), requires_grad=True)
    full = clip_contrastive_loss(fi, ft, scale)
    g_full = torch.autograd.grad(full, (fi, ft, scale))
    local = sum(clip_contrastive_loss(fi[4 * r:4 * r + 4], ft[4 * r:4 * r + 4], scale, all_image_features=fi,
                                      all_text_features=ft, rank=r, local_loss=True) for r in range(2)) / 2
    g_local = torch.autograd.grad(local, (fi, ft, scale))
    torch.testing.assert_close(local, full)
    for a, b in zip(g_full, g_local):
        torch.testing.assert_close(a, b)
    # perfect alignment at a high temperature scale -> loss near 0
    e = torch.eye(8)
    assert clip_contrastive_loss(e, e, torch.tensor(math.log(100.0))) < 1e-3


def test_zeroshot_accuracy_and_recall_at_k():
    zs = ZeroShotAccuracy(["a", "b", "c"], ["{}"], top_k=1)
    zs.set_classifier(torch.eye(3))
    zs.update(torch.tensor([[1.0, 0, 0], [0, 0.2, 1], [0.9, 1, 0]]), torch.tensor([0, 2, 0]))
    assert zs.compute().item() == pytest.approx(2 / 3)
    with pytest.raises(Exception, match="one '\\{\\}'"):
        ZeroShotAccuracy(["a"], ["no placeholder"])
    r = RetrievalRecallAtK(k=(1, 2))
    img = torch.eye(3)
    # 2 captions per image; image 2's captions point at image 1 (one of them slightly at image 2)
    txt = torch.stack([img[0], img[0], img[1], img[1], img[1] + 0.1 * img[2], img[1] - 0.1 * img[2]])
    r.update(img.repeat_interleave(2, 0), txt, torch.tensor([5, 5, 7, 7, 9, 9]))
    out = r.compute()
    assert out["t2i_R@1"].item() == pytest.approx(4 / 6)
    assert out["i2t_R@1"].item() == pytest.approx(1.0)  # image 2's best caption is its own (0.1 > 0)
    assert out["t2i_R@2"].item() == pytest.approx(5 / 6)


def test_build_clip_offline_and_errors(tmp_path):
    m = build_clip(model_config=TINY)
    assert m.context_length == 16
    with pytest.raises(Exception, match="unknown open_clip model"):
        build_clip("not-a-model")
    with pytest.raises(Exception, match="local checkpoint"):
        build_clip(model_config=TINY, pretrained=str(tmp_path / "missing.pt"))


def test_clip_module_trains_and_evaluates(pool_dir):
    from lightning_ws.datamodules.webdataset import WebDatasetDataModule
    from lightning_ws.modules.clip import CLIPModule

    torch.manual_seed(0)
    model = CLIPModule(model_config=TINY, lr=2e-3, warmup_steps=2)
    dm = WebDatasetDataModule(str(pool_dir), batch_size=16, context_length=16, val_batch_size=500)
    trainer = _trainer(max_steps=6, limit_val_batches=1, val_check_interval=6, check_val_every_n_epoch=None)
    trainer.fit(model, dm)
    m = trainer.callback_metrics
    assert 0 <= m["val/zeroshot_acc"] <= 1 and "val/t2i_R@5" in m and "val/i2t_R@1" in m
    assert m["train/global_batch"] == 16
    assert model.model.logit_scale.exp() <= 100.0
    with pytest.raises(Exception, match="context length"):
        model.encode(torch.zeros(1, 3, 32, 32), torch.zeros(1, 32, dtype=torch.long))


def test_keep_uids_filters_training_stream(pool_dir, tmp_path):
    from lightning_ws.datamodules.webdataset import WebDatasetDataModule

    all_s = list(shards.iter_shards(str(pool_dir)))
    keep = [s.uid for s in all_s if s.meta["truth_keep"]]
    shards.save_uid_array(tmp_path / "keep.npy", keep)
    dm = WebDatasetDataModule(str(pool_dir), batch_size=5, keep_uids=str(tmp_path / "keep.npy"), zeroshot=None,
                              retrieval=None, shuffle_buffer=0, context_length=16)
    dm.setup("fit")
    assert dm._train.batches_per_epoch == len(keep) // 5
    seen = {u for b in dm.train_dataloader() for u in b["uid"]}
    assert seen <= set(keep) and len(seen) == 5 * (len(keep) // 5)


# ---------------------------------------------------------------------------------------------------- resume
def _resume_build(shard_dir: str):
    from lightning_ws.datamodules.webdataset import WebDatasetDataModule
    from lightning_ws.modules.clip import CLIPModule

    def build():
        torch.manual_seed(0)
        model = CLIPModule(model_config=TINY, lr=2e-3, warmup_steps=2, total_steps=6)
        dm = WebDatasetDataModule(shard_dir, batch_size=4, batches_per_epoch=5, shuffle_buffer=8, seed=1,
                                  context_length=16, zeroshot=None, retrieval=None)
        return model, dm, []

    return build


def test_resume_mid_epoch_equals_uninterrupted(pool_dir, tmp_path):
    from tests.helpers.resume import assert_resume_equivalent

    # 5 batches per epoch, 2 micro-batches per step: the interruption at step 2 (after micro-batch 4 of 5) is
    # mid-epoch, so the resumed stream must skip the 4 batches already consumed; the run then crosses epochs
    assert_resume_equivalent(_resume_build(str(pool_dir)), total_steps=5, interrupt_step=2, tmp_path=tmp_path,
                             atol=1e-6, rtol=1e-5)


class _SeenStream(pl.Callback):
    """Records the uids of every training batch (compared between the uninterrupted and the resumed run)."""

    def __init__(self) -> None:
        self.uids: list[str] = []

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        self.uids += [f"{trainer.current_epoch}:{u}" for u in batch["uid"]]

    def state_dict(self) -> dict:
        return {"uids": list(self.uids)}

    def load_state_dict(self, state: dict) -> None:
        self.uids = list(state["uids"])


def _resume_build_seen(shard_dir: str, batches_per_epoch: int):
    from lightning_ws.datamodules.webdataset import WebDatasetDataModule
    from lightning_ws.modules.clip import CLIPModule

    def build():
        torch.manual_seed(0)
        model = CLIPModule(model_config=TINY, lr=2e-3, warmup_steps=2, total_steps=6)
        dm = WebDatasetDataModule(shard_dir, batch_size=4, batches_per_epoch=batches_per_epoch, shuffle_buffer=8,
                                  seed=1, context_length=16, zeroshot=None, retrieval=None)
        return model, dm, [_SeenStream()]

    return build


@pytest.mark.parametrize("interrupt_step", [2, 3])
def test_resume_at_an_epochs_last_batch_equals_uninterrupted(pool_dir, tmp_path, interrupt_step):
    """4 batches per epoch, 2 micro-batches per step: step 2 ends exactly on epoch 0's last batch (the checkpoint is
    written inside the loop, before Lightning closes the epoch), step 3 in the middle of epoch 1. The resumed run must
    see the same batches, in the same epochs, as the uninterrupted one."""
    from tests.helpers.resume import assert_resume_equivalent

    res = assert_resume_equivalent(_resume_build_seen(str(pool_dir), 4), total_steps=5, interrupt_step=interrupt_step,
                                   tmp_path=tmp_path, atol=1e-6, rtol=1e-5)
    seen = next(iter(res.full_callbacks.values()))["uids"]
    assert len(seen) == 40 and len({u.split(":")[0] for u in seen}) == 3  # epochs 0, 1 and 2 were entered


# ---------------------------------------------------------------------------------------------------- DDP
class _TensorPairs(pl.LightningDataModule):
    """16 fixed (image, text) pairs in order; under DDP rank r reads rows r, r + W, ... itself (the trainer runs with
    ``use_distributed_sampler=False``), so two ranks x 4 rows hold exactly the rows of one process's batch of 8."""

    def __init__(self, batch_size: int) -> None:
        super().__init__()
        self.batch_size = batch_size
        g = torch.Generator().manual_seed(0)
        self.images = torch.randn(16, 3, 32, 32, generator=g)
        self.texts = torch.randint(1, 49000, (16, 16), generator=g)
        self.texts[:, 0], self.texts[:, 10], self.texts[:, 11:] = 49406, 49407, 0

    def train_dataloader(self):
        rank, world = (self.trainer.global_rank, self.trainer.world_size) if self.trainer else (0, 1)
        rows = [{"image": self.images[i], "text": self.texts[i]} for i in range(rank, 16, world)]
        return torch.utils.data.DataLoader(rows, batch_size=self.batch_size, shuffle=False)


def make_ddp_case(batch_size: int, local_loss: bool = False):
    from lightning_ws.modules.clip import CLIPModule

    torch.manual_seed(0)
    # Adam's eps at 1e-3: the attention key biases have a zero gradient in exact arithmetic (softmax shift
    # invariance), and with eps=1e-6 Adam would blow their float round-off (~1e-10) up into full-size updates that
    # differ between any two summation orders, one process or two.
    model = CLIPModule(model_config=TINY, lr=5e-3, warmup_steps=1, total_steps=4, weight_decay=0.1, eps=1e-3,
                       local_loss=local_loss)
    return model, _TensorPairs(batch_size), []


@pytest.mark.ddp
@pytest.mark.parametrize("local_loss", [False, pytest.param(True, marks=pytest.mark.slow)])
def test_ddp_two_processes_equal_one_process_on_global_batch(tmp_path, local_loss):
    from tests.helpers.ddp import run_fit

    ddp = run_fit("tests.test_clip:make_ddp_case", tmp_path, devices=2,
                  factory_kwargs={"batch_size": 4, "local_loss": local_loss},
                  trainer_kwargs={"use_distributed_sampler": False})
    # the one-process reference in this process (same Trainer settings as the DDP worker)
    model, dm, _ = make_ddp_case(8, local_loss)
    trainer = _trainer(max_steps=4, max_epochs=-1, limit_val_batches=0, default_root_dir=str(tmp_path))
    trainer.fit(model, dm)
    ref = {"metrics": {k: float(v) for k, v in trainer.callback_metrics.items()}, "global_step": trainer.global_step,
           "params": {k: v.detach().clone() for k, v in model.state_dict().items()}}
    assert ddp[0]["metrics"]["train/global_batch"] == 8.0  # features were gathered from both ranks
    assert ref["metrics"]["train/global_batch"] == 8.0
    for rank in ddp:
        assert rank["global_step"] == ref["global_step"] == 4
        assert rank["metrics"]["train/loss"] == pytest.approx(ref["metrics"]["train/loss"], rel=1e-4, abs=1e-5)
        for k, v in ref["params"].items():
            torch.testing.assert_close(rank["params"][k], v, atol=2e-5, rtol=1e-4, msg=k)
    # the parameters moved (the comparison is not vacuous)
    torch.manual_seed(0)
    init = build_clip(model_config=TINY).state_dict()
    assert any(not torch.allclose(init[k.removeprefix("model.")], v) for k, v in ref["params"].items()
               if k.removeprefix("model.") in init)


# ---------------------------------------------------------------------------------------------------- signals
def test_signal_predict_pass_matches_plain_loop(pool_dir, tmp_path):
    from lightning_ws.callbacks.datacomp import SignalCacheWriter
    from lightning_ws.datacomp.filters import OwlDetector, load_signal_caches, tiny_owlvit
    from lightning_ws.datacomp.signals import compute_signals
    from lightning_ws.datamodules.webdataset import ShardSignalDataModule
    from lightning_ws.modules.clip import FilterSignalModule

    torch.manual_seed(0)
    clip = build_clip(model_config=TINY)
    det = OwlDetector(tiny_owlvit(seed=0), top_k=4)
    writer = SignalCacheWriter(str(tmp_path / "pl"))
    dm = ShardSignalDataModule(str(pool_dir), str(tmp_path / "pl"), batch_size=16, context_length=16,
                               det_image_size=det.image_size, num_workers=2)
    _trainer(callbacks=[writer]).predict(FilterSignalModule.from_models(clip, det), dm, return_predictions=False)
    a_paths = sorted((tmp_path / "pl").glob("*.safetensors"))
    assert sorted(writer.written) == a_paths
    b_paths = compute_signals(str(pool_dir), tmp_path / "plain", clip_model=clip, detector=det, context_length=16,
                              batch_size=7)
    assert len(a_paths) == len(b_paths) == 4
    a, b = load_signal_caches(a_paths), load_signal_caches(b_paths)
    assert set(a) == set(b) >= {"clip_score", "det_top_logits", "img_phash", "cap_words", "uid_hi"}
    for k in a:
        np.testing.assert_allclose(a[k], b[k], rtol=1e-4, atol=1e-5, err_msg=k)
    # computed once: a second pass finds nothing to do
    assert compute_signals(str(pool_dir), tmp_path / "plain", clip_model=clip) == []
    with pytest.raises(Exception, match="already has a signal cache"):
        ShardSignalDataModule(str(pool_dir), str(tmp_path / "pl")).predict_dataloader()


def make_signal_case(shard_dir: str, cache_dir: str):
    """FilterSignalModule (a seeded tiny CLIP and tiny random OWL-ViT) + ShardSignalDataModule + SignalCacheWriter."""
    from lightning_ws.callbacks.datacomp import SignalCacheWriter
    from lightning_ws.datacomp.filters import OwlDetector, tiny_owlvit
    from lightning_ws.datamodules.webdataset import ShardSignalDataModule
    from lightning_ws.modules.clip import FilterSignalModule

    torch.manual_seed(0)
    clip = build_clip(model_config=TINY)
    det = OwlDetector(tiny_owlvit(seed=0), top_k=4)
    dm = ShardSignalDataModule(shard_dir, cache_dir, batch_size=8, context_length=16, det_image_size=det.image_size)
    return FilterSignalModule.from_models(clip, det), dm, [SignalCacheWriter(cache_dir)]


@pytest.mark.ddp
@pytest.mark.slow
def test_signal_predict_two_processes_write_what_one_process_writes(tmp_path):
    """The filter-signal predict pass on 2 gloo processes: each rank writes the caches of the whole shards it read
    (3 uneven shards, none written twice, none missing) and the signals equal those of 1 process."""
    from lightning_ws.datacomp.filters import load_signal_caches
    from tests.helpers.ddp import run_predict

    samples = pool.build_pool(pool.load_cifar10_subset("pool")[:49], seed=0)
    shards.write_shards(samples, tmp_path / "s", samples_per_shard=20)  # 3 shards, the last one short
    written = {}
    for devices in (1, 2):
        kwargs = {"shard_dir": str(tmp_path / "s"), "cache_dir": str(tmp_path / f"c{devices}")}
        res = run_predict("tests.test_clip:make_signal_case", tmp_path, devices=devices, factory_kwargs=kwargs)
        written[devices] = [sorted(p for paths in r["written"].values() for p in paths) for r in res]
    (one,) = written[1]
    assert len(one) == 3 == len(list((tmp_path / "c1").glob("*.signals.safetensors")))
    rank0, rank1 = written[2]
    assert rank0 and rank1 and not set(rank0) & set(rank1), written[2]  # whole shards per rank, none twice
    names = sorted(p.rsplit("/", 1)[-1] for p in rank0 + rank1)
    assert names == sorted(p.rsplit("/", 1)[-1] for p in one)
    a = load_signal_caches(sorted((tmp_path / "c1").glob("*.signals.safetensors")))
    b = load_signal_caches(sorted((tmp_path / "c2").glob("*.signals.safetensors")))
    assert set(a) == set(b) >= {"clip_score", "det_top_logits", "img_phash", "cap_words", "uid_hi"}
    assert len(a["uid_hi"]) == len(samples)
    for k in a:
        np.testing.assert_allclose(b[k], a[k], rtol=1e-4, atol=1e-5, err_msg=k)


def test_gradmimic_callback_runs_on_the_clip_module(pool_dir):
    """Grad-Mimic (layer_only) on an inner CLIP layer: scores recorded for every training sample id."""
    from lightning_ws.callbacks import GradMimicCallback
    from lightning_ws.errors import ConfigError
    from lightning_ws.datamodules.webdataset import WebDatasetDataModule
    from lightning_ws.modules.clip import CLIPModule

    torch.manual_seed(1)
    reference = CLIPModule(model_config=TINY).state_dict()
    torch.manual_seed(0)
    model = CLIPModule(model_config=TINY, warmup_steps=1)
    dm = WebDatasetDataModule(str(pool_dir), batch_size=8, context_length=16, zeroshot=None, retrieval=None)
    layer = "model.visual.transformer.resblocks.0.mlp.c_proj"
    # The default refuses: the whole CLIP body trains from another init, so the mimic direction on an inner layer
    # carries no signal (docs/gradmimic.md, "Where the direction carries signal").
    with pytest.raises(ConfigError):
        _trainer(max_steps=1, limit_val_batches=0,
                 callbacks=[GradMimicCallback(layer, reference=reference)]).fit(model, dm)
    # The paper's weight-space mechanics still run on the CLIP module when asked for explicitly.
    cb = GradMimicCallback(layer, reference=reference, space="weights", min_alignment=None)
    _trainer(max_steps=3, limit_val_batches=0, callbacks=[cb]).fit(model, dm)
    state = cb.state_dict()
    assert state["reweighted_steps"] == 3
    n = len(list(shards.iter_shards(str(pool_dir))))
    table = cb.score_table(num_samples=n, by="step")
    assert table.shape == (3, n) and np.isfinite(table).sum() == 24  # 3 steps x 8 samples scored


class _SeenUids(pl.Callback):
    def __init__(self) -> None:
        self.uids: list[str] = []

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        self.uids += list(batch["uid"])

    def state_dict(self) -> dict:
        return {"uids": ",".join(self.uids), "n": len(self.uids)}


def make_shard_ddp_case(shard_dir: str):
    from lightning_ws.datamodules.webdataset import WebDatasetDataModule
    from lightning_ws.modules.clip import CLIPModule

    torch.manual_seed(0)
    model = CLIPModule(model_config=TINY, warmup_steps=1)
    dm = WebDatasetDataModule(shard_dir, batch_size=4, context_length=16, zeroshot=None, retrieval=None,
                              shuffle_buffer=0)
    return model, dm, [_SeenUids()]


@pytest.mark.ddp
@pytest.mark.slow
def test_ddp_webdataset_ranks_read_disjoint_shards_equal_steps(tmp_path):
    """3 uneven shards (20/20/9 samples) on 2 ranks: one epoch = 49 // 8 = 6 steps on both ranks, no hang, and the
    ranks read different shards."""
    from tests.helpers.ddp import run_fit

    samples = pool.build_pool(pool.load_cifar10_subset("pool")[:49], pool.NoiseSpec(0, 0, 0, 0), seed=0)
    shards.write_shards(samples, tmp_path / "s", samples_per_shard=20)
    res = run_fit("tests.test_clip:make_shard_ddp_case", tmp_path, devices=2,
                  factory_kwargs={"shard_dir": str(tmp_path / "s")}, trainer_kwargs={"max_steps": -1, "max_epochs": 2})
    seen = [set(next(iter(r["callbacks"].values()))["uids"].split(",")) for r in res]
    assert [r["global_step"] for r in res] == [12, 12]
    assert [next(iter(r["callbacks"].values()))["n"] for r in res] == [48, 48]
    assert seen[0] and seen[1] and len(seen[0] | seen[1]) > max(len(seen[0]), len(seen[1]))


def test_wandb_example_images_carry_their_decoded_captions(pool_dir):
    """``log_images_every_n_steps``: up to 8 de-normalised training images go to W&B with the batch's own captions."""
    from types import SimpleNamespace

    from lightning.pytorch.loggers import WandbLogger

    from lightning_ws.datamodules.webdataset import WebDatasetDataModule
    from lightning_ws.modules.clip import CLIPModule

    class _Capture(WandbLogger):
        def __init__(self) -> None:  # no W&B run: only the call is recorded
            self.calls: list = []

        def log_image(self, key, images, step=None, **kwargs) -> None:
            self.calls.append((key, images, step, kwargs))

    dm = WebDatasetDataModule(str(pool_dir), batch_size=10, context_length=16, zeroshot=None, retrieval=None,
                              shuffle_buffer=0)
    dm.setup("fit")
    batch = next(iter(dm.train_dataloader()))
    captions = {s.uid: s.caption for s in shards.iter_shards(str(pool_dir))}
    model = CLIPModule(model_config=TINY)
    cap = _Capture()
    model._trainer = SimpleNamespace(loggers=[cap], global_rank=0, global_step=7)
    model._log_examples(batch)
    (key, images, step, kw), = cap.calls
    assert key == "train/examples" and step == 7 and len(images) == 8
    assert all(im.shape == (3, 32, 32) and 0 <= float(im.min()) and float(im.max()) <= 1 for im in images)
    want = [captions[u].lower() for u in batch["uid"][:8]]
    got = [c.lower() for c in kw["caption"]]
    # plain-word captions come back exactly (the tokenizer lower-cases; punctuation, junk symbols and CJK are not
    # round-trip safe: "close-up" decodes as "close - up")
    plain = [(g, w) for g, w in zip(got, want) if re.fullmatch(r"[a-z ]+", w) and len(w.split()) <= 10]
    assert len(plain) >= 5 and [g for g, w in plain if g != w] == [], plain

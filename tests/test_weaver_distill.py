"""Weaver cross-encoder distillation: core losses/selection/splits, datamodule, module fit/predict, resume."""

from __future__ import annotations

import math

import lightning.pytorch as pl
import numpy as np
import pytest
import torch

from lightning_ws.datamodules.weaver import WeaverDistillDataModule, encode_pairs
from lightning_ws.errors import ConfigError, DataError, DataFileNotFoundError
from lightning_ws.io import save_json, save_tensors
from lightning_ws.modules.weaver import WeaverCrossEncoder
from lightning_ws.weaver.distill import (
    flat_selection_accuracy,
    listwise_ranking_loss,
    load_score_file,
    pairwise_ranking_loss,
    select_from_scores,
    split_problems,
)
from tests.helpers.resume import assert_resume_equivalent

TINY = {"num_hidden_layers": 1, "hidden_size": 32, "intermediate_size": 64, "num_attention_heads": 2,
        "hidden_dropout_prob": 0.0, "attention_probs_dropout_prob": 0.0}


@pytest.fixture(scope="module")
def vdata():
    """36 GSM8K problems x 4 candidates with the offline heuristic verifiers."""
    from lightning_ws.weaver import load_gsm8k_verification

    return load_gsm8k_verification(verifiers="heuristic").subset(np.arange(36))


def tiny_model(**kw) -> WeaverCrossEncoder:
    torch.manual_seed(0)
    args = dict(pretrained=False, config_overrides=TINY, head_dims=(16,), dropout=0.0, lr=1e-3, head_lr=3e-3)
    args.update(kw)
    return WeaverCrossEncoder(**args)


def make_dm(vdata, **kw) -> WeaverDistillDataModule:
    args = dict(data=vdata, max_length=64, batch_problems=3, eval_batch_problems=4, val_fraction=0.2,
                test_fraction=0.2, seed=0)
    args.update(kw)
    return WeaverDistillDataModule(**args)


def _trainer(**kw) -> pl.Trainer:
    args = dict(accelerator="cpu", devices=1, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                enable_model_summary=False, num_sanity_val_steps=0)
    args.update(kw)
    return pl.Trainer(**args)


# ---------------------------------------------------------------------------------------------------- core
def test_split_problems_disjoint_seeded_and_validated():
    tr, va, te = split_problems(50, val_fraction=0.1, test_fraction=0.2, seed=3)
    assert len(va) == 5 and len(te) == 10 and len(tr) == 35
    assert not (set(tr) & set(va)) and not (set(tr) & set(te)) and not (set(va) & set(te))
    assert sorted([*tr, *va, *te]) == list(range(50))
    again = split_problems(50, val_fraction=0.1, test_fraction=0.2, seed=3)
    assert all(np.array_equal(a, b) for a, b in zip((tr, va, te), again))
    assert not np.array_equal(te, split_problems(50, val_fraction=0.1, test_fraction=0.2, seed=4)[2])
    with pytest.raises(ConfigError, match="val_fraction"):
        split_problems(10, val_fraction=1.0)
    with pytest.raises(ConfigError, match="non-empty training set"):
        split_problems(2, val_fraction=0.5, test_fraction=0.5)


def test_pairwise_ranking_loss_hand_example():
    s = torch.tensor([0.0, 1.0, 2.0, 0.5, 3.0], requires_grad=True)
    t = torch.tensor([0.2, 0.8, 0.5, 0.5, 0.9])
    p = torch.tensor([0, 0, 1, 1, 2])
    # problem 0: one ordered pair (1 over 0), diff 1; problem 1: equal targets -> no pair; problem 2: single item.
    loss = pairwise_ranking_loss(s, t, p)
    assert loss.item() == pytest.approx(math.log1p(math.exp(-1.0)), abs=1e-6)
    loss.backward()
    g = 1.0 / (1.0 + math.exp(1.0))  # d/ds1 softplus(-(s1 - s0)) = -sigmoid(-(s1 - s0))
    assert s.grad.tolist() == pytest.approx([g, -g, 0.0, 0.0, 0.0], abs=1e-6)
    # wrong order costs more than right order
    assert pairwise_ranking_loss(torch.tensor([1.0, 0.0]), t[:2], p[:2]) > loss


def test_ranking_losses_without_pairs_are_zero_with_finite_gradient():
    s = torch.tensor([0.3, -1.0, 2.0], requires_grad=True)
    t = torch.tensor([0.5, 0.5, 0.7])
    p = torch.tensor([0, 0, 1])  # only tie pairs and a singleton
    for fn in (pairwise_ranking_loss, listwise_ranking_loss):
        s.grad = None
        loss = fn(s, t, torch.tensor([0, 1, 2])) if fn is listwise_ranking_loss else fn(s, t, p)
        loss.backward()
        assert loss.item() == 0.0 and torch.isfinite(s.grad).all() and (s.grad == 0).all()


@pytest.mark.parametrize("kind", ["pairwise", "listwise"])
def test_ranking_terms_split_across_ranks_give_the_whole_batch_loss(kind):
    """(total, count) reproduce the loss, and two halves normalised by the mean count over both (what the module does
    under DDP) average to the whole batch's loss and gradient; each half's own mean does not (pairs differ)."""
    from lightning_ws.weaver.distill import ranking_loss, ranking_loss_terms

    g = torch.Generator().manual_seed(0)
    p = torch.arange(6).repeat_interleave(4)
    t = torch.rand(24, generator=g).round(decimals=1)
    t[:4] = 0.5  # problem 0: no ordered pair
    t[8:11] = 0.2  # problem 2: three tied candidates
    s = torch.randn(24, generator=g, dtype=torch.float64, requires_grad=True)
    total, count = ranking_loss_terms(kind, s, t, p)
    whole = ranking_loss(kind, s, t, p)
    assert torch.allclose(total / count, whole, rtol=1e-12)
    (grad_whole,) = torch.autograd.grad(whole, s)
    halves = [torch.arange(0, 12), torch.arange(12, 24)]
    terms = [ranking_loss_terms(kind, s[h], t[h], p[h]) for h in halves]
    if kind == "pairwise":
        assert terms[0][1] != terms[1][1]  # the ranks hold different numbers of pairs
    mean_count = (terms[0][1] + terms[1][1]).double() / 2
    ddp = sum(tot / mean_count for tot, _ in terms) / 2
    assert torch.allclose(ddp, whole, rtol=1e-12)
    (grad_ddp,) = torch.autograd.grad(ddp, s)
    torch.testing.assert_close(grad_ddp, grad_whole, rtol=1e-12, atol=1e-15)
    if kind == "pairwise":
        local = sum(ranking_loss(kind, s[h], t[h], p[h]) for h in halves) / 2
        assert not torch.allclose(local, whole, rtol=1e-6)


def test_listwise_ranking_loss_hand_example():
    s = torch.tensor([0.0, 1.0, 2.0, 0.5])
    t = torch.tensor([0.2, 0.8, 0.5, 0.5])
    p = torch.tensor([0, 0, 1, 1])

    def kl(q, z):
        q = np.asarray(q) / np.sum(q)
        pz = np.exp(z) / np.exp(z).sum()
        return float((q * np.log(q / pz)).sum())

    q0 = np.exp(np.array([0.2, 0.8]) / 0.1)
    expected = (kl(q0, np.array([0.0, 1.0])) + kl([1, 1], np.array([2.0, 0.5]))) / 2
    assert listwise_ranking_loss(s, t, p).item() == pytest.approx(expected, abs=1e-5)
    # matching within-problem distributions give zero loss
    z = torch.tensor([2.0, 8.0, 5.0, 5.0])
    assert listwise_ranking_loss(z, t, p).item() == pytest.approx(0.0, abs=1e-6)


def test_select_from_scores_first_on_ties_and_nan():
    p = torch.tensor([7, 3, 7, 3, 7, 5])
    s = torch.tensor([0.9, float("nan"), 0.9, 0.1, 0.2, float("nan")])
    probs, pos = select_from_scores(p, s)
    assert probs.tolist() == [3, 5, 7]
    assert pos.tolist() == [3, 5, 0]  # NaN never beats a number; the tie at 0.9 goes to the first position
    assert flat_selection_accuracy(p, s, [1, 0, 0, 1, 0, 0]) == pytest.approx(2 / 3)
    with pytest.raises(DataError, match="same length"):
        select_from_scores([0, 1], [0.5])


# ---------------------------------------------------------------------------------------------------- data
def test_datamodule_splits_by_problem_and_batches_whole_problems(vdata):
    dm = make_dm(vdata)
    dm.setup("fit")
    sets = {k: set(v.tolist()) for k, v in dm.splits.items()}
    assert not (sets["train"] & sets["val"]) and not (sets["train"] & sets["test"]) and not (sets["val"] & sets["test"])
    assert sets["train"] | sets["val"] | sets["test"] == set(range(36))
    assert dm.score_source.startswith("label_free Weaver fitted on the training problems")
    seen = set()
    for batch in dm.train_dataloader():
        assert batch["input_ids"].shape == batch["attention_mask"].shape
        assert batch["input_ids"].shape[1] <= 64
        # dynamic padding: the longest row of the batch is unpadded
        assert batch["attention_mask"].sum(1).max() == batch["input_ids"].shape[1]
        probs, counts = batch["problem"].unique(return_counts=True)
        assert (counts == 4).all()
        assert set(probs.tolist()) <= sets["train"]
        assert torch.equal(batch["idx"] // 4, batch["problem"])
        assert torch.allclose(batch["target"], torch.as_tensor(
            dm.weaver_scores[batch["problem"].numpy(), (batch["idx"] % 4).numpy()], dtype=torch.float32))
        assert torch.equal(batch["correct"].bool(), torch.as_tensor(
            vdata.correct[batch["problem"].numpy(), (batch["idx"] % 4).numpy()]))
        seen |= set(probs.tolist())
    assert seen == sets["train"]
    for batch in dm.val_dataloader():
        assert set(batch["problem"].tolist()) <= sets["val"]


def test_encode_pairs_truncates_response_first():
    from lightning_ws.datamodules.text import load_tokenizer

    tok = load_tokenizer(None)
    q, r = "how many apples are left", "she eats one apple " * 60
    ids, types = encode_pairs(tok, [q, "word " * 200], [r, "short answer"], 32)
    assert len(ids[0]) == 32 and len(ids[1]) == 32
    q_ids = tok(q, add_special_tokens=False)["input_ids"]
    assert ids[0][1:1 + len(q_ids)] == q_ids  # the instruction survives whole
    assert types is not None and sum(types[0]) == 32 - len(q_ids) - 2


def test_score_file_safetensors_json_and_errors(vdata, tmp_path):
    rng = np.random.default_rng(0)
    scores = rng.random((36, 4))
    save_tensors(tmp_path / "weaver_scores.safetensors", {"scores": torch.from_numpy(scores)})
    save_json(tmp_path / "j" / "weaver_scores.json", {"scores": scores.tolist()})
    assert np.allclose(load_score_file(tmp_path), scores)
    assert np.allclose(load_score_file(tmp_path / "j" / "weaver_scores.json"), scores)
    dm = make_dm(vdata, scores_path=str(tmp_path / "weaver_scores.safetensors"))
    dm.setup("fit")
    te = dm.datasets["test"]
    assert np.allclose(te.targets, scores[te.problems])
    assert dm.score_source.startswith("file:")
    with pytest.raises(DataFileNotFoundError, match="weaver select"):
        load_score_file(tmp_path / "missing.safetensors")
    save_tensors(tmp_path / "bad.safetensors", {"scores": torch.zeros(5, 4, dtype=torch.float64)})
    with pytest.raises(DataError, match="shape"):
        make_dm(vdata, scores_path=str(tmp_path / "bad.safetensors")).setup("fit")


def test_bad_arguments_raise_config_error(vdata):
    with pytest.raises(ConfigError, match="data must be"):
        WeaverDistillDataModule(data="math500")
    with pytest.raises(ConfigError, match="batch_problems"):
        make_dm(vdata, batch_problems=0)
    with pytest.raises(ConfigError, match="ranking_loss"):
        tiny_model(ranking_loss="hinge")
    with pytest.raises(ConfigError, match="ranking_weight"):
        tiny_model(ranking_weight=-1.0)


# ---------------------------------------------------------------------------------------------------- module
@pytest.mark.parametrize("ranking", ["pairwise", "listwise"])
def test_short_fit_lowers_val_mse(vdata, ranking):
    # the paper's candidate-level teacher (binary label model); the default answer-level teacher gives targets that
    # are a function of answer agreement, which 6 epochs on 21 problems do not learn (see docs/weaver.md)
    dm = make_dm(vdata, weaver_kwargs={"label_model": "moment_matching"})
    model = tiny_model(ranking_loss=ranking, ranking_weight=0.5)
    before = _trainer().validate(model, dm, verbose=False)[0]["val/mse"]
    trainer = _trainer(max_epochs=6, limit_val_batches=0)
    trainer.fit(model, dm)
    after = _trainer().validate(model, dm, verbose=False)[0]
    assert after["val/mse"] < 0.8 * before, (before, after)
    assert 0.0 <= after["val/select_acc"] <= 1.0
    assert "train/rank" in trainer.callback_metrics


def test_predict_select_and_test_metric_agree(vdata):
    dm = make_dm(vdata)
    model = tiny_model()
    trainer = _trainer(max_epochs=1, limit_val_batches=0)
    trainer.fit(model, dm)
    out = trainer.predict(model, dm)
    chosen = WeaverCrossEncoder.select(out)
    test_problems = dm.splits["test"].tolist()
    assert sorted(chosen) == test_problems
    assert all(idx // 4 == p for p, idx in chosen.items())
    acc = float(np.mean([vdata.correct[p, idx % 4] for p, idx in chosen.items()]))
    res = trainer.test(model, dm, verbose=False)[0]
    assert res["test/select_acc"] == pytest.approx(acc)
    scores = torch.cat([o["score"] for o in out])
    assert ((scores > 0) & (scores < 1)).all()


def test_resume_is_exact(vdata, tmp_path):
    def build():
        return tiny_model(ranking_weight=0.5, schedule_steps=6), make_dm(vdata, batch_problems=2), []

    assert_resume_equivalent(build, total_steps=6, interrupt_step=3, tmp_path=tmp_path)


def test_datamodule_leaves_out_padding_slots_of_ragged_problems(vdata):
    """Problems with fewer candidates arrive padded (no answer, no score, no text): the batches, the answer shares, the
    teacher's Select@1 and the student's picks see only the real candidates."""
    slot = np.zeros((36, 4), dtype=bool)
    slot[::3, 3] = True  # every third problem has 3 candidates
    slot[1::6, 2:] = True  # and some have 2
    ragged = vdata.pad_slots(slot)
    assert np.array_equal(ragged.present(), ~slot) and ragged.samples[0][3] == "" and not ragged.correct[slot].any()
    dm = make_dm(ragged)
    dm.setup("fit")
    seen = 0
    for loader in (dm.train_dataloader(), dm.val_dataloader(), dm.test_dataloader()):
        for batch in loader:
            p, n = batch["problem"].numpy(), (batch["idx"] % 4).numpy()
            assert torch.equal(batch["idx"] // 4, batch["problem"]) and not slot[p, n].any()
            assert batch["input_ids"].shape[0] == p.size == batch["target"].shape[0] == batch["agreement"].shape[0]
            assert torch.allclose(batch["target"], torch.as_tensor(dm.weaver_scores[p, n], dtype=torch.float32))
            for q in np.unique(p):  # every real candidate of the problem, once; shares over its real candidates
                assert sorted(n[p == q].tolist()) == np.flatnonzero(~slot[q]).tolist()
                ans = [ragged.answers[q][k] for k in n[p == q]]
                share = [ans.count(a) / len(ans) if a is not None else 0.0 for a in ans]
                assert np.allclose(batch["agreement"][torch.as_tensor(p == q)].numpy(), share)
            seen += p.size
    assert seen == int((~slot).sum())
    assert 0.0 <= dm.weaver_selection_accuracy("test") <= 1.0
    out = _trainer().predict(tiny_model(), datamodule=dm)
    picks = WeaverCrossEncoder.select(out)
    assert picks and all(not slot[q, i % 4] for q, i in picks.items())

"""Lightning side of Loki: metrics, LokiDigitsDataModule, LokiClassifier, config (arXiv 2307.12226)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import lightning.pytorch as pl
import numpy as np
import pytest
import torch

from lightning_ws.datamodules.loki import LokiDigitsDataModule
from lightning_ws.errors import ConfigError, DataError
from lightning_ws.loki import LabelMetric, reachable_classes
from lightning_ws.metrics.loki import (
    ExpectedSquaredDistance,
    FullSpaceAccuracy,
    SeenUnseenBreakdown,
    expected_squared_distance,
)
from lightning_ws.modules.loki import LokiClassifier

REPO = Path(__file__).resolve().parents[1]


def _np_reference(preds: np.ndarray, target: np.ndarray, sq: np.ndarray, observed: list[int]) -> dict[str, float]:
    seen = np.isin(target, observed)
    out = {"esd": float(np.mean(sq[preds, target])), "acc": float(np.mean(preds == target))}
    for name, mask in (("seen", seen), ("unseen", ~seen)):
        out[f"{name}/acc"] = float(np.mean(preds[mask] == target[mask]))
        out[f"{name}/esd"] = float(np.mean(sq[preds[mask], target[mask]]))
    out["pred_unseen_frac"] = float(np.mean(~np.isin(preds, observed)))
    return out


def _random_case(seed: int, n: int = 12, size: int = 300):
    rng = np.random.default_rng(seed)
    pts = rng.normal(size=(n, 3))
    sq = ((pts[:, None] - pts[None]) ** 2).sum(-1)
    return rng.integers(0, n, size), rng.integers(0, n, size), sq


def test_metrics_match_numpy_reference_over_batches():
    preds, target, sq = _random_case(0)
    observed = [0, 3, 5, 8]
    ref = _np_reference(preds, target, sq, observed)
    esd, acc = ExpectedSquaredDistance(torch.from_numpy(sq)), FullSpaceAccuracy(12)
    split = SeenUnseenBreakdown(torch.from_numpy(sq), observed)
    for i in range(0, 300, 37):  # uneven batches
        p, t = torch.from_numpy(preds[i:i + 37]), torch.from_numpy(target[i:i + 37])
        for m in (esd, acc, split):
            m.update(p, t)
    assert esd.compute().item() == pytest.approx(ref["esd"], rel=1e-12)
    assert acc.compute().item() == pytest.approx(ref["acc"])
    got = {k: v.item() for k, v in split.compute().items()}
    assert got == pytest.approx({k: v for k, v in ref.items() if "/" in k or k == "pred_unseen_frac"})
    assert expected_squared_distance(torch.from_numpy(preds), torch.from_numpy(target),
                                     torch.from_numpy(sq)).item() == pytest.approx(ref["esd"])


def test_metric_edge_cases():
    sq = torch.tensor([[0.0, 4.0], [4.0, 0.0]])
    m = ExpectedSquaredDistance(sq)
    with pytest.warns(UserWarning, match="before the ``update``"):
        assert torch.isnan(m.compute())
    with pytest.raises(DataError, match="positions"):
        m.update(torch.tensor([0, 2]), torch.tensor([0, 1]))
    with pytest.raises(DataError, match="same length"):
        m.update(torch.tensor([0]), torch.tensor([0, 1]))
    with pytest.raises(DataError, match="square"):
        ExpectedSquaredDistance(torch.zeros(2, 3))
    with pytest.raises(ConfigError):
        SeenUnseenBreakdown(sq, [5])
    split = SeenUnseenBreakdown(sq, [0])
    split.update(torch.tensor([1]), torch.tensor([0]))  # only a seen target: unseen group is empty
    out = split.compute()
    assert out["seen/esd"].item() == 4.0 and torch.isnan(out["unseen/acc"]) and out["pred_unseen_frac"].item() == 1.0


def _ddp_metric_worker(rank: int, world: int, port: int, out_dir: str) -> None:
    import torch.distributed as dist

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        preds, target, sq = _random_case(1)
        esd = ExpectedSquaredDistance(torch.from_numpy(sq))
        split = SeenUnseenBreakdown(torch.from_numpy(sq), [1, 2, 7])
        shard = slice(rank * 200, (rank + 1) * 200) if rank == 0 else slice(200, 300)  # unequal shards
        for m in (esd, split):
            m.update(torch.from_numpy(preds[shard]), torch.from_numpy(target[shard]))
        res = {"esd": esd.compute().item(), **{k: v.item() for k, v in split.compute().items()}}
        Path(out_dir, f"rank{rank}.json").write_text(json.dumps(res))
    finally:
        dist.destroy_process_group()


@pytest.mark.slow
@pytest.mark.ddp
def test_metrics_sync_over_two_gloo_processes(tmp_path):
    """Spec §12.7: the synced metric over 2 processes equals the single-process value on all data."""
    import socket

    import torch.multiprocessing as mp

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    mp.start_processes(_ddp_metric_worker, args=(2, port, str(tmp_path)), nprocs=2, start_method="spawn")
    preds, target, sq = _random_case(1)
    ref = _np_reference(preds, target, sq, [1, 2, 7])
    for rank in range(2):
        got = json.loads((tmp_path / f"rank{rank}.json").read_text())
        assert got["esd"] == pytest.approx(ref["esd"])
        for key in ("seen/acc", "seen/esd", "unseen/acc", "unseen/esd", "pred_unseen_frac"):
            assert got[key] == pytest.approx(ref[key]), key


# ------------------------------------------------------------------------------------------- datamodule
def test_digits_datamodule_contract_and_validation():
    dm = LokiDigitsDataModule(observed_classes=[0, 1, 4, 7, 8], batch_size=32)
    batch = next(iter(dm.train_dataloader()))
    assert set(batch) == {"x", "labels", "idx"}
    assert batch["x"].dtype == torch.float32 and batch["x"].shape == (32, 64)
    assert batch["labels"].dtype == torch.long and batch["idx"].dtype == torch.long
    _, y_train = dm.split_arrays("train")
    assert set(y_train.tolist()) == {0, 1, 4, 7, 8}
    _, y_test = dm.split_arrays("test")
    assert set(y_test.tolist()) == set(range(10))
    # the metric split is disjoint from the others
    all_rows = np.concatenate([dm._split[k] for k in ("train", "val", "test", "metric")])
    assert len(np.unique(all_rows)) == len(all_rows)
    assert dm.label_metric.class_ids == tuple(range(10))
    ordinal = LokiDigitsDataModule(metric="ordinal")
    assert ordinal.label_metric.distance_rows([2])[0].tolist() == [2, 1, 0, 1, 2, 3, 4, 5, 6, 7]
    with pytest.raises(ConfigError, match="distinct digits"):
        LokiDigitsDataModule(observed_classes=[0, 0, 3])
    with pytest.raises(ConfigError, match="metric"):
        LokiDigitsDataModule(metric="cosine")  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="fractions"):
        LokiDigitsDataModule(val_fraction=0.5, test_fraction=0.4)


# ------------------------------------------------------------------------------------------- classifier
def _trainer(tmp_path: Path, **kw) -> pl.Trainer:
    return pl.Trainer(logger=False, enable_checkpointing=False, enable_progress_bar=False,
                      enable_model_summary=False, default_root_dir=str(tmp_path), accelerator="cpu", **kw)


def test_classifier_fits_tests_predicts_and_restores(tmp_path):
    torch.manual_seed(0)  # the default MLP's init (test only; library code never seeds)
    dm = LokiDigitsDataModule(observed_classes=[0, 1, 2, 3, 4, 7], batch_size=64)
    model = LokiClassifier(lr=1e-2)
    trainer = _trainer(tmp_path, max_epochs=3)
    trainer.fit(model, dm)
    res = trainer.test(model, dm, verbose=False)[0]
    for rule in ("loki", "argmax"):
        for key in ("esd", "acc", "seen/acc", "unseen/esd", "pred_unseen_frac"):
            assert f"test/{rule}/{key}" in res
    assert res["test/argmax/pred_unseen_frac"] == 0.0 and res["test/argmax/unseen/acc"] == 0.0
    assert res["test/argmax/seen/acc"] > 0.8, res  # the backbone learned the observed classes
    assert res["test/loki/acc"] <= res["test/loki/seen/acc"]  # sanity of the breakdown
    # predict_step only returns classes in the locus of the observed set
    preds = torch.cat(trainer.predict(model, dm))
    locus = reachable_classes(dm.label_metric, dm.observed_classes)
    assert locus[preds].all() and len(preds) == len(dm.split_arrays("test")[1])
    ckpt = tmp_path / "loki.ckpt"
    trainer.save_checkpoint(ckpt)
    restored = LokiClassifier.load_from_checkpoint(ckpt, weights_only=False)
    restored.eval()
    batch = next(iter(dm.test_dataloader()))
    model.eval()
    assert torch.equal(restored.predict_step(batch, 0), model.predict_step(batch, 0))
    assert restored.observed_classes == [0, 1, 2, 3, 4, 7]


def test_classifier_with_explicit_metric_and_string_free_ids():
    # non-contiguous integer ids: labels are ids, predictions come back as ids
    ids = [10, 20, 30, 40, 50]
    metric = LabelMetric.from_parents({10: None, 20: 10, 30: 20, 40: 30, 50: 40})
    model = LokiClassifier(backbone=torch.nn.Identity(), feature_dim=2, observed_classes=[10, 50], metric=metric)
    with torch.no_grad():
        model.classifier.weight.copy_(torch.eye(2))
        model.classifier.bias.zero_()
    x = torch.tensor([[5.0, 5.0], [5.0, -5.0], [-5.0, 5.0]])
    assert model.predict_step({"x": x}, 0).tolist() == [30, 10, 50]
    loss = model.training_step({"x": x, "labels": torch.tensor([10, 50, 50])}, 0)
    assert loss.ndim == 0 and torch.isfinite(loss)
    with pytest.raises(DataError, match="not observed"):
        model.training_step({"x": x, "labels": torch.tensor([10, 30, 50])}, 0)
    with pytest.raises(DataError, match="not a class id"):
        model.training_step({"x": x, "labels": torch.tensor([10, 11, 50])}, 0)
    assert model.eval_metrics is not None and ids == list(metric.class_ids)


def test_classifier_validation_errors(tmp_path):
    with pytest.raises(ConfigError, match="feature_dim"):
        LokiClassifier(backbone=torch.nn.Identity())
    with pytest.raises(ConfigError, match="lr"):
        LokiClassifier(lr=0.0)
    with pytest.raises(ConfigError, match="duplicates"):
        LokiClassifier(observed_classes=[1, 1])
    with pytest.raises(ConfigError, match="not built"):
        LokiClassifier()(torch.zeros(1, 64))
    dm = LokiDigitsDataModule(observed_classes=[0, 1, 2])
    with pytest.raises(ConfigError, match="differ from the datamodule"):
        _trainer(tmp_path, fast_dev_run=True).fit(LokiClassifier(observed_classes=[0, 1, 3]), dm)
    metric = LabelMetric.from_matrix(["a", "b"], 1.0 - torch.eye(2))
    with pytest.raises(ConfigError, match="integer class ids"):
        LokiClassifier(observed_classes=["a"], metric=metric)  # type: ignore[list-item]
    with pytest.raises(ConfigError, match="num_classes"):
        LokiClassifier(observed_classes=[0], num_classes=3, metric=LokiDigitsDataModule().label_metric)


def make_ddp_case(seed: int = 0):
    """Factory for tests.helpers.ddp.run_fit."""
    torch.manual_seed(seed)
    return LokiClassifier(), LokiDigitsDataModule(batch_size=32), []


@pytest.mark.slow
@pytest.mark.ddp
def test_classifier_ddp_ranks_agree(tmp_path):
    from tests.helpers.ddp import run_fit

    kw = {"max_steps": -1, "max_epochs": 1, "limit_train_batches": 3, "limit_val_batches": 3}
    ranks = run_fit("tests.test_loki_lightning:make_ddp_case", tmp_path, devices=2, trainer_kwargs=kw)
    assert len(ranks) == 2
    for name, p in ranks[0]["params"].items():
        assert torch.equal(p, ranks[1]["params"][name]), name
    assert "val/loki/esd" in ranks[0]["metrics"]
    val = [{k: v for k, v in r["metrics"].items() if k.startswith("val/")} for r in ranks]
    assert val[0] == val[1]  # metric states are all-reduced: identical on every rank (train/loss is per-rank)


def test_config_instantiates_through_cli():
    from lightning_ws.cli import cli_main

    cli = cli_main(["--config", str(REPO / "configs" / "loki_digits.yaml"), "--trainer.fast_dev_run=true"],
                   run=False)
    assert isinstance(cli.model, LokiClassifier) and isinstance(cli.datamodule, LokiDigitsDataModule)
    cli.trainer.fit(cli.model, cli.datamodule)
    assert cli.model.observed_classes == [0, 1, 4, 7, 8]

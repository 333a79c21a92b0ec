"""R&B on one's own JSONL/CSV: explicit columns, regroup folders tied to the data, a real test split, negative ids.

Issue 24, point 3.
"""

from __future__ import annotations

import csv
import json
import warnings

import numpy as np
import pytest
import torch

from lightning_ws.datamodules.rnb import MixtureDataModule, TensorMixtureDataModule
from lightning_ws.errors import ConfigError, DataError
from lightning_ws.rnb.cli import main as rnb_cli
from lightning_ws.rnb.data import load_mixture_source

_TOPICS = {"cooking": "pan oven bake flour sugar recipe", "football": "goal match striker league referee pitch",
           "space": "rocket orbit planet nasa launch astronaut"}


def _rows(label_key="y", domain_key="topic"):
    rng = np.random.default_rng(0)
    rows = []
    for c, (name, words) in enumerate(_TOPICS.items()):
        for _ in range(20):
            rows.append({"text": " ".join(rng.choice(words.split(), size=6)), label_key: c, domain_key: name})
    order = np.random.default_rng(1).permutation(len(rows))
    return [rows[i] for i in order]


def _write_jsonl(path, rows):
    path.write_text("\n".join(json.dumps(r) for r in rows))
    return path


def test_label_column_not_named_label_is_an_error_not_class_zero(tmp_path):
    src = _write_jsonl(tmp_path / "own.jsonl", _rows())
    with pytest.raises(DataError, match=r"no label column 'label' \(columns found: \['text', 'topic', 'y'\]\)"):
        MixtureDataModule(str(src), domain_column="topic")
    dm = MixtureDataModule(str(src), label_column="y", domain_column="topic")
    assert dm.num_classes == 3 and sorted(set(dm.data.train_labels.tolist())) == [0, 1, 2]
    assert dm.domain_names == ["cooking", "football", "space"]
    # labels follow the named column row by row
    data = load_mixture_source(str(src), label_column="y", domain_column="topic", eval_fraction=0.25)
    by_text = {r["text"]: r["y"] for r in _rows()}
    assert all(by_text[t] == int(lab) for t, lab in zip(data.train_texts, data.train_labels))
    with pytest.raises(DataError, match="no domain column 'video'"):
        load_mixture_source(str(src), label_column="y", domain_column="video")
    with pytest.raises(DataError, match="no text column 'body'"):
        load_mixture_source(str(src), label_column="y", text_column="body")
    with pytest.warns(UserWarning, match="no 'domain' column"):
        one = load_mixture_source(str(src), label_column="y")
    assert one.domain_names == ["all"]
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        unlabelled = load_mixture_source(str(src), label_column=None, domain_column=None)
    assert set(unlabelled.train_labels.tolist()) == {0}


def test_csv_empty_or_non_integer_labels_are_errors(tmp_path):
    rows = _rows(label_key="label", domain_key="domain")
    rows[3]["label"] = ""
    path = tmp_path / "own.csv"
    with path.open("w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=["text", "label", "domain"])
        w.writeheader()
        w.writerows(rows)
    with pytest.raises(DataError, match=r"1 row\(s\) have no value in the label column 'label' .*\[3\]"):
        load_mixture_source(str(path))
    rows[3]["label"] = "spam"
    with path.open("w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=["text", "label", "domain"])
        w.writeheader()
        w.writerows(rows)
    with pytest.raises(DataError, match="integer class ids"):
        load_mixture_source(str(path))


def test_regroup_folder_is_tied_to_the_rows_by_a_content_hash(tmp_path):
    rows = _rows()
    src = _write_jsonl(tmp_path / "a.jsonl", rows)
    args = ["regroup", "--source", str(src), "--label-column", "y", "--domain-column", "none", "--k", "2", "3",
            "--embedder", "tfidf", "--tfidf-dim", "8", "--out", str(tmp_path / "rg"), "--no-progress"]
    assert rnb_cli(args) == 0
    kw = {"label_column": "y", "domain_column": None, "regroup_dir": str(tmp_path / "rg")}
    dm = MixtureDataModule(str(src), **kw)
    assert dm.num_domains == 3
    # the same rows in another order: same row counts, but the domains would be noise
    shuffled = _write_jsonl(tmp_path / "b.jsonl", rows[::-1])
    with pytest.raises(DataError, match="content hash"):
        MixtureDataModule(str(shuffled), **kw)
    edited = [dict(r) for r in rows]
    edited[0]["text"] += " extra"
    with pytest.raises(DataError, match="content hash"):
        MixtureDataModule(str(_write_jsonl(tmp_path / "c.jsonl", edited)), **kw)


def test_mixture_datamodule_has_a_real_test_split():
    dm = MixtureDataModule("youtube_comments", batch_size=8, max_length=16)
    d = dm.data
    from lightning_ws.data import load_youtube_comments
    from lightning_ws.rnb.data import _split

    yt = load_youtube_comments()
    tr, ev, te = _split(len(yt.texts), yt.domains, 0.2, 0, 0.1)
    assert not (set(tr) & set(te)) and not (set(ev) & set(te)) and len(tr) + len(ev) + len(te) == len(yt.texts)
    assert d.test_texts == [yt.texts[i] for i in te] and d.eval_texts == [yt.texts[i] for i in ev]
    assert len(d.test_texts) > 100
    n = len(d.train_texts) + len(d.eval_texts) + len(d.test_texts)
    assert abs(len(d.test_texts) / n - 0.1) < 0.01 and abs(len(d.eval_texts) / n - 0.2) < 0.01
    test_idx = torch.cat([b["idx"] for b in dm.test_dataloader()])
    assert len(test_idx) == len(d.test_texts)
    batch = next(iter(dm.test_dataloader()))
    assert "domain" in batch and batch["input_ids"].shape[0] == 16
    # eval rows do not depend on test_fraction (they are drawn first)
    no_test = load_mixture_source("youtube_comments", test_fraction=0.0)
    assert no_test.eval_texts == d.eval_texts
    with pytest.raises(ConfigError, match="no test split"):
        MixtureDataModule("youtube_comments", test_fraction=0.0).test_dataloader()
    ft = MixtureDataModule.from_texts(["a b", "c d", "e f"], [0, 1, 0], [0, 1, 1], ["g h"], [1],
                                      test_texts=["i j", "k l"], test_labels=[1, 0], max_length=8)
    assert [int(b["labels"].shape[0]) for b in ft.test_dataloader()] == [2]


def test_negative_domain_ids_are_named():
    x, y = torch.randn(4, 2), torch.zeros(4)
    with pytest.raises(DataError, match=r"domains has 1 negative domain id\(s\) \(min -1\)"):
        TensorMixtureDataModule(x, y, [-1, 0, 1, 1])
    with pytest.raises(DataError, match="eval_domains has 1 negative domain id"):
        TensorMixtureDataModule(x, y, [0, 0, 1, 1], eval_x=x[:2], eval_labels=y[:2], eval_domains=[-1, 0])
    with pytest.raises(DataError, match="train_domains has 2 negative domain id"):
        MixtureDataModule.from_texts(["a", "b", "c"], [0, 1, 0], [-1, 0, -3], ["d"], [0])
    with pytest.raises(DataError, match="eval_domains has 1 negative domain id"):
        MixtureDataModule.from_texts(["a", "b", "c"], [0, 1, 0], [0, 0, 1], ["d", "e"], [0, 1], [0, -2])

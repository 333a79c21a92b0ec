"""Typed loaders of the shipped data and their errors."""

from __future__ import annotations

import json

import numpy as np
import pytest

from lightning_ws.data import (
    ABSTAIN,
    extract_final_answer,
    load_gsm8k_candidates,
    load_wrench,
    load_youtube_comments,
)
from lightning_ws.errors import DataError, DataFileNotFoundError


@pytest.mark.parametrize(("name", "sizes", "m"), [("youtube", (1586, 120, 250), 10), ("sms", (4571, 500, 500), 73)])
def test_wrench_shapes(name, sizes, m):
    for split, n in zip(("train", "valid", "test"), sizes):
        d = load_wrench(name, split)
        assert d.n == n and len(d.ids) == n and d.labels.shape == (n,)
        assert d.weak_labels.shape == (n, m) and d.weak_labels.dtype == np.int64
        assert set(np.unique(d.weak_labels)) <= {ABSTAIN, 0, 1}
        assert len(d.lf_names) == m and len(set(d.lf_names)) == m
        assert [c.lower() for c in d.class_names] == ["ham", "spam"]


def test_wrench_coverage_matches_published_facts():
    # SMS labeling functions cover about 40% of rows (data README)
    sms = load_wrench("sms", "train")
    cov = (sms.weak_labels != ABSTAIN).any(1).mean()
    assert 0.35 < cov < 0.45
    yt = load_wrench("youtube", "train")
    assert yt.lf_names[0] == "keyword_my" and yt.lf_names[-1] == "textblob_subjectivity"


def test_wrench_user_folder_and_errors(tmp_path):
    rows = {"a": {"data": {"text": "hi"}, "label": 0, "weak_labels": [0, -1]},
            "b": {"data": {"text": "buy"}, "label": 1, "weak_labels": [1, 1]}}
    (tmp_path / "train.json").write_text(json.dumps(rows))
    d = load_wrench(tmp_path, "train")
    assert d.texts == ["hi", "buy"] and d.weak_labels.tolist() == [[0, -1], [1, 1]] and d.lf_names == ["lf_00", "lf_01"]
    with pytest.raises(DataFileNotFoundError, match="valid split not found"):
        load_wrench(tmp_path, "valid")
    with pytest.raises(DataFileNotFoundError, match="neither a shipped data set"):
        load_wrench(tmp_path / "missing", "train")
    rows["c"] = {"data": {"text": "x"}, "label": 0, "weak_labels": [0]}
    (tmp_path / "test.json").write_text(json.dumps(rows))
    with pytest.raises(DataError, match="'c' has 1 weak labels"):
        load_wrench(tmp_path, "test")
    with pytest.raises(DataError, match="split must be"):
        load_wrench("youtube", "dev")  # type: ignore[arg-type]


def test_wrench_files_with_a_byte_order_mark_load_and_malformed_json_is_named(tmp_path):
    # a train.json saved by a Windows editor starts with a UTF-8 byte-order mark; json.load raised "Unexpected UTF-8
    # BOM" as a bare traceback, and a truncated file a bare JSONDecodeError (session 39)
    rows = {"a": {"data": {"text": "hi"}, "label": "ham", "weak_labels": [0, -1]},
            "b": {"data": {"text": "buy"}, "label": "spam", "weak_labels": [1, 1]}}
    (tmp_path / "train.json").write_bytes(b"\xef\xbb\xbf" + json.dumps(rows).encode("utf-8"))
    (tmp_path / "label.json").write_bytes(b"\xef\xbb\xbf" + json.dumps({"0": "ham", "1": "spam"}).encode("utf-8"))
    d = load_wrench(tmp_path, "train")
    assert d.labels.tolist() == [0, 1] and d.weak_labels.tolist() == [[0, -1], [1, 1]]
    (tmp_path / "test.json").write_text(json.dumps(rows)[:-7])  # truncated
    with pytest.raises(DataError, match=r"test\.json:1:\d+: not valid JSON"):
        load_wrench(tmp_path, "test")
    (tmp_path / "valid.json").write_bytes(json.dumps(rows).replace("buy", "b\\u00fcy").encode("utf-8")
                                          .replace(b"\\u00fc", b"\xfc"))  # a Latin-1 byte in UTF-8 text
    with pytest.raises(DataError, match="not UTF-8 text"):
        load_wrench(tmp_path, "valid")


def test_json_readers_skip_a_byte_order_mark(tmp_path):
    from lightning_ws.io import load_json, read_jsonl

    (tmp_path / "a.json").write_bytes(b"\xef\xbb\xbf{\"x\": 1}")
    (tmp_path / "b.jsonl").write_bytes(b"\xef\xbb\xbf{\"x\": 1}\n\n{\"x\": 2}\n")
    assert load_json(tmp_path / "a.json") == {"x": 1}
    assert read_jsonl(tmp_path / "b.jsonl") == [{"x": 1}, {"x": 2}]
    (tmp_path / "c.jsonl").write_bytes(b"{\"x\": 1}\n{\"x\": \"\xff\"}\n")
    with pytest.raises(DataError, match="not UTF-8 text"):
        read_jsonl(tmp_path / "c.jsonl")


def test_wrench_labels_and_label_json_are_read_strictly(tmp_path):
    # int(1.5) is 1 and a label.json with a gap raised a bare KeyError (session 37): labels are whole numbers or
    # class names, label.json maps exactly 0..k-1 (a JSON list of names is accepted)
    def write(rows, label_json=None):
        (tmp_path / "train.json").write_text(json.dumps(rows))
        if label_json is not None:
            (tmp_path / "label.json").write_text(label_json)

    rows = {"a": {"data": {"text": "hi"}, "label": 0.0, "weak_labels": [0, -1.0]},
            "b": {"data": {"text": "buy"}, "label": "spam", "weak_labels": ["1", 1]}}
    write(rows, json.dumps(["ham", "spam"]))
    d = load_wrench(tmp_path, "train")
    assert d.labels.tolist() == [0, 1] and d.weak_labels.tolist() == [[0, -1], [1, 1]]
    assert d.class_names == ["ham", "spam"]
    eggs = "'eggs' is neither a class id or one of the class names \\['ham', 'spam'\\]"
    for bad, match in ((1.5, "1.5 is not a whole number"), ("eggs", eggs), (True, "True is a boolean")):
        write({**rows, "c": {"data": {"text": "x"}, "label": bad, "weak_labels": [0, 1]}})
        with pytest.raises(DataError, match=f"example 'c' is not in WRENCH format \\({match}"):
            load_wrench(tmp_path, "train")
    write({**rows, "c": {"data": {"text": "x"}, "label": 0, "weak_labels": [0, 0.5]}})
    with pytest.raises(DataError, match="0.5 is not a whole number"):
        load_wrench(tmp_path, "train")
    # a mapping of votes was read by its keys ("0", "1" are valid votes of a binary set), null for an abstain failed
    # as "None is not a class id" (session 38)
    write({**rows, "c": {"data": {"text": "x"}, "label": 0, "weak_labels": {"0": -1, "1": 1}}})
    with pytest.raises(DataError, match="weak_labels must be a list with one vote per labeling function, got dict"):
        load_wrench(tmp_path, "train")
    write({**rows, "c": {"data": {"text": "x"}, "label": 0, "weak_labels": [None, 1]}})
    with pytest.raises(DataError, match="holds null; write -1 for an abstaining labeling function"):
        load_wrench(tmp_path, "train")
    write(rows, json.dumps({"0": "ham", "2": "spam"}))
    with pytest.raises(DataError, match=r"label.json has class ids \['0', '2'\]; they must be 0..1"):
        load_wrench(tmp_path, "train")
    write(rows, "{not json")
    with pytest.raises(DataError, match="label.json is not valid JSON"):
        load_wrench(tmp_path, "train")
    ten = {str(i): f"c{i}" for i in range(11)}  # ids 10 and up sort after 9
    write({"a": {"data": {"text": "hi"}, "label": 10, "weak_labels": [10]}}, json.dumps(ten))
    assert load_wrench(tmp_path, "train").class_names[10] == "c10"


def test_wrench_rows_without_gold_labels(tmp_path):
    # WRENCH writes -1 for an unlabelled row; null and a missing key mean the same. Refused by default (gold-label
    # training and scoring need labels), accepted with allow_unlabeled (label models and pseudolabels need none).
    rows = {"a": {"data": {"text": "hi"}, "label": -1, "weak_labels": [0, -1]},
            "b": {"data": {"text": "buy"}, "label": None, "weak_labels": [1, 1]},
            "c": {"data": {"text": "now"}, "weak_labels": [-1, 1]},
            "d": {"data": {"text": "ok"}, "label": 0, "weak_labels": [0, 0]}}
    (tmp_path / "train.json").write_text(json.dumps(rows))
    with pytest.raises(DataError, match=r"3 of 4 examples have no gold label.*allow_unlabeled=True"):
        load_wrench(tmp_path, "train")
    d = load_wrench(tmp_path, "train", allow_unlabeled=True)
    assert d.labels.tolist() == [-1, -1, -1, 0] and d.has_gold.tolist() == [False, False, False, True]
    assert d.num_classes == 2 and d.weak_labels.tolist() == [[0, -1], [1, 1], [-1, 1], [0, 0]]
    rows["d"]["label"] = -2
    (tmp_path / "train.json").write_text(json.dumps(rows))
    with pytest.raises(DataError, match=r"gold labels must lie in 0..1 \(or -1 for no label\); found -2"):
        load_wrench(tmp_path, "train", allow_unlabeled=True)
    assert load_wrench("youtube", "train").has_gold.all()


def test_youtube_comments_domains():
    yt = load_youtube_comments()
    assert len(yt) == 1956
    assert yt.domain_names == ["Psy", "KatyPerry", "LMFAO", "Eminem", "Shakira"]
    assert np.bincount(yt.domains).tolist() == [350, 350, 438, 448, 370]
    assert set(np.unique(yt.labels)) == {0, 1}
    with pytest.raises(DataFileNotFoundError):
        load_youtube_comments("/nonexistent")


def test_gsm8k_candidates_match_published_accuracies():
    g = load_gsm8k_candidates()
    assert g.num_problems == 1319 and g.num_candidates == 4 and g.correct.shape == (1319, 4)
    np.testing.assert_allclose(g.correct.mean(0), [0.217, 0.390, 0.347, 0.563], atol=5e-4)
    assert abs(g.correct.any(1).mean() - 0.672) < 5e-4
    # extracted answers agree with the file's correctness flags
    agree = np.array([[a == g.reference_answers[i] for a in row] for i, row in enumerate(g.answers)])
    assert (agree == g.correct).mean() > 0.99


def test_extract_final_answer():
    assert extract_final_answer("so 2+1=3\nA: 3") == "3"
    assert extract_final_answer("x\nA: 1,250.0 dollars") == "1250"
    assert extract_final_answer("blah #### 7.5") == "7.5"
    assert extract_final_answer("no marker, last is 42") == "42"
    assert extract_final_answer("nothing here") is None

"""The WRENCH rule check: shipped label matrices match their readme's regex rules; mismatched splits warn and rebuild."""

from __future__ import annotations

import json
import shutil
import warnings

import numpy as np
import pytest

from lightning_ws.data import (
    DATA_DIR,
    WrenchRuleMismatchWarning,
    check_wrench_rules,
    load_wrench,
    weak_labels_from_rules,
)
from lightning_ws.errors import DataError


@pytest.mark.parametrize("name", ["sms", "trec"])
@pytest.mark.parametrize("split", ["train", "valid", "test"])
def test_shipped_rule_sets_match_their_texts(name, split):
    check = check_wrench_rules(name, split)
    assert check is not None and check.rows_exact == 1.0 and check.fires_rules == check.fires_shipped
    with warnings.catch_warnings():
        warnings.simplefilter("error", WrenchRuleMismatchWarning)
        load_wrench(name, split)


def test_youtube_has_no_regex_rules():
    assert check_wrench_rules("youtube", "test") is None


def test_sms_keeps_wrench_original_matrix():
    raw = json.loads((DATA_DIR / "wrench" / "sms" / "test.json").read_text())
    orig = np.array([ex["weak_labels_wrench"] for ex in raw.values()])
    fixed = load_wrench("sms", "test").weak_labels
    assert orig.shape == fixed.shape and (orig != fixed).any(axis=1).mean() > 0.5


def _scrambled_copy(tmp_path, seed=0):
    folder = tmp_path / "sms_copy"
    shutil.copytree(DATA_DIR / "wrench" / "sms", folder)
    path = folder / "test.json"
    raw = json.loads(path.read_text())
    keys = list(raw)
    perm = np.random.default_rng(seed).permutation(len(keys))
    weak = [raw[k]["weak_labels"] for k in keys]
    for k, j in zip(keys, perm):
        raw[k]["weak_labels"] = weak[j]
    path.write_text(json.dumps(raw))
    return folder


def test_scrambled_split_warns_and_rebuilds(tmp_path):
    folder = _scrambled_copy(tmp_path)
    with pytest.warns(WrenchRuleMismatchWarning, match="do not belong to its texts.*weak_labels_from_rules"):
        load_wrench(folder, "test")
    assert check_wrench_rules(folder, "test").rows_exact < 0.7
    rebuilt = weak_labels_from_rules(folder, "test")
    assert np.array_equal(rebuilt, load_wrench("sms", "test").weak_labels)
    with warnings.catch_warnings():
        warnings.simplefilter("error", WrenchRuleMismatchWarning)
        load_wrench(folder, "test", check_rules=False)


def test_rebuild_refuses_a_mismatched_reference(tmp_path):
    folder = _scrambled_copy(tmp_path)
    with pytest.raises(DataError, match="reference split 'test'"):
        weak_labels_from_rules(folder, "valid", reference="test")


def _featureless_copy(tmp_path):
    """A WRENCH-format set whose examples carry features instead of text (as WRENCH's tabular / video sets do)."""
    folder = tmp_path / "tabular"
    folder.mkdir()
    rng = np.random.default_rng(0)
    for split, n in (("train", 60), ("valid", 20), ("test", 20)):
        y = rng.integers(0, 3, n)
        rows = {}
        for i in range(n):
            votes = [int(y[i]) if rng.random() < 0.7 else int(rng.integers(0, 3)) for _ in range(4)]
            votes = [v if rng.random() < 0.8 else -1 for v in votes]
            rows[str(i)] = {"label": int(y[i]), "data": {"feature": rng.normal(size=3).tolist()}, "weak_labels": votes}
        (folder / f"{split}.json").write_text(json.dumps(rows))
    return folder


def test_text_free_sets_load_for_label_models_and_refuse_text_models(tmp_path, capsys):
    folder = _featureless_copy(tmp_path)
    with pytest.raises(DataError, match="no data.text.*require_text=False"):
        load_wrench(folder, "train")
    data = load_wrench(folder, "train", require_text=False)
    assert data.weak_labels.shape == (60, 4) and data.texts == [""] * 60 and data.num_classes == 3
    # a readme that lists regex rules has no texts to be checked against here: no mismatch warning
    (folder / "readme.txt").write_text("".join(f"a\t( |^)(w{j})[^\\w]*( |$)\tex\n" for j in range(4)))
    with warnings.catch_warnings():
        warnings.simplefilter("error", WrenchRuleMismatchWarning)
        load_wrench(folder, "train", require_text=False)
    from lightning_ws.labelmodels.cli import main

    assert main([str(folder), "--models", "mv,auto", "--no-analysis"]) == 0
    assert "auto" in capsys.readouterr().out


def test_cli_metric_follows_the_wrench_convention(tmp_path, capsys):
    from lightning_ws.labelmodels.cli import main

    binary = tmp_path / "spouse"
    binary.mkdir()
    rng = np.random.default_rng(1)
    for split in ("train", "valid", "test"):
        y = rng.integers(0, 2, 40)
        rows = {str(i): {"label": int(y[i]), "data": {"span1": "a", "span2": "b"},
                         "weak_labels": [int(y[i]) if rng.random() < 0.8 else -1 for _ in range(3)]}
                for i in range(40)}
        (binary / f"{split}.json").write_text(json.dumps(rows))
    main([str(binary), "--models", "mv", "--no-analysis"])
    assert "metric=f1" in capsys.readouterr().out
    main([str(_featureless_copy(tmp_path)), "--models", "mv", "--no-analysis"])
    assert "metric=accuracy" in capsys.readouterr().out

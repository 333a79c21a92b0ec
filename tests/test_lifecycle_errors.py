"""Bad input through the CLI: one paragraph naming the problem and the fix, never a traceback (table-driven)."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest

from lightning_ws.cli import main

REPO = Path(__file__).resolve().parents[1]
GM = str(REPO / "configs" / "gradmimic_digits.yaml")
LOKI = str(REPO / "configs" / "loki_digits.yaml")
MORE = str(REPO / "configs" / "more_youtube.yaml")
FAST = ["--trainer.max_epochs", "1", "--trainer.limit_train_batches", "2", "--trainer.limit_val_batches", "1"]


@pytest.fixture(scope="module")
def gm_ckpt(tmp_path_factory) -> Path:
    """A Grad-Mimic digits checkpoint (no callback; Lightning's default checkpoint)."""
    root = tmp_path_factory.mktemp("gm")
    assert main(["fit", "-c", GM, "--trainer.callbacks=[]", *FAST, "--trainer.logger.init_args.save_dir",
                 str(root)]) == 0
    return next(root.glob("lightning-ws/*/checkpoints/*.ckpt"))


def _garbage(name: str) -> Callable[[Path], str]:
    def make(tmp: Path) -> str:
        (tmp / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp / name).write_bytes(b"\x00not a real file" * 10)
        return str(tmp / name)
    return make


# (id, args builder (tmp_path, checkpoint) -> argv, substrings the message must contain)
CASES: list[tuple[str, Callable[[Path, Path], list[str]], list[str]]] = [
    ("missing-ckpt", lambda t, c: ["test", "-c", GM, "--trainer.callbacks=[]", "--ckpt_path", "nope/last.ckpt"],
     ["checkpoint not found: nope/last.ckpt", "--ckpt_path last"]),
    ("ckpt-is-folder", lambda t, c: ["test", "-c", GM, "--trainer.callbacks=[]", "--ckpt_path", str(t)],
     ["is a folder", ".ckpt file"]),
    ("corrupt-ckpt", lambda t, c: ["fit", "-c", GM, "--trainer.callbacks=[]", "--ckpt_path", _garbage("bad.ckpt")(t)],
     ["bad.ckpt is not a readable checkpoint", "use another checkpoint"]),
    ("other-model-class", lambda t, c: ["test", "-c", LOKI, "--ckpt_path", str(c)],
     ["holds a GradMimicClassifier", "config builds a LokiClassifier", "config.yaml"]),
    ("corrupt-safetensors", lambda t, c: [
        "fit", "-c", GM, *FAST, "--trainer.callbacks.init_args.reference",
        _garbage("artifacts/ref.safetensors")(t)], ["ref.safetensors is not a readable safetensors file",
                                                     "write it again"]),
    ("input-size", lambda t, c: ["fit", "-c", GM, "--trainer.callbacks=[]", *FAST, "--model.init_args.input_dim",
                                 "32"], ["input_dim=64", "input_dim=32", "set model.init_args.input_dim: 64"]),
    ("num-classes", lambda t, c: ["fit", "-c", GM, "--trainer.callbacks=[]", *FAST, "--model.init_args.num_classes",
                                  "5"], ["num_classes=10", "set model.init_args.num_classes: 10"]),
    ("num-labels-3-on-binary", lambda t, c: [
        "fit", "-c", MORE, *FAST, "--model.init_args.num_labels", "3", "--model.init_args.config_overrides",
        json.dumps({"num_hidden_layers": 1})], ["data has 2 classes", "num_labels=3", "num_labels: 2"]),
    ("test-without-ckpt", lambda t, c: ["test", "-c", LOKI], ["needs --ckpt_path", "--allow_untrained true"]),
    ("last-without-run", lambda t, c: ["test", "-c", LOKI, "--ckpt_path", "last", "--trainer.logger.init_args.save_dir",
                                       str(t / "empty")], ["no checkpoint of a run named 'loki_digits'", "Train it first"]),
]


@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_bad_input_gives_one_paragraph(case, tmp_path, gm_ckpt, capsys):
    _, build, expected = case
    rc = main(build(tmp_path, gm_ckpt))
    err = capsys.readouterr().err
    assert rc != 0
    assert "Traceback" not in err
    message = err[err.index("error:"):] if "error:" in err else ""
    assert message, err[-2000:]
    assert len(message.strip().splitlines()) <= 3, message
    for text in expected:
        assert text in message, (text, message)

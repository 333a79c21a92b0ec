"""Test-suite defaults: no network, no W&B unless a test asks for it offline, small thread pools."""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ["WANDB_MODE"] = "disabled"
os.environ.setdefault("WANDB_SILENT", "true")

import pytest  # noqa: E402

# Import Lightning (and transformers' logging) before any test captures output: they attach stream handlers to the
# stderr of the moment they are imported, which would otherwise be a capture buffer that a later test finds closed.
import lightning.pytorch  # noqa: E402,F401
import transformers  # noqa: E402,F401

TINY_ENCODER = {"num_hidden_layers": 1, "hidden_size": 32, "intermediate_size": 64, "num_attention_heads": 2}


@pytest.fixture
def tiny_encoder_overrides() -> dict:
    """Config overrides that turn the shipped MiniLM config into a 1-layer, 32-wide random encoder (fast tests)."""
    return dict(TINY_ENCODER)


@pytest.fixture(autouse=True)
def _isolated_cwd(tmp_path, monkeypatch):
    """Run every test in its own folder so runs/, wandb/ and lightning_logs/ never land in the checkout.

    Also close any W&B run a test left open: Lightning's WandbLogger reuses a process-wide ``wandb.run``, so a
    dangling run would capture the next test's logging.
    """
    monkeypatch.chdir(tmp_path)
    yield
    import sys

    wandb = sys.modules.get("wandb")
    if wandb is not None and getattr(wandb, "run", None) is not None:
        wandb.finish()

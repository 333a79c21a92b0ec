"""Unit tests of the Lightning-free MoRe core (lightning_ws.more), arXiv 2408.17383."""

from __future__ import annotations

import math
import warnings

import pytest
import torch
from torch import nn

from lightning_ws.errors import ConfigError, DataError
from lightning_ws.more import (
    IncompleteMixingWarning,
    MoReConfig,
    MoReLinear,
    find_target_modules,
    grid,
    inject_more,
    load_more_adapter,
    merge_and_unload,
    merge_more,
    monarch_apply,
    monarch_delta_weight,
    monarch_dense_reference,
    monarch_shape,
    more_layers,
    parameter_report,
    run_search,
    save_more_adapter,
    unmerge_more,
)

CASES = [(32, 32, 4, 4), (32, 48, 4, 2), (24, 24, 4, 8), (10, 14, 2, 3), (10, 6, 1, 3), (48, 40, 4, 4), (7, 5, 3, 2)]


def _spec_loop_reference(x: torch.Tensor, a: torch.Tensor, b: torch.Tensor, d_out: int) -> torch.Tensor:
    """The five steps of the spec, token by token, with explicit index arithmetic (no reshapes)."""
    k, r, p = a.shape
    q = b.shape[1]
    out = torch.zeros(x.shape[0], d_out, dtype=x.dtype)
    for s in range(x.shape[0]):
        xp = torch.zeros(k * p, dtype=x.dtype)
        xp[: x.shape[1]] = x[s]
        h = torch.zeros(k * r, dtype=x.dtype)
        for kk in range(k):
            hk = a[kk] @ xp[kk * p:(kk + 1) * p]
            for j in range(r):
                h[kk * r + j] = hk[j]
        y = torch.zeros(k * q, dtype=x.dtype)
        for l_ in range(k):
            u = torch.stack([h[aa * k + l_] for aa in range(r)])
            z = b[l_] @ u
            for c in range(q):
                y[c * k + l_] = z[c]
        out[s] = y[:d_out]
    return out


def _factors(d_in, d_out, k, r, dtype=torch.float64, seed=0):
    g = torch.Generator().manual_seed(seed)
    s = monarch_shape(d_in, d_out, k, r)
    return s, torch.randn(s.a_shape, generator=g, dtype=dtype), torch.randn(s.b_shape, generator=g, dtype=dtype)


@pytest.mark.parametrize(("d_in", "d_out", "k", "r"), CASES)
def test_apply_equals_dense_reference_and_spec_loop(d_in, d_out, k, r):
    s, a, b = _factors(d_in, d_out, k, r)
    x = torch.randn(6, d_in, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    dense = monarch_dense_reference(a, b, d_in, d_out)
    assert dense.shape == (d_out, d_in)
    torch.testing.assert_close(monarch_apply(x, a, b, d_out), x @ dense.T, atol=1e-6, rtol=0)
    torch.testing.assert_close(_spec_loop_reference(x, a, b, d_out), x @ dense.T, atol=1e-6, rtol=0)
    torch.testing.assert_close(monarch_delta_weight(a, b, d_in, d_out), dense, atol=1e-6, rtol=0)
    # leading batch dims are preserved
    assert monarch_apply(x.view(2, 3, d_in), a, b, d_out).shape == (2, 3, d_out)


@pytest.mark.parametrize(("d_in", "d_out", "k", "r"), CASES)
def test_rank_and_param_count(d_in, d_out, k, r):
    s, a, b = _factors(d_in, d_out, k, r)
    assert s.num_params == r * (k * s.in_blksz + k * s.out_blksz) == a.numel() + b.numel()
    assert s.nblocks * s.in_blksz >= d_in and s.nblocks * s.out_blksz >= d_out
    assert torch.linalg.matrix_rank(monarch_delta_weight(a, b, d_in, d_out)).item() == s.max_rank


def test_k1_is_lora_exactly():
    s, a, b = _factors(20, 12, 1, 3)
    lora = b[0] @ a[0]  # B (d_out x r) @ A (r x d_in)
    assert torch.equal(monarch_delta_weight(a, b, 20, 12), monarch_apply(torch.eye(20, dtype=a.dtype), a, b, 12).T)
    torch.testing.assert_close(monarch_delta_weight(a, b, 20, 12), lora, atol=1e-12, rtol=0)


def test_shape_rules_and_errors():
    s = monarch_shape(1024, 1024, blk_sz=512, blk_r=8)
    assert (s.nblocks, s.in_blksz, s.out_blksz) == (2, 512, 512)
    s = monarch_shape(48, 40, 4, 4)
    assert (s.in_blksz, s.out_blksz) == (12, 10)
    with pytest.raises(ConfigError, match="nblocks"):
        monarch_shape(8, 8, nblocks=0)
    with pytest.raises(ConfigError, match="exceeds"):
        monarch_shape(4, 8, nblocks=5)
    with pytest.raises(ConfigError, match="blk_r"):
        monarch_shape(8, 8, 2, blk_r=1.5)
    with pytest.raises(ConfigError, match="Monarch factors"):
        monarch_apply(torch.randn(2, 8), torch.randn(2, 3, 4), torch.randn(2, 5, 2), 8)


def test_layer_zero_update_at_init_and_init_law():
    base = nn.Linear(64, 32)
    layer = MoReLinear(base, nblocks=4, blk_r=4, generator=torch.Generator().manual_seed(3))
    x = torch.randn(5, 64)
    assert torch.equal(layer(x), base(x))
    assert torch.count_nonzero(layer.more_B) == 0
    bound = 1 / math.sqrt(16)
    assert layer.more_A.abs().max() <= bound and layer.more_A.abs().max() > 0.8 * bound
    assert not base.weight.requires_grad and not base.bias.requires_grad
    assert {n for n, p in layer.named_parameters() if p.requires_grad} == {"more_A", "more_B"}


def test_layer_forward_matches_dense_and_dropout_on_output():
    torch.manual_seed(0)
    base = nn.Linear(24, 20).double()
    layer = MoReLinear(base, nblocks=4, blk_r=4, dropout=0.5, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        layer.more_B.normal_()
    x = torch.randn(7, 24, dtype=torch.float64)
    layer.eval()
    expected = base(x) + x @ monarch_dense_reference(layer.more_A, layer.more_B, 24, 20).T
    torch.testing.assert_close(layer(x), expected, atol=1e-10, rtol=0)
    layer.train()  # output dropout: each update entry is either dropped (0) or scaled by 2
    delta = (layer(x) - base(x)) / (x @ layer.delta_weight().T)
    vals = delta.flatten()
    assert torch.all(torch.isclose(vals, torch.zeros_like(vals), atol=1e-8) | torch.isclose(vals, torch.full_like(
        vals, 2.0), atol=1e-8))
    assert (vals.abs() < 1e-8).any() and (vals > 1).any()


def test_incomplete_mixing_warning():
    with pytest.warns(IncompleteMixingWarning, match="incomplete mixing"):
        MoReLinear(nn.Linear(16, 16), nblocks=4, blk_r=2)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        MoReLinear(nn.Linear(16, 16), nblocks=4, blk_r=4)


def test_r1_is_permuted_block_diagonal():
    """Spec 3.6: with r = 1 each output group o mod K = l only sees input block l."""
    s, a, b = _factors(16, 16, 4, 1)
    dw = monarch_delta_weight(a, b, 16, 16)
    for o in range(16):
        for blk in range(4):
            cols = dw[o, blk * 4:(blk + 1) * 4]
            assert (cols.abs().sum() > 0) == (blk == o % 4)


def test_merge_unmerge_bit_exact_and_no_merge_on_mode_switch():
    torch.manual_seed(0)
    base = nn.Linear(48, 40)
    w0 = base.weight.detach().clone()
    layer = MoReLinear(base, 4, 4, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        layer.more_B.normal_()
    x = torch.randn(3, 48)
    y = layer(x)
    layer.eval()
    layer.train()
    assert torch.equal(base.weight, w0) and not layer.merged
    layer.merge()
    assert layer.merged and not torch.equal(base.weight, w0)
    torch.testing.assert_close(layer(x), y, atol=1e-5, rtol=1e-5)
    layer.unmerge()
    assert torch.equal(base.weight, w0)
    with pytest.raises(RuntimeError, match="not merged"):
        layer.unmerge()


def test_bf16_and_fp16_forward():
    base = nn.Linear(32, 32).to(torch.bfloat16)
    layer = MoReLinear(base, 4, 4)
    assert layer.more_A.dtype == torch.float32  # factors stay fp32 on a half base
    with torch.no_grad():
        layer.more_B.normal_()
    x = torch.randn(4, 32, dtype=torch.bfloat16)
    y = layer(x)
    assert y.dtype == torch.bfloat16 and torch.isfinite(y.float()).all()
    ref = base(x).float() + x.float() @ layer.delta_weight().T
    torch.testing.assert_close(y.float(), ref, atol=0.1, rtol=0.05)
    y.float().sum().backward()
    assert layer.more_A.grad is not None and layer.more_A.grad.dtype == torch.float32
    with torch.autocast("cpu", dtype=torch.bfloat16):
        z = MoReLinear(nn.Linear(32, 32), 4, 4)(torch.randn(4, 32))
    assert z.dtype == torch.bfloat16


class _Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.enc = nn.ModuleDict({"q": nn.Linear(16, 16), "v": nn.Linear(16, 16), "mlp": nn.Linear(16, 32)})
        self.head = nn.Linear(32, 3)

    def forward(self, x):
        h = self.enc["q"](x) + self.enc["v"](x)
        return self.head(torch.relu(self.enc["mlp"](h)))


def _net(seed=0):
    torch.manual_seed(seed)
    return _Net()


def test_target_patterns_and_errors():
    net = _net()
    assert find_target_modules(net, ["q", "v"]) == ["enc.q", "enc.v"]
    assert find_target_modules(net, r"enc\.(q|mlp)") == ["enc.q", "enc.mlp"]
    with pytest.raises(ConfigError, match=r"matched no nn.Linear.*enc\.q"):
        find_target_modules(net, ["query"])
    with pytest.raises(ConfigError, match="regular expression"):
        find_target_modules(net, "enc.(")
    mha = nn.Module()
    mha.attn = nn.MultiheadAttention(8, 2)
    with pytest.raises(ConfigError, match="MultiheadAttention"):
        find_target_modules(mha, ["out_proj"])


def test_inject_freeze_report_and_counts():
    net = _net()
    base_sd = {k: v.clone() for k, v in net.state_dict().items()}
    inject_more(net, MoReConfig(target_modules=["q", "v", "mlp"], nblocks=4, blk_r=4))
    rep = parameter_report(net)
    # q, v: 16x16, p=q=4 -> 4*4*(4+4)=128 each; mlp 16->32: p=4, q=8 -> 4*4*(4+8) = 192
    assert rep.per_layer == {"enc.q": 128, "enc.v": 128, "enc.mlp": 192}
    assert rep.adapter_params == 448 and rep.bias_params == 0 and rep.other_trainable_params == 0
    assert rep.trainable_params == 448
    assert rep.total_params == sum(v.numel() for v in base_sd.values()) + 448
    net.head.requires_grad_(True)
    assert parameter_report(net).other_trainable_params == 32 * 3 + 3
    # base weights untouched (keys now live under base_layer)
    for k, v in base_sd.items():
        k2 = k.replace("enc.q.", "enc.q.base_layer.").replace("enc.v.", "enc.v.base_layer.").replace(
            "enc.mlp.", "enc.mlp.base_layer.")
        assert torch.equal(net.state_dict()[k2], v)
    with pytest.raises(ConfigError, match="already contains"):
        inject_more(net, MoReConfig(target_modules=["q"]))
    net2 = inject_more(_net(), MoReConfig(target_modules=["q"], nblocks=2, blk_r=2, train_bias=True))
    assert parameter_report(net2).bias_params == 16


def test_adapter_checkpoint_roundtrip(tmp_path):
    net = inject_more(_net(), MoReConfig(target_modules=["q", "v", "mlp"], nblocks=2, blk_r=4, train_bias=True))
    opt = torch.optim.SGD([p for p in net.parameters() if p.requires_grad], lr=0.5)
    x = torch.randn(8, 16)
    for _ in range(3):
        opt.zero_grad()
        net(x).pow(2).mean().backward()
        opt.step()
    net.eval()
    y = net(x)
    path = save_more_adapter(net, tmp_path / "adapter.safetensors")
    fresh = _net()  # same base weights (same seed), no adapters
    load_more_adapter(fresh, path)
    fresh.eval()
    assert torch.equal(fresh(x), y)
    with pytest.raises(DataError, match="other layers"):
        load_more_adapter(inject_more(_net(), MoReConfig(target_modules=["q"], nblocks=2, blk_r=4, train_bias=True)),
                          path)
    from lightning_ws.io import save_tensors

    save_tensors(tmp_path / "other.safetensors", {"w": torch.zeros(2)})
    with pytest.raises(DataError, match="not a lightning_ws MoRe adapter"):
        load_more_adapter(_net(), tmp_path / "other.safetensors")


def test_merge_and_unload_and_model_level_unmerge():
    net = inject_more(_net(), MoReConfig(target_modules=["q", "v", "mlp"], nblocks=4, blk_r=4))
    for m in more_layers(net).values():
        with torch.no_grad():
            m.more_B.normal_(std=0.1)
    x = torch.randn(5, 16)
    y = net(x)
    w = {n: m.base_layer.weight.detach().clone() for n, m in more_layers(net).items()}
    merge_more(net)
    torch.testing.assert_close(net(x), y, atol=1e-5, rtol=1e-5)
    unmerge_more(net)
    assert all(torch.equal(m.base_layer.weight, w[n]) for n, m in more_layers(net).items())
    out = merge_and_unload(net)
    assert not more_layers(out) and type(out.enc["q"]) is nn.Linear
    torch.testing.assert_close(out(x), y, atol=1e-5, rtol=1e-5)


def test_in_class_target_recovered_exactly_lora_is_not():
    """Spec 11 / 15.1 item 9 in miniature: a MoRe-class target is in MoRe's span, not in LoRA's at equal params."""
    s, a, b = _factors(32, 32, 4, 4, dtype=torch.float64, seed=5)
    target = monarch_delta_weight(a, b, 32, 32)
    # best rank-4 (LoRA, same 256 params) approximation error via SVD is far from 0
    sv = torch.linalg.svdvals(target)
    lora_err = (sv[4:].pow(2).sum() / sv.pow(2).sum()).sqrt()
    assert lora_err > 0.3


def test_search_resume_skips_finished(tmp_path):
    calls = []

    def train_fn(cfg):
        calls.append(cfg)
        if cfg["nblocks"] == 2 and cfg["blk_r"] == 2 and len(calls) < 10 and crash["on"]:
            raise RuntimeError("simulated crash")
        return {"val/acc": cfg["nblocks"] * 0.1 + cfg["blk_r"] * 0.01 - cfg["lr"], "loss": 1.0}

    crash = {"on": True}
    configs = grid(nblocks=[1, 2], blk_r=[1, 2], lr=[1e-3])
    path = tmp_path / "sweep.json"
    with pytest.raises(RuntimeError, match="simulated"):
        run_search(train_fn, configs, path, verbose=False)
    assert len(calls) == 4  # (1,1), (1,2), (2,1) finished, (2,2) crashed
    crash["on"] = False
    calls.clear()
    res = run_search(train_fn, configs + configs[:1], path, verbose=False)
    assert [(c["nblocks"], c["blk_r"]) for c in calls] == [(2, 2)]
    assert len(res.trials) == 4 and len(res.ran) == 1
    assert res.best["config"] == {"nblocks": 2, "blk_r": 2, "lr": 1e-3}
    calls.clear()
    assert run_search(train_fn, configs, path, verbose=False).ran == [] and calls == []
    with pytest.raises(ConfigError, match="mode"):
        run_search(train_fn, configs, path, mode="best", verbose=False)
    (tmp_path / "other.json").write_text('{"x": 1}')
    with pytest.raises(DataError, match="not a MoRe search"):
        run_search(train_fn, configs, tmp_path / "other.json", verbose=False)

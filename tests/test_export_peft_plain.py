"""A MoRe PEFT adapter folder loads with plain ``peft`` once lightning_ws is installed (``lightning_ws-peft.pth``).

Each check runs in a fresh interpreter. "Installed" is simulated with ``site.addsitedir`` on a folder that holds the
repository's ``lightning_ws-peft.pth`` (what ``pip install`` puts into site-packages); the user code after it imports
only ``peft`` and ``transformers``. The slow test builds the real wheel and checks that the file is in it.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
PTH = REPO / "lightning_ws-peft.pth"

USER_CODE = """
import json, sys, torch
from peft import PeftModel
from transformers import AutoModelForSequenceClassification
base = AutoModelForSequenceClassification.from_pretrained({base!r}, local_files_only=True, **{kwargs!r}).eval()
model = PeftModel.from_pretrained(base, {adapter!r}).eval()
with torch.no_grad():
    logits = model(input_ids=torch.tensor([[101, 2023, 2003, 1037, 3231, 102]])).logits
print(json.dumps({{"logits": logits.tolist(), "peft_type": str(model.peft_config["default"].peft_type)}}))
"""
IDS = torch.tensor([[101, 2023, 2003, 1037, 3231, 102]])


def _user_code(base, adapter, **kwargs) -> str:
    return USER_CODE.format(base=str(base), adapter=str(adapter), kwargs=kwargs)


@pytest.fixture(scope="module")
def saved_adapter(tmp_path_factory):
    """A tiny random BERT-shaped classifier with a trained-looking MoRe adapter: base folder, adapter folder, logits."""
    from peft import get_peft_model
    from transformers import AutoConfig, AutoModelForSequenceClassification

    from lightning_ws.modules.text_classifier import default_encoder_path
    from lightning_ws.more.peft_shim import MoRePeftConfig

    root = tmp_path_factory.mktemp("peft")
    cfg = AutoConfig.from_pretrained(default_encoder_path(), num_labels=2, num_hidden_layers=1, hidden_size=32,
                                     intermediate_size=64, num_attention_heads=2)
    torch.manual_seed(0)
    base = AutoModelForSequenceClassification.from_config(cfg).eval()
    base.save_pretrained(root / "base")
    model = get_peft_model(base, MoRePeftConfig(target_modules=["query", "value"], nblocks=4, blk_r=4))
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "more_" in name:
                p.normal_(0, 0.1)  # B starts at 0: move it so the adapter changes the output
        logits = model(input_ids=IDS).logits
    model.save_pretrained(root / "adapter")
    assert json.loads((root / "adapter" / "adapter_config.json").read_text())["peft_type"] == "MORE"
    return root / "base", root / "adapter", logits


def _python(code: str, site_dir: Path | None, env_extra: dict | None = None) -> subprocess.CompletedProcess:
    prelude = f"import site; site.addsitedir({str(site_dir)!r})\n" if site_dir is not None else ""
    env = {**os.environ, **(env_extra or {})}
    env["PYTHONPATH"] = str(REPO) + os.pathsep + env.get("PYTHONPATH", "")
    return subprocess.run([sys.executable, "-c", prelude + code], capture_output=True, text=True, env=env, check=False,
                          timeout=300, cwd=REPO)


@pytest.fixture
def site_dir(tmp_path):
    (tmp_path / "site").mkdir()
    (tmp_path / "site" / PTH.name).write_text(PTH.read_text())
    return tmp_path / "site"


LAZY_AND_IDEMPOTENT = """
import lightning_ws._peft_hook as h
from peft import mapping
from lightning_ws.more.peft_shim import MoRePeftModel
assert mapping.PEFT_TYPE_TO_TUNER_MAPPING["MORE"] is MoRePeftModel
h.install(); h.install()
assert mapping.PEFT_TYPE_TO_TUNER_MAPPING["MORE"] is MoRePeftModel
"""


@pytest.fixture(scope="module")
def exported_more(tmp_path_factory):
    """A MoRe PeftSequenceClassifier trained 2 steps, exported with ``lightning-ws export --format peft``."""
    import lightning.pytorch as pl

    from lightning_ws.checkpoints import CheckpointInfoCallback
    from lightning_ws.cli import main
    from lightning_ws.datamodules import TextClassificationDataModule
    from lightning_ws.modules.more import PeftSequenceClassifier

    root = tmp_path_factory.mktemp("more_export")
    over = {"num_hidden_layers": 1}
    model = PeftSequenceClassifier(adapter="more", nblocks=4, blk_r=4, config_overrides=over, lr=1e-2)
    trainer = pl.Trainer(max_steps=2, logger=False, enable_progress_bar=False, enable_model_summary=False,
                         default_root_dir=root, callbacks=[CheckpointInfoCallback()], limit_val_batches=0)
    trainer.fit(model, TextClassificationDataModule("youtube", batch_size=4, train_limit=8, max_length=16))
    trainer.save_checkpoint(root / "m.ckpt")
    assert main(["export", "--ckpt_path", str(root / "m.ckpt"), "--format", "peft", "--out", str(root / "peft")]) == 0
    config = json.loads((root / "peft" / "adapter_config.json").read_text())
    assert config["peft_type"] == "MORE"
    model.eval()
    with torch.no_grad():
        logits = model(IDS, torch.ones_like(IDS))
    assert any(p.abs().sum() > 0 for n, p in model.named_parameters() if n.endswith("more_B"))  # trained adapter
    return config["base_model_name_or_path"], root / "peft", over, logits


def test_plain_peft_loads_more_adapters_when_installed(saved_adapter, exported_more, site_dir):
    """Start-up imports neither peft nor torch; plain peft then loads a shim-saved MoRe adapter and the folder
    ``lightning-ws export --format peft`` wrote (same logits as the trained module); install() is idempotent."""
    base, adapter, expected = saved_adapter
    exp_base, exp_adapter, over, exp_logits = exported_more
    code = ("import sys\nassert not {'peft', 'torch', 'lightning_ws.more.peft_shim'} & set(sys.modules)\n"
            + _user_code(base, adapter) + _user_code(exp_base, exp_adapter, num_labels=2, **over)
            + LAZY_AND_IDEMPOTENT)
    proc = _python(code, site_dir)
    assert proc.returncode == 0, proc.stderr[-4000:]
    first, second = (json.loads(line) for line in proc.stdout.strip().splitlines()[-2:])
    assert first["peft_type"] == second["peft_type"] == "MORE"
    assert torch.allclose(torch.tensor(first["logits"]), expected, atol=1e-5)
    assert torch.allclose(torch.tensor(second["logits"]), exp_logits, atol=1e-5)


@pytest.mark.slow  # a fresh interpreter importing peft + transformers (~20-40 s on the shared box)
def test_without_the_startup_file_plain_peft_fails_as_before(saved_adapter):
    """The control: no .pth (or the hook switched off) gives PEFT's KeyError, so the test above tests the hook."""
    base, adapter, _ = saved_adapter
    proc = _python(_user_code(base, adapter), None)
    assert proc.returncode != 0 and "KeyError: 'MORE'" in proc.stderr


@pytest.mark.slow
def test_hook_switched_off_by_environment(saved_adapter, site_dir):
    base, adapter, _ = saved_adapter
    proc = _python(_user_code(base, adapter), site_dir,
                   {"LIGHTNING_WS_NO_PEFT_HOOK": "1"})
    assert proc.returncode != 0 and "KeyError: 'MORE'" in proc.stderr


@pytest.mark.slow  # another fresh interpreter importing peft + transformers
def test_shim_unavailable_gives_a_clear_error_naming_the_import(saved_adapter, site_dir):
    """When the shim cannot register (here: made unimportable), loading names the problem and the fix."""
    base, adapter, _ = saved_adapter
    code = "import sys\nsys.modules['lightning_ws.more.peft_shim'] = None\nimport peft\n" + USER_CODE.format(
        base=str(base), adapter=str(adapter))
    proc = _python(code, site_dir)
    assert proc.returncode != 0
    assert "import lightning_ws.more.peft_shim" in proc.stderr and "KeyError" not in proc.stderr
    assert _python("import peft, sys; print(peft.__version__)", site_dir).returncode == 0  # peft imports fine


@pytest.mark.slow  # builds the wheel and the editable wheel (~1 min)
def test_wheel_ships_the_startup_file(tmp_path):
    import shutil

    leftovers = [REPO / "build", REPO / "lightning_ws.egg-info"]
    existed = {p for p in leftovers if p.exists()}
    try:
        _check_wheels(tmp_path)
    finally:  # setuptools builds in the source tree; leave it as found
        for p in leftovers:
            if p not in existed and p.exists():
                shutil.rmtree(p)


def _check_wheels(tmp_path: Path) -> None:
    proc = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w",
                           str(tmp_path), str(REPO)], capture_output=True, text=True, timeout=900, check=False)
    assert proc.returncode == 0, proc.stderr[-3000:]
    wheel = next(tmp_path.glob("lightning_ws-*.whl"))
    with zipfile.ZipFile(wheel) as zf:
        assert PTH.name in zf.namelist()
        assert zf.read(PTH.name).decode() == PTH.read_text()
    # the editable wheel (pip install -e .) too
    (tmp_path / "editable").mkdir()
    code = f"from setuptools import build_meta as b; print(b.build_editable({str(tmp_path / 'editable')!r}))"
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=900, cwd=REPO,
                          check=False)
    assert proc.returncode == 0, proc.stderr[-3000:]
    with zipfile.ZipFile(next((tmp_path / "editable").glob("*.whl"))) as zf:
        assert PTH.name in zf.namelist()

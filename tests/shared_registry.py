"""The registry of the shared Lightning tests: every exported callback and LightningModule, and how each of the four
shared checks (resume = uninterrupted, 2-process gloo DDP = 1 process, gradient accumulation, a LightningCLI config)
reaches it.

``tests/test_shared_contract.py`` discovers the exported classes of :mod:`lightning_ws.callbacks` and
:mod:`lightning_ws.modules` and fails when one has no entry here, so a new callback or module cannot skip the checks.
Each check of an entry is one of:

* :class:`Generic` -- ``test_shared_contract.py`` runs the check itself on the factory (``"module:function"``
  returning ``(model, datamodule, callbacks)``, the format of ``tests.helpers.ddp.run_fit``);
* :class:`Covered` -- a dedicated test runs it (``"tests/test_x.py::test_name"``); the contract test checks that the
  test exists, so deleting it fails;
* :class:`Config` -- a shipped config that uses the class (the config tests of ``tests/test_cli.py`` run every file in
  ``configs/``; ``configs/predict/`` is run by the test named in ``run_by``);
* :class:`NotApplicable` -- the check has no meaning for this class (the reason says why);
* :class:`Gap` -- missing today; it shows up as an ``xfail`` with the reason (never a silent skip).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Union

import lightning.pytorch as pl
import torch
from torch.utils.data import DataLoader


@dataclass(frozen=True)
class Generic:
    factory: str
    slow: bool = False
    ddp_strategy: str = "ddp"  #: the 2-process run's strategy


@dataclass(frozen=True)
class Covered:
    test: str


@dataclass(frozen=True)
class Config:
    path: str
    run_by: str = "tests/test_cli.py::test_every_config_runs_fast_dev_run"


@dataclass(frozen=True)
class NotApplicable:
    reason: str


@dataclass(frozen=True)
class Gap:
    reason: str


Check = Union[Generic, Covered, Config, NotApplicable, Gap]
CHECKS = ("resume", "ddp", "accumulation", "config")


@dataclass(frozen=True)
class Entry:
    resume: Check
    ddp: Check
    accumulation: Check
    config: Check


_GM = "tests/test_gradmimic_callback.py"
_RNB = "tests/test_rnb_callback.py"
_MKT = "tests/test_market_callback.py"
_CLIP = "tests/test_clip.py"
_CLIP_CLI = "tests/test_clip_cli.py::test_pool_fit_predict_filter_through_the_cli"
_SIGNALS_DDP = f"{_CLIP}::test_signal_predict_two_processes_write_what_one_process_writes"
#: the resume helper trains with accumulate_grad_batches=2 by default, so a resume test also runs accumulation
_ACC_IN_RESUME = "accumulation runs inside the resume test (accumulate_grad_batches=2)"

CALLBACKS: dict[str, Entry] = {
    "GradMimicCallback": Entry(
        resume=Covered(f"{_GM}::test_resume_equivalence"),
        ddp=Covered(f"{_GM}::test_ddp_global_softmax_equals_single_process"),
        accumulation=Covered(f"{_GM}::test_ddp_global_softmax_equals_single_process"),
        config=Config("configs/gradmimic_digits.yaml"),
    ),
    "RnBCallback": Entry(
        resume=Covered(f"{_RNB}::test_resume_equivalent"),
        ddp=Covered(f"{_RNB}::test_ddp_two_processes_match_one_process"),
        accumulation=Covered(f"{_RNB}::test_fused_gradients_and_sums_equal_the_hook_path"),
        config=Config("configs/rnb_youtube.yaml"),
    ),
    "ParameterMarketCallback": Entry(
        resume=Covered(f"{_MKT}::test_resume_equals_uninterrupted_and_keeps_the_ledger"),
        ddp=Covered(f"{_MKT}::test_ddp_rank_zero_trades_and_broadcasts"),
        accumulation=Covered(f"{_MKT}::test_gradient_accumulation_matches_larger_batches"),
        config=Config("configs/market_digits_a.yaml"),
    ),
    "SignalCacheWriter": Entry(
        resume=NotApplicable("a prediction writer: it runs in `predict` and keeps no training state"),
        ddp=Covered(_SIGNALS_DDP),
        accumulation=NotApplicable("runs in `predict` only (no optimizer steps)"),
        config=Config("configs/predict/clip_signals.yaml", run_by=_CLIP_CLI),
    ),
}

MODULES: dict[str, Entry] = {
    "TextClassifier": Entry(
        resume=Covered("tests/test_lifecycle.py::test_text_classifier_resumes_exactly_with_dropout"),
        # Plain `strategy: ddp` fails on TextClassifier: the encoder's pooler never contributes to the loss (the head
        # reads last_hidden_state), and DDP refuses unused parameters. Users need ddp_find_unused_parameters_true
        # (or freeze_encoder); the check runs with it and verifies 2 processes == 1 process.
        ddp=Generic("tests.shared_registry:build_text_sequential", slow=True,
                    ddp_strategy="ddp_find_unused_parameters_true"),
        accumulation=NotApplicable(_ACC_IN_RESUME),
        config=Config("configs/quickstart.yaml"),
    ),
    "LokiClassifier": Entry(
        resume=Generic("tests.shared_registry:build_loki"),
        ddp=Covered("tests/test_loki_lightning.py::test_classifier_ddp_ranks_agree"),
        accumulation=NotApplicable(_ACC_IN_RESUME),
        config=Config("configs/loki_digits.yaml"),
    ),
    "GradMimicClassifier": Entry(
        resume=Covered(f"{_GM}::test_resume_equivalence"),
        ddp=Covered(f"{_GM}::test_ddp_global_softmax_equals_single_process"),
        accumulation=Covered(f"{_GM}::test_ddp_global_softmax_equals_single_process"),
        config=Config("configs/gradmimic_digits.yaml"),
    ),
    "PeftSequenceClassifier": Entry(
        # Checkpoints are adapter-only (the frozen base is refilled from model_path on load): the resume check
        # proves that is enough to continue bit for bit.
        resume=Generic("tests.shared_registry:build_peft"),
        ddp=Generic("tests.shared_registry:build_peft_sequential", slow=True),  # the pooler is frozen: plain ddp
        accumulation=NotApplicable(_ACC_IN_RESUME),
        config=Config("configs/more_youtube.yaml"),
    ),
    "WeaverCrossEncoder": Entry(
        resume=Covered("tests/test_weaver_distill.py::test_resume_is_exact"),
        # CLS pooling: the encoder's pooler is unused, as for TextClassifier. The pairwise ranking term is normalised
        # by the pair count over all ranks (it once took each rank's own mean, so 2 processes != 1 process).
        ddp=Generic("tests.shared_registry:build_weaver_sequential", slow=True,
                    ddp_strategy="ddp_find_unused_parameters_true"),
        accumulation=NotApplicable(_ACC_IN_RESUME),
        config=Config("configs/weaver_distill.yaml"),
    ),
    "RewardModel": Entry(
        resume=Generic("tests.shared_registry:build_reward"),
        # Mean pooling: the encoder's pooler is unused (as for TextClassifier). AdamW's eps at 1e-3, see the factory.
        ddp=Generic("tests.shared_registry:build_reward_sequential", slow=True,
                    ddp_strategy="ddp_find_unused_parameters_true"),
        accumulation=NotApplicable(_ACC_IN_RESUME),
        config=Config("configs/pajama_distill.yaml"),
    ),
    "ImageClassifier": Entry(
        resume=Generic("tests.shared_registry:build_image"),
        ddp=Generic("tests.shared_registry:build_image_sequential", slow=True),
        accumulation=NotApplicable(_ACC_IN_RESUME),
        config=Config("configs/market_digits_a.yaml"),
    ),
    "CLIPModule": Entry(
        resume=Covered(f"{_CLIP}::test_resume_mid_epoch_equals_uninterrupted"),
        ddp=Covered(f"{_CLIP}::test_ddp_two_processes_equal_one_process_on_global_batch"),
        accumulation=NotApplicable(_ACC_IN_RESUME),
        config=Config("configs/clip_datacomp.yaml"),
    ),
    "FilterSignalModule": Entry(
        resume=NotApplicable("a predict-only module (computes filter signals; no parameters are trained)"),
        ddp=Covered(_SIGNALS_DDP),
        accumulation=NotApplicable("predict-only (no optimizer steps)"),
        config=Config("configs/predict/clip_signals.yaml", run_by=_CLIP_CLI),
    ),
}


# ------------------------------------------------------------------------------------------------ generic factories
class SequentialOrder(pl.LightningDataModule):
    """Wraps a data module so that training batches come in dataset order (no shuffling).

    Under DDP it shards with its own ``DistributedSampler(shuffle=False)`` (rank ``r`` takes rows ``r, r+2, ...``; run
    the Trainer with ``use_distributed_sampler=False``, since Lightning's replacement sampler shuffles training data),
    so two ranks with batch ``b`` see, together, exactly the rows one process sees with batch ``2b``: the generic DDP
    check can compare 2 processes with 1 process parameter by parameter.
    """

    def __init__(self, inner: pl.LightningDataModule, batch_size: int) -> None:
        super().__init__()
        self.inner, self.batch_size = inner, int(batch_size)

    def setup(self, stage: str) -> None:
        self.inner.setup(stage)

    def train_dataloader(self) -> DataLoader:
        from torch.utils.data import DistributedSampler, SequentialSampler

        loader = self.inner.train_dataloader()
        world = self.trainer.world_size if self.trainer is not None else 1
        sampler = (DistributedSampler(loader.dataset, num_replicas=world, rank=self.trainer.global_rank, shuffle=False)
                   if world > 1 else SequentialSampler(loader.dataset))
        return DataLoader(loader.dataset, batch_size=self.batch_size, sampler=sampler, collate_fn=loader.collate_fn)

    def __getattr__(self, name: str):  # the wrapped module's facts (num_classes, label_metric, ...)
        if name == "inner":
            raise AttributeError(name)
        return getattr(self.inner, name)


def build_image_sequential(batch_size: int = 16, seed: int = 0):
    """:func:`build_image` with batches in dataset order (for the 2-process == 1-process check)."""
    model, dm, cbs = build_image(batch_size=batch_size, seed=seed)
    return model, SequentialOrder(dm, batch_size), cbs


def build_text_sequential(batch_size: int = 16, seed: int = 0):
    """TextClassifier on a 1-layer, 32-wide random encoder (the shipped MiniLM's tokenizer and config), dropout off,
    on the shipped YouTube spam training split in dataset order."""
    from lightning_ws.datamodules import TextClassificationDataModule
    from lightning_ws.modules import TextClassifier

    torch.manual_seed(seed)
    tiny = {"num_hidden_layers": 1, "hidden_size": 32, "intermediate_size": 64, "num_attention_heads": 2,
            "hidden_dropout_prob": 0.0, "attention_probs_dropout_prob": 0.0}  # dropout draws from each rank's RNG
    model = TextClassifier(num_classes=2, pretrained=False, config_overrides=tiny, dropout=0.0, lr=1e-3,
                           warmup_ratio=0.0)
    dm = TextClassificationDataModule(dataset="youtube", max_length=32, batch_size=batch_size)
    return model, SequentialOrder(dm, batch_size), []


def build_image(batch_size: int = 16, seed: int = 0):
    """ImageClassifier (small MLP) on the digits agent split of the market data module; no callbacks."""
    from lightning_ws.datamodules.images import ClassSkewedImageDataModule
    from lightning_ws.modules import ImageClassifier

    torch.manual_seed(seed)
    model = ImageClassifier(input_dim=64, num_classes=10, hidden_dims=[16], optimizer="sgd", lr=0.05)
    return model, ClassSkewedImageDataModule(batch_size=batch_size, eval_batch_size=64), []


def build_reward(batch_size: int = 8, seed: int = 0, dropout: float = 0.1, eps: float = 1e-8):
    """RewardModel on a 1-layer, 32-wide random encoder (no dropout inside), head dropout ``dropout`` (the module's
    default; resumes exactly through the RNG states), AdamW epsilon ``eps``, trained on 48 human-labelled HH-RLHF
    pairs."""
    from lightning_ws.datamodules import PreferenceDataModule
    from lightning_ws.modules import RewardModel

    torch.manual_seed(seed)
    tiny = {"num_hidden_layers": 1, "hidden_size": 32, "intermediate_size": 64, "num_attention_heads": 2,
            "hidden_dropout_prob": 0.0, "attention_probs_dropout_prob": 0.0}
    model = RewardModel(pretrained=False, config_overrides=tiny, dropout=dropout, lr=1e-3, eps=eps)
    dm = PreferenceDataModule(labels="human", tune_size=16, max_train=48, max_test=8, max_length=24,
                              batch_size=batch_size, test_data=["llmbar"])
    return model, dm, []


_TINY_BERT = {"num_hidden_layers": 1, "hidden_size": 32, "intermediate_size": 64, "num_attention_heads": 2,
              "hidden_dropout_prob": 0.0, "attention_probs_dropout_prob": 0.0}


def tiny_minilm_folder(seed: int = 0) -> str:
    """A local Hugging Face folder holding a 1-layer, 32-wide random BERT with the shipped MiniLM's config (so its
    tokenizer and vocabulary fit), dropout off; built once per machine under the temp folder, atomically.

    :class:`~lightning_ws.modules.PeftSequenceClassifier` loads its base model with ``from_pretrained`` from a folder
    (there is no ``pretrained=False``; ``config_overrides`` cannot change the architecture of saved weights), so the
    tiny model is saved to a folder first. Every process (DDP ranks included) gets the same weights: the init is
    seeded and the folder is keyed by its config, the seed and the torch/transformers versions.
    """
    import hashlib
    import json
    import os
    import shutil
    import tempfile
    from pathlib import Path

    import transformers
    from transformers import AutoConfig, AutoModelForSequenceClassification

    from lightning_ws.more.hf import default_model_path

    key = json.dumps([_TINY_BERT, seed, torch.__version__, transformers.__version__], sort_keys=True)
    root = Path(tempfile.gettempdir()) / "lightning_ws_tests"
    folder = root / f"tiny_minilm_seqcls_{hashlib.sha256(key.encode()).hexdigest()[:16]}"
    if (folder / "config.json").is_file():
        return str(folder)
    root.mkdir(parents=True, exist_ok=True)
    config = AutoConfig.from_pretrained(default_model_path(), local_files_only=True, num_labels=2, **_TINY_BERT)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = AutoModelForSequenceClassification.from_config(config)
    staging = Path(tempfile.mkdtemp(dir=root, prefix=".staging_"))
    model.save_pretrained(staging)
    try:
        os.rename(staging, folder)  # atomic; another process may have won the race, its folder is identical
    except OSError:
        shutil.rmtree(staging, ignore_errors=True)
    return str(folder)


def build_peft(batch_size: int = 16, seed: int = 0):
    """PeftSequenceClassifier (MoRe on query/key/value, K=4, r=4, trainable head) on a 1-layer, 32-wide random
    BERT (:func:`tiny_minilm_folder`), dropout off, linear warm-up over a quarter of the steps then linear decay
    (the module's schedule), on the shipped YouTube spam training split."""
    from lightning_ws.datamodules import TextClassificationDataModule
    from lightning_ws.modules import PeftSequenceClassifier

    torch.manual_seed(seed)
    model = PeftSequenceClassifier(num_labels=2, model_path=tiny_minilm_folder(), adapter="more", nblocks=4, blk_r=4,
                                   adapter_dropout=0.0, lr=1e-2, warmup_ratio=0.25, seed=seed)
    dm = TextClassificationDataModule(dataset="youtube", max_length=32, batch_size=batch_size)
    return model, dm, []


def build_peft_sequential(batch_size: int = 16, seed: int = 0):
    """:func:`build_peft` with batches in dataset order (for the 2-process == 1-process check)."""
    model, dm, cbs = build_peft(batch_size=batch_size, seed=seed)
    return model, SequentialOrder(dm, batch_size), cbs


def build_reward_sequential(batch_size: int = 16, seed: int = 0):
    """:func:`build_reward` with batches in dataset order, for the 2-process == 1-process check: the head dropout
    off (each rank draws its own masks) and AdamW's epsilon at 1e-3, as in the CLIP DDP test: the Bradley-Terry loss
    sees only r_B - r_A, so the head's bias and (without dropout) the encoder's last LayerNorm bias get a zero
    gradient up to rounding, and tokens shared by both responses nearly cancelling ones; with eps=1e-8 AdamW turns
    that rounding into steps of ~lr whose sign follows the summation order (measured: 3e-3 apart after 4 steps)."""
    model, dm, cbs = build_reward(batch_size=batch_size, seed=seed, dropout=0.0, eps=1e-3)
    return model, SequentialOrder(dm, batch_size), cbs


def build_weaver_sequential(batch_size: int = 16, seed: int = 0):
    """WeaverCrossEncoder on a 1-layer, 32-wide random encoder, dropout off, MSE plus the pairwise ranking term,
    distilled on 36 GSM8K problems x 4 candidates (offline heuristic verifiers), batches in dataset order.

    ``batch_size`` counts candidates: a batch holds ``batch_size // 4`` whole problems (the ranking term compares the
    candidates of one problem, so problems are never split across batches or ranks)."""
    import numpy as np

    from lightning_ws.datamodules.weaver import WeaverDistillDataModule
    from lightning_ws.modules import WeaverCrossEncoder
    from lightning_ws.weaver import load_gsm8k_verification

    torch.manual_seed(seed)
    model = WeaverCrossEncoder(pretrained=False, config_overrides=_TINY_BERT, head_dims=(16,), dropout=0.0, lr=1e-3,
                               head_lr=3e-3, ranking_weight=0.5, schedule_steps=6)
    data = load_gsm8k_verification(verifiers="heuristic").subset(np.arange(36))
    problems = max(1, batch_size // 4)
    dm = WeaverDistillDataModule(data=data, max_length=64, batch_problems=problems, eval_batch_problems=4,
                                 val_fraction=0.2, test_fraction=0.2, seed=0)
    return model, SequentialOrder(dm, problems), []


def build_loki(batch_size: int = 16, seed: int = 0):
    """LokiClassifier (small MLP head) on the digits data module with unobserved classes; no callbacks."""
    from lightning_ws.datamodules.loki import LokiDigitsDataModule
    from lightning_ws.modules import LokiClassifier

    torch.manual_seed(seed)
    return LokiClassifier(in_features=64, hidden_dim=16, lr=1e-2), LokiDigitsDataModule(batch_size=batch_size), []

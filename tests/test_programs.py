"""Program labeling: prompts, extraction, static checks, store, clients (loopback server + replay), apply, combine."""

from __future__ import annotations

import json
import re

import numpy as np
import pytest

from lightning_ws.errors import ConfigError, DataError
from lightning_ws.programs.apply import (
    apply_programs,
    combine_sources,
    data_hash,
    dedup_programs,
    filter_programs,
    label_metrics,
    lf_metrics,
)
from lightning_ws.programs.clients import RECORDED_DIR, OpenAIChatClient, PriceTable, ReplayClient
from lightning_ws.programs.generate import ProgramGenerator, check_program, extract_code
from lightning_ws.programs.prompts import load_task, load_template, render_prior_prompt, render_prompt
from lightning_ws.programs.sandbox import ProgramSandbox
from lightning_ws.programs.store import Program, ProgramStore, parse_program_file
from tests.helpers.openai_server import FakeOpenAIServer


@pytest.fixture(scope="module")
def sandbox():
    with ProgramSandbox(workers=2, call_timeout=1.0, batch_timeout=20.0) as sb:
        yield sb


def _recorded(task: str, pid: str) -> dict:
    return json.loads((RECORDED_DIR / task / "prompts" / f"{pid}.json").read_text(encoding="utf-8"))


# -- prompts ---------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("task", ["youtube", "sms"])
def test_templates_render_the_recorded_prompts(task):
    spec, S, A = load_task(task), load_template("scriptoriumws"), load_template("alchemist")
    for tier in S.tiers:
        p, rec = render_prompt(S, spec, tier=tier), _recorded(task, tier)
        assert p.system == rec["system"] and p.template_version == 1 and p.prompt_id == tier
        if task == "youtube" and tier == "T5_data_examples":
            # same blocks and the same 8 validation examples; the recorded file shows two spam examples swapped
            def lines(u):
                return sorted(re.sub(r"^Example \d+: ", "", ln) for ln in u.splitlines())

            assert lines(p.user) == lines(rec["user"]) and p.user != rec["user"]
            assert p.example_ids == ["13", "44", "70", "58", "96", "60", "102", "107"]
        else:
            assert p.user == rec["user"], tier
    assert render_prior_prompt(A, spec).user == _recorded(task, "alchemist_prior_knowledge")["user"]
    assert render_prompt(A, spec).user == _recorded(task, "alchemist_programs")["user"]
    prior = json.loads((RECORDED_DIR / task / "responses" / "alchemist_prior_knowledge" / "0.json").read_text())
    p = render_prompt(A, spec, prior=prior["choices"][0]["message"]["content"])
    assert p.user == _recorded(task, "alchemist_programs_with_prior")["user"]


def test_tiers_are_cumulative_and_k_gt_2_renders():
    S = load_template("scriptoriumws")
    spec = load_task("youtube")
    users = [render_prompt(S, spec, tier=t).user for t in S.tiers]
    for a, b in zip(users, users[1:]):
        assert len(b) > len(a) and b.startswith(a.split("\n\n")[0])
    trec = load_task("trec")
    p = render_prompt(S, trec, tier="T5_data_examples", skip_missing=True)  # trec has no heuristics / example LFs
    assert p.skipped_blocks == ["heuristics", "example_lfs"]
    assert "If the question is number, the function returns 5." in p.user and "-> location (4)" in p.user
    with pytest.raises(ConfigError, match="heuristics"):
        render_prompt(S, trec, tier="T3_human_heuristics")
    with pytest.raises(ConfigError, match="tier"):
        render_prompt(S, trec, tier="T9")


def test_examples_never_from_test(tmp_path):
    path = tmp_path / "t.yaml"
    path.write_text("name: youtube\nclasses: {0: ham, 1: spam}\nitems: comments\nitem: comment\n"
                    "task_title: t\nexamples: {split: test, per_class: 1}\n")
    with pytest.raises(ConfigError, match="test split"):
        load_task(path)


# -- extraction and checks ---------------------------------------------------------------------------------------------

def test_extract_code_cases():
    code = "def label(t):\n    return 1\n"
    assert extract_code(f"Here it is:\n```python\n{code}```\nDone.") == code
    assert extract_code(f"```py\n{code}```") == code
    two = ("```python\nimport re\nW = ['a']\n```\nand\n"
           "```python\ndef label(t):\n    return 1 if re.search('a', t) else 0\n```")
    got = extract_code(two)
    assert "import re" in got and "def label" in got
    several = f"```python\nprint('helper')\n```\n```python\n{code}```"
    assert extract_code(several) == code
    assert extract_code(code) == code  # no fence, whole answer is code
    assert extract_code(f"Sure! The function:\n{code}\nHope this helps.") == code.rstrip("\n") + "\n"
    assert extract_code(f"```python\n{code}") == code  # truncated, unclosed fence
    assert extract_code("I cannot help with that.") is None


def test_static_checks():
    ok = check_program("import re\nfrom collections import Counter\ndef label(t):\n    return 1\n")
    assert ok.ok and ok.imports == ["collections", "re"]
    bad = {
        "import os\ndef label(t):\n    return 1\n": "not in the allow-list",
        "def label(t):\n    return ().__class__\n": "dunder",
        "def label(t):\n    return eval(t)\n": "eval",
        "def other(t):\n    return 1\n": "defines no",
        "def label(a, b):\n    return 1\n": "positional",
        "def label(t):\n  return (\n": "does not parse",
        "def label(t):\n    return __builtins__\n": "__builtins__",
        "from . import x\ndef label(t):\n    return 1\n": "allow-list",
    }
    for src, why in bad.items():
        res = check_program(src)
        assert not res.ok and any(why in p for p in res.problems), (src, res.problems)
    assert check_program("def judging_function(q, r):\n    return 0.5\n", "judging_function", n_args=2).ok
    assert not check_program(None).ok


# -- store -------------------------------------------------------------------------------------------------------------

def test_store_round_trip_and_dedup(tmp_path):
    store = ProgramStore(tmp_path / "store")
    p = Program(source='def label(t):\n    """doc"""\n    return 1\n', task="youtube", prompt_id="T1_general",
                system_prompt="sys", prompt='user with """ quotes and \\ backslash', usage={"prompt_tokens": 10,
                "completion_tokens": 5}, cost_usd=0.00125, checks={"ok": True})
    stored = store.add(p)
    py = next((tmp_path / "store" / "youtube" / "T1_general").glob("*.py")).read_text()
    back = parse_program_file(py)
    assert back["source"] == p.source and back["prompt"] == p.prompt and back["system_prompt"] == "sys"
    assert back["usage"] == p.usage and back["cost_usd"] == pytest.approx(0.00125)
    again = store.add(Program(source=p.source, task="youtube", prompt_id="T2_task_description"))
    assert again.id == stored.id and again.duplicates == 1 and len(store) == 1
    assert store.get(stored.id[:8]).prompt == p.prompt
    meta = next((tmp_path / "store").rglob("*.json"))
    d = json.loads(meta.read_text())
    d["source"] = "def label(t):\n    return 0\n"
    meta.write_text(json.dumps(d))
    with pytest.raises(DataError, match="hash"):
        list(store)


# -- clients -----------------------------------------------------------------------------------------------------------

def test_replay_generator_stores_every_recorded_program(tmp_path):
    store = ProgramStore(tmp_path)
    gen = ProgramGenerator(ReplayClient(), store)
    S, A, spec = load_template("scriptoriumws"), load_template("alchemist"), load_task("sms")
    rep = gen.generate(S, spec, tier="T3_human_heuristics", n=6)
    assert rep.responses == 6 and rep.valid == 6
    rep = gen.generate(A, spec, n=10, prior_type="heuristics")
    assert rep.valid == 10 and rep.prior_knowledge.startswith("Below are labeling heuristics")
    progs = store.select(task="sms", prompt_id="alchemist_programs_with_prior")
    assert len(progs) == 10 and progs[0].extra["prior_type"] == "heuristics"
    assert progs[0].prompt.startswith("Here is useful information")
    with pytest.raises(DataError, match="recorded samples"):
        gen.generate(S, spec, tier="T1_general", n=7)
    with pytest.raises(DataError, match="strict"):
        ReplayClient(strict=True).complete([{"role": "user", "content": "x"}], task="sms", prompt_id="T1_general")


def _program_answer(body, i):
    user = body["messages"][-1]["content"]
    k = 6 if "question" in user else 2
    return (f"Variant {i}.\n```python\nimport re\n\ndef label(text: str) -> int:\n"
            f"    if re.search(r'\\b(free|what)\\b', text.lower()):\n        return {i % k}\n"
            f"    return -1 if len(text) < {3 + i} else {(i + 1) % k}\n```")


def test_openai_client_on_loopback_server(tmp_path, monkeypatch):
    with FakeOpenAIServer(_program_answer, fail_first=(500, 429)) as srv:
        monkeypatch.setenv("LWS_LLM_BASE_URL", srv.base_url)
        monkeypatch.setenv("LWS_LLM_API_KEY", "sk-test")
        prices = PriceTable({"fake-coder": (1.0, 2.0)})
        client = OpenAIChatClient("fake-coder", cache_dir=tmp_path / "cache", prices=prices, backoff=0.01)
        msgs = [{"role": "system", "content": "s"}, {"role": "user", "content": "write spam lf"}]
        res = client.complete(msgs, n=3, temperature=1.0, max_tokens=50)
        assert len(res.texts) == 3 and client.totals["retries"] == 2 and len(srv.requests) == 3
        assert srv.requests[-1]["auth"] == "Bearer sk-test" and srv.requests[-1]["body"]["n"] == 3
        exp = (res.usage["prompt_tokens"] * 1.0 + res.usage["completion_tokens"] * 2.0) / 1000
        assert res.cost_usd == pytest.approx(exp) and client.totals["cost_usd"] == pytest.approx(exp)
        again = client.complete(msgs, n=3, temperature=1.0, max_tokens=50)  # cache: no request
        assert again.cached and again.texts == res.texts and len(srv.requests) == 3
        many = client.complete_many([{"messages": [{"role": "user", "content": f"q{i}"}], "n": 1} for i in range(5)])
        assert len(many) == 5 and len(srv.requests) == 8
    with FakeOpenAIServer(_program_answer, ignore_n=True) as srv:  # servers that ignore n are topped up
        client = OpenAIChatClient("fake-coder", base_url=srv.base_url, api_key="x", backoff=0.01)
        assert len(client.complete(msgs, n=4).texts) == 4 and len(srv.requests) == 4
    with FakeOpenAIServer(_program_answer, fail_first=(500, 500, 500)) as srv:
        client = OpenAIChatClient("fake-coder", base_url=srv.base_url, api_key="x", backoff=0.01, max_retries=1)
        with pytest.raises(Exception, match="500|Internal|injected"):
            client.complete(msgs)


def test_alchemist_prior_knowledge_stage_on_loopback_server(tmp_path):
    """Alchemist with a prior-knowledge step: one call for the knowledge, its answer prepended to the program prompt,
    both calls' tokens and costs recorded with every program."""
    def answer(body, i):
        user = body["messages"][-1]["content"]
        if user.startswith("Generate keywords"):
            return "Spam keywords: free, prize, winner, claim, txt."
        return _program_answer(body, i)

    with FakeOpenAIServer(answer) as srv:
        client = OpenAIChatClient("fake-coder", base_url=srv.base_url, api_key="x",
                                  prices=PriceTable({"fake-coder": (1.0, 1.0)}))
        store = ProgramStore(tmp_path / "st")
        rep = ProgramGenerator(client, store).generate(load_template("alchemist"), load_task("sms"), n=3,
                                                       prior_type="keywords")
    assert len(srv.requests) == 2 and rep.valid == 3
    prior_req, prog_req = (r["body"]["messages"][-1]["content"] for r in srv.requests)
    assert prior_req.startswith("Generate keywords") and "Spam keywords: free" in prog_req
    assert rep.prior_knowledge == "Spam keywords: free, prize, winner, claim, txt."
    progs = store.select(task="sms")
    assert len(progs) == 3 and all("Spam keywords" in p.prompt for p in progs)
    extra = progs[0].extra
    assert extra["prior_type"] == "keywords" and extra["prior_usage"]["prompt_tokens"] > 0
    assert extra["prior_knowledge"] == rep.prior_knowledge
    assert sum(p.cost_usd for p in progs) == pytest.approx(client.totals["cost_usd"])


def test_client_concurrency_limit_on_loopback_server():
    """``complete_many`` never has more than ``concurrency`` requests in flight at the server."""
    import threading
    import time

    state = {"now": 0, "max": 0}
    lock = threading.Lock()

    def slow_answer(body, i):
        with lock:
            state["now"] += 1
            state["max"] = max(state["max"], state["now"])
        time.sleep(0.15)
        with lock:
            state["now"] -= 1
        return "```python\ndef label(t):\n    return 1\n```"

    with FakeOpenAIServer(slow_answer) as srv:
        client = OpenAIChatClient("fake-coder", base_url=srv.base_url, api_key="x", concurrency=2, backoff=0.01)
        out = client.complete_many([{"messages": [{"role": "user", "content": f"q{i}"}]} for i in range(6)])
    assert len(out) == 6 and len(srv.requests) == 6
    assert 1 <= state["max"] <= 2, state
    assert client.totals["calls"] == 6


def test_sandbox_progress_bar(sandbox, capsys):
    res = apply_programs(["def label(t):\n    return int('a' in t)\n"] * 2, ["a", "b", "c"], num_classes=2,
                         sandbox=sandbox, progress=True)
    assert res.L[:, 0].tolist() == [1, 0, 0]
    err = capsys.readouterr().err
    assert "6/6" in err and "call" in err  # tqdm: rows x programs calls


def test_pipeline_on_loopback_server_k6(tmp_path, monkeypatch, sandbox):
    """TREC (6 classes) end to end: generate from a loopback server, store, apply in the sandbox, label model."""
    from lightning_ws.data import load_wrench

    with FakeOpenAIServer(_program_answer) as srv:
        client = OpenAIChatClient("fake-coder", base_url=srv.base_url, api_key="x", cache_dir=tmp_path / "c")
        store = ProgramStore(tmp_path / "store")
        rep = ProgramGenerator(client, store).generate(load_template("scriptoriumws"), load_task("trec"),
                                                       tier="T2_task_description", n=4)
        assert rep.valid == 4 and rep.prompt_tokens > 0 and rep.cost_usd == 0.0
    progs = store.select(task="trec")
    assert len(progs) == 4 and all(p.usage["completion_tokens"] > 0 for p in progs)
    tr = load_wrench("trec", "train")
    texts = tr.texts[:300]
    app = apply_programs(progs, texts, num_classes=6, sandbox=sandbox, cache_dir=tmp_path / "lf")
    assert app.L.shape == (300, 4) and app.L.max() <= 5 and (app.L >= 0).any()
    again = apply_programs(progs, texts, num_classes=6, sandbox=sandbox, cache_dir=tmp_path / "lf")
    assert again.cache_hits == 4 and np.array_equal(again.L, app.L)
    comb = combine_sources(tr.weak_labels[:300], app.L, mode="joint", label_model="mv", num_classes=6)
    assert comb.probs.shape == (300, 6)


def test_apply_dedup_filter_and_metrics(sandbox, tmp_path):
    progs = ["def label(t):\n    return 1 if 'a' in t else 0\n",
             "def label(t):\n    return 0 if 'a' not in t else 1\n",  # same behaviour, different code
             "def label(t):\n    return 1 if len(t) > 2 else -1\n"]
    texts = ["a", "bb", "abc", "dddd", "e"]
    y = np.array([1, 0, 1, 0, 0])
    app = apply_programs(progs, texts, num_classes=2, sandbox=sandbox)
    kept, groups = dedup_programs(app.L)
    assert kept == [0, 2] and groups[0] == [0, 1]
    m = lf_metrics(app.L, y)
    assert m[0] == {"coverage": 1.0, "accuracy": 1.0} and m[2]["coverage"] == 0.4
    assert filter_programs(app.L, y, min_accuracy=0.9) == [0, 1]
    assert filter_programs(app.L, y, min_coverage=0.5) == [0, 1]
    partly = np.array([1, -1, -1, 0, 0])  # rows without a gold label (-1) count for coverage, not accuracy
    assert lf_metrics(app.L, partly)[2] == {"coverage": 0.4, "accuracy": 0.0}
    assert lf_metrics(app.L, partly)[0] == {"coverage": 1.0, "accuracy": 1.0}
    assert data_hash(["a", "b"]) != data_hash(["ab"]) and data_hash([{"x": 1}]) == data_hash([{"x": 1}])


def test_combine_cascade_keeps_human_labels_and_covers_everything():
    rng = np.random.default_rng(0)
    n = 400
    y = rng.integers(0, 2, n)
    Lh = np.full((n, 3), -1)
    Lg = np.full((n, 3), -1)
    for j in range(3):
        m = rng.random(n) < 0.3
        Lh[m, j] = np.where(rng.random(m.sum()) < 0.9, y[m], 1 - y[m])
        m = rng.random(n) < 0.7
        Lg[m, j] = np.where(rng.random(m.sum()) < 0.8, y[m], 1 - y[m])
    cas = combine_sources(Lh, Lg, mode="cascade", label_model="mv", num_classes=2)
    assert cas.covered.all() and np.allclose(cas.probs.sum(1), 1)
    hum = combine_sources(Lh, None, mode="human", label_model="mv", num_classes=2)
    cov = hum.covered
    assert 0.3 < cov.mean() < 0.8
    assert (cas.probs[cov].argmax(1) == hum.probs[cov].argmax(1)).all()
    joint = combine_sources(Lh, Lg, mode="joint", label_model="mv", num_classes=2)
    assert joint.covered.mean() > cov.mean()
    for c in (cas, hum, joint):
        p = c.predict_proba(Lh, Lg)
        assert p.shape == (n, 2)
    m = label_metrics(joint.probs, y, joint.covered)
    assert m["acc_covered"] > 0.8 and set(m) == {"acc", "f1", "coverage", "acc_covered", "f1_covered"}
    with pytest.raises(ConfigError, match="human"):
        combine_sources(None, Lg, mode="cascade", num_classes=2)


# -- CLI and datamodule ------------------------------------------------------------------------------------------------

def test_cli_generate_list_show_validate_apply(tmp_path, capsys):
    from lightning_ws.cli import main

    store, cache = str(tmp_path / "st"), str(tmp_path / "c")
    assert main(["programs", "generate", "--task", "youtube", "--tier", "T2_task_description", "--client", "replay",
                 "--store", store, "--cache", cache]) == 0
    out = capsys.readouterr().out
    assert "valid=6" in out and "calls=1" in out
    assert main(["programs", "generate", "--task", "youtube", "--tier", "T2_task_description", "--client", "replay",
                 "--store", store, "--cache", cache]) == 0
    assert "cached=1" in capsys.readouterr().out  # the second run is served from the response cache
    assert main(["programs", "list", "--store", store]) == 0
    listing = capsys.readouterr().out
    assert "6 program(s)" in listing
    pid = listing.splitlines()[1].split()[0]
    assert main(["programs", "show", pid, "--store", store, "--prompt"]) == 0
    shown = capsys.readouterr().out
    assert "def label" in shown and "Task description:" in shown
    assert main(["programs", "validate", "--store", store]) == 0
    out_path = tmp_path / "L.safetensors"
    assert main(["programs", "apply", "--store", store, "--dataset", "youtube", "--split", "valid", "--out",
                 str(out_path), "--cache", "", "--no-progress", "--workers", "2"]) == 0
    assert "row coverage" in capsys.readouterr().out
    from lightning_ws.io import load_tensors

    tensors, meta = load_tensors(out_path)
    assert tuple(tensors["L"].shape) == (120, 6) and len(json.loads(meta["program_ids"])) == 6
    assert main(["programs", "apply", "--store", store, "--dataset", "youtube", "--split", "valid", "--out",
                 str(out_path), "--no-progress"]) != 0  # never overwrites
    assert "exists" in capsys.readouterr().err


def test_program_label_datamodule_modes(tmp_path):
    from lightning_ws.datamodules.programs import ProgramLabelDataModule

    reports = {}
    for mode in ("generated", "joint", "cascade"):
        dm = ProgramLabelDataModule("youtube", prompt_ids=["T1_general", "T5_data_examples"], combine=mode,
                                    label_model="mv", cache_dir=str(tmp_path / "cache"), sandbox={"workers": 2},
                                    soft_labels=mode != "cascade")
        rows, labels, _ = dm.train_targets(dm.load_split("train"))
        reports[mode] = dm.label_report
        assert len(rows) == labels.shape[0] > 1000
    assert reports["generated"]["programs"] == 12 and reports["joint"]["cache_hits"] == 12
    assert reports["cascade"]["coverage"] == 1.0 and reports["cascade"]["targets"] == "hard"
    assert reports["generated"]["pseudolabel_accuracy_vs_gold"] > 0.8
    assert reports["joint"]["unvoted_argmax_rows"] is None  # majority vote: no AutoLabelModel support report
    with pytest.raises(ConfigError, match="combine"):
        ProgramLabelDataModule("youtube", combine="both")


# -- Alchemist concept scores ------------------------------------------------------------------------------------------

def _bow(vocab):
    def enc(texts):
        return np.asarray([[t.lower().count(w) + 1e-3 for w in vocab] for t in texts], dtype=float)
    return enc


def test_concept_route_through_the_sandbox(sandbox):
    from lightning_ws.programs.concepts import ConceptScorer, parse_concepts, render_concept_prompts

    task = load_task("youtube")
    q = render_concept_prompts(task, n_concepts=2)
    assert "List 2 salient concepts" in q.user and "spam or ham" in q.user
    concepts = parse_concepts("1. promotion: subscribe check my channel\n- music: song love video\nNote: be careful")
    assert concepts == {"promotion": "subscribe check my channel", "music": "song love video"}
    p = render_concept_prompts(task, concepts)
    assert "def label(scores: dict) -> int:" in p.user and "- promotion: subscribe" in p.user
    enc = _bow(["subscribe", "check", "channel", "song", "love", "video"])
    scorer = ConceptScorer(concepts, encode_items=enc, encode_texts=enc)
    rows = scorer.scores(["please subscribe to my channel", "love this song", "check my channel"])
    assert set(rows[0]) == {"promotion", "music"} and rows[0]["promotion"] > rows[0]["music"]
    prog = "def label(scores):\n    return 1 if scores['promotion'] > scores['music'] else 0\n"
    res = sandbox.run([prog], rows, num_classes=2)
    assert res.values[:, 0].tolist() == [1, 0, 1]
    with pytest.raises(ConfigError, match="identifiers"):
        ConceptScorer({"bad name": "x"}, encode_items=enc, encode_texts=enc)


def test_concept_route_for_images_with_a_tiny_open_clip(sandbox):
    """Images take the text path: a (tiny, random) open_clip CLIP scores PIL images against concept prompts, the
    score dicts go through the same sandbox as texts. Mechanics only: no CLIP weights ship with the project."""
    pytest.importorskip("open_clip")
    import torch
    from open_clip.model import CLIP, CLIPTextCfg, CLIPVisionCfg
    from PIL import Image

    from lightning_ws.programs.concepts import ConceptScorer

    torch.manual_seed(0)
    model = CLIP(embed_dim=16, vision_cfg=CLIPVisionCfg(layers=1, width=32, head_width=16, image_size=16, patch_size=8),
                 text_cfg=CLIPTextCfg(context_length=8, vocab_size=50, width=32, heads=2, layers=1)).eval()

    def preprocess(im):
        return torch.from_numpy(np.asarray(im.resize((16, 16)), dtype=np.float32) / 255.0).permute(2, 0, 1)

    def tokenizer(texts):
        return torch.tensor([[(sum(map(ord, t)) * (j + 1)) % 50 for j in range(8)] for t in texts])

    concepts = {"red_feathers": "a photo of a bird with red feathers", "webbed_feet": "a photo of webbed feet"}
    scorer = ConceptScorer.from_open_clip(model, preprocess, tokenizer, concepts, batch_size=2)
    rng = np.random.default_rng(0)
    images = [Image.fromarray(rng.integers(0, 255, (20, 20, 3), dtype=np.uint8)) for _ in range(5)]
    rows = scorer.scores(images)
    assert len(rows) == 5 and all(set(r) == set(concepts) and all(-1 <= v <= 1 for v in r.values()) for r in rows)
    prog = "def label(scores):\n    return 1 if scores['red_feathers'] > scores['webbed_feet'] else 0\n"
    res = sandbox.run([prog], rows, num_classes=2)
    expect = [int(r["red_feathers"] > r["webbed_feet"]) for r in rows]
    assert res.values[:, 0].tolist() == expect and not res.errors


@pytest.mark.slow
def test_concept_route_with_minilm(sandbox):
    from lightning_ws.data import load_wrench
    from lightning_ws.programs.concepts import ConceptScorer

    data = load_wrench("youtube", "valid")
    scorer = ConceptScorer({"promotion": "check out my channel, subscribe, visit my website",
                            "music": "i love this song, great music video"})
    prog = "def label(scores):\n    return 1 if scores['promotion'] > scores['music'] else 0\n"
    res = sandbox.run([prog], scorer.scores(data.texts), num_classes=2)
    assert (res.values[:, 0] == data.labels).mean() > 0.7


def test_transformers_client_on_a_tiny_local_model(tmp_path):
    """A tiny random GPT-2 saved locally with the shipped MiniLM tokenizer: exercises TransformersClient offline."""
    from transformers import AutoTokenizer, GPT2Config, GPT2LMHeadModel

    from lightning_ws.programs.clients import TransformersClient
    from lightning_ws.sentence_embeddings import resolve_sentence_encoder_path

    tok = AutoTokenizer.from_pretrained(resolve_sentence_encoder_path(), local_files_only=True)
    import torch

    torch.manual_seed(0)
    lm = GPT2LMHeadModel(GPT2Config(vocab_size=len(tok), n_positions=256, n_embd=16, n_layer=1, n_head=2))
    lm.save_pretrained(tmp_path / "tiny")
    tok.save_pretrained(tmp_path / "tiny")
    client = TransformersClient(str(tmp_path / "tiny"), cache_dir=tmp_path / "cache")
    msgs = [{"role": "system", "content": "write code"}, {"role": "user", "content": "label spam"}]
    res = client.complete(msgs, n=2, max_tokens=8)
    assert len(res.texts) == 2 and res.usage["completion_tokens"] > 0 and res.cost_usd is None
    assert client.complete(msgs, n=2, max_tokens=8).cached
    with pytest.raises(Exception, match="not found"):
        TransformersClient(str(tmp_path / "missing"))


# -- k > 2: WRENCH TREC through ProgramLabelDataModule -----------------------------------------------------------------

TREC_PROGRAMS = [  # keyword programs for the 6 TREC classes, written for this test (standing in for a code LLM)
    ("description", 0, (r"^(why|how (do|does|did|can|is|are|was|were)) |^what (is|are|was) (a |an |the )?[a-z-]+ \?$|"
                        r"^what does .* mean")),
    ("entity", 1, (r"^(what|which) (kind|type|color|colour|animal|breed|sport|food|instrument|book|disease|language)|"
                   r"^name (a|an|the) ")),
    ("human", 2, r"^who(m|se)? |^(what|which) (person|man|woman|president|actor|company|team|singer|author) "),
    ("abbreviation", 3, r"stand for|abbreviat|acronym"),
    ("location", 4, r"^where |\b(country|city|state|capital|continent|river|mountain|island)\b"),
    ("number", 5, r"^(how (many|much|long|far|old|big|tall|fast|hot|cold)|when|what year|what date) "),
]


def _trec_answer(body, i):
    name, cls, pattern = TREC_PROGRAMS[i % len(TREC_PROGRAMS)]
    return (f"A rule for {name} questions.\n\n```python\nimport re\n\n"
            f"PATTERN = re.compile({pattern!r})\n\n\ndef label(text: str) -> int:\n"
            f"    return {cls} if PATTERN.search(text.lower()) else -1\n```\n")


def _trec_store(tmp_path):
    with FakeOpenAIServer(_trec_answer) as srv:
        client = OpenAIChatClient("fake-coder", base_url=srv.base_url, api_key="x", cache_dir=tmp_path / "c")
        store = ProgramStore(tmp_path / "store")
        rep = ProgramGenerator(client, store).generate(load_template("scriptoriumws"), load_task("trec"),
                                                       tier="T2_task_description", n=6)
    assert rep.valid == 6 and len(srv.requests) == 1
    assert "six classes" in srv.requests[0]["body"]["messages"][-1]["content"]
    return {"programs": str(tmp_path / "store"), "cache_dir": str(tmp_path / "lf"), "sandbox": {"workers": 1},
            "batch_size": 16, "max_length": 32}


def test_trec_k6_program_labels_through_datamodule(tmp_path):
    """TREC (6 classes): programs generated by a loopback OpenAI-compatible server, stored, applied in the sandbox,
    alone and joint with WRENCH's 68 hand-written LFs, through ``ProgramLabelDataModule``'s defaults (label model
    ``auto``, class-balanced targets for k > 2)."""
    from lightning_ws.datamodules.programs import ProgramLabelDataModule

    kw = _trec_store(tmp_path)
    reports = {}
    for mode in ("generated", "joint"):
        # auto's selection fits on a 1,000-row sample keep the test fast; the choice is then refitted on every row
        dm = ProgramLabelDataModule("trec", combine=mode, label_model_kwargs={"max_selection_rows": 1000}, **kw)
        assert dm.label_model_name == "auto" and dm.num_classes == 6
        rows, labels, extras = dm.train_targets(dm.load_split("train"))
        assert labels.shape == (rows.size, 6) and extras["weight"].shape == (rows.size,)
        reports[mode] = rep_ = dm.label_report
        assert rep_["programs_used"] == 6 and rep_["sandbox_errors"] == 0
        assert rep_["class_weighting"] == "balanced" and len(rep_["class_balance"]) == 6
        assert isinstance(rep_["unvoted_argmax_rows"], int) and rep_["unvoted_argmax_rows"] >= 0  # auto's report
        assert rep_["support_used"] == "voted"  # 6 classes: auto keeps to the voted classes
    gen, joint = reports["generated"], reports["joint"]
    # the keyword programs alone: precise on the rows they cover; joint with the 68 WRENCH LFs: more rows
    assert gen["pseudolabel_accuracy_vs_gold"] > 0.6 and 0.3 < gen["coverage"] < 1.0, gen
    assert joint["coverage"] > gen["coverage"] and joint["pseudolabel_accuracy_vs_gold"] > 0.5, joint
    with pytest.raises(ConfigError, match="class_weighting"):
        ProgramLabelDataModule("trec", class_weighting="inverse", **kw)


@pytest.mark.slow
def test_trec_k6_program_labels_train_an_end_model(tmp_path):
    """The same TREC program labels train the MiniLM end model (a few steps) and it is tested on gold labels."""
    import lightning.pytorch as pl

    from lightning_ws.datamodules.programs import ProgramLabelDataModule
    from lightning_ws.modules import TextClassifier

    dm = ProgramLabelDataModule("trec", combine="joint", train_limit=64, **_trec_store(tmp_path))
    dm.setup("fit")
    batch = next(iter(dm.train_dataloader()))
    assert batch["labels"].shape[1] == 6 and "weight" in batch
    pl.seed_everything(0, verbose=False)
    model = TextClassifier(num_classes=6, lr=5e-5, head_lr=1e-3)
    trainer = pl.Trainer(max_steps=3, limit_val_batches=1, limit_test_batches=2, logger=False,
                         enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                         accelerator="cpu", default_root_dir=tmp_path)
    trainer.fit(model, dm)
    out = trainer.test(model, dm, verbose=False)[0]
    assert 0.0 <= out["test/acc"] <= 1.0 and np.isfinite(out["test/loss"])

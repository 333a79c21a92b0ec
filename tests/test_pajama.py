"""PAJAMA core (arXiv 2506.10403): data, hand-written judges, sandboxed scoring, normalisation, thresholds,
selection, swap-symmetric aggregation, bias probes, LLM judge and program synthesis on a loopback server."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest

from lightning_ws.pajama import (
    REFERENCE_CONFIG,
    BiasEvaluator,
    JudgeConfig,
    LLMJudge,
    PairwiseAggregator,
    ProgramJudge,
    ProgramJudgePipeline,
    ProgramSynthesizer,
    RobustNormalizer,
    ThresholdTuner,
    compare_judges,
    handwritten_judges,
    length_judge,
    load_preferences,
    pairwise_metrics,
    pairwise_votes,
    score_pairs,
    select_programs,
    split_by_id,
)
from lightning_ws.pajama.aggregate import mirror_votes, score_differences, wilson_lower_bound
from lightning_ws.pajama.scoring import JUDGE_ENTRY, JUDGE_IMPORTS, RUBRICS
from lightning_ws.programs import OpenAIChatClient, ProgramSandbox, ProgramStore
from tests.helpers.openai_server import FakeOpenAIServer

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def sandbox():
    with ProgramSandbox(workers=2, call_timeout=1.0, batch_timeout=20.0) as sb:
        yield sb


# -- data ------------------------------------------------------------------------------------------------------------

def test_shipped_preference_sets_and_splits():
    sizes = {"hh_rlhf": 4664, "pandalm_test": 894, "llmbar": 619}
    for name in sizes:
        folder = ROOT / "lightning_ws" / "data" / "preferences" / name
        assert (folder / "LICENSE").is_file() and (folder / "README.md").is_file()
    d = load_preferences("llmbar")
    assert len(d) == 619 and set(np.unique(d.y)) == {0, 1} and len(set(d.subsets)) == 6
    p = load_preferences("pandalm_test", limit=50)
    assert len(p) == 50 and p.extra[0]["gpt35_verdict"] in ("a", "b", "tie", "unparsed")
    v, r = split_by_id(d.ids, 0.3, seed=0, strata=d.subsets)
    assert len(np.intersect1d(v, r)) == 0 and len(v) + len(r) == 619
    subs = np.asarray(d.subsets)
    for s in set(d.subsets):  # stratified: about 30% of every subset
        assert abs((subs[v] == s).sum() / (subs == s).sum() - 0.3) < 0.02
    v2, _ = split_by_id(list(reversed(d.ids)), 0.3, seed=0, strata=list(reversed(d.subsets)))
    assert sorted(d.ids[i] for i in v) == sorted(list(reversed(d.ids))[i] for i in v2)  # order-independent
    sw = d.swapped()
    assert sw.responses_a[0] == d.responses_b[0] and (sw.y == 1 - d.y).all()
    with pytest.raises(Exception, match="not found"):
        load_preferences("nope")


def test_user_preference_file_reads_preferred_strictly(tmp_path):
    # "A" / 1 / "response_a" were read as "no gold preference" without a word, and a malformed line raised a bare
    # JSONDecodeError (session 39)
    from lightning_ws.errors import DataError

    def write(prefs, prefix=b""):
        rows = [{"id": str(i), "query": "q", "response_a": "x", "response_b": "yy", "preferred": p}
                for i, p in enumerate(prefs)]
        path = tmp_path / "p.jsonl"
        path.write_bytes(prefix + "".join(json.dumps(r) + "\n" for r in rows).encode("utf-8"))
        return path

    d = load_preferences(write(["a", "B", " b ", None, "tie", ""], prefix=b"\xef\xbb\xbf"))
    assert d.y.tolist() == [0, 1, 1, -1, -1, -1] and d.ids[0] == "0"
    for bad in (1, "response_a", 0.5):
        with pytest.raises(DataError, match=r"p\.jsonl:2: preferred is"):
            load_preferences(write(["a", bad]))
    path = tmp_path / "q.jsonl"
    path.write_text('{"id": "0", "query": "q", "response_a": "x", "response_b": "y", "preferred": "a"}\n{"id": \n')
    with pytest.raises(DataError, match=r"q\.jsonl:2: not valid JSON"):
        load_preferences(path)
    path.write_text('["0", "q", "x", "y", "a"]\n')
    with pytest.raises(DataError, match=r"q\.jsonl:1: expected a JSON object"):
        load_preferences(path)


def test_handwritten_judges_are_labelled_valid_and_cover_every_rubric():
    progs = handwritten_judges()
    assert len(progs) == 20 and all(p.valid for p in progs)
    assert sorted({p.prompt_id for p in progs}) == sorted(RUBRICS)
    for p in progs:
        assert p.source.startswith("# HAND-WRITTEN judge program") and p.entry == JUDGE_ENTRY
        assert set(p.checks["imports"]) <= set(JUDGE_IMPORTS)


# -- scoring in the sandbox --------------------------------------------------------------------------------------------

HOSTILE = {
    "loop": "def judging_function(query, response):\n    while True:\n        pass\n",
    "raises": "def judging_function(query, response):\n    raise ValueError('x')\n",
    "string": "def judging_function(query, response):\n    return 'ten'\n",
    "none": "def judging_function(query, response):\n    return None\n",
    "ok": "def judging_function(query, response):\n    return float(len(response.split()))\n",
}


def test_score_pairs_sandbox_failures_become_missing_and_cache(sandbox, tmp_path):
    qs, a, b = ["q1", "q2", "q3"], ["one two", "", "x"], ["one", "a b c", "y z"]
    res = score_pairs([{"source": s, "name": k} for k, s in HOSTILE.items()], qs, a, b, sandbox=sandbox)
    S = res.scores
    assert S.shape == (3, 2, 5)
    assert np.isnan(S[:, :, :4]).all()  # loop (timeout), raise, string, None -> missing
    assert S[:, :, 4].tolist() == [[2.0, 1.0], [0.0, 3.0], [1.0, 2.0]]
    kinds = {e["kind"] for e in res.errors}
    assert "timeout" in kinds or "batch_timeout" in kinds
    assert res.error_rates()[4] == 0.0 and res.error_rates()[1] == 1.0
    from lightning_ws.programs.generate import check_program

    bad = "import os\n\ndef judging_function(query, response):\n    return len(os.listdir('.'))\n"
    assert not check_program(bad, JUDGE_ENTRY, n_args=2, allowed_imports=JUDGE_IMPORTS).ok
    opener = "def judging_function(query, response):\n    return len(open('/etc/passwd').read())\n"
    assert not check_program(opener, JUDGE_ENTRY, n_args=2, allowed_imports=JUDGE_IMPORTS).ok
    progs = handwritten_judges()[:3]
    r1 = score_pairs(progs, qs, a, b, sandbox=sandbox, cache_dir=tmp_path)
    r2 = score_pairs(progs, qs, a, b, sandbox=sandbox, cache_dir=tmp_path)
    assert np.array_equal(r1.scores, r2.scores, equal_nan=True) and all(s.get("cached") for s in r2.stats)


# -- normalisation, votes, thresholds, selection -------------------------------------------------------------------------

def _synthetic(n=600, seed=0):
    """Scores (n, 2, 4): an accurate broad program, a weaker broad one, a near-silent perfect one, a constant."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 2, n)
    sign = np.where(y == 1, 1.0, -1.0)
    S = np.zeros((n, 2, 4))
    for j, acc in ((0, 0.8), (1, 0.65)):
        d = np.abs(rng.normal(0.3, 0.1, n)) * np.where(rng.random(n) < acc, sign, -sign)
        base = rng.random(n)
        S[:, 0, j], S[:, 1, j] = base, base + d
    silent = rng.random(n) < 0.01  # votes on 1% of rows, always right
    base = rng.random(n)
    S[:, 0, 2] = base
    S[:, 1, 2] = np.clip(base + np.where(silent, 0.5 * sign, 0.0), 0, 1)
    S[:, :, 3] = 7.0
    return S, y


def test_normalizer_votes_and_swap_symmetry():
    S, _ = _synthetic()
    S[3, 0, 1] = np.nan
    norm = RobustNormalizer().fit(S)
    Z = norm.transform(S)
    assert np.nanmin(Z) >= 0 and np.nanmax(Z) <= 1 and np.isnan(Z[3, 0, 1])
    assert (Z[:, :, 3] == 0.5).all()  # constant program
    d = score_differences(Z)
    L = pairwise_votes(d, 0.0)
    assert L[3, 1] == -1 and (L[:, 3] == -1).all()
    Lsw = pairwise_votes(score_differences(norm.transform(S[:, ::-1, :])), 0.0)
    assert np.array_equal(Lsw, mirror_votes(L))
    back = RobustNormalizer.from_dict(json.loads(json.dumps(norm.to_dict())))
    assert np.allclose(back.transform(S), Z, equal_nan=True)


def test_threshold_tuner_min_coverage_and_near_silent_programs_not_first():
    S, y = _synthetic()
    d = score_differences(RobustNormalizer().fit(S).transform(S))
    fit = ThresholdTuner(min_coverage=0.2).fit(d, y)
    assert fit.feasible[:2].all() and not fit.feasible[2] and not fit.feasible[3]
    assert (fit.coverage[:2] >= 0.2).all()
    L = pairwise_votes(d, fit.thresholds)
    sel = select_programs(L, y, fit)
    assert sel.order[0] == 0 and 2 not in sel.order and 3 in sel.dropped
    # the reference's rules: fixed grid, covered accuracy, ties to the larger t -> the silent program ranks first
    ref = ThresholdTuner(objective="covered_accuracy", min_coverage=0.0, grid="reference", prefer="larger").fit(d, y)
    assert ref.accuracy[2] == 1.0 and ref.coverage[2] < 0.03 and ref.thresholds[2] == pytest.approx(0.14)
    ref_sel = select_programs(pairwise_votes(d, ref.thresholds), y, ref, require_feasible=False, rank_by="accuracy",
                              k_metric="covered")
    assert ref_sel.order[0] == 2
    assert wilson_lower_bound(2, 2) < wilson_lower_bound(400, 500)
    with pytest.raises(Exception, match="objective"):
        ThresholdTuner(objective="nope")


def test_aggregators_are_swap_symmetric_and_all_abstain_rows_count_half():
    rng = np.random.default_rng(1)
    y = rng.integers(0, 2, 400)
    L = np.where(rng.random((400, 5)) < 0.7, np.where(rng.random((400, 5)) < 0.75, y[:, None], 1 - y[:, None]), -1)
    L[:10] = -1
    for method in ("majority_vote", "dawid_skene", "auto"):
        agg = PairwiseAggregator(method).fit(L)
        p = agg.predict_proba(L)
        assert np.allclose(p + agg.predict_proba(mirror_votes(L)), 1.0)
        assert (p[:10] == 0.5).all()
        m = pairwise_metrics(p, y)
        assert m["coverage"] < 1.0 and m["acc_covered"] > 0.8
        assert m["acc_all"] == pytest.approx((m["acc_all_strict"] * 400 + 0.5 * (1 - m["coverage"]) * 400) / 400)


def test_pipeline_beats_reference_rules_on_synthetic_coverage():
    S, y = _synthetic(900)
    val, test = np.arange(300), np.arange(300, 900)
    ours = ProgramJudgePipeline(JudgeConfig(aggregator="majority_vote")).fit(S[val], y[val], pool_scores=S[test])
    ref = ProgramJudgePipeline(REFERENCE_CONFIG).fit(S[val], y[val], pool_scores=S[test])
    mo, mr = ours.evaluate(S[test], y[test]), ref.evaluate(S[test], y[test])
    assert mo["coverage"] > 0.5 and mo["acc_all"] > mr["acc_all"]
    summ = ours.summary()
    assert summ["selected"][0] == "program_0" and json.dumps(summ)


# -- bias, LLM judge -----------------------------------------------------------------------------------------------------

def _small(name="pandalm_test", n=60):
    d = load_preferences(name)
    return d.take(np.arange(n))


def test_bias_evaluator_on_length_judge_and_program_judge(sandbox, tmp_path):
    d = _small(n=80)
    ev = BiasEvaluator()
    row = ev.evaluate(length_judge, d.queries, d.responses_a, d.responses_b, d.y, name="longer")
    assert row["swap_consistency"] == 1.0 and row["length_bias_acc"] == 0.0 and row["flip_verbosity"] > 0.2
    progs = handwritten_judges()
    S = score_pairs(progs, d.queries, d.responses_a, d.responses_b, sandbox=sandbox, cache_dir=tmp_path)
    pipe = ProgramJudgePipeline(JudgeConfig(aggregator="majority_vote", min_coverage=0.1)).fit(
        S.scores[:40], d.y[:40], names=S.names)
    judge = ProgramJudge(progs, pipe, sandbox=sandbox, cache_dir=tmp_path)
    rep = d.take(np.arange(40, 80))
    row = ev.evaluate(judge, rep.queries, rep.responses_a, rep.responses_b, rep.y, name="programs")
    assert row["swap_consistency"] == 1.0 and 0 <= row["flip_formatting"] <= 1 and row["n"] == 40


def _judge_answer(body, i):
    return "A"  # a maximally position-biased judge


def test_llm_judge_on_loopback_server_then_replayed_from_cache(tmp_path):
    d = _small(n=12)
    with FakeOpenAIServer(_judge_answer) as srv:
        client = OpenAIChatClient("fake-judge", base_url=srv.base_url, api_key="x", cache_dir=tmp_path / "c")
        judge = LLMJudge(client)
        row = BiasEvaluator(probes=["verbosity"]).evaluate(judge, d.queries, d.responses_a, d.responses_b, d.y)
        assert row["swap_consistency"] == 0.0 and row["coverage"] == 1.0
        # 12 rows x (A/B, swapped, verbosity probe) = 36 judgments; identical prompts are answered from the response
        # cache unless two were in flight at once, so the server sees every distinct prompt and at most 36 requests
        distinct = {json.dumps(r["body"], sort_keys=True) for r in srv.requests}
        assert len(distinct) >= 30 and len(distinct) <= len(srv.requests) <= 36
        body = srv.requests[0]["body"]
        assert body["temperature"] == 0.0 and "[Response B]" in body["messages"][1]["content"]
    assert client.totals["prompt_tokens"] > 0
    # the server is gone: the same judgments are replayed from the response cache
    again = LLMJudge(OpenAIChatClient("fake-judge", base_url="http://127.0.0.1:9/v1", api_key="x",
                                      cache_dir=tmp_path / "c", max_retries=0))
    p = again(d.queries, d.responses_a, d.responses_b)
    assert (p == 0.0).all()
    assert LLMJudge.parse("B is better") == 1.0 and LLMJudge.parse("Response A") == 0.0
    assert LLMJudge.parse("neither") == 0.5


# -- synthesis on a loopback server ----------------------------------------------------------------------------------

GOOD = [("import re\n\ndef judging_function(query, response):\n    try:\n        return float(len(set(re.findall("
         "r'[a-z]+', response.lower()))))\n    except Exception:\n        return 0.0\n"),
        ("def judging_function(query, response):\n    try:\n        q = set(query.lower().split())\n"
         "        return 10.0 * len(q & set(response.lower().split())) / (len(q) or 1)\n    except Exception:\n"
         "        return 0.0\n")]


def _synth_answer(body, i):
    user = body["messages"][-1]["content"]
    m = re.search(r"variant (\d+) of", user)
    v = int(m.group(1))
    calls = _synth_answer.calls = getattr(_synth_answer, "calls", 0) + 1
    if "Relevance" in user:
        if v == 1:
            return "Here it is:\n```python\n" + GOOD[0] + "```"
        if v == 2:  # first a forbidden import, then a constant, then a good one
            bad = ["import os\ndef judging_function(query, response):\n    return 1.0\n",
                   "def judging_function(query, response):\n    return 5.0\n", GOOD[1]]
            return "```python\n" + bad[min(2, (calls - 2))] + "```"
    # language: an infinite loop (probe timeout), then forbidden imports -> both slots are recorded as missing
    if not getattr(_synth_answer, "looped", False):
        _synth_answer.looped = True
        return "```python\ndef judging_function(query, response):\n    while True:\n        pass\n```"
    return "```python\nimport subprocess\ndef judging_function(query, response):\n    return 1.0\n```"


def test_program_synthesizer_on_loopback_server(tmp_path):
    _synth_answer.calls, _synth_answer.looped = 0, False
    train = _small("hh_rlhf", 40)
    with FakeOpenAIServer(_synth_answer) as srv, ProgramSandbox(workers=1, call_timeout=0.5,
                                                                 batch_timeout=10.0) as sb:
        client = OpenAIChatClient("fake-coder", base_url=srv.base_url, api_key="x")
        store = ProgramStore(tmp_path / "store")
        rep = ProgramSynthesizer(client, store, sandbox=sb, rubrics=["relevance", "language"], n_variants=2,
                                 max_attempts_per_slot=3, examples=train, n_examples=3).generate()
    s = rep.summary()
    assert s["accepted"] == 2 and s["missing"] == ["language_v1", "language_v2"]
    assert s["rejected"]["static_check"] == 6 and s["rejected"]["constant_output"] == 1
    assert s["rejected"]["probe_failures"] == 1 and s["prompt_tokens"] > 0 and s["attempts"] == 10
    progs = [p for p in store if p.entry == JUDGE_ENTRY]
    assert len(progs) == 2
    p2 = next(p for p in progs if p.prompt_id == "relevance_v2")
    assert "variant 2 of 2" in p2.prompt and "Other variants for this rubric already exist" in p2.prompt
    assert "Example 1" in p2.prompt and len(p2.extra["example_ids"]) == 3 and p2.usage["completion_tokens"] > 0
    # generated programs run through the same pipeline as the hand-written ones (the store is a `programs:` value)
    from lightning_ws.pajama.distill import resolve_programs

    assert sorted(p.id for p in resolve_programs(str(tmp_path / "store"))) == sorted(p.id for p in progs)
    d = _small(n=30)
    with ProgramSandbox(workers=1) as sb:
        S = score_pairs(progs, d.queries, d.responses_a, d.responses_b, sandbox=sb).scores
    assert np.isfinite(S).all()


# -- end to end --------------------------------------------------------------------------------------------------------

def test_compare_judges_end_to_end(sandbox, tmp_path):
    d = load_preferences("llmbar").take(np.arange(0, 619, 4))
    res = compare_judges(d, handwritten_judges(), config=JudgeConfig(aggregator="majority_vote"), sandbox=sandbox,
                         cache_dir=tmp_path)
    rows = {(r["subset"], r["method"]): r for r in res["rows"]}
    ours = rows[("all", "programs+majority_vote")]
    assert ours["n"] == res["n_report"] and ours["coverage"] > 0 and ours["swap_consistency"] == 1.0
    assert ("Natural", "prefer longer") in rows
    assert res["score_cpu_seconds"] > 0


def test_cli_pajama_evaluate_and_judges(tmp_path, capsys):
    from lightning_ws.cli import main

    d = load_preferences("pandalm_test")
    path = tmp_path / "mini.jsonl"
    with path.open("w") as fh:
        for i in range(90):
            fh.write(json.dumps({"id": d.ids[i], "query": d.queries[i], "response_a": d.responses_a[i],
                                 "response_b": d.responses_b[i], "preferred": "ab"[d.y[i]]}) + "\n")
    assert main(["pajama", "judges"]) == 0
    assert "relevance_1" in capsys.readouterr().out
    assert main(["pajama", "evaluate", "--data", str(path), "--aggregator", "majority_vote", "--workers", "1",
                 "--score-cache", str(tmp_path / "sc"), "--out", str(tmp_path / "r.json")]) == 0
    out = capsys.readouterr().out
    assert "programs+majority_vote" in out and "prefer longer" in out
    assert json.loads((tmp_path / "r.json").read_text())["n_report"] > 0


def _position_biased(body, i):
    return "B" if "bandwagon" in body["messages"][1]["content"] else "A"


@pytest.mark.slow
def test_cli_pajama_bias_with_llm_judge_and_wandb_table(tmp_path, capsys, monkeypatch):
    from lightning_ws.cli import main

    monkeypatch.setenv("WANDB_MODE", "offline")
    d = load_preferences("llmbar")
    path = tmp_path / "mini.jsonl"
    with path.open("w") as fh:
        for i in range(0, 619, 20):
            fh.write(json.dumps({"id": d.ids[i], "query": d.queries[i], "response_a": d.responses_a[i],
                                 "response_b": d.responses_b[i], "preferred": "ab"[d.y[i]]}) + "\n")
    with FakeOpenAIServer(_position_biased) as srv:
        rc = main(["pajama", "bias", "--data", str(path), "--aggregator", "majority_vote", "--workers", "1",
                   "--min-coverage", "0.1", "--score-cache", str(tmp_path / "sc"), "--llm-client", "openai",
                   "--model", "fake-judge", "--base-url", srv.base_url, "--cache", str(tmp_path / "llm"),
                   "--out", str(tmp_path / "bias.json"), "--wandb"])
        assert rc == 0 and len(srv.requests) > 0
    rows = {r["judge"]: r for r in json.loads((tmp_path / "bias.json").read_text())["rows"]}
    assert rows["llm:fake-judge"]["swap_consistency"] == 0.0 and rows["programs+majority_vote"]["swap_consistency"] == 1
    assert "flip_bandwagon" in capsys.readouterr().out
    assert list((tmp_path / "runs" / "wandb").glob("offline-run-*"))


def test_pipeline_drops_behavioural_duplicates():
    S, y = _synthetic(400)
    S2 = np.concatenate([S, 3.0 * S[:, :, :1] + 1.0], axis=2)  # program 4 = an affine copy of program 0
    pipe = ProgramJudgePipeline(JudgeConfig(aggregator="majority_vote")).fit(S2, y)
    summ = pipe.summary()
    assert "program_4" in summ["dropped"] and "same validation votes" in summ["dropped"]["program_4"]
    assert ProgramJudgePipeline(JudgeConfig(aggregator="majority_vote", dedup=False)).fit(S2, y).summary()[
        "dropped"].get("program_4") is None

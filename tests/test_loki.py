"""Unit tests of the Lightning-free Loki core (lightning_ws.loki; arXiv 2307.12226, spec §12)."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch

from lightning_ws.errors import ConfigError, DataError, DataFileNotFoundError
from lightning_ws.loki import (
    LabelMetric,
    LokiHead,
    active_next_class,
    loki_predict,
    loki_predict_embedding,
    loki_scores,
    reachable_classes,
    read_wordnet_nouns,
    select_classes,
    validate_distance_matrix,
    wordnet_metric,
)


def _random_tree(n: int, rng: np.random.Generator) -> dict[int, int | None]:
    """Random recursive tree: node i > 0 hangs below a uniform earlier node."""
    return {0: None, **{i: int(rng.integers(i)) for i in range(1, n)}}


def _brute(weights: torch.Tensor, sq: torch.Tensor) -> torch.Tensor:
    """Reference: dense scores with numpy's first-index argmin."""
    return torch.from_numpy(np.argmin((weights.double() @ sq.double()).numpy(), axis=1))


# ----------------------------------------------------------------------------------------- prediction rule
def test_path_endpoints_predict_weighted_position():
    """Spec §12.3: on a path of length L with Λ = endpoints and P = (w, 1-w), ŷ is the node nearest (1-w) L."""
    length = 10
    m = LabelMetric.from_parents({0: None, **{i: i - 1 for i in range(1, length + 1)}})
    head = LokiHead.from_metric(m, [0, length], input="probs", dtype=torch.float64)
    w = torch.linspace(0.013, 0.987, 37, dtype=torch.float64)
    pred = head(torch.stack([w, 1 - w], 1))
    expected = torch.round((1 - w) * length).long()
    assert torch.equal(pred, expected)


def test_one_hot_gives_that_class_and_discrete_metric_gives_argmax():
    """Spec §12.1-12.2."""
    gen = torch.Generator().manual_seed(0)
    n = 7
    disc = LabelMetric.from_matrix(list("abcdefg"), 1.0 - torch.eye(n))
    head = LokiHead.from_metric(disc, list("abcdefg"), input="logits", dtype=torch.float64)
    logits = torch.randn(50, n, generator=gen, dtype=torch.float64)
    assert torch.equal(head(logits), logits.argmax(1))
    tree = LabelMetric.from_parents(_random_tree(30, np.random.default_rng(0)))
    obs = [3, 7, 11, 20]
    head = LokiHead.from_metric(tree, obs, input="probs")
    assert head(torch.eye(4)).tolist() == obs


def test_far_unobserved_classes_reduce_to_argmax():
    """If every unobserved class is far from every observed one, Loki equals argmax over the observed classes."""
    k, n_unseen, far = 5, 6, 50.0
    n = k + n_unseen
    d = torch.full((n, n), far, dtype=torch.float64)
    d[:k, :k] = 1.0
    d[k:, k:] = 1.0
    d.fill_diagonal_(0.0)
    ids = [f"c{i}" for i in range(n)]
    m = LabelMetric.from_matrix(ids, d)
    head = LokiHead.from_metric(m, ids[:k], dtype=torch.float64)
    logits = torch.randn(200, k, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    assert torch.equal(head(logits), logits.argmax(1))


def test_row_scaling_invariance():
    """Spec §12.4."""
    gen = torch.Generator().manual_seed(2)
    sq = torch.rand(6, 40, generator=gen, dtype=torch.float64) * 10
    w = torch.rand(30, 6, generator=gen, dtype=torch.float64)
    scale = torch.rand(30, 1, generator=gen, dtype=torch.float64) * 100 + 0.01
    assert torch.equal(loki_predict(w, sq), loki_predict(w * scale, sq))


@pytest.mark.filterwarnings("ignore:Sparse CSR tensor support is in beta")
@pytest.mark.parametrize("chunk", [1, 7, 64, 1000, 2**24])
def test_chunked_and_sparse_equal_dense_bruteforce(chunk):
    """Spec §12.6: chunked (rows and classes) and sparse scoring equal dense scoring, ties to the first index."""
    gen = torch.Generator().manual_seed(3)
    k, n_cls, n = 8, 57, 41
    sq = torch.randint(0, 4, (k, n_cls), generator=gen).double()  # small integers: many exact ties
    w = torch.randint(0, 3, (n, k), generator=gen).double()
    w[w.sum(1) == 0, 0] = 1.0
    ref = _brute(w, sq)
    got, val = loki_predict(w, sq, chunk_elements=chunk, return_scores=True)
    assert torch.equal(got, ref)
    assert torch.allclose(val, (w @ sq).amin(1))
    assert torch.equal(loki_predict(w.to_sparse(), sq, chunk_elements=chunk), ref)
    assert torch.equal(loki_predict(w.to_sparse_csr(), sq, chunk_elements=chunk), ref)
    assert torch.equal(loki_scores(w, sq).argmin(1), ref)


def test_topk_head_equals_dense_when_k_is_all_and_restricts_otherwise():
    gen = torch.Generator().manual_seed(4)
    m = LabelMetric.from_embeddings(list(range(40)), torch.randn(40, 5, generator=gen, dtype=torch.float64))
    obs = list(range(0, 40, 4))
    logits = torch.randn(25, len(obs), generator=gen, dtype=torch.float64)
    dense = LokiHead.from_metric(m, obs, shortcut="never", dtype=torch.float64)
    full = LokiHead.from_metric(m, obs, shortcut="never", dtype=torch.float64, top_k=len(obs))
    assert torch.equal(dense(logits), full(logits))
    top2 = LokiHead.from_metric(m, obs, shortcut="never", dtype=torch.float64, top_k=2)
    w = torch.softmax(logits, 1)
    keep = torch.zeros_like(w).scatter(1, w.topk(2, 1).indices, w.topk(2, 1).values)
    assert torch.equal(top2(logits), _brute(keep, dense.sq_dist))


def test_embedding_shortcut_equals_general_rule():
    """Spec §12.5: nearest class to the weighted mean == argmin of P @ D2 (Euclidean and cosine)."""
    gen = torch.Generator().manual_seed(5)
    emb = torch.randn(300, 16, generator=gen, dtype=torch.float64)
    for kind in ("euclidean", "cosine"):
        m = LabelMetric.from_embeddings([f"id{i}" for i in range(300)], emb, metric=kind)
        obs = [f"id{i}" for i in range(0, 300, 13)]
        w = torch.rand(200, len(obs), generator=gen, dtype=torch.float64) ** 3
        sq = m.distance_rows(obs, squared=True)
        ref = _brute(w, sq)
        pos = m.index(obs)
        fast = loki_predict_embedding(w, m.embeddings[pos], m.embeddings, chunk_elements=777)
        assert torch.equal(fast, ref), kind
        h_fast = LokiHead.from_metric(m, obs, input="probs", dtype=torch.float64)
        assert h_fast.sq_dist is None and h_fast.class_embeddings is not None
        assert torch.equal(h_fast(w), ref)
        assert torch.allclose(h_fast.frechet_variance(w), w @ sq)


def test_bad_weights_raise():
    sq = torch.rand(3, 5)
    with pytest.raises(DataError, match="non-negative"):
        loki_predict(torch.tensor([[0.5, -0.1, 0.6]]), sq)
    with pytest.raises(DataError, match="sums to 0"):
        loki_predict(torch.zeros(1, 3), sq)
    with pytest.raises(DataError, match=r"shape \(batch, 3\)"):
        loki_predict(torch.ones(2, 4), sq)
    with pytest.raises(ConfigError):
        LokiHead(sq, input="softmax")  # type: ignore[arg-type]


# --------------------------------------------------------------------------------------- metric spaces
def test_id_mapping_is_independent_of_class_order():
    """Spec §9 / §12.9: the same metric built in two class orders gives the same predictions as ids."""
    rng = np.random.default_rng(6)
    parents = _random_tree(25, rng)
    names = {i: f"n{i:08d}" for i in parents}
    wn_parents = {names[c]: (None if p is None else names[p]) for c, p in parents.items()}
    order_a = [names[i] for i in range(25)]
    order_b = list(rng.permutation(order_a))
    ma = LabelMetric.from_parents(wn_parents, classes=order_a)
    mb = LabelMetric.from_parents(wn_parents, classes=order_b)
    assert ma.index(order_a).tolist() == list(range(25))
    # bijection onto the class set
    assert sorted(mb.index(order_a).tolist()) == list(range(25))
    obs = [names[i] for i in (2, 9, 17, 23)]
    logits = torch.randn(60, 4, generator=torch.Generator().manual_seed(0))
    ha, hb = LokiHead.from_metric(ma, obs), LokiHead.from_metric(mb, obs)
    ids_a = [ha.class_ids[i] for i in ha(logits).tolist()]
    ids_b = [hb.class_ids[i] for i in hb(logits).tolist()]
    assert ids_a == ids_b
    # a deliberately position-based (permuted) lookup is detected: it gives different answers
    hp = LokiHead(mb.distance_rows(positions=torch.tensor([2, 9, 17, 23]), squared=True), class_ids=mb.class_ids)
    assert [hp.class_ids[i] for i in hp(logits).tolist()] != ids_a
    with pytest.raises(DataError, match="unknown class id"):
        ma.index(["n99999999"])


def test_graph_distances_match_networkx_and_helpers():
    nx = pytest.importorskip("networkx")
    rng = np.random.default_rng(7)
    parents = _random_tree(40, rng)
    g = nx.Graph([(c, p) for c, p in parents.items() if p is not None])
    m = LabelMetric.from_parents(parents)
    m_nx = LabelMetric.from_networkx(g, classes=list(range(40)))
    full = m.distance_rows()
    ref = torch.tensor([[nx.shortest_path_length(g, i, j) for j in range(40)] for i in range(40)], dtype=torch.float64)
    assert torch.equal(full, ref)
    assert torch.equal(m_nx.distance_rows(), ref)
    assert m.is_class_tree
    validate_distance_matrix(full)  # shortest paths are a metric
    a, b = torch.randint(0, 40, (100,)), torch.randint(0, 40, (100,))
    assert torch.equal(m.pair_distances(a, b, squared=True), ref[a, b] ** 2)
    src = torch.tensor([3, 30])
    assert torch.equal(m.min_distance_to(src), ref[src].amin(0))
    e = LabelMetric.from_embeddings(list(range(40)), torch.randn(40, 3, dtype=torch.float64))
    assert torch.allclose(e.min_distance_to(src), e.distance_rows()[src].amin(0))
    # leaf-only classes: internal nodes are not classes, so not a "class tree"
    leaves = sorted(set(parents) - {p for p in parents.values() if p is not None})
    ml = LabelMetric.from_parents(parents, classes=leaves)
    assert not ml.is_class_tree and torch.equal(ml.distance_rows(), ref[leaves][:, leaves])


def test_matrix_round_trip_json(tmp_path):
    from lightning_ws.io import load_json, save_json

    m = LabelMetric.from_embeddings(["a", "b", "c"], torch.tensor([[0.0, 0], [3, 4], [6, 8]]))
    save_json(tmp_path / "m.json", m.to_json_dict())
    back = LabelMetric.from_json_dict(load_json(tmp_path / "m.json"))
    assert back.class_ids == ("a", "b", "c") and torch.equal(back.distance_rows(), m.distance_rows())
    mm = LabelMetric.from_matrix([1, 2, 3], m.distance_rows())
    assert torch.equal(LabelMetric.from_json_dict(mm.to_json_dict()).distance_rows(), m.distance_rows())


@pytest.mark.parametrize(
    ("mutate", "match"),
    [
        (lambda d: d.__setitem__((0, 1), d[0, 1] + 0.5), "not symmetric"),
        (lambda d: d.__setitem__((2, 2), 0.3), "non-zero diagonal"),
        (lambda d: (d.__setitem__((0, 1), -1.0), d.__setitem__((1, 0), -1.0)), "negative"),
        (lambda d: (d.__setitem__((0, 3), 100.0), d.__setitem__((3, 0), 100.0)), "triangle inequality"),
        (lambda d: d.__setitem__((1, 2), float("inf")), "non-finite"),
    ],
)
def test_non_metric_matrices_are_rejected(mutate, match):
    pts = torch.tensor([[0.0, 0.0], [1.0, 0.0], [1.0, 1.0], [0.0, 1.0], [2.0, 2.0]], dtype=torch.float64)
    d = torch.cdist(pts, pts)
    LabelMetric.from_matrix(list("abcde"), d)  # valid
    mutate(d)
    with pytest.raises(DataError, match=match):
        LabelMetric.from_matrix(list("abcde"), d)


def test_triangle_check_can_be_skipped_and_is_chunked():
    d = torch.tensor([[0.0, 1, 5], [1, 0, 1], [5, 1, 0]])
    with pytest.raises(DataError, match="triangle"):
        validate_distance_matrix(d, chunk_elements=1)
    m = LabelMetric.from_matrix([0, 1, 2], d, check_triangle=False)
    assert m.distance_rows([0]).tolist() == [[0.0, 1.0, 5.0]]
    with pytest.raises(DataError, match="3 x 3 but 2 class ids"):
        LabelMetric.from_matrix([0, 1], d, check_triangle=False)
    with pytest.raises(DataError, match="twice"):
        LabelMetric.from_matrix([0, 1, 1], d, check_triangle=False)


def test_graph_validation_errors():
    with pytest.raises(DataError, match="disconnected"):
        LabelMetric.from_parents({"a": None, "b": "a", "c": None, "d": "c"})
    # a disconnected part without classes is fine
    m = LabelMetric.from_parents({"a": None, "b": "a", "c": None}, classes=["a", "b"])
    assert m.num_classes == 2
    with pytest.raises(DataError, match="cycle"):
        LabelMetric.from_parents({"a": "c", "b": "a", "c": "b", "r": None, "x": ["r", "a"]})
    with pytest.raises(DataError, match="own parent"):
        LabelMetric.from_parents({"a": "a"})
    with pytest.raises(DataError, match="not nodes of the graph"):
        LabelMetric.from_parents({"a": None, "b": "a"}, classes=["a", "zebra"])
    with pytest.raises(DataError, match="zero vector"):
        LabelMetric.from_embeddings([0, 1], torch.tensor([[0.0, 0.0], [1.0, 0.0]]), metric="cosine")
    with pytest.raises(ConfigError):
        LabelMetric.from_embeddings([0, 1], torch.eye(2), metric="manhattan")  # type: ignore[arg-type]


def test_dag_distances_use_shortest_undirected_path():
    # diamond with a shortcut: x has parents a and b; d(a, b) = 2 through x or the root
    m = LabelMetric.from_parents({"r": None, "a": "r", "b": "a", "c": "b", "x": ["a", "c"]})
    assert m.distance_rows(["a"]).tolist() == [[1.0, 0.0, 1.0, 2.0, 1.0]]
    assert not m.is_class_tree


def test_wordnet_parser_on_synthetic_file(tmp_path):
    lines = [
        "  1 licence header line",
        "00001740 03 n 01 entity 0 001 ~ 00002137 n 0000 | that which exists",
        "00002137 03 n 02 abstraction 0 abstract_entity 0 002 @ 00001740 n 0000 ~ 00002500 n 0000 | gloss",
        "00002500 03 n 01 idea 0 001 @ 00002137 n 0000 | gloss",
        "00003000 03 n 01 Plato 0 001 @i 00002500 n 0000 | an instance",
    ]
    f = tmp_path / "data.noun"
    f.write_text("\n".join(lines) + "\n")
    parents, lemmas = read_wordnet_nouns(f)
    assert parents == {"n00001740": [], "n00002137": ["n00001740"], "n00002500": ["n00002137"],
                       "n00003000": ["n00002500"]}
    assert lemmas["n00002137"] == "abstraction"
    m = wordnet_metric(["n00003000", "n00001740"], path=f)
    assert m.distance_rows(["n00003000"]).tolist() == [[0.0, 3.0]]
    with pytest.raises(DataError, match="disconnected"):
        wordnet_metric(path=f, include_instances=False)
    with pytest.raises(DataFileNotFoundError, match="wordnet-base"):
        read_wordnet_nouns(tmp_path / "missing.noun")


def test_class_name_embeddings_are_semantic():
    m = LabelMetric.from_class_names(["cat", "dog", "truck"], ["cat", "dog", "truck"], template="a photo of a {}.")
    d = m.distance_rows(["cat"])[0]
    assert d[1] < d[2]


# ---------------------------------------------------------------------------------- locus and selection
def test_tree_locus_equals_union_of_pairwise_paths_and_lp():
    """Spec §12.8, and the exact LP agrees with the tree formula."""
    nx = pytest.importorskip("networkx")
    rng = np.random.default_rng(8)
    for trial in range(3):
        parents = _random_tree(18, rng)
        g = nx.Graph([(c, p) for c, p in parents.items() if p is not None])
        m = LabelMetric.from_parents(parents)
        obs = [int(x) for x in rng.choice(18, size=3 + trial, replace=False)]
        union = set()
        for a, b in itertools.combinations(obs, 2):
            union |= set(nx.shortest_path(g, a, b))
        union |= set(obs)
        tree = reachable_classes(m, obs, method="tree")
        assert set(torch.nonzero(tree).reshape(-1).tolist()) == union
        assert torch.equal(reachable_classes(m, obs, method="lp", num_samples=0), tree)


def test_discrete_metric_locus_is_observed_set_only():
    m = LabelMetric.from_matrix(list(range(6)), 1.0 - torch.eye(6))
    assert reachable_classes(m, [0, 2, 5]).tolist() == [True, False, True, False, False, True]
    assert active_next_class(m, [0, 2, 5], strategy="greedy") == 1
    with pytest.raises(ConfigError, match="tree"):
        reachable_classes(m, [0], method="tree")


def test_active_selection_beats_random_on_trees():
    """Spec §13.3 setting: farthest-first grows the locus faster than random selection."""
    rng = np.random.default_rng(9)
    act, rnd = np.zeros(9), np.zeros(9)
    for rep in range(10):
        m = LabelMetric.from_parents(_random_tree(50, rng))
        init = [int(x) for x in rng.choice(50, 2, replace=False)]
        a = select_classes(m, init, 8, strategy="farthest")
        r = select_classes(m, init, 8, strategy="random", seed=rep)
        assert a.reachable_counts[0] == r.reachable_counts[0]
        assert all(x <= y for x, y in itertools.pairwise(a.reachable_counts))
        act += a.reachable_counts
        rnd += r.reachable_counts
    assert (act[1:] > rnd[1:]).all(), (act / 10, rnd / 10)
    # on a class tree farthest-first is the exact greedy maximiser: same counts as trying every candidate
    m = LabelMetric.from_parents(_random_tree(20, rng))
    far = select_classes(m, [0], 4, strategy="farthest")
    greedy = select_classes(m, [0], 4, strategy="greedy")
    assert far.reachable_counts == greedy.reachable_counts
    assert greedy.observed == [0, *greedy.selected]


def test_reachable_classes_sample_is_a_lower_bound_of_lp():
    gen = torch.Generator().manual_seed(10)
    m = LabelMetric.from_embeddings(list(range(30)), torch.randn(30, 2, generator=gen, dtype=torch.float64))
    obs = [0, 5, 9, 17]
    lp = reachable_classes(m, obs, method="lp")
    sample = reachable_classes(m, obs, method="sample", num_samples=2000)
    assert (sample <= lp).all() and lp[m.index(obs)].all()
    # every class the rule actually predicts for random weights is in the LP locus
    w = torch.rand(3000, 4, generator=gen, dtype=torch.float64)
    pred = loki_predict(w, m.distance_rows(obs, squared=True))
    assert lp[pred].all()

"""The one shared sentence encoder behind R&B regrouping, Loki class-name metrics and Weaver's MiniLM verifiers."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from lightning_ws.errors import DataFileNotFoundError
from lightning_ws.sentence_embeddings import encode_sentences, load_sentence_encoder, mean_pool

TEXTS = ["Check out my channel for free gift cards!", "This song brings back memories.", "Call now to win a prize",
         "What a great video", "subscribe plz"]


@pytest.fixture(scope="module")
def encoder():
    return load_sentence_encoder()


def test_mean_pool_ignores_padding():
    hidden = torch.tensor([[[1.0, 2.0], [3.0, 4.0], [100.0, 100.0]]])
    mask = torch.tensor([[1, 1, 0]])
    assert torch.equal(mean_pool(hidden, mask), torch.tensor([[2.0, 3.0]]))
    assert torch.equal(mean_pool(hidden, torch.zeros(1, 3, dtype=torch.long)), torch.zeros(1, 2))  # no division by 0


def test_encode_unit_norm_batch_invariant_and_empty(encoder):
    tok, model = encoder
    full = encode_sentences(tok, model, TEXTS, batch_size=5)
    one = encode_sentences(tok, model, TEXTS, batch_size=1)
    assert full.shape == (5, model.config.hidden_size) and full.dtype == torch.float32
    assert torch.allclose(full.norm(dim=1), torch.ones(5), atol=1e-5)
    assert torch.allclose(full, one, atol=1e-5)
    assert encode_sentences(tok, model, []).shape == (0, model.config.hidden_size)
    raw = encode_sentences(tok, model, TEXTS[:2], normalize=False)
    assert not torch.allclose(raw.norm(dim=1), torch.ones(2), atol=1e-3)
    sims = full @ full.T  # the two spam-like texts are closer to each other than to a music comment
    assert sims[0, 2] > sims[0, 1]


def test_every_method_uses_the_same_vectors(encoder):
    from lightning_ws.loki.text import embed_texts
    from lightning_ws.rnb import MiniLMEmbedder
    from lightning_ws.weaver.verifiers import encode_texts

    tok, model = encoder
    ref = encode_sentences(tok, model, TEXTS, max_length=64).numpy()
    np.testing.assert_allclose(MiniLMEmbedder(max_length=64)(TEXTS), ref, atol=1e-6)
    np.testing.assert_allclose(embed_texts(TEXTS, max_length=64).numpy(), ref, atol=1e-6)
    np.testing.assert_allclose(encode_texts(TEXTS, max_length=64), ref, atol=1e-6)


def test_weaver_embedding_verifiers_match_their_definitions():
    from lightning_ws.weaver.verifiers import (consensus_from_embeddings, embedding_consensus, embedding_similarity,
                                               encode_questions_and_solutions, similarity_from_embeddings)

    questions = ["How many apples are left if I eat 2 of 5?", "What is 3 times 4?"]
    solutions = [["5 - 2 = 3 apples", "There are 3 apples left", "I like apples"],
                 ["3 * 4 = 12", "The answer is 12", "Paris is in France"]]
    q, s = encode_questions_and_solutions(questions, solutions)
    assert q.shape[0] == 2 and s.shape[:2] == (2, 3)
    sim = embedding_similarity(questions, solutions)
    np.testing.assert_allclose(sim, similarity_from_embeddings(q, s), atol=1e-6)
    np.testing.assert_allclose(sim, np.einsum("pnd,pd->pn", s, q), atol=1e-12)
    cons = embedding_consensus(solutions)
    np.testing.assert_allclose(cons, consensus_from_embeddings(s), atol=1e-6)
    assert cons[1, 2] < cons[1, 0] and cons[1, 2] < cons[1, 1]  # the off-topic candidate agrees least
    e = np.zeros((1, 3, 2))
    e[0, :, 0] = 1.0
    e[0, 2] = [0.0, 1.0]
    np.testing.assert_allclose(consensus_from_embeddings(e), [[np.sqrt(0.5), np.sqrt(0.5), 0.0]], atol=1e-12)
    assert np.isnan(consensus_from_embeddings(e[:, :1])).all()


def test_missing_model_folder_is_a_clear_error(tmp_path):
    from lightning_ws.rnb import MiniLMEmbedder

    with pytest.raises(DataFileNotFoundError, match="nothing is downloaded"):
        load_sentence_encoder(tmp_path / "nope")
    with pytest.raises(DataFileNotFoundError, match="embedding model folder not found"):
        MiniLMEmbedder(tmp_path / "nope")

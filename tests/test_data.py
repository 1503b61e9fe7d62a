"""Corpus splits, chunking and the regime semantics of each generation's training set."""

from __future__ import annotations

import numpy as np
import pytest

from collapse.engines.corpus import load_documents, split_documents
from collapse.engines.data import REAL, RealData, build_training_set, draw_rows, synthetic_source, tokenize_to_chunks
from collapse.engines.tokenizer import train_bpe


def test_embedded_corpus_is_real_austen():
    docs = load_documents("austen")
    assert len(docs) == 269
    assert sum(len(d.text.split()) for d in docs) > 700_000
    assert any("Elizabeth" in d.text for d in docs)


def test_splits_are_disjoint_deterministic_and_exhaustive():
    docs = load_documents("austen")
    a = split_documents(docs, 0.1, 0.05)
    b = split_documents(list(reversed(docs)), 0.1, 0.05)
    ids = {k: {d.id for d in v} for k, v in a.items()}
    assert ids == {k: {d.id for d in v} for k, v in b.items()}  # independent of input order
    assert not (ids["train"] & ids["eval"]) and not (ids["train"] & ids["prompt"]) and not (ids["eval"] & ids["prompt"])
    assert sum(len(v) for v in ids.values()) == len(docs)
    assert len(ids["eval"]) == round(0.1 * len(docs))


def test_text_folder_and_jsonl_sources(tmp_path):
    for i in range(4):
        (tmp_path / f"d{i}.txt").write_text(f"document {i} " * 20)
    assert [d.id for d in load_documents(str(tmp_path))] == [f"d{i}.txt" for i in range(4)]
    jsonl = tmp_path / "x.jsonl"
    jsonl.write_text("\n".join(f'{{"body": "text {i} here"}}' for i in range(5)))
    from collapse.core.config import ConfigError

    with pytest.raises(ConfigError, match="data.text_field"):
        load_documents(str(jsonl))
    assert len(load_documents(str(jsonl), text_field="body")) == 5


def test_datasets_dir_source(tmp_path):
    import datasets

    datasets.Dataset.from_dict({"text": [f"row {i} of real text" for i in range(6)]}).save_to_disk(str(tmp_path / "ds"))
    assert len(load_documents(str(tmp_path / "ds"))) == 6


def test_tokenizer_round_trips_and_chunks(small_corpus):
    docs = load_documents(str(small_corpus))
    tok = train_bpe([d.text for d in docs], 300)
    text = "“Mr. Darcy,” said she — naïve café!"
    assert tok.decode(tok(text)["input_ids"]) == text  # byte-level: lossless
    chunks = tokenize_to_chunks(tok, docs[:3], 32)
    assert chunks.shape[1] == 32 and chunks.dtype == np.int32
    assert (chunks == tok.eos_token_id).sum() >= 2  # documents separated by EOS
    assert train_bpe([d.text for d in docs], 300).get_vocab() == tok.get_vocab()  # cache hit is identical


def _real(n_train=100, seq_len=8) -> RealData:
    train = np.arange(n_train * seq_len, dtype=np.int32).reshape(n_train, seq_len)
    return RealData(train, train[:4], train[:4], np.ones(1000, dtype=np.int64))


def _synthetic(gen: int) -> np.ndarray:
    return np.full((50, 8), -(gen + 1), dtype=np.int32)  # negative ids mark "synthetic from gen"


def _build(k, regime, c, n=20, seed=(0, 0)):
    return build_training_set(k, regime, c, _real(), _synthetic, n, seed, ("sub",))


@pytest.mark.parametrize("c,expect_syn", [(0.0, 0), (0.5, 10), (0.9, 18), (1.0, 20)])
def test_replace_mixes_c_times_n_synthetic(c, expect_syn):
    ts = _build(3, "replace", c)
    assert len(ts.rows) == 20
    assert ts.counts.get(synthetic_source(2), 0) == expect_syn
    assert ts.counts.get(REAL, 0) == 20 - expect_syn
    assert ts.synthetic_fraction == pytest.approx(expect_syn / 20)
    assert ((ts.rows < 0).all(axis=1).sum()) == expect_syn  # only the previous generation's rows


def test_generation0_is_all_real():
    ts = _build(0, "replace", 1.0)
    assert ts.counts == {REAL: 20}


def test_accumulate_keeps_everything():
    ts = _build(3, "accumulate", 1.0)
    assert len(ts.rows) == 4 * 20
    assert ts.counts == {REAL: 20, synthetic_source(0): 20, synthetic_source(1): 20, synthetic_source(2): 20}
    # D_0 is the same real block generation 0 trained on
    gen0 = _build(0, "replace", 1.0)
    assert np.array_equal(ts.rows[:20], gen0.rows)


def test_accumulate_subsample_draws_n_from_the_pool():
    ts = _build(3, "accumulate-subsample", 1.0)
    assert len(ts.rows) == 20
    assert set(ts.counts) <= {REAL, *(synthetic_source(j) for j in range(3))}
    assert len(ts.counts) >= 3  # drawn from several generations
    again = _build(3, "accumulate-subsample", 1.0)
    assert np.array_equal(ts.rows, again.rows)  # deterministic


def test_real_draws_are_nested_across_contamination():
    low = _build(2, "replace", 0.2)
    high = _build(2, "replace", 0.6)
    real_low = {tuple(r) for r, s in zip(low.rows, low.sources) if s == REAL}
    real_high = {tuple(r) for r, s in zip(high.rows, high.sources) if s == REAL}
    assert real_high < real_low  # common random numbers: the smaller real set is inside the larger


def test_real_draws_differ_by_seed_and_generation():
    a, b, c = _build(1, "replace", 0.0), _build(2, "replace", 0.0), _build(1, "replace", 0.0, seed=(0, 1))
    assert not np.array_equal(a.rows, b.rows) and not np.array_equal(a.rows, c.rows)


def test_draw_rows_without_replacement_within_a_pass():
    idx = draw_rows(10, 25, np.random.default_rng(0))
    assert len(idx) == 25 and sorted(idx[:10]) == list(range(10)) and sorted(idx[10:20]) == list(range(10))


def _pool(n: int) -> RealData:
    rows = np.arange(n, dtype=np.int32)[:, None].repeat(4, 1)  # row i holds token i: identity is visible
    return RealData(rows, rows[:0], rows[:0], np.zeros(n, np.int64))


def test_fresh_real_never_reuses_a_real_row_and_fails_clearly_when_the_reserve_runs_out():
    real = _pool(100)
    syn = lambda j: np.full((50, 4), 1000 + j, np.int32)  # noqa: E731
    seen = []
    for k in range(4):
        t = build_training_set(k, "replace", 0.5, real, syn, 20, (0, 0), (0, "l"), fresh_real=True)
        seen += [int(r[0]) for r, s in zip(t.rows, t.sources) if s == REAL]
    assert len(seen) == 20 + 3 * 10 and len(set(seen)) == len(seen)
    with pytest.raises(ValueError, match="data.fresh_real"):
        build_training_set(12, "replace", 0.5, real, syn, 20, (0, 0), (0, "l"), fresh_real=True)


def test_separate_real_and_synthetic_counts():
    real = _pool(100)
    syn = lambda j: np.full((50, 4), 1000 + j, np.int32)  # noqa: E731
    t = build_training_set(1, "replace", 0.5, real, syn, 20, (0, 0), (0, "l"), real_rows=3)
    assert t.counts == {REAL: 3, synthetic_source(0): 10}
    acc = build_training_set(2, "accumulate", 1.0, real, syn, 20, (0, 0), (0, "l"), real_rows=5)
    assert acc.counts == {REAL: 20 + 5 + 5, synthetic_source(0): 20, synthetic_source(1): 20}


def test_shumailov_blocks_keep_only_the_continuation():
    from collapse.core.config import SampleConfig
    from collapse.engines.sampling import make_prompts

    pool = np.arange(40, dtype=np.int32).reshape(5, 8)
    prompts, ids, new = make_prompts(3, "prompted", 8, 8, 0, pool, ("p",), keep_prompt=False)
    assert prompts.shape == (3, 8) and new == 8  # a whole real block, continued by seq_len new tokens
    _, _, new_keep = make_prompts(3, "prompted", 8, 3, 0, pool, ("p",), keep_prompt=True)
    assert new_keep == 5
    assert SampleConfig().keep_prompt


def _wikitext_lines(prefix: str, articles: int) -> list[str]:
    """Line rows as wikitext has them: a ` = Title = ` heading, blank lines, sub-headings, text."""
    rows = []
    for a in range(articles):
        rows += [f" = {prefix} article {a} = \n", "", f" {prefix} {a} opens with a line of its own .\n"]
        rows += [f" = = {prefix} section = = \n", f" {prefix} {a} body text , different per article {a} .\n"]
    return rows


def _wikitext_dir(tmp_path):
    import datasets

    dd = datasets.DatasetDict(
        {
            name: datasets.Dataset.from_dict({"text": _wikitext_lines(name, n)})
            for name, n in (("train", 6), ("validation", 3), ("test", 2))
        }
    )
    path = tmp_path / "wikitext-like"
    dd.save_to_disk(str(path))
    return path


def test_published_splits_are_respected_and_lines_joined_into_articles(tmp_path):
    from collapse.core.config import Config
    from collapse.engines.corpus import load_pools

    source = str(_wikitext_dir(tmp_path))
    cfg = Config().replace({"data.source": source, "data.join_lines": "wikitext", "data.prompt_fraction": 0.0})
    pools = load_pools(cfg.data)
    assert [len(pools[p]) for p in ("train", "eval", "prompt")] == [6, 3, 0]  # one document per article
    assert all(d.text.startswith(" = ") and " = = " in d.text for d in pools["train"])  # sections stay inside
    train_text = "".join(d.text for d in pools["train"])
    assert not any(line in train_text for d in pools["eval"] for line in d.text.splitlines() if line.strip())
    assert all("validation" in d.text for d in pools["eval"])  # the published held-out split, nothing else

    mapped = cfg.data.__class__(
        **{**cfg.data.__dict__, "splits": {"train": "train", "eval": "test", "prompt": "validation"}}
    )
    pools = load_pools(mapped)
    assert [len(pools[p]) for p in ("train", "eval", "prompt")] == [6, 2, 3]

    # without joining, each line is a document: held-out lines would be cut from their articles
    lines = load_pools(Config().replace({"data.source": source}).data)
    assert len(lines["eval"]) > 3


def test_a_split_mapping_that_names_a_missing_split_is_one_line(tmp_path):
    from collapse.core.config import Config, ConfigError
    from collapse.engines.corpus import load_pools

    source = str(_wikitext_dir(tmp_path))
    with pytest.raises(
        ConfigError, match=r"data.splits: eval -> `dev`, but .* has the splits \['test', 'train', 'validation'\]"
    ):
        load_pools(Config().replace({"data.source": source, "data.splits": {"train": "train", "eval": "dev"}}).data)
    with pytest.raises(ConfigError, match="data.splits"):
        Config().replace({"data.splits": {"train": "train"}})


def _chat_tokenizer(tmp_path):
    """A base model's tokenizer whose EOS is a chat-template token, as SmolLM2-Instruct's is."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer, tok.decoder = pre_tokenizers.ByteLevel(add_prefix_space=False), decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=300,
        special_tokens=["<|endoftext|>", "<|im_end|>", "<s>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    tok.train_from_iterator(["Emma Woodhouse, handsome, clever, and rich."] * 20, trainer=trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|im_end|>")
    fast.save_pretrained(str(tmp_path / "base"))
    return tmp_path / "base"


def test_a_chat_eos_is_warned_and_data_separator_replaces_it(tmp_path, small_corpus):
    from collapse.core.config import Config, ConfigError
    from collapse.core.rundir import RunDir
    from collapse.engines.tokenizer import eos_token_id, load_tokenizer, set_separator
    from collapse.pipeline.prepare import prepare

    base = _chat_tokenizer(tmp_path)
    warning = set_separator(load_tokenizer(base), None)
    assert (
        warning.startswith("the tokenizer's EOS `<|im_end|>` is a chat-template token") and "data.separator" in warning
    )
    with pytest.raises(ConfigError, match=r"data.separator `<\|nope\|>` is not a token of the tokenizer"):
        set_separator(load_tokenizer(base), "<|nope|>")

    cfg = Config().replace(
        {"data.source": str(small_corpus), "model.init": "base", "model.base_path": str(base), "data.seq_len": 32}
    )
    run = RunDir(tmp_path / "run")
    prepare(run, cfg.replace({"data.separator": "<|endoftext|>"}))
    tok = load_tokenizer(run.tokenizer_dir)
    assert tok.eos_token == "<|endoftext|>" and eos_token_id(run.tokenizer_dir) == tok.convert_tokens_to_ids(
        "<|endoftext|>"
    )
    pool = np.load(run.data_dir / "train.npy")
    assert (pool == tok.eos_token_id).any() and not (pool == tok.convert_tokens_to_ids("<|im_end|>")).any()


def test_data_start_token_begins_every_document_and_every_unconditional_sample(tmp_path, small_corpus):
    from collapse.core.config import Config, ConfigError, ModelConfig, SampleConfig
    from collapse.core.rundir import RunDir
    from collapse.engines.hf_sampler import HFSampler
    from collapse.engines.model import build_model
    from collapse.engines.sampling import sample_rows
    from collapse.engines.tokenizer import load_tokenizer, start_token_id
    from collapse.pipeline.context import StudyContext
    from collapse.pipeline.prepare import prepare

    base = _chat_tokenizer(tmp_path)
    assert start_token_id(load_tokenizer(base), None) == (None, None)
    assert "chat-template token" in start_token_id(load_tokenizer(base), "<|im_end|>")[1]
    with pytest.raises(ConfigError, match=r"data.start_token `<bos>` is not a token of the tokenizer"):
        start_token_id(load_tokenizer(base), "<bos>")

    cfg = Config().replace(
        {
            "data.source": str(small_corpus),
            "model.init": "base",
            "model.base_path": str(base),
            "data.seq_len": 32,
            "data.separator": "<|endoftext|>",
            "data.start_token": "<s>",
        }
    )
    run = RunDir(tmp_path / "run")
    run.root.mkdir()
    run.save_config(cfg)
    prepare(run, cfg)
    ctx = StudyContext(run.root, cfg)
    start, sep = ctx.start_id, ctx.tokenizer.eos_token_id
    assert start == ctx.tokenizer.convert_tokens_to_ids("<s>") != sep
    stream = np.load(run.data_dir / "train.npy").reshape(-1)
    after_sep = stream[1:][stream[:-1] == sep]
    assert stream[0] == start and len(after_sep) > 3 and (after_sep == start).all()  # [<s> doc </s>] [<s> doc ...

    class Recording(HFSampler):  # the real sampler, remembering what it was asked to continue
        def generate(self, model, prompts, params, seed_parts, pad_id):
            self.prompts = prompts
            return super().generate(model, prompts, params, seed_parts, pad_id)

    sampler, model = Recording(4), build_model(ModelConfig(d_model=16, n_layers=1, n_heads=2, d_ff=32), 300, 32, sep, 0)
    rows, *_ = sample_rows(model, sampler, 3, SampleConfig(), 32, sep, ctx.real.prompt, ("s",), None, ctx.start_id)
    assert (sampler.prompts[:, 0] == start).all() and rows.shape == (3, 32)  # the start token is dropped

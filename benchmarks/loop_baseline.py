"""The baseline of `benchmarks.vs_loop`: the plain recursive-training loop a researcher writes
(the shape of the published collapse codebases), run as its own process so its imports count.

    python -m benchmarks.loop_baseline DATA_DIR TOKENIZER_DIR --contamination 0 1 --generations 2

Per generation: HF `Trainer` trains a fresh model (same architecture, batch, learning rate,
schedule and token budget as configs/debug.yaml) on real rows plus a fraction c of the previous
generation's samples (replace regime), `model.generate` samples the next corpus, and perplexity is
measured on held-out real rows. Generation 0 (c plays no part) is trained once and shared, as
collapse does. The tokenizer and the tokenized pools come from a collapse run dir for free. Prints
one JSON line: {"seconds": ..., "ppl": {lineage: [ppl per generation]}}.
"""

from __future__ import annotations

import argparse
import json
import math
import tempfile
import time

T0 = time.time()

import numpy as np  # noqa: E402
import torch  # noqa: E402
from datasets import Dataset  # noqa: E402
from transformers import LlamaConfig, LlamaForCausalLM, Trainer, TrainingArguments  # noqa: E402

SEQ_LEN, ROWS, EVAL_ROWS = 64, 1024, 256  # configs/debug.yaml: 65,536 tokens per generation


def new_model(vocab: int, eos: int, seed: int) -> LlamaForCausalLM:
    torch.manual_seed(seed)
    cfg = LlamaConfig(
        vocab_size=vocab, hidden_size=64, intermediate_size=192, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=4, max_position_embeddings=128, bos_token_id=eos, eos_token_id=eos, pad_token_id=eos,
        tie_word_embeddings=True,
    )  # fmt: skip
    return LlamaForCausalLM(cfg)


def train(rows: np.ndarray, vocab: int, eos: int, seed: int) -> LlamaForCausalLM:
    model = new_model(vocab, eos, seed)
    args = TrainingArguments(
        output_dir=tempfile.mkdtemp(), per_device_train_batch_size=4, learning_rate=2e-3, warmup_steps=20,
        lr_scheduler_type="cosine", num_train_epochs=1, weight_decay=0.1, adam_beta2=0.95, max_grad_norm=1.0,
        report_to=[], save_strategy="no", logging_strategy="no", disable_tqdm=True, use_cpu=True, seed=seed,
    )  # fmt: skip
    data = Dataset.from_dict({"input_ids": rows.tolist(), "labels": rows.tolist()})
    Trainer(model=model, args=args, train_dataset=data).train()
    return model


@torch.no_grad()
def sample(model: LlamaForCausalLM, n: int, eos: int, seed: int) -> np.ndarray:
    torch.manual_seed(seed)
    model.generation_config.eos_token_id = None  # EOS is a document boundary, not the end of a row
    out = []
    for i in range(0, n, 256):
        start = torch.full((min(256, n - i), 1), eos, dtype=torch.long)
        out.append(model.generate(start, do_sample=True, max_new_tokens=SEQ_LEN, pad_token_id=eos)[:, 1:])
    return torch.cat(out).numpy()


@torch.no_grad()
def perplexity(model: LlamaForCausalLM, rows: np.ndarray) -> float:
    ids = torch.from_numpy(rows.astype(np.int64))
    losses = [model(input_ids=b, labels=b).loss.item() for b in ids.split(32)]
    return math.exp(float(np.mean(losses)))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("data_dir")
    ap.add_argument("tokenizer_dir")
    ap.add_argument("--contamination", type=float, nargs="+", required=True)
    ap.add_argument("--generations", type=int, required=True)
    args = ap.parse_args()
    tok = json.load(open(f"{args.tokenizer_dir}/tokenizer.json"))
    vocab, eos = len(tok["model"]["vocab"]), 0
    real = np.load(f"{args.data_dir}/train.npy")
    held_out = np.load(f"{args.data_dir}/eval.npy")[:EVAL_ROWS]
    rng = np.random.default_rng(0)
    gen0 = train(real[rng.choice(len(real), ROWS, replace=False)], vocab, eos, 0)
    gen0_ppl = perplexity(gen0, held_out)
    gen0_samples = sample(gen0, ROWS, eos, 0)
    ppl = {}
    for c in args.contamination:
        model, samples, curve = gen0, gen0_samples, [gen0_ppl]
        for k in range(1, args.generations + 1):
            n_syn = round(c * ROWS)
            rows = np.concatenate([real[rng.choice(len(real), ROWS - n_syn, replace=False)], samples[:n_syn]])
            model = train(rows, vocab, eos, k)
            curve.append(perplexity(model, held_out))
            if c > 0 and k < args.generations:
                samples = sample(model, ROWS, eos, k)
        ppl[f"c{c:g}"] = curve
    print(json.dumps({"seconds": time.time() - T0, "ppl": ppl}))


if __name__ == "__main__":
    main()

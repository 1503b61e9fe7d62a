"""`collapse plan CONFIG --gpus N`: what a study will cost before it runs.

A unit's work is counted in model FLOPs (the standard 6·P per trained token, 2·P per sampled or
scored token, P the parameter count) and turned into device-seconds with an assumed sustained
throughput: `peak x MFU` for training and scoring, a much lower efficiency for autoregressive
sampling (memory-bound at small batch). Then lineages are list-scheduled on the GPUs the way the
driver schedules them (generation-0 units first, then lineages longest-first, each lineage's
generations in order on its own slot), which gives the makespan. These are estimates: the point is
sizing (is this 10 or 10,000 GPU-hours?), and the assumptions are printed with the numbers.
"""

from __future__ import annotations

import heapq
import json
from dataclasses import dataclass, field
from pathlib import Path

from ..core.plan import LineageSpec, expand, gen0_groups, rows_per_generation

H100_BF16_TFLOPS = 989.0  # dense peak


@dataclass
class Assumptions:
    peak_tflops: float = H100_BF16_TFLOPS
    train_mfu: float = 0.35
    sample_efficiency: float = 0.05  # decode is memory-bound: a few % of peak at realistic batch sizes


@dataclass
class UnitCost:
    lineage: str
    generation: int
    train_flops: float
    sample_flops: float
    eval_flops: float
    gpus: float  # GPUs the lineage holds: workers x resources.gpu, a fraction when lineages share a GPU

    def seconds(self, a: Assumptions) -> float:
        """At the assumed efficiency of the GPUs it holds: a lineage packed at 1/n of a GPU gets 1/n of
        its throughput (compute-bound; a small model that leaves a GPU idle does better than this), and
        DeepSpeed over N GPUs gets N GPUs' worth. So GPU-hours do not depend on the layout."""
        peak = a.peak_tflops * 1e12 * self.gpus
        return (self.train_flops + self.eval_flops) / (peak * a.train_mfu) + self.sample_flops / (
            peak * a.sample_efficiency
        )


@dataclass
class StudyPlan:
    units: list[UnitCost] = field(default_factory=list)
    makespan_s: float = 0.0
    gpus: int = 0
    params: dict[str, int] = field(default_factory=dict)

    def gpu_hours(self, a: Assumptions) -> float:
        return sum(u.seconds(a) * u.gpus for u in self.units) / 3600


def parameter_count(cfg) -> int:
    """Analytic parameter count of the configured model (or a base model's config.json): GQA's
    smaller key/value projections, tied or separate output embeddings, norms and biases."""
    m = cfg.model
    if m.family != "lm":
        return 0
    if m.init == "base" and m.base_path and (Path(m.base_path) / "config.json").is_file():
        return hf_parameter_count(json.loads((Path(m.base_path) / "config.json").read_text()), cfg.data.vocab_size)
    if m.arch == "llama":  # as engines.model.build_model makes it: full attention heads, tied embeddings
        hf = {"model_type": "llama", "hidden_size": m.d_model, "num_hidden_layers": m.n_layers}
        hf |= {"intermediate_size": m.d_ff, "num_attention_heads": m.n_heads, "tie_word_embeddings": True}
    else:
        hf = {"model_type": "gpt2", "n_embd": m.d_model, "n_layer": m.n_layers, "n_inner": m.d_ff}
        hf |= {"n_head": m.n_heads, "n_positions": max(cfg.data.seq_len, 128), "tie_word_embeddings": True}
    return hf_parameter_count(hf, cfg.data.vocab_size)


def hf_parameter_count(hf: dict, vocab_size: int) -> int:
    """Parameters of a Hugging Face decoder from its config.json: GPT-2 style (fused qkv with
    biases, learned positions, LayerNorms) or Llama style (Llama, Mistral, Qwen, SmolLM: gated MLP,
    RMSNorm, rotary positions, `num_key_value_heads` < heads under GQA)."""
    if hf.get("model_type") == "gpt2" or "n_embd" in hf:
        d, layers = hf["n_embd"], hf["n_layer"]
        d_ff = hf.get("n_inner") or 4 * d
        vocab = hf.get("vocab_size", vocab_size)
        block = 4 * d * d + 4 * d + 2 * d * d_ff + d_ff + d + 4 * d  # attention + biases, MLP + biases, 2 LayerNorms
        head = 0 if hf.get("tie_word_embeddings", True) else vocab * d
        return int(layers * block + vocab * d + hf.get("n_positions", 1024) * d + 2 * d + head)
    d, layers = hf["hidden_size"], hf["num_hidden_layers"]
    heads = hf.get("num_attention_heads", 1)
    head_dim = hf.get("head_dim") or d // heads
    kv = hf.get("num_key_value_heads") or heads
    vocab = hf.get("vocab_size", vocab_size)
    attention = 2 * d * heads * head_dim + 2 * d * kv * head_dim  # q, o; k, v (GQA: kv < heads)
    if hf.get("attention_bias"):
        attention += heads * head_dim + 2 * kv * head_dim + d
    mlp = 3 * d * hf.get("intermediate_size", 4 * d)  # gate, up, down
    head = 0 if hf.get("tie_word_embeddings", False) else vocab * d  # Llama's default: a separate lm_head
    return int(layers * (attention + mlp + 2 * d) + vocab * d + d + head)


def gpus_per_lineage(cfg) -> float:
    """GPUs one lineage holds (a CPU config is planned as if on one GPU each)."""
    per_process = cfg.resources.gpu if cfg.resources.gpu > 0 else 1
    return per_process * (cfg.train.workers if cfg.train.engine == "deepspeed" else 1)


def unit_cost(spec: LineageSpec, k: int, corpus_rows: int, P: int) -> UnitCost:
    cfg = spec.config
    n, L = rows_per_generation(cfg), cfg.data.seq_len
    train_rows = (k + 1) * n if spec.regime == "accumulate" else n
    train = 6 * P * train_rows * L * cfg.train.epochs
    new = L - cfg.sample.prompt_tokens if cfg.sample.mode == "prompted" and cfg.sample.keep_prompt else L
    beams = cfg.sample.num_beams if cfg.sample.decoding == "beam" else 1
    sampled = (corpus_rows if k < cfg.study.generations else 0) + cfg.eval.num_samples
    sample = 2 * P * sampled * new * beams
    evaluated = (cfg.data.eval_sequences or 1000) + cfg.eval.num_samples  # real eval + generation-0 scoring of samples
    return UnitCost(spec.name, k, train, sample, 2 * P * evaluated * L, gpus_per_lineage(cfg))


def build_plan(cfg, gpus: int, a: Assumptions) -> StudyPlan:
    specs = expand(cfg)
    plan = StudyPlan(gpus=gpus)
    chains: list[tuple[float, list[UnitCost]]] = []
    for key, sharers in gen0_groups(specs).items():
        P = parameter_count(sharers[0].config)
        plan.params[key] = P
        unit = unit_cost(sharers[0], 0, max(s.corpus_rows for s in sharers), P)
        plan.units.append(unit)
        chains.append((0.0, [unit]))  # generation 0 first, as the driver does
    lineage_chains = []
    for s in specs:
        P = parameter_count(s.config)
        units = [unit_cost(s, k, s.corpus_rows, P) for k in range(1, cfg.study.generations + 1)]
        plan.units += units
        lineage_chains.append(units)
    lineage_chains.sort(key=lambda us: -sum(u.seconds(a) for u in us))  # longest first
    # List scheduling on GPU slots: a chain occupies `gpus per lineage` GPUs until it finishes.
    per = gpus_per_lineage(cfg)
    slots = max(1, int(gpus / per + 1e-9))  # 1/n of a GPU each: n lineages per GPU
    free = [0.0] * slots
    heapq.heapify(free)
    gen0_done = 0.0
    for _, (unit,) in chains:
        start = heapq.heappop(free)
        end = start + unit.seconds(a)
        gen0_done = max(gen0_done, end)
        heapq.heappush(free, end)
    for units in lineage_chains:
        start = max(heapq.heappop(free), gen0_done)  # (conservative: every lineage waits for all generation 0s)
        heapq.heappush(free, start + sum(u.seconds(a) for u in units))
    plan.makespan_s = max(free)
    return plan


def _placement_line(cfg, gpus: int) -> str:
    per = gpus_per_lineage(cfg)
    if per < 1:
        n = round(1 / per)
        return (
            f"placement: {n} lineages per GPU (resources.gpu: {per:g}), {n * gpus} at once on {gpus} GPUs; "
            "each gets its share of a GPU's throughput"
        )
    return f"placement: {per:g} GPU(s) per lineage, {int(gpus / per)} lineages at once on {gpus} GPUs"


def render(cfg, plan: StudyPlan, a: Assumptions) -> str:
    specs = expand(cfg)
    lines = [
        f"study {cfg.study.name}: {len(specs)} lineages x generations 0..{cfg.study.generations}, "
        f"{len(plan.units)} units ({len(plan.params)} shared generation 0)",
        "model parameters: " + ", ".join(f"{p / 1e6:.1f}M" for p in sorted(set(plan.params.values()))),
        f"assumed: {a.peak_tflops:g} TFLOP/s peak per GPU, training MFU {a.train_mfu:.0%}, sampling "
        f"{a.sample_efficiency:.0%} of peak",
        _placement_line(cfg, plan.gpus),
        "",
        f"{'regime':<22}{'c':>6}{'lineages':>10}{'train PFLOP':>14}{'sample PFLOP':>14}{'GPU-hours':>12}",
    ]
    by: dict = {}
    names = {s.name: s for s in specs}
    for u in plan.units:
        s = names.get(u.lineage)
        key = (s.regime, s.contamination) if s and u.generation > 0 else ("generation 0", None)
        e = by.setdefault(key, {"lineages": set(), "train": 0.0, "sample": 0.0, "hours": 0.0})
        e["lineages"].add(u.lineage)
        e["train"] += u.train_flops
        e["sample"] += u.sample_flops
        e["hours"] += u.seconds(a) * u.gpus / 3600
    for (regime, c), e in sorted(by.items(), key=lambda kv: (kv[0][1] is not None, kv[0][0], kv[0][1] or 0.0)):
        c_txt = "" if c is None else f"{c:g}"
        pflops = f"{e['train'] / 1e15:>14.3g}{e['sample'] / 1e15:>14.3g}"
        lines.append(f"{regime:<22}{c_txt:>6}{len(e['lineages']):>10}{pflops}{e['hours']:>12.3g}")
    total = plan.gpu_hours(a)
    util = total * 3600 / (plan.makespan_s * plan.gpus) if plan.makespan_s else 0.0
    lines += [
        "",
        f"total: {total:.3g} GPU-hours; on {plan.gpus} GPUs about {plan.makespan_s / 3600:.3g} h wall "
        f"({util:.0%} of the GPUs busy: lineages are sequential chains)",
    ]
    return "\n".join(lines)

"""Render every measured number and generated table in README.md and docs/, so none is typed.

    python scripts/render_docs.py          # rewrite every block in README.md and docs/*.md
    python scripts/render_docs.py --check  # exit 1 if a block differs from what the files give

A block is the text between `<!-- measured:NAME -->` and `<!-- /measured:NAME -->` (numbers from
benchmarks/results/*.json) or `<!-- generated:NAME -->` and `<!-- /generated:NAME -->` (the
configuration reference, from the config dataclasses). RENDERERS says what fills each; every one
must appear somewhere. tests/test_measured_docs.py runs --check.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # this checkout's code, whatever an editable install points at
RESULTS = ROOT / "benchmarks" / "results"
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]
BLOCK = re.compile(r"(<!-- (measured|generated):([\w-]+) -->\n)(?:.*?\n)?([ \t]*<!-- /\2:\3 -->)", re.S)


def _results(name: str) -> dict:
    return json.loads((RESULTS / f"{name}.json").read_text())["results"]


def precision_table() -> str:
    r = _results("precision_smollm2-135m")
    s, sc = r["sampling"], r["scoring"]
    names = {
        "hf_generate": "HF `generate`, fp32 (`hf`)",
        "fast_fp32": "fast sampler, fp32 (`fast`)",
        "fast_bf16": "fast sampler, bf16 weights (`fast`, default on this CPU)",
        "vllm_fp32": "vLLM, fp32 (`vllm`, default)",
        "vllm_bf16": "vLLM, bf16 (`vllm`, `sample.precision: bf16`)",
    }
    lines = [
        "| sampling, 32 rows x 128 new tokens | tokens/s | x `generate` | rerun rows equal | engine start |",
        "|---|---|---|---|---|",
    ]
    for key, label in names.items():
        if key not in s:
            continue
        row = s[key]
        start = f"{row['start_s']:.1f} s" if "start_s" in row else "—"
        lines.append(
            f"| {label} | {row['tokens_per_s']:.0f} | {row['x_generate']:.2f}x | "
            f"{row['rerun_rows_equal']}/{row['rows']} | {start} |"
        )
    t8, t2 = r["training_micro8"], r["training_micro2"]
    lines += [
        "",
        "| scoring and training | fp32 | bf16 | bf16 / fp32 |",
        "|---|---|---|---|",
        f"| held-out scoring (`score_tokens`, 48 x 128 Austen tokens), tokens/s | {sc['fp32']['tokens_per_s']:.0f} | "
        f"{sc['bf16']['tokens_per_s']:.0f} | {sc['x_fp32']:.2f}x |",
        f"| training step (8 x 128, micro-batch 8, AdamW), tokens/s | {t8['fp32']['tokens_per_s']:.0f} | "
        f"{t8['bf16']['tokens_per_s']:.0f} | {t8['x_fp32']:.2f}x |",
        f"| training step (8 x 128, micro-batch 2, AdamW), tokens/s | {t2['fp32']['tokens_per_s']:.0f} | "
        f"{t2['bf16']['tokens_per_s']:.0f} | {t2['x_fp32']:.2f}x |",
        "",
        f"bf16 scoring against fp32 on the same model and text: perplexity {sc['fp32']['ppl']:.3f} vs "
        f"{sc['bf16']['ppl']:.3f} (relative change {sc['relative_ppl_change']:.1e}), mean |Δ NLL| per token "
        f"{sc['mean_abs_token_nll_change']:.3f} nats, top-10 membership agreeing on "
        f"{sc['top_k_agreement']:.1%} of tokens.",
    ]
    return "\n".join(lines)


def precision_pick_line() -> str:
    """The README's one-paragraph answer to "which backend and precision", from the same file."""
    data = _results_file("precision_smollm2-135m")
    r, units = data["results"], "with" if data["results"]["bf16_units"] else "without"
    s, sc, t8 = r["sampling"], r["scoring"], r["training_micro8"]
    return (
        f"SmolLM2-135M on {data['machine']['cpus']} CPU cores {units} bf16 matrix units, 32 rows x 128 new tokens: "
        f"HF `generate` {s['hf_generate']['tokens_per_s']:.0f} tokens/s; the fast sampler in bf16 "
        f"{s['fast_bf16']['tokens_per_s']:.0f} ({s['fast_bf16']['x_generate']:.2f}x); vLLM in fp32 "
        f"{s['vllm_fp32']['tokens_per_s']:.0f} ({s['vllm_fp32']['x_generate']:.2f}x) and in bf16 "
        f"{s['vllm_bf16']['tokens_per_s']:.0f} ({s['vllm_bf16']['x_generate']:.2f}x). bf16 scores held-out text "
        f"{sc['x_fp32']:.2f}x faster than fp32 (perplexity changes by a relative {sc['relative_ppl_change']:.0e}) "
        f"and trains {t8['x_fp32']:.2f}x faster."
    )


def eval_share_table() -> str:
    auto, fp32 = _results("study_smollm2_small"), _results("study_smollm2_small_fp32")
    lines = [
        "| precision | study wall s | train s | sample s | eval s | eval share of stage time | last generation's "
        "eval share |",
        "|---|---|---|---|---|---|---|",
    ]
    for label, r in (("all fp32", fp32), ("`auto` (bf16 on this CPU)", auto)):
        split = r["split"]
        last = next(v for k, v in r["per_unit"].items() if k.endswith("gen_001"))
        lines.append(
            f"| {label} | {r['wall_s']:.0f} | {split['train']['seconds']:.1f} | {split['sample']['seconds']:.1f} | "
            f"{split['eval']['seconds']:.1f} | {r['eval_share_of_compute']:.1%} | {last['eval_share']:.1%} |"
        )
    return "\n".join(lines)


def vllm_repro_table() -> str:
    r = _results("vllm_repro_smollm2-135m")
    lines = [
        "| vLLM mode | rerun in one process | reversed batch order | first half alone | another process |",
        "|---|---|---|---|---|",
    ]
    labels = {"fp32": "fp32 (`auto`)", "bf16": "bf16", "bf16_batch_invariant": "bf16, `VLLM_BATCH_INVARIANT=1`"}
    for key, label in labels.items():
        row = r.get(key)
        if row is None:
            continue
        if "error" in row:
            lines.append(f"| {label} | did not run: {row['error']} | | | |")
            continue
        n, half = row["rows"], row["prefix_rows"]
        lines.append(
            f"| {label} | {row['rerun_rows_equal']}/{n} | {row['reversed_order_rows_equal']}/{n} | "
            f"{row['prefix_rows_equal']}/{half} | {row['another_process_rows_equal']}/{n} |"
        )
    return "\n".join(lines)


def crossover_line() -> str:
    r = _results("precision_crossover")
    sizes = ", ".join(f"{d} {v['bf16_x_fp32']:.2f}x" for d, v in r["by_hidden_size"].items())
    return (
        f"A training step of a 4-layer Llama (8 x 128 tokens, AdamW), bf16 autocast against fp32 by hidden size: "
        f"{sizes} (`python -m benchmarks.precision_crossover`, `benchmarks/results/precision_crossover.json`); "
        f"`auto` takes bf16 on a CPU from hidden size {r['threshold']}."
    )


def precision_study_block() -> str:
    r = _results("precision_study_smollm2")
    agree, det = r["collapse_directions_agree"], r["paired_detections"]
    found = {key: by for key, by in det["fp32"].items()}
    detected = ", ".join(
        f"`{key}` at generation {g}" for key, by in sorted(found.items()) for g in by.values() if g is not None
    )
    changes = ", ".join(f"`{k}` {v['max_relative_change']:.1e}" for k, v in r["metric_changes"].items())
    return (
        f"| | fp32 | `auto` ({r['precision_auto_resolved']['train']} here) |\n|---|---|---|\n"
        f"| study wall time, {r['units']} rows | {r['wall_s']['fp32']:.0f} s | {r['wall_s']['auto']:.0f} s |\n"
        f"| paired detections against the c = 0 control | {detected or 'none'} | "
        f"{'the same' if r['paired_detections_equal'] else 'different: see the results file'} |\n\n"
        f"Direction of each metric's change from generation 0 to the last, per lineage: held-out metrics agree "
        f"in {agree['held_out']['agree']} of {agree['held_out']['of']} (lineage, metric) pairs, sample metrics in "
        f"{agree['sampled']['agree']} of {agree['sampled']['of']}. Largest relative change of a unit's value: "
        f"{changes}."
    )


def scoring_line() -> str:
    r = _results("scoring")
    return (
        f"{r['score_tokens']['x_bare_forward']:.3g}x the bare forward's tokens/s with every per-token statistic "
        f"(NLL, top-k, top-1 probability, entropy), {r['nll_only']['x_bare_forward']:.3g}x for the NLL alone "
        f"(generation-0 scoring); bare forward {r['bare_forward']['tokens_per_s']:.0f} tokens/s."
    )


def scale_table() -> str:
    """benchmarks.scale: scale.json (10^3, 10^4, both executors) and scale_100k.json (10^5)."""
    runs = [*_results("scale")["runs"], *_results("scale_100k")["runs"]]
    label = {"processes": "worker processes", "ray": "Ray (`--ray`)"}
    lines = [
        "| executor | units | wall | fixed | per unit | framework per unit | driver peak RSS | `status` | `report` "
        "| `report` peak RSS |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in sorted(runs, key=lambda r: (r["executor"] != "processes", r["units"])):
        rss = f"{r['report_peak_rss_mb']} MB" if "report_peak_rss_mb" in r else "—"
        lines.append(
            f"| {label[r['executor']]} | {r['units']:,} | {r['wall_s']:.1f} s | {r['fixed_s']:.1f} s | "
            f"{r['marginal_per_unit_ms']:.2f} ms | {r['framework_per_unit_ms']:.2f} ms | "
            f"{r['driver_peak_rss_mb']} MB | {r['status_s']:.2f} s | {r['report_s']:.2f} s | {rss} |"
        )
    for executor in ("processes", "ray"):
        costs = [r["marginal_per_unit_ms"] for r in runs if r["executor"] == executor]
        sizes = sorted(r["units"] for r in runs if r["executor"] == executor)
        if len(costs) > 1:
            lines.append(
                f"\nPer-unit cost across sizes, {label[executor]}: max/min {max(costs) / min(costs):.2f} "
                f"({sizes[0]:,} to {sizes[-1]:,} units)."
            )
    return "\n".join(lines)


def scale_io_line() -> str:
    io = _results("scale_100k")["io_per_unit"]
    return (
        f"Averaged over a whole small study, data preparation, metrics columns and the report included: "
        f"{io['files_per_unit']:.1f} files, {io['fsyncs_per_unit']:.1f} fsyncs and {io['renames_per_unit']:.1f} "
        f"renames per unit."
    )


def _debug() -> dict:
    return _results("study_debug")


def _change(first: float, last: float) -> str:
    return f"{first:.0f} → {last:.0f} ({(last - first) / first:+.0%})"


def debug_study_table() -> str:
    """Mean held-out perplexity, generation 0 -> G, per regime and c: the debug study's result."""
    lineages = _debug()["curves"].values()
    regimes = list(dict.fromkeys(lin["regime"] for lin in lineages))
    cs = sorted({lin["contamination"] for lin in lineages})
    lines = ["| regime | " + " | ".join(f"c = {c:g}" for c in cs) + " |", "|---" * (len(cs) + 1) + "|"]
    for regime in regimes:
        cells = []
        for c in cs:
            ppl = [
                lin["metrics"]["ppl_real"] for lin in lineages if lin["regime"] == regime and lin["contamination"] == c
            ]
            first = sum(p[0] for p in ppl) / len(ppl)
            last = sum(p[-1] for p in ppl) / len(ppl)
            cells.append(_change(first, last))
        lines.append(f"| {regime} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _lineage(regime: str, c: float) -> dict:
    return next(
        lin["metrics"] for lin in _debug()["curves"].values() if lin["regime"] == regime and lin["contamination"] == c
    )


def debug_study_run() -> str:
    r = _debug()
    split = {k: v["seconds"] for k, v in r["split"].items()}
    eval_split = r["eval_split"]
    return (
        f"Measured at commit `{r['git_commit'][:7]}` on {_cpu(_results_file('study_debug'))}: "
        f"{r['wall_s']:.0f} s wall time on {r['slots']} slots, "
        f"{r['units']} generation units. Of the {r['slot_seconds']:.0f} slot-seconds, training took "
        f"{split['train']:.0f}, evaluation {split['eval']:.0f} "
        f"({eval_split['eval_sample_metrics']['share_of_eval']:.0%} "
        f"of it the sample metrics, mostly MiniLM embeddings of the samples; held-out scoring "
        f"{eval_split['eval_real']['seconds']:.0f} s in all), sampling {split['sample']:.0f}, and start-up, "
        f"orchestration and idle slots {split['orchestration_and_idle']:.0f}."
    )


def _results_file(name: str) -> dict:
    return json.loads((RESULTS / f"{name}.json").read_text())


def _cpu(data: dict) -> str:
    machine = data["machine"]
    if "cpu_capability" not in machine:
        return f"{machine['cpus']} cores, CPU not recorded"
    return f"{machine['cpus']} cores of an {machine['cpu']} ({machine['cpu_capability']} kernels)"


def cross_cpu_line() -> str:
    """The debug study's fp32 result on this machine against another machine's: the same commit
    family, the same seeds, other GEMM kernels."""
    here, there = _results_file("study_debug"), _results_file("study_debug_other_cpu")
    a, b = here["results"]["curves"], there["results"]["curves"]
    gen0 = max(
        abs(a[name]["metrics"][key][0] - b[name]["metrics"][key][0]) / abs(b[name]["metrics"][key][0])
        for name in a
        for key in ("ppl_real", "loss_tail")
    )
    name = next(n for n, lin in a.items() if lin["regime"] == "replace" and lin["contamination"] == 1.0)
    last = len(a[name]["metrics"]["ppl_real"]) - 1
    return (
        f"The debug study (fp32 throughout) at commit `{here['results']['git_commit'][:7]}` on "
        f"{_cpu(here)}, against commit `{there['results']['git_commit'][:7]}` on {_cpu(there)} "
        f"(`benchmarks/results/study_debug_other_cpu.json`; run on the first CPU, "
        f"`{there['results']['git_commit'][:7]}` gives the first file's curves exactly): "
        f"generation 0 agrees to a relative {gen0:.0e} in `ppl_real` and `loss_tail`, but at replace, c = 1, "
        f"generation {last} gives `ppl_real` {a[name]['metrics']['ppl_real'][-1]:.1f} against "
        f"{b[name]['metrics']['ppl_real'][-1]:.1f}."
    )


def debug_study_tails() -> str:
    full, half = _lineage("replace", 1.0), _lineage("replace", 0.5)
    real_free = _lineage("accumulate", 0.0)
    return (
        f"At replace, c = 1, generation 0 → {len(full['ppl_real']) - 1}: p99 per-sequence perplexity "
        f"{_change(full['ppl_real_p99'][0], full['ppl_real_p99'][-1])}; loss on the rarest tokens "
        f"{full['loss_tail'][0]:.2f} → {full['loss_tail'][-1]:.2f} nats; distinct-2 {full['distinct_2'][0]:.3f} → "
        f"{full['distinct_2'][-1]:.3f} (c = 0.5: {half['distinct_2'][-1]:.3f}); Vendi score "
        f"{full['vendi_score'][0]:.1f} → {full['vendi_score'][-1]:.1f}; mean pairwise embedding distance "
        f"{full['embed_diversity'][0]:.2f} → {full['embed_diversity'][-1]:.2f}; k-NN recall against real text "
        f"{full['knn_recall'][0]:.2f} → {full['knn_recall'][-1]:.2f}. The fresh-data control (accumulate, c = 0): "
        f"distinct-2 {real_free['distinct_2'][0]:.3f} → {real_free['distinct_2'][-1]:.3f}."
    )


def _config(name: str) -> dict:
    return json.loads((RESULTS / f"{name}.json").read_text())["config"]


def training_engines_table() -> str:
    r, c = _results("training_engines"), _config("training_engines")
    names = {
        "bare_pytorch_loop": "bare PyTorch loop (forward, backward, AdamW)",
        "torch_engine": "`train.engine: torch` (accelerate, schedule, clipping, bookkeeping)",
        "deepspeed_zero2_1_worker": "`train.engine: deepspeed`, 1 worker",
        "deepspeed_zero2_2_worker": "`train.engine: deepspeed`, 2 workers (Ray, gloo; MFU of 2 cores)",
    }
    lines = ["| path | tokens/s | × bare loop | MFU |", "|---|---|---|---|"]
    for key, label in names.items():
        row = r[key]
        lines.append(f"| {label} | {row['tokens_per_s']:.0f} | {row['speed_vs_bare']:.2f} | {row['mfu']:.1%} |")
    lines += [
        "",
        f"A {c['params'] / 1e6:.1f}M-parameter Llama, global batch {c['batch']} × {c['seq_len']} tokens, "
        f"micro-batch {c['micro']}, ZeRO-2, {c['steps']} steps; {c['flops_per_token'] / 1e6:.1f} MFLOP per "
        f"training token against a one-core fp32 GEMM peak of {c['matmul_peak_flops_per_core'] / 1e9:.1f} GFLOP/s "
        "measured in the same run.",
    ]
    return "\n".join(lines)


def _sampling(name: str, labels: dict[str, str]) -> str:
    r, c = _results(name), _config(name)
    lines = ["| path | tokens/s | × `generate` |", "|---|---|---|"]
    for key, label in labels.items():
        if key in r:
            lines.append(f"| {label} | {r[key]['tokens_per_s']:.0f} | {r[key]['x_generate']:.2f} |")
    share = r["decode_step_matmul_share"]
    lines += [
        "",
        f"{c['params'] / 1e6:.1f}M parameters, batch {c['batch']} × {c['new']} new tokens, {c['threads']} "
        f"thread(s). Matrix multiplies are {share:.0%} of a profiled decode step, so removing every other cost "
        f"would reach at most {1 / share:.2f}× the fast sampler's rate "
        f"({r['fast_sampler']['tokens_per_s'] / share:.0f} tokens/s).",
    ]
    return "\n".join(lines)


SAMPLING_LABELS = {
    "hf_generate": "transformers `generate`",
    "plain_kv_cache_loop": "plain PyTorch KV-cache loop (model forward + DynamicCache)",
    "fast_sampler": "`sample.backend: fast`",
    "fast_sampler_compiled": "`sample.backend: fast`, `sample.compile: true`",
}


def sampling_table() -> str:
    return _sampling("sampling", SAMPLING_LABELS)


def sampling_smollm2_table() -> str:
    return _sampling("sampling_smollm2-135m", SAMPLING_LABELS)


def study_split_table() -> str:
    r = _debug()
    lines = ["| stage | slot-seconds | share |", "|---|---|---|"]
    labels = {"orchestration_and_idle": "orchestration and idle (start-up, loading, W&B, files, slots idle at the end)"}
    for key, v in r["split"].items():
        lines.append(f"| {labels.get(key, key)} | {v['seconds']:.1f} | {v['share']:.1%} |")
    lines.append("")
    lines.append(
        f"Wall {r['wall_s']:.0f} s × {r['slots']} slots = {r['slot_seconds']:.0f} slot-seconds; evaluation is "
        f"{r['eval_share_of_compute']:.1%} of train + sample + eval."
    )
    return "\n".join(lines)


def vs_loop_table() -> str:
    r = _results("vs_loop")
    lines = ["| study | collapse | loop | loop / collapse |", "|---|---|---|---|"]
    for key, label in (
        ("5_units", "2 lineages × generations 0..2 (5 units)"),
        ("16_units", "5 lineages × generations 0..3 (16 units)"),
    ):
        row = r[key]
        lines.append(
            f"| {label} | {row['collapse_s']:.1f} s | {row['loop_s']:.1f} s | **{row['loop_over_collapse']:.2f}×** |"
        )
    step = r["per_step"]
    lines.append(
        "| 256 training steps, same model and batch: torch engine vs HF `Trainer` | "
        f"{step['collapse_engine_s']:.2f} s | {step['hf_trainer_s']:.2f} s | {step['trainer_over_engine']:.2f}× |"
    )
    tl = r["5_units"]["timeline"]
    outside = r["5_units"]["collapse_s"] - (tl["last_unit_end"] - tl["first_unit_start"])
    lines += [
        "",
        f"The 5-unit study spends {outside:.1f} s outside its units: the driver is ready at "
        f"{tl['driver_ready']:.2f} s, the data prepared at {tl['prepared']:.1f} s, the first unit starts at "
        f"{tl['first_unit_start']:.1f} s (the "
        f"forkserver's imports), the report takes {tl['report'] - tl['rows']:.1f} s and the exit "
        f"{tl['exit'] - tl['end']:.2f} s.",
    ]
    return "\n".join(lines)


def orchestration_line() -> str:
    r, lm = _results("orchestration"), _results("orchestration_lm")
    c = _config("orchestration")
    split = lm["stages"]["split"]
    return (
        f"{r['units']} units ({c['lineages']} lineages × {c['generations']} generations plus the shared generations 0) "
        f"in {r['wall_s']:.1f} s on {r['slots']} lineage slots: **{r['s_per_generation_per_slot']:.2f} s per "
        f"generation per slot**, {r['x_in_memory']:.0f}× the {r['in_memory_baseline_s']:.2f} s the same arithmetic "
        f"takes in memory. Peak RSS: driver {r['driver_peak_rss_mb']:.0f} MB, scheduler actor "
        f"{r['scheduler_actor_peak_rss_mb']:.0f} MB, lineage actor {r['lineage_actor_peak_rss_mb']:.0f} MB. With a "
        f"tiny real language model (`--lm`) the same {lm['units']} units take {lm['wall_s']:.1f} s; of the "
        f"{lm['stages']['slot_seconds']:.0f} slot-seconds, training takes {split['train']['share']:.0%}, sampling "
        f"{split['sample']['share']:.0%}, evaluation {split['eval']['share']:.0%}, and orchestration and idle slots "
        f"{split['orchestration_and_idle']['share']:.0%}. Peak RSS: driver {lm['driver_peak_rss_mb']:.0f} MB, lineage "
        f"actor {lm['lineage_actor_peak_rss_mb']:.0f} MB."
    )


def _counts(counts: dict[str, int]) -> str:
    return ", ".join(f"{name} {n}" for name, n in counts.items())


def _fault_summary(name: str) -> str:
    r = _results(name)
    stages = r.get("stages") or {}
    if not stages:
        for outcome in r["outcomes"]:
            stage = outcome["point"]["stage"]
            stages[stage] = stages.get(stage, 0) + 1
    return (
        f"**{r['tried']} points in {r['seconds'] / 60:.0f} min: {r['exact']} recovered exactly, {r['refused']} "
        f"refused clearly, {r['failed']} failed.** By kind: {_counts(r['kinds'])}. By stage: "
        f"{_counts(dict(sorted(stages.items())))}."
    )


def faults_line() -> str:
    return _fault_summary("faults")


def ray_faults_line() -> str:
    return _fault_summary("ray_faults")


def scoring_memory_line() -> str:
    s, c = _results("metrics_cost")["scoring"], _config("metrics_cost")
    return (
        f"Measured (`python -m benchmarks.metrics_cost`, {c['vocab']:,}-token vocabulary, {c['seq_len']}-token "
        f"rows): {s['streamed']['peak_mb']:.0f} MB peak streamed, against {s['full']['peak_mb']:.0f} MB for the "
        f"whole forward, in {s['streamed']['seconds']:.1f} s against {s['full']['seconds']:.1f} s."
    )


def knn_memory_line() -> str:
    k = _results("metrics_cost")["knn"]
    return f"`knn_recall` at n = {k['n']:,} samples: {k['peak_mb']:.0f} MB peak, {k['seconds']:.2f} s."


def _slashed(values, fmt: str = ".3f") -> str:
    return " / ".join(format(v, fmt) for v in values)


def theory_table() -> str:
    r, c = _results("theory_families"), _config("theory_families")
    ga, gc = r["gaussian"], c["gaussian"]
    lr, lc = r["linear_regression"], c["linear_regression"]
    gm, mc = r["gmm"], c["gmm"]
    at = lambda cfg: " / ".join(str(k) for k in cfg["at"])  # noqa: E731
    percent = lambda values: " / ".join(f"{v:.0%}" for v in values)  # noqa: E731
    within = "all within 2 s.e." if ga["within_2se"] else "not all within 2 s.e."
    return "\n".join(
        [
            "| family | what is fitted each generation | closed form | measured (`benchmarks.theory_families`) |",
            "|---|---|---|---|",
            f"| `gaussian` | N(μ, σ²) by maximum likelihood to M = {gc['samples']} samples | replace, c = 1: "
            f"E[σ²_k]/σ² = ((M−1)/M)^(k+1) | {_slashed(ga['measured'])} at k = {at(gc)} vs {_slashed(ga['expected'])} "
            f"({gc['seeds']} seeds, {within}); median σ² at k = {gc['generations']}: "
            f"{ga['median_last_replace']:.3f} (replace) vs {ga['median_last_accumulate']:.2f} (accumulate) |",
            f"| `linear_regression` | OLS, d = {lc['features']} features, T = {lc['samples']} samples; fresh features, "
            "labels from the previous model | replace: E‖w_k − w*‖² = (k+1)·σ²d/(T−d−1); accumulate: < π²/6 of that "
            f"one-generation error | replace {_slashed(lr['replace'], '.2f')} at k = {at(lc)} (expected "
            f"{_slashed(lr['expected_replace'], 'd')}); accumulate {_slashed(lr['accumulate'], '.2f')}, below "
            f"π²/6 = {lr['accumulate_bound']:.2f} ({lc['seeds']} seeds) |",
            f"| `gmm` | 3-component 1-D mixture by EM (k-means++ starts), M = {mc['samples']} | the rare far mode "
            f"disappears first | rare mode lost (< {mc['lost_below']:.0%} of its mass kept) in "
            f"{percent(gm['lost_replace'])} of lineages at k = {at(mc)} under replace (median kept mass "
            f"{_slashed(gm['median_kept_replace'])}); {percent(gm['lost_accumulate'])} under accumulate (median "
            f"{_slashed(gm['median_kept_accumulate'], '.2f')}) ({mc['seeds']} seeds). The *mean* kept mass falls much "
            f"less ({_slashed(gm['mean_kept_replace'], '.2f')} under replace): losing the mode is absorbing for the "
            "typical lineage while a few lineages overshoot |",
            "",
            f"`collapse run {r['linear_regression_study']['config']}` (20 lineages × 21 generations) took "
            f"{r['linear_regression_study']['wall_s']:.0f} s, the CLI included.",
        ]
    )


def _lineage_of(name: str, c: float) -> dict:
    curves = _results(name)["curves"]
    return next(lin["metrics"] for lin in curves.values() if lin["contamination"] == c)


def smollm2_table() -> str:
    """Held-out perplexity of the SmolLM2 study per generation, c = 0 against c = 1, with intervals."""
    r = _results("study_smollm2")
    ctrl, full = _lineage_of("study_smollm2", 0.0), _lineage_of("study_smollm2", 1.0)

    def ppl(m: dict, k: int) -> str:
        return f"{m['ppl_real'][k]:.1f} [{m['ppl_real_lo'][k]:.1f}, {m['ppl_real_hi'][k]:.1f}]"

    lines = [
        "| generation | c = 0: `ppl_real` | c = 1: `ppl_real` | c = 0: p99 | c = 1: p99 | c = 1: `ppl_samples_gen0` |",
        "|---|---|---|---|---|---|",
    ]
    for k in range(len(full["ppl_real"])):
        label = "0 (shared)" if k == 0 else str(k)
        samples = full["ppl_samples_gen0"][k]
        recursive = f"**{ppl(full, k)}**" if k else ppl(full, k)  # generation 0 is shared: nothing to stress
        lines.append(
            f"| {label} | {ppl(ctrl, k)} | {recursive} | {ctrl['ppl_real_p99'][k]:.1f} | "
            f"{full['ppl_real_p99'][k]:.1f} | {'—' if samples is None else f'{samples:.0f}'} |"
        )
    rise = (full["ppl_real"][-1] - full["ppl_real"][0]) / full["ppl_real"][0]
    rise99 = (full["ppl_real_p99"][-1] - full["ppl_real_p99"][0]) / full["ppl_real_p99"][0]
    lines += [
        "",
        f"Measured at commit `{r['git_commit'][:7]}`: the study took {r['wall_s']:.0f} s on {r['slots']} lineage slot. "
        f"The fully recursive lineage's `ppl_real` rises {rise:+.0%} by generation {len(full['ppl_real']) - 1} "
        f"and its p99 {rise99:+.0%}; the c = 0 control moves "
        f"{(ctrl['ppl_real'][-1] - ctrl['ppl_real'][0]) / ctrl['ppl_real'][0]:+.1%}.",
    ]
    return "\n".join(lines)


def _unit_table(name: str) -> str:
    r = _results(name)
    lines = [
        "| unit | train s | sample s | eval s | eval share | peak RSS of its process |",
        "|---|---|---|---|---|---|",
    ]
    for unit, u in sorted(r["per_unit"].items(), key=lambda kv: (not kv[0].startswith("gen0"), kv[0])):
        lineage, gen = unit.split("/")
        label = "generation 0 (shared)" if lineage.startswith("gen0") else f"{lineage}, generation {int(gen[4:])}"
        sample = f"{u['sample']:.0f}" if u["sample"] else "—"
        lines.append(
            f"| {label} | {u['train']:.0f} | {sample} | {u['eval']:.0f} | {u['eval_share']:.0%} | "
            f"{u['peak_rss_mb'] / 1000:.2f} GB |"
        )
    parts = r["eval_split"]
    names = {
        "eval_real": "held-out scoring",
        "eval_sampling": "drawing samples",
        "eval_gen0": "their scoring under generation 0",
        "eval_sample_metrics": "the sample metrics",
    }
    split = ", ".join(f"{names[k]} {v['seconds']:.0f} s" for k, v in parts.items() if k in names)
    lines += [
        "",
        f"Evaluation is {r['eval_share_of_compute']:.1%} of the study's train + sample + eval, and at most "
        f"{max(u['eval_share'] for u in r['per_unit'].values()):.0%} of any generation; the largest process peaks "
        f"at {r['peak_rss_mb'] / 1000:.2f} GB. By part, over the study: {split}.",
    ]
    return "\n".join(lines)


def smollm2_units() -> str:
    return _unit_table("study_smollm2")


def smollm2_small_units() -> str:
    return _unit_table("study_smollm2_small")


def _detections(name: str) -> str:
    r = _results(name)
    cells = [f"{regime}|{c}" for regime, c in r["cells"]]
    lines = ["| metric | " + " | ".join(f"c = {c:g}" for _, c in r["cells"]) + " |", "|---" * (len(cells) + 1) + "|"]
    for metric, by_cell in r["detections"].items():
        key, paired = metric.removesuffix(" (paired)"), metric.endswith(" (paired)")
        label = f"`{key}`" + (" (paired)" if paired else "")
        lines.append(f"| {label} | " + " | ".join(by_cell.get(c, "") for c in cells) + " |")
    return "\n".join(lines)


def early_warning_table() -> str:
    return _detections("early_warning")


def early_warning_smollm2_table() -> str:
    return _detections("early_warning_smollm2")


def early_warning_z() -> str:
    r = _results("early_warning")
    diff = r["paired_differences"]
    parts = []
    for metric, by_seed in diff["by_metric"].items():
        seeds = sorted(by_seed, key=int)
        zs = ", ".join(f"{by_seed[s]['z']:.1f}" for s in seeds)
        means = ", ".join(f"{by_seed[s]['mean']:+.3f}" for s in seeds)
        parts.append(f"`{metric}`: z = {zs} (mean difference {means})")
    return (
        "Paired per-sequence (or per-sample) difference from the same-seed c = 0 control at generation "
        f"{diff['generation']}, c = {diff['contamination']:g}, one value per seed: "
        + "; ".join(parts)
        + f". The study took {r['wall_s'] / 60:.0f} min."
    )


FILTERS = ("none", "provenance_cap", "watermark", "verify", "perplexity", "detector_resample")


def mitigations_table() -> str:
    r = _results("study_mitigations")
    lineages = list(r["curves"].values())

    def final(regime: str, c: float, name: str, key: str = "ppl_real"):
        lin = next(
            x
            for x in lineages
            if x["regime"] == regime and x["contamination"] == c and x["axes"]["mitigation.filter"] == name
        )
        return lin["metrics"][key][-1]

    generation = len(lineages[0]["metrics"]["ppl_real"]) - 1
    lines = ["| regime | " + " | ".join(FILTERS) + " | c = 0 reference |", "|---" * (len(FILTERS) + 2) + "|"]
    for regime in ("replace", "accumulate"):
        values = [final(regime, 0.5, name) for name in FILTERS]
        best = min(values)
        cells = [f"**{v:.0f}**" if v == best else f"{v:.0f}" for v in values]
        lines.append(f"| {regime}, c = 0.5 | " + " | ".join(cells) + f" | {final(regime, 0.0, 'none'):.0f} |")
    wm_p, wm_r = (
        final("replace", 0.5, "watermark", "filter_precision"),
        final("replace", 0.5, "watermark", "filter_recall"),
    )
    px = [
        (final(g, 0.5, "perplexity", "filter_precision"), final(g, 0.5, "perplexity", "filter_recall"))
        for g in ("replace", "accumulate")
    ]
    rows = {name: final("replace", 0.5, name, "train_rows") for name in ("none", "watermark", "provenance_cap")}
    acc = final("replace", 0.5, "detector_resample", "detector_accuracy")
    lines += [
        "",
        f"Final `ppl_real` at generation {generation}; {r['units']} units in {r['wall_s'] / 60:.1f} min on "
        f"{r['slots']} slots. At replace, c = 0.5, generation {generation}: the watermark detector's precision "
        f"{wm_p:.2f} and recall {wm_r:.2f} against provenance; the perplexity filter's precision / recall "
        + ", ".join(f"{a:.2f} / {b:.2f}" for a, b in px)
        + f" (replace, accumulate); training rows {rows['none']:.0f} unfiltered, {rows['watermark']:.0f} after the "
        f"watermark filter, {rows['provenance_cap']:.0f} after the provenance cap; the resampling detector's "
        f"held-out accuracy {acc:.3f}.",
    ]
    return "\n".join(lines)


def shumailov_table() -> str:
    r = _results("study_shumailov2023")
    full, kept = _lineage_of("study_shumailov2023", 1.0), _lineage_of("study_shumailov2023", 0.9)
    gens = range(len(full["ppl_real"]))
    fmt = lambda v, f: "—" if v is None else format(v, f)  # noqa: E731
    lines = [
        "| generation | " + " | ".join(str(k) for k in gens) + " |",
        "|---" * (len(gens) + 1) + "|",
        "| `ppl_real`, no original data (c = 1) | " + " | ".join(fmt(v, ".0f") for v in full["ppl_real"]) + " |",
        "| `ppl_real`, 10% original data kept (c = 0.9) | "
        + " | ".join(fmt(v, ".0f") for v in kept["ppl_real"])
        + " |",
        "| `ppl_samples_gen0`, c = 1 | " + " | ".join(fmt(v, ".1f") for v in full["ppl_samples_gen0"]) + " |",
        "| `self_bleu` of samples, c = 1 | " + " | ".join(fmt(v, ".2f") for v in full["self_bleu"]) + " |",
        "",
        f"By generation {len(full['ppl_real']) - 1}, `ppl_real` is {full['ppl_real'][-1] / full['ppl_real'][0]:.1f}× "
        f"generation 0's with no original data and {kept['ppl_real'][-1] / kept['ppl_real'][0]:.1f}× with 10% kept. "
        f"The study took {r['wall_s'] / 60:.1f} min.",
    ]
    return "\n".join(lines)


def config_reference() -> str:
    from collapse.core.config import reference_markdown

    return reference_markdown().rstrip("\n")


RENDERERS = {
    "scoring": scoring_line,
    "precision-study": precision_study_block,
    "crossover": crossover_line,
    "precision": precision_table,
    "eval-share": eval_share_table,
    "vllm-repro": vllm_repro_table,
    "scale": scale_table,
    "scale-io": scale_io_line,
    "debug-study": debug_study_table,
    "debug-study-run": debug_study_run,
    "debug-study-tails": debug_study_tails,
    "cross-cpu": cross_cpu_line,
    "precision-pick": precision_pick_line,
    "config": config_reference,
    "training-engines": training_engines_table,
    "sampling": sampling_table,
    "sampling-smollm2": sampling_smollm2_table,
    "study-split": study_split_table,
    "vs-loop": vs_loop_table,
    "orchestration": orchestration_line,
    "faults": faults_line,
    "ray-faults": ray_faults_line,
    "scoring-memory": scoring_memory_line,
    "knn-memory": knn_memory_line,
    "theory": theory_table,
    "smollm2": smollm2_table,
    "smollm2-units": smollm2_units,
    "smollm2-small-units": smollm2_small_units,
    "early-warning": early_warning_table,
    "early-warning-smollm2": early_warning_smollm2_table,
    "early-warning-z": early_warning_z,
    "mitigations": mitigations_table,
    "shumailov2023": shumailov_table,
}


def render(text: str, where: Path) -> tuple[str, set[str]]:
    """`text` with each block refilled, and the names of the blocks it has."""
    seen: set[str] = set()

    def fill(m: re.Match) -> str:
        name = m.group(3)
        if name not in RENDERERS:
            raise SystemExit(f"{where}: unknown block `{name}`; known: {sorted(RENDERERS)}")
        seen.add(name)
        return m.group(1) + RENDERERS[name]() + "\n" + m.group(4)

    return BLOCK.sub(fill, text), seen


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--check", action="store_true")
    args = ap.parse_args()
    stale, used = [], set()
    for page in PAGES:
        text = page.read_text()
        new, seen = render(text, page)
        used |= seen
        if new != text:
            stale.append(page)
            if not args.check:
                page.write_text(new)
    missing = sorted(set(RENDERERS) - used)
    if missing:
        print(f"no page has the blocks {missing}: add <!-- measured:NAME --> ... <!-- /measured:NAME --> to one")
        return 1
    if args.check and stale:
        names = ", ".join(str(p.relative_to(ROOT)) for p in stale)
        print(f"{names}: measured or generated blocks differ from their sources; run python scripts/render_docs.py")
        return 1
    if not args.check:
        print(f"rendered {len(RENDERERS)} kinds of block; rewrote {len(stale)} of {len(PAGES)} pages")
    return 0


if __name__ == "__main__":
    sys.exit(main())

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
BLOCK = re.compile(r"(<!-- (measured|generated):([\w-]+) -->\n)(?:.*?\n)?(<!-- /\2:\3 -->)", re.S)


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
        f"Measured at commit `{r['git_commit'][:7]}`: {r['wall_s']:.0f} s wall time on {r['slots']} slots, "
        f"{r['units']} generation units. Of the {r['slot_seconds']:.0f} slot-seconds, training took "
        f"{split['train']:.0f}, evaluation {split['eval']:.0f} "
        f"({eval_split['eval_sample_metrics']['share_of_eval']:.0%} "
        f"of it the sample metrics, mostly MiniLM embeddings of the samples; held-out scoring "
        f"{eval_split['eval_real']['seconds']:.0f} s in all), sampling {split['sample']:.0f}, and start-up, "
        f"orchestration and idle slots {split['orchestration_and_idle']:.0f}."
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
    "config": config_reference,
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

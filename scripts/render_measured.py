"""Render the README's measured tables from benchmarks/results/*.json, so no measured number is typed.

    python scripts/render_measured.py          # rewrite every block in README.md
    python scripts/render_measured.py --check  # exit 1 if a block differs from what the files give

A block is the text between `<!-- measured:NAME -->` and `<!-- /measured:NAME -->`; RENDERERS says
what fills each. tests/test_measured_docs.py runs --check.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
README = ROOT / "README.md"


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


RENDERERS = {
    "scoring": scoring_line,
    "precision-study": precision_study_block,
    "crossover": crossover_line,
    "precision": precision_table,
    "eval-share": eval_share_table,
    "vllm-repro": vllm_repro_table,
    "scale": scale_table,
    "scale-io": scale_io_line,
}


def render(text: str) -> str:
    for name, fn in RENDERERS.items():
        pattern = re.compile(rf"(<!-- measured:{name} -->\n)(?:.*?\n)?(<!-- /measured:{name} -->)", re.S)
        if not pattern.search(text):
            raise SystemExit(f"README.md has no block <!-- measured:{name} --> ... <!-- /measured:{name} -->")
        text = pattern.sub(lambda m, fn=fn: m.group(1) + fn() + "\n" + m.group(2), text)
    return text


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--check", action="store_true")
    args = ap.parse_args()
    text = README.read_text()
    new = render(text)
    if args.check:
        if new != text:
            print("README.md's measured blocks differ from benchmarks/results: run python scripts/render_measured.py")
            return 1
        return 0
    README.write_text(new)
    print(f"rendered {len(RENDERERS)} measured blocks in {README}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""`collapse report`: the lineage x generation table, collapse curves, and report.md."""

from __future__ import annotations

import math
import sys
from collections import defaultdict
from pathlib import Path

from rich.console import Console
from rich.table import Table

from ..cluster.manifest import RunDir, read_metrics
from ..trainer import metrics as M
from ..trainer.checkpoint import write_bytes_atomic, write_text_atomic

PLOT_FILE = "collapse_curves.png"
REPORT_FILE = "report.md"
TABLE_KEYS = (M.PPL_REAL, M.PPL_REAL_P99, M.LOSS_TAIL, M.DISTINCT_2, M.UNIGRAM_ENTROPY, M.SYNTHETIC_FRACTION, M.TRAIN_TOKENS)
SHORT = {M.PPL_REAL: "ppl", M.PPL_REAL_P99: "ppl p99", M.LOSS_TAIL: "tail loss", M.DISTINCT_2: "dist-2",
         M.UNIGRAM_ENTROPY: "entropy", M.SYNTHETIC_FRACTION: "synth", M.TRAIN_TOKENS: "tokens"}


def _fmt(v) -> str:
    if isinstance(v, float):
        return "nan" if math.isnan(v) else (f"{v:.3f}" if abs(v) < 10 else f"{v:.1f}")
    return str(v)


def print_table(rows: list[dict], console: Console | None = None) -> None:
    # Piped output (CI logs, `| less`) gets a fixed width instead of rich's 80-column default.
    console = console or Console(width=None if sys.stdout.isatty() else 130)
    table = Table(title="collapse: lineage x generation", show_lines=False)
    table.add_column("lineage", no_wrap=True)
    table.add_column("gen", justify="right", min_width=3)
    for key in TABLE_KEYS:
        table.add_column(SHORT[key], justify="right", no_wrap=True)
    for r in rows:
        table.add_row(r[M.LINEAGE], str(r[M.GENERATION]), *(_fmt(r.get(k, float("nan"))) for k in TABLE_KEYS))
    console.print(table)


def curves(rows: list[dict], key: str) -> dict[tuple[str, float], dict[int, list[float]]]:
    """(regime, contamination) -> generation -> values over seeds (and other grid axes)."""
    out: dict = defaultdict(lambda: defaultdict(list))
    for r in rows:
        out[(r[M.REGIME], r[M.CONTAMINATION])][r[M.GENERATION]].append(r[key])
    return out


def real_reference(root: Path) -> dict[str, float]:
    """The sample metrics of held-out real text, on as many sequences as each generation samples:
    where a collapse-free model's samples would sit in the diversity panels."""
    import numpy as np

    from ..trainer.evaluation import reference_rows
    from ..trainer.metrics import sample_metrics

    eval_pool = root / "data" / "eval.npy"
    if not eval_pool.is_file():
        return {}
    ref = reference_rows(np.load(eval_pool, mmap_mode="r"), RunDir(root).load_config().eval.num_samples)
    return sample_metrics(ref, ref)


def plot(rows: list[dict], path: Path, reference: dict[str, float] | None = None) -> None:
    import io

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    regimes = sorted({r[M.REGIME] for r in rows})
    cs = sorted({r[M.CONTAMINATION] for r in rows})
    cmap = plt.get_cmap("viridis")
    fig, axes = plt.subplots(len(M.PLOTTED), len(regimes), figsize=(4.2 * len(regimes), 2.6 * len(M.PLOTTED)), squeeze=False, sharex=True)
    for j, regime in enumerate(regimes):
        for i, (key, label, _) in enumerate(M.PLOTTED):
            ax = axes[i][j]
            data = curves(rows, key)
            for c in cs:
                series = data.get((regime, c))
                if not series:
                    continue
                gens = sorted(series)
                mean = [sum(series[g]) / len(series[g]) for g in gens]
                color = cmap(0.9 * c)
                ax.plot(gens, mean, marker="o", ms=3, color=color, label=f"c={c:g}")
                if any(len(series[g]) > 1 for g in gens):  # band over seeds / other axes
                    ax.fill_between(gens, [min(series[g]) for g in gens], [max(series[g]) for g in gens], color=color, alpha=0.15)
            if reference and key in reference:
                ax.axhline(reference[key], color="grey", linestyle="--", linewidth=1, label="real text")
            if i == 0:
                ax.set_title(f"regime: {regime}")
            if j == 0:
                ax.set_ylabel(label, fontsize=8)
            if i == len(M.PLOTTED) - 1:
                ax.set_xlabel("generation")
            ax.grid(alpha=0.3)
    axes[0][-1].legend(fontsize=7, title="contamination", title_fontsize=7)
    fig.suptitle("Model collapse across generations (lines: mean over seeds; bands: min-max; dashed: real text)")
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110)
    plt.close(fig)
    write_bytes_atomic(path, buf.getvalue())


def effect_table(rows: list[dict]) -> list[dict]:
    """Per (regime, contamination): metric at the first and last generation, and the change."""
    out = []
    for (regime, c), series in sorted(curves(rows, M.PPL_REAL).items()):
        gens = sorted(series)
        first, last = gens[0], gens[-1]
        entry = {"regime": regime, "contamination": c, "first": first, "last": last}
        for key, _, _ in M.PLOTTED:
            s = curves(rows, key)[(regime, c)]
            a, b = sum(s[first]) / len(s[first]), sum(s[last]) / len(s[last])
            entry[key] = (a, b)
        out.append(entry)
    return out


def markdown(rows: list[dict], study_name: str, failed: dict[str, str], reference: dict[str, float] | None = None) -> str:
    lines = [f"# Study `{study_name}`", "", f"{len({r[M.LINEAGE] for r in rows})} lineages, {len(rows)} lineage x generation rows.", ""]
    lines += ["## Change from first to last generation (mean over seeds)", ""]
    header = "| regime | c | gens | " + " | ".join(k for k, _, _ in M.PLOTTED) + " |"
    lines += [header, "|" + "---|" * (3 + len(M.PLOTTED))]
    for e in effect_table(rows):
        cells = []
        for key, _, _ in M.PLOTTED:
            a, b = e[key]
            rel = (b - a) / abs(a) * 100 if a else float("nan")
            cells.append(f"{a:.3g} → {b:.3g} ({rel:+.1f}%)")
        lines.append(f"| {e['regime']} | {e['contamination']:g} | {e['first']}→{e['last']} | " + " | ".join(cells) + " |")
    if reference:
        lines += ["", "Held-out real text, same number of sequences as each generation samples: "
                  + ", ".join(f"{k} {v:.3g}" for k, v in reference.items()) + "."]
    lines += ["", f"![collapse curves]({PLOT_FILE})", "", "## All rows", ""]
    lines += ["| lineage | gen | " + " | ".join(TABLE_KEYS) + " |", "|" + "---|" * (2 + len(TABLE_KEYS))]
    for r in rows:
        lines.append(f"| {r[M.LINEAGE]} | {r[M.GENERATION]} | " + " | ".join(_fmt(r.get(k, float('nan'))) for k in TABLE_KEYS) + " |")
    if failed:
        lines += ["", "## Failed lineages", ""] + [f"- `{k}`: {v.splitlines()[-1] if v else ''}" for k, v in failed.items()]
    return "\n".join(lines) + "\n"


def write_report(root: str | Path, failed: dict[str, str] | None = None) -> list[dict]:
    root = Path(root)
    rows = read_metrics(root)
    name = RunDir(root).load_config().study.name
    reference = real_reference(root)
    if rows:
        plot(rows, root / PLOT_FILE, reference)
    write_text_atomic(root / REPORT_FILE, markdown(rows, name, failed or {}, reference))
    return rows

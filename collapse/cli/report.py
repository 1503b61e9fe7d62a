"""`collapse report`: the lineage x generation table, collapse curves, and report.md."""

from __future__ import annotations

import math
import sys
from collections import defaultdict
from pathlib import Path

import numpy as np
from rich.console import Console
from rich.table import Table

from ..core import metrics as M
from ..core.checkpoint import write_bytes_atomic, write_text_atomic
from ..core.columns import MetricsTable
from ..core.config import dump_config
from ..core.metrics import sample_metrics
from ..core.plan import AGGREGATE_ABOVE, cell_name, rows_per_generation
from ..core.rundir import METRICS_FILE, PLOT_FILE, REPORT_FILE, SEARCH_PLOT_FILE, RunDir, read_metrics
from ..core.seeding import derive_seed
from ..core.stats import (
    BAND_CAPTION,
    BAND_LOG,
    BAND_T,
    PairedDetection,
    band,
    band_kind,
    first_detection,
    first_detection_paired,
)
from ..core.tracking import wandb_group
from ..engines.data import reference_rows
from ..engines.families import plotted_metrics_of as panels_of
from ..engines.laws import oracle as exact_law
from ..engines.tokenizer import eos_token_id

TABLE_KEYS = (
    M.PPL_REAL,
    M.PPL_REAL_P99,
    M.LOSS_TAIL,
    M.DISTINCT_2,
    M.UNIGRAM_ENTROPY,
    M.SYNTHETIC_FRACTION,
    M.TRAIN_TOKENS,
)
SHORT = {
    M.PPL_REAL: "ppl",
    M.PPL_REAL_P99: "ppl p99",
    M.LOSS_TAIL: "tail loss",
    M.DISTINCT_2: "dist-2",
    M.UNIGRAM_ENTROPY: "entropy",
    M.SYNTHETIC_FRACTION: "synth",
    M.TRAIN_TOKENS: "tokens",
}


def as_table(data: MetricsTable | list[dict]) -> MetricsTable:
    """The report works from columns (core/columns.py); a caller with rows in hand passes them."""
    return data if isinstance(data, MetricsTable) else MetricsTable.from_rows(data)


class Cells:
    """A metrics table's rows grouped by (regime, contamination) cell and generation, as row
    indices: every aggregate of the report (curves, bands, changes, laws) reads from here, one
    pass of numpy sorting however many rows the study has."""

    def __init__(self, table: MetricsTable):
        self.table = table
        regime, c, g = table.labels(M.REGIME), table.numeric(M.CONTAMINATION), table.numeric(M.GENERATION)
        rows = np.nonzero(table.present(M.REGIME) & ~np.isnan(c) & ~np.isnan(g))[0]
        self.by_cell: dict[tuple[str, float], dict[int, np.ndarray]] = {}
        if len(rows):
            regimes, r_code = np.unique(regime[rows], return_inverse=True)
            cs, c_code = np.unique(c[rows], return_inverse=True)
            gens = g[rows].astype(np.int64)
            code = (r_code * len(cs) + c_code) * (int(gens.max()) + 1) + gens
            order = np.argsort(code, kind="stable")
            codes, starts = np.unique(code[order], return_index=True)
            for group, start, end in zip(codes.tolist(), starts.tolist(), [*starts[1:].tolist(), len(order)]):
                cell, k = divmod(group, int(gens.max()) + 1)
                key = (str(regimes[cell // len(cs)]), float(cs[cell % len(cs)]))
                self.by_cell.setdefault(key, {})[k] = rows[order[start:end]]
        self._columns: dict[str, np.ndarray] = {}

    def column(self, key: str) -> np.ndarray:
        if key not in self._columns:
            self._columns[key] = self.table.numeric(key)
        return self._columns[key]

    def raw(self, cell: tuple[str, float], k: int, key: str) -> np.ndarray:
        """The values of `key` at one cell and generation, NaN for rows without it."""
        return self.column(key)[self.by_cell[cell][k]]

    def values(self, cell: tuple[str, float], k: int, key: str) -> np.ndarray:
        """The same, without NaN (a row that lacks the metric, or a metric that was NaN)."""
        v = self.raw(cell, k, key)
        return v[~np.isnan(v)]

    def groups(self):
        return ((cell, k) for cell, series in self.by_cell.items() for k in series)


def table_keys(table: MetricsTable) -> tuple[str, ...]:
    if not table.n or M.PPL_REAL in table:
        return TABLE_KEYS
    return tuple(k for k, _, _ in panels_of(set(table.keys))) + (M.SYNTHETIC_FRACTION, M.TRAIN_ROWS)


def _fmt(v) -> str:
    if isinstance(v, float):
        return "nan" if math.isnan(v) else (f"{v:.3f}" if abs(v) < 10 else f"{v:.1f}")
    return str(v)


def lineage_count(table: MetricsTable) -> int:
    return len(np.unique(table.labels(M.LINEAGE))) if table.n else 0


def shown_rows(table: MetricsTable, keys: tuple[str, ...] | None = None) -> tuple[str, list[dict]]:
    """The rows a printed table shows: every row, or (more than AGGREGATE_ABOVE lineages) one row
    per grid cell and generation with each metric's mean over the cell's seeds, `lineage` holding
    the cell and its seed count. Returns the first column's title and the rows (`keys`: only the
    metrics shown)."""
    if lineage_count(table) <= AGGREGATE_ABOVE:
        return "lineage", table.rows(None if keys is None else [M.LINEAGE, M.GENERATION, *keys])
    names, inverse = np.unique(table.labels(M.LINEAGE), return_inverse=True)
    cells, cell_of_name = np.unique([cell_name(n) for n in names.tolist()], return_inverse=True)
    gen = table.numeric(M.GENERATION)
    code = cell_of_name[inverse] * (int(np.nanmax(gen)) + 1) + gen.astype(np.int64)
    groups, first_row, group_of_row = np.unique(code, return_index=True, return_inverse=True)
    sizes = np.bincount(group_of_row, minlength=len(groups))
    wanted = [k for k in (keys or table.keys) if table.is_number(k) and k != M.GENERATION]
    means = {}
    for key in wanted:
        present = table.present(key)
        # a row's NaN counts (the mean is then NaN, as the row says); a row without the key does not
        sums = np.bincount(group_of_row, weights=np.where(present, table.numeric(key), 0.0), minlength=len(groups))
        counts = np.bincount(group_of_row, weights=present.astype(float), minlength=len(groups))
        with np.errstate(invalid="ignore", divide="ignore"):
            means[key] = (sums / counts, counts > 0)
    out = []
    for gi in np.argsort(first_row, kind="stable").tolist():  # in the order the file first has them
        row = first_row[gi]
        entry = {M.LINEAGE: f"{cells[cell_of_name[inverse[row]]]} ({sizes[gi]})", M.GENERATION: int(gen[row])}
        entry.update({key: float(mean[gi]) for key, (mean, has) in means.items() if has[gi]})
        out.append(entry)
    return "cell (seeds): mean", out


def print_table(data: MetricsTable | list[dict], console: Console | None = None) -> None:
    # Piped output (CI logs, `| less`) gets a fixed width instead of rich's 80-column default.
    table_data = as_table(data)
    console = console or Console(width=None if sys.stdout.isatty() else 130)
    keys = table_keys(table_data)
    first, shown = shown_rows(table_data, keys)
    table = Table(title="collapse: lineage x generation", show_lines=False)
    table.add_column(first, no_wrap=True)
    table.add_column("gen", justify="right", min_width=3)
    for key in keys:
        table.add_column(SHORT.get(key, key), justify="right", no_wrap=True)
    for r in shown:
        table.add_row(r[M.LINEAGE], str(r[M.GENERATION]), *(_fmt(r.get(k, float("nan"))) for k in keys))
    console.print(table)


def real_reference(root: Path) -> dict[str, float]:
    """The sample metrics of held-out real text, on as many sequences as each generation samples:
    where a collapse-free model's samples would sit in the diversity panels."""
    import numpy as np

    eval_pool = RunDir(root).data_dir / "eval.npy"
    if not eval_pool.is_file() or RunDir(root).load_config().model.family != "lm":
        return {}
    ref = reference_rows(np.load(eval_pool, mmap_mode="r"), RunDir(root).load_config().eval.num_samples)
    return sample_metrics(ref, ref, eos_token_id(RunDir(root).tokenizer_dir))


# A real-text reference line is drawn where it says something: for metrics that compare the samples
# with real text, real text compared with itself is 1 or 0 by construction.
SELF_REFERENTIAL = {M.VOCAB_COVERAGE, M.UNIGRAM_JS, M.UNIGRAM_KL, M.MAUVE, M.KNN_PRECISION, M.KNN_RECALL}
FIGURE_FORMATS = ("png", "pdf", "svg")


def band_kinds(cells: Cells, keys: list[str]) -> dict[str, str]:
    """metric -> how its band across seeds is drawn (`stats.band_kind`), over every cell and generation."""
    return {key: band_kind([cells.values(cell, k, key) for cell, k in cells.groups()]) for key in keys}


def _center_and_band(
    cells: Cells, cell: tuple[str, float], k: int, key: str, kind: str
) -> tuple[float, tuple[float, float] | None]:
    """The line's value and its 95% band at one generation: across seeds (`kind`) when there are
    several, else the generation's own interval (`<key>_lo`, `<key>_hi`) when it was computed."""
    values = cells.values(cell, k, key)
    across = band(values, kind)
    if across is not None:
        return across[0], (across[1], across[2])
    center = float(values[0]) if len(values) else float("nan")
    at = cells.by_cell[cell][k]
    lo, hi = key + M.CI_LO, key + M.CI_HI
    if len(at) == 1 and cells.table.present(lo)[at[0]] and cells.table.present(hi)[at[0]]:
        return center, (float(cells.column(lo)[at[0]]), float(cells.column(hi)[at[0]]))
    return center, None


def seed_count(table: MetricsTable) -> int:
    """How many seed values the rows have (a row without one counts as one more value)."""
    present = table.present(M.SEED)
    return len(np.unique(table.numeric(M.SEED)[present])) + int(not present.all())


def collapse_figure(
    data: MetricsTable | list[dict], reference: dict[str, float] | None = None, laws: dict | None = None
):
    """The collapse curves: one row of panels per metric, one column per regime, one line per
    contamination (mean over seeds and other axes) with its 95% band, one legend for all. `laws`:
    {(regime, c): {metric: exact expectation per generation}}, drawn dashed over the band. Drawn
    from the table's columns, grouped once (`Cells`): no row is held as a dict."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import FuncFormatter, LogFormatter, MaxNLocator

    table = as_table(data)
    cells = Cells(table)
    regimes = sorted({regime for regime, _ in cells.by_cell})
    cs = sorted({c for _, c in cells.by_cell})
    seeds = seed_count(table)
    plotted = panels_of(set(table.keys))
    cmap = plt.get_cmap("viridis")
    fig, axes = plt.subplots(
        len(plotted),
        len(regimes),
        figsize=(4.2 * len(regimes) + 0.6, 2.4 * len(plotted) + 1.0),
        squeeze=False,
        sharex=True,
        layout="constrained",
    )
    handles = {}
    kinds = band_kinds(cells, [key for key, _, _ in plotted])
    for j, regime in enumerate(regimes):
        for i, (key, label, _) in enumerate(plotted):
            ax = axes[i][j]
            for c in cs:
                series = cells.by_cell.get((regime, c))
                if not series:
                    continue
                gens = sorted(series)
                drawn = [_center_and_band(cells, (regime, c), g, key, kinds[key]) for g in gens]
                color = cmap(0.9 * c)
                (line,) = ax.plot(gens, [d[0] for d in drawn], marker="o", ms=3, color=color, label=f"c = {c:g}")
                handles.setdefault(f"c = {c:g}", line)
                bands = [d[1] for d in drawn]
                if all(b is not None for b in bands):
                    ax.fill_between(gens, [b[0] for b in bands], [b[1] for b in bands], color=color, alpha=0.15, lw=0)
                law = (laws or {}).get((regime, c), {}).get(key)
                if law is not None:
                    (exact,) = ax.plot(range(len(law)), law, color="black", ls="--", lw=0.9, label="exact law")
                    handles.setdefault("exact law", exact)
            if reference and key in reference and key not in SELF_REFERENTIAL:
                handles.setdefault("real text", ax.axhline(reference[key], color="grey", ls="--", lw=1))
            if i == 0:
                ax.set_title(f"regime: {regime}", fontsize=10)
            if kinds[key] == BAND_LOG and seeds > 1:
                ax.set_yscale("log")
                ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))  # not 10^-1
                ax.yaxis.set_minor_formatter(LogFormatter(labelOnlyBase=False, minor_thresholds=(1, 0.4)))
            if j == 0:
                marked = kinds[key] != BAND_T and seeds > 1
                ax.set_ylabel(label + (f"\n[{kinds[key]} band]" if marked else ""), fontsize=8)
            if i == len(plotted) - 1:
                ax.set_xlabel("generation")
            ax.xaxis.set_major_locator(MaxNLocator(integer=True))
            ax.tick_params(labelsize=7)
            ax.grid(alpha=0.3)
    if seeds > 1:
        used = sorted(set(kinds.values()), key=list(BAND_CAPTION).index)
        caption = "; ".join(f"[{k}] {BAND_CAPTION[k]}" if k != BAND_T else BAND_CAPTION[k] for k in used)
    else:
        caption = "value, 95% CI of each generation"
    fig.suptitle(f"Model collapse across generations\n{caption}", fontsize=10)
    fig.legend(handles.values(), handles.keys(), loc="outside lower center", ncols=min(len(handles), 6), fontsize=8)
    return fig


def plot(
    data: MetricsTable | list[dict], path: Path, reference: dict[str, float] | None = None, laws: dict | None = None
) -> list[Path]:
    """The collapse curves as PNG (300 dpi), PDF and SVG next to each other; returns the paths."""
    import io

    import matplotlib.pyplot as plt

    fig = collapse_figure(data, reference, laws)
    written = []
    for fmt in FIGURE_FORMATS:
        buf = io.BytesIO()
        fig.savefig(buf, format=fmt, dpi=300 if fmt == "png" else None)
        fig.set_layout_engine("none")  # laid out by the first save: the others reuse it (half the time)
        target = path.with_suffix(f".{fmt}")
        write_bytes_atomic(target, buf.getvalue())
        written.append(target)
    plt.close(fig)
    return written


def effect_table(cells: Cells) -> list[dict]:
    """Per (regime, contamination): each plotted metric's mean at the first and last generation."""
    out = []
    plotted = panels_of(set(cells.table.keys))
    for cell, series in sorted(cells.by_cell.items()):
        first, last = min(series), max(series)
        entry = {"regime": cell[0], "contamination": cell[1], "first": first, "last": last}
        for key, _, _ in plotted:
            entry[key] = (float(cells.raw(cell, first, key).mean()), float(cells.raw(cell, last, key).mean()))
        out.append(entry)
    return out


# Metrics the early-warning table compares: those with intervals (present ones are shown).
DETECTION_KEYS = M.WITH_CI


def rows_for(table: MetricsTable, metrics: list[str]) -> list[dict]:
    """The rows with their grid coordinates (extra axes included) and `metrics` with their
    intervals only: what a per-lineage section needs, not the whole row."""
    coords = [M.LINEAGE, M.GENERATION, M.REGIME, M.CONTAMINATION, M.SEED]
    keys = [
        k for k in table.keys if k in coords or "." in k or any(k in (m, m + M.CI_LO, m + M.CI_HI) for m in metrics)
    ]
    return table.rows(keys)


def early_warning(
    data: MetricsTable | list[dict], paired: dict[str, dict[str, PairedDetection]] | None = None
) -> tuple[list[tuple[str, float]], dict[str, dict[tuple[str, float], str]]]:
    """metric -> (regime, c) -> "median first-detection generation (detected/lineages)" over the
    seeds and other axes of each contaminated cell (c > 0): first the paired tests (where the
    per-unit values were saved), then the interval-overlap rule for every metric with intervals."""
    table = as_table(data)
    detected = [key for key in DETECTION_KEYS if key in table]
    if not paired and not detected:
        return [], {}
    rows = rows_for(table, detected)
    cells = sorted({(r[M.REGIME], r[M.CONTAMINATION]) for r in rows if r[M.CONTAMINATION] > 0})
    lineage_cell = {r[M.LINEAGE]: (r[M.REGIME], r[M.CONTAMINATION]) for r in rows}

    def summarize(found: dict[str, int | None]) -> dict[tuple[str, float], str]:
        out = {}
        for cell in cells:
            gens = [found[name] for name, c in lineage_cell.items() if c == cell and name in found]
            hits = sorted(g for g in gens if g is not None)
            median = hits[len(hits) // 2] if hits else None
            out[cell] = f"{median if median is not None else '—'} ({len(hits)}/{len(gens)})"
        return out

    found: dict[str, dict] = {}
    for key, by_lineage in (paired or {}).items():
        found[f"{key} (paired)"] = summarize({name: d.generation for name, d in by_lineage.items()})
    for key in detected:
        found[key] = summarize(first_detection(rows, key))
    return cells, found


def paired_detections(run: RunDir, data: MetricsTable | list[dict]) -> dict[str, dict[str, PairedDetection]]:
    """metric -> lineage -> paired first detection, for the metrics whose per-unit values the
    units saved (metrics.PAIRED); metrics without them are left out."""
    table = as_table(data)
    metrics = [metric for metric in M.PAIRED if metric in table]
    if not metrics:
        return {}
    rows = rows_for(table, metrics)
    specs = {s.name: s for s in run.lineages()}
    loaded: dict[tuple[str, int], dict | None] = {}

    def values_of(field: str):
        def per_unit(name: str, k: int):
            if (name, k) not in loaded:
                loaded[(name, k)] = run.per_unit(specs[name], k) if name in specs else None
            found = loaded[(name, k)]
            return None if found is None else found.get(field)

        return per_unit

    seed = derive_seed(run.load_config().study.seed, "paired-tests")
    out = {}
    for metric in metrics:
        found = first_detection_paired(rows, metric, values_of(M.PAIRED[metric]), seed=seed)
        if any(d.p_values for d in found.values()):
            out[metric] = found
    return out


RANK_KEYS = (M.PPL_REAL, M.PPL_REAL_P99, M.RARE_NGRAM_RECALL, M.DISTINCT_2, M.EMBED_DIVERSITY)


def axis_rankings(data: MetricsTable | list[dict]) -> dict[str, list[str]]:
    """For each extra grid axis (e.g. `mitigation.filter`): every (regime, value) pair ranked
    together by final-generation perplexity on held-out real text, over the contaminated lineages
    (mean over seeds and contaminations), so a filter under `replace` competes with plain
    accumulation. The c = 0 lineages of each regime are the collapse-free references. Markdown lines."""
    table = as_table(data)
    axes = sorted(k for k in table.keys if "." in k)
    if not axes or M.PPL_REAL not in table:
        return {}
    rows = rows_for(table, list(RANK_KEYS))
    last = {}
    for r in rows:
        if r[M.GENERATION] >= last.get(r[M.LINEAGE], {}).get(M.GENERATION, -1):
            last[r[M.LINEAGE]] = r
    finals = list(last.values())
    keys = [k for k in RANK_KEYS if any(k in r for r in finals)]
    mean = lambda rs, k: sum(r.get(k, float("nan")) for r in rs) / len(rs)  # noqa: E731
    out = {}
    for axis in axes:
        lines = ["| rank | regime | " + axis + " | " + " | ".join(keys) + " |", "|" + "---|" * (3 + len(keys))]
        groups: dict = defaultdict(list)
        for r in finals:
            if r[M.CONTAMINATION] > 0:
                groups[(r[M.REGIME], _label(r.get(axis)))].append(r)
        for i, ((regime, value), rs) in enumerate(sorted(groups.items(), key=lambda kv: mean(kv[1], M.PPL_REAL)), 1):
            lines.append(f"| {i} | {regime} | {value} | " + " | ".join(_fmt(mean(rs, k)) for k in keys) + " |")
        for regime in sorted({r[M.REGIME] for r in finals}):
            control = [r for r in finals if r[M.REGIME] == regime and r[M.CONTAMINATION] == 0]
            if control:
                lines.append(
                    f"| ref | {regime} | c = 0 (no synthetic data) | "
                    + " | ".join(_fmt(mean(control, k)) for k in keys)
                    + " |"
                )
        out[axis] = lines
    return out


def _label(value) -> str:
    return value if isinstance(value, str) else str(value)


def plot_search(events: list[dict], path: Path) -> None:
    """Rise vs contamination per group, in the order the search evaluated the points, with the target."""
    import io

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    observed: dict = defaultdict(list)
    for e in events:
        if e["event"] == "observe":
            observed[e["group"]].append((e["contamination"], e["rise"]))
    target = next((e["target_rise"] for e in events if "target_rise" in e), None)
    fig, ax = plt.subplots(figsize=(6, 3.5))
    for group, points in sorted(observed.items()):
        cs, rises = zip(*sorted(points))
        ax.plot(cs, rises, marker="o", label=group)
        for i, (c, r) in enumerate(points):
            ax.annotate(str(i + 1), (c, r), fontsize=7, xytext=(3, 3), textcoords="offset points")
    if target is not None:
        ax.axhline(target, color="red", linestyle="--", linewidth=1, label=f"target rise {target:g}")
    ax.set_xlabel("contamination c")
    ax.set_ylabel("rise by the search generation")
    ax.set_title("contamination search (numbers: evaluation order)", fontsize=9)
    ax.legend(fontsize=6)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110)
    plt.close(fig)
    write_bytes_atomic(path, buf.getvalue())


def search_section(events: list[dict]) -> list[str]:
    """The contamination search's decisions (search.jsonl): per group, every evaluated c with its
    rise, and the threshold found."""
    if not events:
        return []
    observed: dict = defaultdict(dict)
    results = {}
    for e in events:
        if e["event"] == "observe":
            observed[e["group"]][e["contamination"]] = e["rise"]
        elif e["event"] == "result":
            results[e["group"]] = e
    if not observed:
        return []
    metric = next((e["metric"] for e in events if "metric" in e), "?")
    target = next((e["target_rise"] for e in events if "target_rise" in e), None)
    lines = [
        "",
        f"## Contamination search: smallest c whose `{metric}` rises by {target if target is not None else '?'} "
        "(relative to generation 0)",
        "",
        "| group (regime, seed, axes) | evaluated c: rise | result | threshold |",
        "|---|---|---|---|",
    ]
    for group, points in sorted(observed.items()):
        trail = ", ".join(f"{c:g}: {r:+.3f}" for c, r in sorted(points.items()))
        res = results.get(group, {})
        thr = res.get("threshold")
        lines.append(f"| {group} | {trail} | {res.get('result', 'searching')} | {'' if thr is None else f'{thr:g}'} |")
    return lines + ["", f"![contamination search]({SEARCH_PLOT_FILE})"]


def provenance(root: Path) -> list[str]:
    """What produced these numbers: the config, the code's commit, package versions, the W&B group."""
    run = RunDir(root)
    manifest = run.manifest()
    cfg = run.load_config()
    versions = ", ".join(f"{k} {v}" for k, v in manifest.get("versions", {}).items())
    lines = [
        f"Created {manifest.get('created', '?')} with collapse at commit `{manifest.get('git_commit') or 'unknown'}`; "
        f"Python {manifest.get('python', '?')}; {versions}.",
        f"W&B group `{wandb_group(cfg.study.name, manifest['uid'])}` (project `{cfg.tracking.project}`, "
        f"mode {cfg.tracking.wandb}). Config (`study.yaml`):",
        "",
        "<details><summary>resolved config</summary>",
        "",
        "```yaml",
        dump_config(cfg).rstrip(),
        "```",
        "",
        "</details>",
        "",
    ]
    return lines


def markdown(
    data: MetricsTable | list[dict],
    study_name: str,
    failed: dict[str, str],
    reference: dict[str, float] | None = None,
    extra_sections: list[str] | None = None,
    header: list[str] | None = None,
    paired: dict[str, dict[str, PairedDetection]] | None = None,
) -> str:
    table = as_table(data)
    cells = Cells(table)
    lines = [
        f"# Study `{study_name}`",
        "",
        *(header or []),
        f"{lineage_count(table)} lineages, {table.n} lineage x generation rows.",
        "",
    ]
    lines += ["## Change from first to last generation (mean over seeds)", ""]
    plotted = panels_of(set(table.keys))
    header = "| regime | c | gens | " + " | ".join(k for k, _, _ in plotted) + " |"
    lines += [header, "|" + "---|" * (3 + len(plotted))]
    for e in effect_table(cells):
        changes = []
        for key, _, _ in plotted:
            a, b = e[key]
            change = (
                f"{(b - a) / abs(a) * 100:+.1f}%" if a and math.isfinite(a) and math.isfinite(b) else f"{b - a:+.3g}"
            )
            changes.append(f"{a:.3g} → {b:.3g} ({change})")
        lines.append(
            f"| {e['regime']} | {e['contamination']:g} | {e['first']}→{e['last']} | " + " | ".join(changes) + " |"
        )
    if reference:
        lines += [
            "",
            "Held-out real text, same number of sequences as each generation samples: "
            + ", ".join(f"{k} {v:.3g}" for k, v in reference.items())
            + ".",
        ]
    warned, warn = early_warning(table, paired)
    if warned and warn:
        lines += [
            "",
            "## Early warning: generation of first detection",
            "",
            "Median over the lineages of each cell; (detected / lineages); — = never.",
            "",
            "* `(paired)`: the first generation at which the lineage's per-sequence values (held-out sequences, "
            "which every lineage scores; for sample metrics, samples drawn with the control's random numbers) exceed "
            "the same-seed c = 0 control's at the same generation, by a one-sided sign-flip permutation test "
            "(10,000 flips) with Holm's adjustment over the lineage's generations (family-wise error 5% per lineage "
            "and metric; metrics are separate questions and are not corrected against each other).",
            "* the other rows: the first generation whose 95% interval lies entirely on the collapse side of the "
            "control's interval (the lineage's own generation 0 where there is no control). Conservative and blind "
            "to the pairing.",
            "",
        ]
        lines += [
            "| metric | " + " | ".join(f"{r} c={c:g}" for r, c in warned) + " |",
            "|" + "---|" * (1 + len(warned)),
        ]
        for key, by_cell in warn.items():
            lines.append(f"| {key} | " + " | ".join(by_cell[cell] for cell in warned) + " |")
    lines += degenerate_section(table)
    lines += extra_sections or []
    for axis, ranked in axis_rankings(table).items():
        lines += [
            "",
            f"## Ranking by `{axis}` (final generation, contaminated lineages)",
            "",
            "Lower perplexity is better; `ref` rows are each regime without synthetic data.",
            "",
        ] + ranked
    keys = table_keys(table)
    first, shown = shown_rows(table, keys)
    title = (
        "All rows" if first == "lineage" else f"Every cell, mean over its seeds (all {table.n} rows: `{METRICS_FILE}`)"
    )
    lines += ["", f"![collapse curves]({PLOT_FILE})", ""]
    if seed_count(table) > 1:
        kinds = band_kinds(cells, [key for key, _, _ in plotted])
        lines += [
            "Bands across seeds: "
            + "; ".join(f"`{key}` {BAND_CAPTION[kind]}" for key, kind in kinds.items())
            + " (a t-interval that would show impossible values, below zero for a positive quantity or far "
            "beyond the observed values of a heavy-tailed one, is replaced).",
            "",
        ]
    lines += [f"## {title}", ""]
    lines += [f"| {first} | gen | " + " | ".join(keys) + " |", "|" + "---|" * (2 + len(keys))]
    for r in shown:
        lines.append(
            f"| {r[M.LINEAGE]} | {r[M.GENERATION]} | " + " | ".join(_fmt(r.get(k, float("nan"))) for k in keys) + " |"
        )
    if failed:
        lines += ["", "## Failed lineages", ""] + [
            f"- `{k}`: {v.splitlines()[-1] if v else ''}" for k, v in failed.items()
        ]
    return "\n".join(lines) + "\n"


def degenerate_jumps(data: MetricsTable | list[dict]) -> list[tuple[str, int, float, float]]:
    """(lineage, generation, rate before, rate) where a lineage's degenerate-sample rate rose by at
    least M.DEGENERATE_JUMP in one generation: a decoding bug or a real loop, to look at before
    reading that lineage's curves as collapse."""
    table = as_table(data)
    if M.DEGENERATE_RATE not in table:
        return []
    rows = table.rows([M.LINEAGE, M.GENERATION, M.DEGENERATE_RATE])
    by_lineage: dict[str, dict[int, float]] = {}
    for r in rows:
        value = r.get(M.DEGENERATE_RATE)
        if value is not None and math.isfinite(value):
            by_lineage.setdefault(r[M.LINEAGE], {})[r[M.GENERATION]] = value
    out = []
    for lineage, rates in sorted(by_lineage.items()):
        gens = sorted(rates)
        for before, k in zip(gens, gens[1:]):
            if rates[k] - rates[before] >= M.DEGENERATE_JUMP:
                out.append((lineage, k, rates[before], rates[k]))
    return out


def degenerate_section(data: MetricsTable | list[dict]) -> list[str]:
    jumps = degenerate_jumps(data)
    if not jumps:
        return []
    lines = [
        "",
        "## Degenerate samples: check decoding before reading these lineages as collapse",
        "",
        f"`{M.DEGENERATE_RATE}` (samples in a loop of period <= {M.DEGENERATE_PERIOD} over {M.DEGENERATE_SPAN} "
        f"tokens, or with {M.WHITESPACE_RUN} characters of whitespace) rose by >= {M.DEGENERATE_JUMP:g} in one "
        "generation:",
        "",
        "| lineage | generation | before | rate |",
        "|---|---|---|---|",
    ]
    return lines + [f"| {name} | {k} | {a:.2f} | {b:.2f} |" for name, k, a, b in jumps]


def theory_laws(root: Path, cells: Cells) -> dict:
    """{(regime, c): {metric: exact expectation per generation}} for a theory study whose family
    has exact laws for that cell (engines/laws.py); {} for a language-model study."""
    import json

    from ..pipeline.theory import TRUTH

    run = RunDir(root)
    cfg = run.load_config()
    truth_file = run.data_dir / TRUTH
    if cfg.model.family == "lm" or not truth_file.is_file() or not cells.by_cell:
        return {}
    truth, pool = json.loads(truth_file.read_text()), np.load(run.data_dir / "train.npy")
    last = max(max(series) for series in cells.by_cell.values())
    out = {}
    for regime, c in sorted(cells.by_cell):
        law = exact_law(cfg.model.family, truth, pool, rows_per_generation(cfg), regime, c, last)
        if law:
            out[(regime, c)] = law
    return out


def law_section(cells: Cells, laws: dict) -> list[str]:
    """Per cell and metric with an exact law: the largest deviation of the measured mean from the
    law over the generations, in standard errors of the mean across the cell's lineages."""
    if not laws:
        return []
    lines = [
        "",
        "## Exact laws: measured mean against the law",
        "",
        "Per cell: the mean over its lineages at each generation against the law's expectation "
        "(`collapse/engines/laws.py`), in standard errors of that mean; |z| < 4 at every generation is "
        "what a correct framework gives. The figure draws each law dashed.",
        "",
        "| regime | c | metric | lineages | law at last gen | mean at last gen | max abs z | at gen |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for (regime, c), by_key in sorted(laws.items()):
        series = cells.by_cell.get((regime, c), {})
        for key, law in by_key.items():
            worst, at, n, last_mean = 0.0, 0, 0, float("nan")
            # Where every lineage has the same value (all 30 categories alive, no mass lost) the spread
            # says nothing: the standard error is then that of one lineage differing by the smallest
            # non-zero value the metric takes in the cell (a count's smallest count, a mass's smallest
            # lost category), a conservative stand-in for its resolution.
            finite = {g: v[np.isfinite(v)] for g in series for v in [cells.raw((regime, c), g, key)]}
            nonzero = [np.abs(v[v != 0]) for v in finite.values()]
            step = min((float(v.min()) for v in nonzero if len(v)), default=0.0)
            for g, expected in enumerate(law):
                values = finite.get(g, np.zeros(0))
                if len(values) < 2:
                    continue
                n, mean = len(values), float(values.mean())
                sd = float(values.std(ddof=1))
                se = (sd if sd > 0 else step) / math.sqrt(len(values))
                if se == 0:
                    continue
                z = abs(mean - expected) / se
                if z > worst:
                    worst, at = z, g
                last_mean = mean
            if n:
                lines.append(
                    f"| {regime} | {c:g} | {key} | {n} | {law[-1]:.4g} | {last_mean:.4g} | {worst:.2f} | {at} |"
                )
    return lines


def write_report(
    root: str | Path, failed: dict[str, str] | None = None, rows: list[dict] | None = None
) -> MetricsTable:
    """The plot and report.md, from metrics.jsonl as columns (`rows`: its rows, when the caller has
    them in memory); returns the table."""
    root = Path(root)
    run = RunDir(root)
    if rows is None and not (root / METRICS_FILE).is_file():
        read_metrics(root)  # one line: no metrics.jsonl, run or resume first
    table = run.metrics_table() if rows is None else MetricsTable.from_rows(rows)
    cells = Cells(table)
    name = run.load_config().study.name
    reference = real_reference(root)
    laws = theory_laws(root, cells) if table.n else {}
    if table.n:
        plot(table, root / PLOT_FILE, reference, laws)
    search = run.search_events()
    if search:
        plot_search(search, root / SEARCH_PLOT_FILE)
    paired = paired_detections(run, table) if table.n else {}
    sections = law_section(cells, laws) + search_section(search)
    text = markdown(table, name, failed or {}, reference, sections, provenance(root), paired)
    write_text_atomic(root / REPORT_FILE, text)
    return table

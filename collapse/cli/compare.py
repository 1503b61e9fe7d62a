"""`collapse compare RUN_A RUN_B`: two studies side by side (a baseline and a mitigation, two
decodings, two codebases) with the paired test the report's early warning uses.

Lineages are matched by their grid coordinates (regime, contamination, seed, and the extra axes
both studies have). At each generation both finished, the per-unit values (`metrics.PAIRED`: per
held-out sequence, or per sample drawn with the same random numbers) of B minus A are averaged over
the cell's seeds per unit, and a two-sided sign-flip permutation test asks whether they differ;
Holm's adjustment runs over the cell's generations, as the report's does over a lineage's. Studies
whose held-out sets differ are refused: their per-sequence values do not pair.
"""

from __future__ import annotations

import math
import warnings
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..core import metrics as M
from ..core.checkpoint import write_bytes_atomic, write_text_atomic
from ..core.config import ConfigError
from ..core.seeding import derive_seed
from ..core.stats import ALPHA, BAND_CAPTION, band, band_kind, holm, paired_p_value
from .results import Study

COMPARE_TABLE = "compare.csv"
COMPARE_PLOT = "compare.png"


@dataclass
class Comparison:
    matched: dict[tuple, tuple[str, str]]  # cell + seed -> (lineage in A, lineage in B)
    only_a: list[str] = field(default_factory=list)
    only_b: list[str] = field(default_factory=list)
    rows: list[dict] = field(default_factory=list)  # one per (cell, generation, metric)


def refuse_unpaired(a: Study, b: Study) -> None:
    """One line (exit 2) when the two studies scored different held-out sequences."""
    ha, hb = a.heldout(), b.heldout()
    differ = [k for k in ha if ha[k] != hb[k]]
    if differ:
        k = differ[0]
        raise ConfigError(
            f"{a.where} and {b.where} were evaluated on different held-out sets ({k}: {ha[k]} vs {hb[k]}); "
            "a paired test needs the same sequences: compare studies made with the same data and tokenizer"
        )


def _match_key(study: Study, name: str, axes: list[str]) -> tuple:
    spec = study.specs[name]
    extra = dict(spec.extra)
    return (spec.regime, spec.contamination, *(extra.get(a) for a in axes), spec.seed)


def match_lineages(a: Study, b: Study) -> Comparison:
    axes = sorted(set(a.axes) & set(b.axes))
    keys_a: dict = defaultdict(list)
    keys_b: dict = defaultdict(list)
    for name in a.lineages:
        keys_a[_match_key(a, name, axes)].append(name)
    for name in b.lineages:
        keys_b[_match_key(b, name, axes)].append(name)
    matched = {k: (keys_a[k][0], keys_b[k][0]) for k in keys_a if len(keys_a[k]) == 1 and len(keys_b.get(k, [])) == 1}
    done_a = {n for n, _ in matched.values()}
    done_b = {n for _, n in matched.values()}
    return Comparison(
        matched,
        sorted(n for n in a.lineages if n not in done_a),
        sorted(n for n in b.lineages if n not in done_b),
    )


def compare(a: Study, b: Study, metrics: list[str] | None = None, resamples: int = 10_000) -> Comparison:
    refuse_unpaired(a, b)
    result = match_lineages(a, b)
    rows_a = {(r[M.LINEAGE], r[M.GENERATION]): r for r in a.metrics().to_dict("records")}
    rows_b = {(r[M.LINEAGE], r[M.GENERATION]): r for r in b.metrics().to_dict("records")}
    wanted = metrics or list(M.PAIRED)
    cells: dict = defaultdict(list)  # cell -> [(lineage A, lineage B)]
    for key, pair in sorted(result.matched.items(), key=lambda kv: str(kv[0])):
        cells[key[:-1]].append(pair)
    rng = np.random.default_rng(derive_seed("compare", a.config.study.seed, b.config.study.seed))
    for cell, pairs in cells.items():
        generations = sorted(
            {k for (n, k) in rows_a if n == pairs[0][0]} & {k for (n, k) in rows_b if n == pairs[0][1]}
        )
        for metric in wanted:
            field_name = M.PAIRED.get(metric)
            found = []
            for k in generations:
                diffs, values_a, values_b = [], [], []
                for name_a, name_b in pairs:
                    if (name_a, k) not in rows_a or (name_b, k) not in rows_b:
                        continue
                    values_a.append(rows_a[(name_a, k)].get(metric, float("nan")))
                    values_b.append(rows_b[(name_b, k)].get(metric, float("nan")))
                    ua = a.per_unit(name_a, k).get(field_name) if field_name else None
                    ub = b.per_unit(name_b, k).get(field_name) if field_name else None
                    if ua is not None and ub is not None and len(ua) == len(ub):
                        diffs.append(np.asarray(ub, float) - np.asarray(ua, float))
                if not values_a:
                    continue
                p = float("nan")
                effect = float("nan")
                if diffs and len({len(d) for d in diffs}) == 1:
                    with warnings.catch_warnings():  # a sequence without tail tokens is NaN in every seed
                        warnings.simplefilter("ignore", RuntimeWarning)
                        d = np.nanmean(np.stack(diffs), axis=0)  # per unit, averaged over the cell's seeds
                    effect = float(np.nanmean(d))
                    higher = paired_p_value(d, np.zeros_like(d), resamples, rng, higher=True)
                    lower = paired_p_value(d, np.zeros_like(d), resamples, rng, higher=False)
                    p = min(1.0, 2 * min(higher, lower))
                found.append(
                    {
                        "cell": cell,
                        M.GENERATION: k,
                        "metric": metric,
                        "seeds": len(values_a),
                        "a": float(np.nanmean(values_a)),
                        "b": float(np.nanmean(values_b)),
                        "effect_per_unit": effect,
                        "p_raw": p,
                    }
                )
            for row, adjusted in zip(found, holm([r["p_raw"] for r in found])):
                row["p_holm"] = adjusted
                row["verdict"] = (
                    "—" if not adjusted == adjusted else ("B higher" if row["effect_per_unit"] > 0 else "B lower")
                )
                if adjusted == adjusted and adjusted >= ALPHA:
                    row["verdict"] = "no difference found"
            result.rows += found
    return result


def cell_label(cell: tuple, axes: list[str]) -> str:
    regime, c, *extra = cell
    return f"{regime} c={c:g}" + "".join(f" {a}={v}" for a, v in zip(axes, extra))


def render(result: Comparison, a: Study, b: Study, console) -> None:
    from rich.table import Table

    axes = sorted(set(a.axes) & set(b.axes))
    console.print(f"A = {a.where} ({a.config.study.name}), B = {b.where} ({b.config.study.name})")
    by = ", ".join(["regime", "c", *axes, "seed"])
    console.print(f"{len(result.matched)} lineages matched by ({by})", soft_wrap=True)
    for label, names in (("only in A", result.only_a), ("only in B", result.only_b)):
        if names:
            console.print(f"{len(names)} {label}: {', '.join(names[:6])}{' ...' if len(names) > 6 else ''}")
    table = Table(title="paired test per cell and generation (B - A; two-sided sign-flip, Holm over generations)")
    for column in ("cell", "gen", "metric", "seeds", "A", "B", "B-A per unit", "p (Holm)", "verdict"):
        table.add_column(column)
    for r in result.rows:
        table.add_row(
            cell_label(r["cell"], axes),
            str(r[M.GENERATION]),
            r["metric"],
            str(r["seeds"]),
            f"{r['a']:.4g}",
            f"{r['b']:.4g}",
            f"{r['effect_per_unit']:+.3g}",
            "—" if math.isnan(r["p_holm"]) else f"{r['p_holm']:.3g}",
            r["verdict"],
        )
    console.print(table)


def write_outputs(result: Comparison, a: Study, b: Study, out: Path, metric: str = M.PPL_REAL) -> list[Path]:
    """compare.csv (every row of the table) and compare.png (A against B per cell, bands across seeds)."""
    import io

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import pandas as pd

    axes = sorted(set(a.axes) & set(b.axes))
    out.mkdir(parents=True, exist_ok=True)
    frame = pd.DataFrame([{**r, "cell": cell_label(r["cell"], axes)} for r in result.rows])
    write_text_atomic(out / COMPARE_TABLE, frame.to_csv(index=False))
    frames = {"A": a.metrics(), "B": b.metrics()}
    cells: dict = defaultdict(dict)
    for key, (name_a, name_b) in result.matched.items():
        cells[key[:-1]].setdefault("A", []).append(name_a)
        cells[key[:-1]].setdefault("B", []).append(name_b)
    shown = sorted(cells, key=str)[:12]
    fig, grid = plt.subplots(1, max(1, len(shown)), figsize=(3.6 * max(1, len(shown)), 3.2), squeeze=False)
    groups = []
    for frame_ in frames.values():
        if metric in frame_:
            groups += [list(g[metric]) for _, g in frame_.groupby([M.REGIME, M.CONTAMINATION, M.GENERATION])]
    kind = band_kind(groups)
    for ax, cell in zip(grid[0], shown):
        for side, color in (("A", "tab:blue"), ("B", "tab:orange")):
            frame_ = frames[side]
            if metric not in frame_:
                continue
            mine = frame_[frame_[M.LINEAGE].isin(cells[cell][side])]
            gens = sorted(mine[M.GENERATION].unique())
            drawn = [band(list(mine[mine[M.GENERATION] == g][metric]), kind) for g in gens]
            centers = [d[0] if d else float(mine[mine[M.GENERATION] == g][metric].mean()) for d, g in zip(drawn, gens)]
            ax.plot(gens, centers, marker="o", ms=3, color=color, label=side)
            if all(d is not None for d in drawn):
                ax.fill_between(gens, [d[1] for d in drawn], [d[2] for d in drawn], color=color, alpha=0.2, lw=0)
        if kind == "log":
            ax.set_yscale("log")
        ax.set_title(cell_label(cell, axes), fontsize=8)
        ax.set_xlabel("generation")
        ax.grid(alpha=0.3)
    grid[0][0].set_ylabel(metric)
    grid[0][0].legend(fontsize=8)
    fig.suptitle(f"A = {a.config.study.name} vs B = {b.config.study.name}: {metric} ({BAND_CAPTION[kind]})", fontsize=9)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=150)
    plt.close(fig)
    write_bytes_atomic(out / COMPARE_PLOT, buf.getvalue())
    return [out / COMPARE_TABLE, out / COMPARE_PLOT]

"""Results as data: `collapse.open_study` (locally and at a file:// URI), `collapse export`,
`collapse compare`, the W&B table of final rows, generation 0's directory, honest bands."""

from __future__ import annotations

import json
import math
import subprocess

import numpy as np
import pandas as pd
import pytest

import collapse
from collapse.cli.main import main
from collapse.core import metrics as M
from collapse.core.rundir import read_metrics
from collapse.core.stats import BAND_LOG, BAND_PERCENTILE, BAND_T, band, band_kind

from .conftest import CLI, CONFIGS, set_args, tiny_overrides

LINEAGE = "c0.50-replace-s0"


def _study(corpus, out, **extra) -> None:
    overrides = tiny_overrides(
        corpus,
        **{"grid.contamination": [0.5], "grid.regime": ["replace"], "grid.seed": [0, 1], "study.generations": 2}
        | extra,
    )
    assert main(["run", str(CONFIGS / "smoke.yaml"), "--out", str(out)] + set_args(overrides)) == 0


@pytest.fixture(scope="module")
def studies(small_corpus, tmp_path_factory):
    """A baseline (W&B offline), the same study with a provenance cap on synthetic data, and one
    scored on fewer held-out sequences."""
    root = tmp_path_factory.mktemp("results")
    _study(small_corpus, root / "base", **{"tracking.wandb": "offline"})
    _study(small_corpus, root / "capped", **{"mitigation.filter": "provenance_cap", "mitigation.synthetic_cap": 0.2})
    _study(small_corpus, root / "fewer", **{"data.eval_sequences": 32, "study.generations": 1})
    return root


def _same(a, b) -> bool:
    if isinstance(a, float) and isinstance(b, float) and math.isnan(a) and math.isnan(b):
        return True
    return a == b or (isinstance(a, float) and isinstance(b, float) and a == pytest.approx(b, rel=1e-12))


def _frame_equals_rows(frame: pd.DataFrame, rows: list[dict]) -> None:
    assert len(frame) == len(rows)
    for got, want in zip(frame.to_dict("records"), rows):
        for key in set(got) | set(want):
            value = want.get(key, float("nan"))
            assert (
                _same(got[key], float(value) if isinstance(value, int) and key not in ("seed", "generation") else value)
                or got[key] == value
            ), (key, got[key], value)


@pytest.mark.parametrize("as_uri", [False, True], ids=["path", "file-uri"])
def test_open_study_reads_every_generation_like_the_files(studies, as_uri, tmp_path, monkeypatch):
    monkeypatch.setenv("COLLAPSE_CACHE", str(tmp_path / "cache"))
    base = studies / "base"
    study = collapse.open_study(base.as_uri() if as_uri else str(base))
    rows = read_metrics(base)
    frame = study.metrics()
    assert list(frame.columns[:5]) == [M.LINEAGE, M.REGIME, M.CONTAMINATION, M.SEED, M.GENERATION]
    assert frame[M.SEED].dtype == np.int64 and frame[M.CONTAMINATION].dtype == np.float64
    i = list(frame.columns).index(M.PPL_REAL)
    assert list(frame.columns[i : i + 3]) == [M.PPL_REAL, M.PPL_REAL + M.CI_LO, M.PPL_REAL + M.CI_HI]
    _frame_equals_rows(frame, rows)
    assert study.config.to_dict() == collapse.open_study(str(base)).config.to_dict()

    for k in (0, 2):  # generation 0 is shared by the lineages: the study finds it
        values = study.per_unit(LINEAGE, k)
        with np.load(base / "lineages" / LINEAGE / f"gen_{k:03d}" / "per_unit.npz") as on_disk:
            assert set(values) == set(on_disk.files) and all(
                np.array_equal(values[f], on_disk[f], equal_nan=True) for f in values
            )
        assert values[M.PER_SEQ_REAL_NLL].shape == (48,)
    corpus = study.samples(LINEAGE, 1)
    assert len(corpus) > 0 and {"input_ids", "text", "lineage", "generation", "parent_checkpoint"} <= set(
        corpus.column_names
    )
    assert set(corpus["generation"]) == {1} and set(corpus["lineage"]) == {LINEAGE}
    model = study.model(LINEAGE, 2)
    assert sum(p.numel() for p in model.parameters()) == int(frame[M.NUM_PARAMS].iloc[0])
    with pytest.raises(FileNotFoundError):
        study.samples(LINEAGE, 2)  # the last generation samples no corpus


def test_a_lineages_generation_0_directory_has_the_same_files_as_every_other(studies):
    gen0 = studies / "base" / "lineages" / LINEAGE / "gen_000"
    gen1 = studies / "base" / "lineages" / LINEAGE / "gen_001"
    for name in ("model", "per_unit.npz", "train.json", "timing.json", "metrics.json", "DONE"):
        assert (gen0 / name).exists() and (gen1 / name).exists(), name
    assert np.load(gen0 / "per_unit.npz")[M.PER_SEQ_REAL_NLL].shape == (48,)


def test_export_round_trips_every_value_with_provenance_in_the_parquet(studies, tmp_path):
    import pyarrow.parquet as pq

    base = studies / "base"
    frame = collapse.open_study(str(base)).metrics()
    for fmt in ("parquet", "csv"):
        out = tmp_path / f"metrics.{fmt}"
        assert main(["export", str(base), "--format", fmt, "--out", str(out)]) == 0
        back = pd.read_parquet(out) if fmt == "parquet" else pd.read_csv(out)
        pd.testing.assert_frame_equal(back, frame, check_exact=True)
    meta = json.loads(pq.read_schema(tmp_path / "metrics.parquet").metadata[b"collapse"])
    manifest = json.loads((base / "manifest.json").read_text())
    assert meta["provenance"]["uid"] == manifest["uid"] and meta["config"]["study"]["name"]
    assert meta["provenance"]["inputs"]["data/eval.npy"]
    assert main(["export", str(base), "--out", str(tmp_path / "missing" / "x.parquet")]) == 2


def test_compare_finds_the_difference_the_reports_show_and_nothing_against_itself(studies, tmp_path):
    from collapse.cli.compare import compare

    base, capped = collapse.open_study(str(studies / "base")), collapse.open_study(str(studies / "capped"))
    result = compare(base, capped, [M.PPL_REAL])
    assert len(result.matched) == 2 and not result.only_a and not result.only_b
    rows = {r[M.GENERATION]: r for r in result.rows}
    assert sorted(rows) == [0, 1, 2]
    assert rows[0]["effect_per_unit"] == 0.0 and rows[0]["verdict"] == "no difference found"  # shared generation 0
    frames = [s.metrics() for s in (base, capped)]
    for k in (1, 2):
        means = [f[f[M.GENERATION] == k][M.PPL_REAL].mean() for f in frames]
        assert rows[k]["a"] == pytest.approx(means[0]) and rows[k]["b"] == pytest.approx(means[1])
    detected = [k for k in (1, 2) if rows[k]["p_holm"] < 0.05]
    assert detected, rows  # per-sequence pairing sees what two training sets of this size do
    for k in detected:  # in the direction each study's own rows show
        assert np.sign(rows[k]["effect_per_unit"]) == np.sign(np.log(rows[k]["b"]) - np.log(rows[k]["a"]))

    itself = compare(base, base)
    assert itself.rows and all(r["verdict"] == "no difference found" for r in itself.rows if r["p_holm"] == r["p_holm"])

    out = tmp_path / "cmp"
    assert main(["compare", str(studies / "base"), str(studies / "capped"), "--out", str(out)]) == 0
    table = pd.read_csv(out / "compare.csv")
    assert set(table["metric"]) >= {M.PPL_REAL} and (out / "compare.png").stat().st_size > 0


def test_compare_refuses_studies_scored_on_different_held_out_sets(studies):
    proc = subprocess.run(
        [*CLI, "compare", str(studies / "base"), str(studies / "fewer")], capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 2
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "different held-out sets" in lines[0], proc.stderr


def test_the_study_level_wandb_run_logs_a_table_of_final_rows(studies):
    tables = list((studies / "base" / "wandb").glob("offline-run-*/files/media/table/final_rows_*.table.json"))
    assert len(tables) == 1, list((studies / "base" / "wandb").glob("*"))
    table = json.loads(tables[0].read_text())
    lineage_col = table["columns"].index(M.LINEAGE)
    generation_col = table["columns"].index(M.GENERATION)
    assert sorted(row[lineage_col] for row in table["data"]) == ["c0.50-replace-s0", "c0.50-replace-s1"]
    assert {row[generation_col] for row in table["data"]} == {2}


def test_bands_never_show_impossible_values():
    rng = np.random.default_rng(0)
    normal = [list(rng.normal(10, 1, 8)) for _ in range(5)]
    assert band_kind(normal) == BAND_T
    # KL divergences across 128 seeds after collapse: positive, a few seeds explode
    heavy = [list(np.exp(rng.normal(0, 3, 128))) for _ in range(5)]
    assert band_kind(heavy) == BAND_LOG
    for values in heavy:
        _, lo, hi = band(values, BAND_LOG)
        assert 0 < lo < hi
    # can be negative; three seeds, one exploded: the t-band would stray far beyond every seed
    nll = [[-1.0, 0.5, 100.0], [-2.0, 0.0, 80.0]]
    recall = [[0.0, 0.0, 0.3], [0.0, 0.1, 0.0]]  # never negative, zeros: a t-band would cross zero
    for groups in (nll, recall):
        assert band_kind(groups) == BAND_PERCENTILE
        for values in groups:
            _, lo, hi = band(values, BAND_PERCENTILE)
            assert min(values) <= lo <= hi <= max(values)


def test_the_docs_example_runs_on_a_finished_study(studies, tmp_path, monkeypatch):
    """docs/results.md's notebook-style example, as written, against a finished study."""
    import contextlib
    import io
    import re

    page = (CONFIGS.parent / "docs" / "results.md").read_text()
    code = re.search(r"# Results as data.*?```python\n(.*?)```", page, re.S).group(1)
    assert 'collapse.open_study("runs/debug")' in code
    monkeypatch.setenv("COLLAPSE_CACHE", str(tmp_path / "cache"))
    for where in (str(studies / "base"), (studies / "base").as_uri()):
        out = io.StringIO()
        with contextlib.redirect_stdout(out):
            exec(code.replace('"runs/debug"', repr(where)), {})  # noqa: S102 - the docs' own code
        assert "ppl_real" in out.getvalue() and "48" in out.getvalue()

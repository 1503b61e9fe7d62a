"""metrics.jsonl as columns (core/columns.py): exact round trips, a stale or damaged columns file
never believed, appended lines read on top, and the whole-study readers (status, report) giving
what they gave from the rows."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from collapse.cli.main import main
from collapse.core.columns import COLUMNS_FILE, MetricsTable, load_table
from collapse.core.rundir import METRICS_FILE, RunDir, read_metrics

from .conftest import CONFIGS

ROWS = [
    {"lineage": "a", "generation": 0, "ppl": 3.5, "n": 10, "tag": "x", "axis.v": [1, 2], "flag": True},
    {"lineage": "a", "generation": 1, "ppl": float("nan"), "n": 11, "tag": "y", "axis.v": None},
    {"lineage": "b", "generation": 0, "ppl": 2, "mixed": 1.5, "only_b": "z"},  # an int where others are floats
    {"lineage": "b", "generation": 1, "ppl": 1e300, "mixed": "s", "n": 12, "flag": False},
]


def _same(a: list[dict], b: list[dict]) -> bool:
    """Equal as JSON says (NaN equal to NaN; 2 and 2.0 different)."""
    return [json.dumps(r, sort_keys=True) for r in a] == [json.dumps(r, sort_keys=True) for r in b]


def test_rows_round_trip_exactly_through_columns_and_the_npz(tmp_path):
    table = MetricsTable.from_rows(ROWS)
    assert _same(table.rows(), ROWS)
    assert _same([table.row(i) for i in range(len(ROWS))], ROWS)
    assert table.is_number("ppl") and not table.is_number("mixed") and not table.is_number("flag")
    assert np.isnan(table.numeric("ppl")[1]) and table.present("ppl")[1] and not table.present("n")[2]
    assert type(table.rows()[2]["ppl"]) is int and type(table.rows()[0]["ppl"]) is float
    # the file mirrors the JSONL bytes it was made from, and loads without pickles
    jsonl = tmp_path / METRICS_FILE
    text = "".join(json.dumps(r, sort_keys=True) + "\n" for r in ROWS)
    jsonl.write_text(text)
    import hashlib

    (tmp_path / COLUMNS_FILE).write_bytes(table.to_npz(len(text), hashlib.sha1(text.encode()).hexdigest()))
    assert _same(load_table(jsonl, tmp_path / COLUMNS_FILE).rows(), ROWS)


def test_appended_lines_are_read_on_top_and_a_stale_or_damaged_file_is_ignored(tmp_path):
    import hashlib

    jsonl, columns = tmp_path / METRICS_FILE, tmp_path / COLUMNS_FILE
    head = "".join(json.dumps(r, sort_keys=True) + "\n" for r in ROWS[:2])
    jsonl.write_text(head)
    columns.write_bytes(MetricsTable.from_rows(ROWS[:2]).to_npz(len(head), hashlib.sha1(head.encode()).hexdigest()))
    with open(jsonl, "a") as f:  # a session appends; the last line is cut short (a killed writer)
        f.write("".join(json.dumps(r, sort_keys=True) + "\n" for r in ROWS[2:]) + '{"lineage": "c", "gen')
    assert _same(load_table(jsonl, columns).rows(), ROWS)
    # rewritten with other rows of the same length: the checksum tells, the file is read instead
    other = [dict(r, lineage=r["lineage"].upper()) for r in ROWS]
    jsonl.write_text("".join(json.dumps(r, sort_keys=True) + "\n" for r in other))
    assert _same(load_table(jsonl, columns).rows(), other)
    columns.write_bytes(b"not an npz")
    assert _same(load_table(jsonl, columns).rows(), other)
    assert load_table(tmp_path / "none.jsonl", columns).n == 0


def test_a_study_writes_its_columns_and_status_and_report_read_them(tmp_path, capsys, monkeypatch):
    """A theory study with enough lineages to aggregate: the columns file mirrors metrics.jsonl
    (rewritten as the file doubles during the session, each time matching its bytes); status and
    report agree with the rows; a report from columns equals one from the rows."""
    from collapse.cli.report import markdown
    from collapse.cli.status import snapshot
    from collapse.cluster import progress

    written = []
    write = RunDir.write_metrics_columns
    monkeypatch.setattr(progress, "COLUMNS_FIRST", 10)
    monkeypatch.setattr(RunDir, "write_metrics_columns", lambda self, rows: written.append(write(self, rows)) or True)
    out = tmp_path / "run"
    seeds = "[" + ",".join(map(str, range(8))) + "]"
    assert main(["run", str(CONFIGS / "theory" / "gaussian.yaml"), "--out", str(out), "--local",
                 "--set", "study.generations=3", "--set", f"grid.seed={seeds}"]) == 0  # fmt: skip
    assert len(written) >= 3 and all(written), written  # 10, 20, 40, ... rows: each mirrored the file
    run = RunDir(out)
    rows = read_metrics(out)
    assert (out / COLUMNS_FILE).is_file() and _same(run.metrics_table().rows(), rows)
    snap = snapshot(out)
    assert snap.count("done") == len(rows) == 6 * 8 * 4
    one = rows[5]
    assert snap.rows[(one["lineage"], one["generation"])] == one
    assert snap.rows.value((one["lineage"], one["generation"]), "fit_var") == one["fit_var"]
    assert markdown(run.metrics_table(), "s", {}) == markdown(rows, "s", {})
    # a unit that lost its DONE after the file was written: its lineage is read unit by unit
    name = rows[-1]["lineage"]
    (run.unit_dir(name, 3) / "DONE").unlink()
    snap = snapshot(out)
    assert snap.states[(name, 3)] == "queued" and snap.states[(name, 2)] == "done"
    assert snap.count("done") == len(rows) - 1
    assert (name, 3) not in snap.rows and math.isnan(snap.rows.value((name, 2), "no_such_metric"))


def test_a_row_edited_after_its_unit_was_sealed_is_found_without_reading_every_unit(tmp_path, capsys):
    """report checks rows by two stats per unit; the edited one gets its checksum and is named."""
    out = tmp_path / "run"
    assert main(["run", str(CONFIGS / "theory" / "gaussian.yaml"), "--out", str(out), "--local",
                 "--set", "study.generations=2", "--set", "grid.seed=[0]"]) == 0  # fmt: skip
    row = RunDir(out).unit_dir("c0.50-replace-s0", 2) / "metrics.json"
    row.write_text(row.read_text().replace("0", "1", 1))  # same size, other bytes, a newer mtime
    capsys.readouterr()
    assert main(["report", str(out)]) == 2
    err = capsys.readouterr().err
    assert "c0.50-replace-s0/gen_002/metrics.json does not match its sha256" in err, err


@pytest.mark.parametrize("n", [0, 1])
def test_an_empty_or_single_row_table_reads(n):
    table = MetricsTable.from_rows(ROWS[:n])
    assert table.n == n and _same(table.rows(), ROWS[:n])
    assert len(table.numeric("ppl")) == n

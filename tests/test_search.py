"""Contamination search: bisection on a fake metric, and a real study that launches lineages as
earlier ones report, resumes, and reports its decisions."""

from __future__ import annotations

import json
import math

import pytest

from collapse.cli.main import main
from collapse.cluster.search import ThresholdSearch
from collapse.core.config import ConfigError, load_config
from collapse.core.plan import LineageSpec
from collapse.core.rundir import SEARCH_FILE, read_metrics

from .conftest import CONFIGS


def _spec(c, regime="replace", seed=0):
    return LineageSpec(f"c{c}-{regime}-s{seed}", 0, c, regime, seed)


def test_bisection_on_a_fake_metric_finds_the_threshold_in_log_steps():
    spec = {
        "search": "threshold",
        "metric": "ppl_real",
        "rise": 0.37,
        "at_generation": 2,
        "lo": 0.0,
        "hi": 1.0,
        "tol": 0.05,
    }
    search = ThresholdSearch(spec, [_spec(0.0), _spec(1.0)], run=None)
    rise = lambda c: c  # noqa: E731  metric_G / metric_0 - 1 = c
    assert search.observe(_spec(0.0), 100.0, 100.0 * (1 + rise(0.0))) == []  # bracket not known yet
    todo = search.observe(_spec(1.0), 100.0, 100.0 * (1 + rise(1.0)))
    launched = 0
    while todo:
        (point,) = todo
        launched += 1
        c = point["contamination"]
        assert point["bracket"][0] < c < point["bracket"][1]
        todo = search.observe(_spec(c), 100.0, 100.0 * (1 + rise(c)))
    g = search.group_of(_spec(0.0))
    assert g.result == "found" and 0.37 <= g.threshold <= 0.37 + 0.05
    assert launched == math.ceil(math.log2(1.0 / 0.05))  # one lineage per halving


def test_search_edge_cases_and_lower_is_collapse():
    spec = {
        "search": "threshold",
        "metric": "distinct_2",
        "rise": 0.1,
        "at_generation": 1,
        "lo": 0.2,
        "hi": 0.8,
        "tol": 0.1,
    }
    s = ThresholdSearch(spec, [_spec(0.2), _spec(0.8)], run=None)
    s.observe(_spec(0.2), 1.0, 0.99)
    s.observe(_spec(0.8), 1.0, 0.95)  # distinct-2 falls only 5% even at c = 0.8
    assert s.group_of(_spec(0.2)).result == "none-up-to-hi"
    s = ThresholdSearch(spec, [_spec(0.2), _spec(0.8)], run=None)
    s.observe(_spec(0.2), 1.0, 0.5)
    s.observe(_spec(0.8), 1.0, 0.4)
    assert s.group_of(_spec(0.2)).result == "below-lo" and s.group_of(_spec(0.2)).threshold == 0.2


def test_search_config_errors_name_the_key(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("grid:\n  contamination: {search: threshold, tol: 2.0}\n")
    with pytest.raises(ConfigError, match="grid.contamination.tol"):
        load_config(bad)
    bad.write_text("grid:\n  contamination: {search: threshold, colour: red}\n")
    with pytest.raises(ConfigError, match="colour"):
        load_config(bad)


def test_search_study_launches_lineages_as_results_arrive_and_resumes(ray_session, tmp_path):
    out = tmp_path / "run"
    # linear regression under replace: the test error at generation 3 is ~4x generation 0's at
    # c = 1 and ~1x at c = 0, so a rise of 100% lies inside the bracket
    args = [
        "run",
        str(CONFIGS / "theory" / "linear_regression.yaml"),
        "--out",
        str(out),
        "--set",
        "study.generations=3",
        "--set",
        "grid.seed=[0]",
        "--set",
        "grid.regime=[replace]",
        "--set",
        "grid.contamination={search: threshold, metric: test_error, rise: 1.0, at_generation: 3, tol: 0.1}",
    ]
    assert main(args) == 0
    events = [json.loads(line) for line in (out / SEARCH_FILE).read_text().splitlines()]
    launches = [e for e in events if e["event"] == "launch"]
    (result,) = [e for e in events if e["event"] == "result"]
    rows = read_metrics(out)
    lineages = {r["lineage"] for r in rows}
    assert len(lineages) == 2 + len(launches)  # lo, hi, then one lineage per bisection step
    assert result["result"] == "found" and 3 <= len(launches) <= 4  # ceil(log2(1 / 0.1)) halvings
    observed = {e["contamination"]: e["rise"] for e in events if e["event"] == "observe"}
    threshold = result["threshold"]
    assert observed[threshold] >= 1.0
    below = max(c for c, r in observed.items() if r < 1.0)
    assert threshold - below <= 0.1 + 1e-9 and below < threshold
    report = (out / "report.md").read_text()
    assert "## Contamination search" in report and (out / "contamination_search.png").stat().st_size > 5_000
    # resume: nothing new is launched, nothing reruns, the same rows come back
    before = (out / SEARCH_FILE).read_text()
    assert main(["resume", str(out)]) == 0
    assert (out / SEARCH_FILE).read_text() == before
    assert read_metrics(out) == rows or [{k: v for k, v in r.items() if k != "wall_s"} for r in read_metrics(out)] == [
        {k: v for k, v in r.items() if k != "wall_s"} for r in rows
    ]

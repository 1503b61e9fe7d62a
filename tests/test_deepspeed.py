"""DeepSpeed ZeRO across Ray workers: same losses as one process, consolidated weights that evaluate
the same, data-parallel sampling identical to single-process sampling, and mid-generation resume."""

from __future__ import annotations

import json
import time

import numpy as np
import pytest
import torch

from collapse.cli.main import main
from collapse.core.config import ModelConfig, SampleConfig, TrainConfig
from collapse.core.metrics import frequency_buckets
from collapse.core.rundir import read_metrics
from collapse.engines.corpus import load_documents
from collapse.engines.data import tokenize_to_chunks
from collapse.engines.evaluation import evaluate_real
from collapse.engines.hf_sampler import HFSampler
from collapse.engines.model import load_model, save_model_dir
from collapse.engines.sampling import sample_rows
from collapse.engines.tokenizer import train_bpe
from collapse.engines.torch_engine import TorchEngine
from collapse.engines.workers import DistributedSampler, InitSpec, WorkerGroup

from .conftest import CLI, CONFIGS, kill_session, popen_study, set_args, tiny_overrides

pytestmark = pytest.mark.ray
MODEL = ModelConfig(d_model=32, n_layers=2, n_heads=2, d_ff=64)
# 320 rows / global batch 16 = 20 steps; 2 workers x micro 4 -> 2 accumulation steps per rank.
TRAIN = TrainConfig(
    engine="deepspeed",
    workers=2,
    epochs=1,
    batch_size=16,
    micro_batch_size=4,
    lr=5e-3,
    warmup_steps=4,
    checkpoint_every=0,
)
# fp32 on CPU: the only difference from one process is the order in which the gradient all-reduce
# sums the two ranks' partial gradients (and ZeRO's flattened buffers), ~1e-7 relative per step,
# which the optimizer compounds over 20 steps. 1e-4 relative is far below any real bug (a wrong
# scaling, a skipped or doubled micro-batch changes losses at 1e-2 or more).
RTOL = 1e-4


@pytest.fixture(scope="module")
def setup(small_corpus, tmp_path_factory):
    root = tmp_path_factory.mktemp("ds")
    docs = load_documents(str(small_corpus))
    tok = train_bpe([d.text for d in docs], 300)
    tok.save_pretrained(str(root / "tok"))
    rows = tokenize_to_chunks(tok, docs, 32)[:320]
    np.save(root / "rows.npy", rows)
    init = InitSpec(model=MODEL, vocab_size=len(tok), seq_len=32, eos_id=tok.eos_token_id, seed=3)
    torch.set_num_threads(1)
    reference = init.build()
    ref = TorchEngine(TRAIN).fit(reference, rows, (0, "eq"), root / "ref_ckpt")
    save_model_dir(root / "ref_model", reference, tok)
    return root, tok, rows, init, ref


@pytest.mark.parametrize("stage", ["zero1", "zero2", "zero3"])
def test_two_worker_zero_matches_single_process(ray_session, setup, stage):
    root, tok, rows, init, ref = setup
    cfg = TrainConfig(**{**TRAIN.__dict__, "deepspeed": stage})
    group = WorkerGroup(2, 1)
    try:
        result, sha = group.fit(
            init, root / "rows.npy", cfg, (0, "eq"), root / f"{stage}_ckpt", root / f"{stage}_model", root / "tok"
        )
    finally:
        group.shutdown()
    assert result.steps == ref.steps == 20
    np.testing.assert_allclose(result.losses, ref.losses, rtol=RTOL)
    # the consolidated fp32 weights reload as an HF model and evaluate the same
    buckets = frequency_buckets(np.bincount(rows.reshape(-1), minlength=len(tok)), 0.5, 0.1)
    rare = np.zeros((64, rows.shape[1] - 1), bool)
    a = evaluate_real(load_model(root / "ref_model"), rows[:64], buckets, rare, 32, 10, 0, np.random.default_rng(0))
    b = evaluate_real(
        load_model(root / f"{stage}_model"), rows[:64], buckets, rare, 32, 10, 0, np.random.default_rng(0)
    )
    assert b["ppl_real"] == pytest.approx(a["ppl_real"], rel=RTOL)
    assert len(sha) == 64


def test_data_parallel_sampling_equals_single_process(ray_session, setup):
    root, tok, rows, *_ = setup
    cfg = SampleConfig(batch_size=8, backend="hf")
    group = WorkerGroup(2, 1)
    try:
        dp = DistributedSampler(group, root / "ref_model", cfg)
        got, *_ = sample_rows(None, dp, 28, cfg, 32, tok.eos_token_id, rows, ("dp", 1))
    finally:
        group.shutdown()
    want, *_ = sample_rows(load_model(root / "ref_model"), HFSampler(8), 28, cfg, 32, tok.eos_token_id, rows, ("dp", 1))
    assert np.array_equal(got, want)  # 4 batches spread over 2 ranks, merged in order


def test_sigkill_mid_training_two_workers_resumes_from_step_checkpoint(small_corpus, tmp_path):
    overrides = tiny_overrides(
        small_corpus,
        **{
            "grid.contamination": [1.0],
            "study.generations": 2,
            "train.engine": "deepspeed",
            "train.workers": 2,
            "train.deepspeed": "zero2",
            "train.checkpoint_every": 3,
            "data.tokens_per_generation": 6144,
            "train.batch_size": 8,
            "train.micro_batch_size": 4,
            "tracking.wandb": "disabled",
            "model.init": "previous",
        },
    )
    args = set_args(overrides)
    ref = tmp_path / "ref"
    assert main(["run", str(CONFIGS / "smoke.yaml"), "--out", str(ref), "--num-cpus", "2"] + args) == 0
    expected = [{k: v for k, v in r.items() if k != "wall_s"} for r in read_metrics(ref)]

    out = tmp_path / "killed"
    proc = popen_study(
        [
            *CLI,
            "run",
            str(CONFIGS / "smoke.yaml"),
            "--out",
            str(out),
            "--num-cpus",
            "2",
        ]
        + args
    )
    step_dir = out / "lineages" / "c1.00-replace-s0" / "gen_002" / "train_state"
    t0 = time.time()
    while not list(step_dir.glob("step_*/step.json")) and proc.poll() is None and time.time() - t0 < 300:
        time.sleep(0.05)
    assert proc.poll() is None, "study ended before generation 2 reached a step checkpoint"
    kill_session(proc)
    checkpointed = json.loads(sorted(step_dir.glob("step_*/step.json"))[-1].read_text())["step"]

    assert main(["resume", str(out), "--num-cpus", "2"]) == 0
    meta = json.loads((out / "lineages" / "c1.00-replace-s0" / "gen_002" / "train.json").read_text())
    assert meta["resumed_from_step"] >= checkpointed > 0  # continued from a step checkpoint, not from step 0
    got = [{k: v for k, v in r.items() if k != "wall_s"} for r in read_metrics(out)]
    assert got == expected


def test_one_worker_deepspeed_is_bit_identical_to_the_torch_engine(ray_session, setup):
    root, tok, rows, init, ref = setup
    cfg = TrainConfig(**{**TRAIN.__dict__, "workers": 1, "deepspeed": "zero2"})
    group = WorkerGroup(1, 1)
    try:
        result, _ = group.fit(
            init, root / "rows.npy", cfg, (0, "eq"), root / "one_ckpt", root / "one_model", root / "tok"
        )
    finally:
        group.shutdown()
    assert result.losses == ref.losses


# Execution settings are not part of a study's scientific identity (core.plan.EXECUTION_ONLY): the
# same study on another layout draws the same seeds, so its numbers agree up to float noise.
LAYOUT_RTOL = 1e-4  # measured 2.1e-7 on the 2-core CPU machine (docs/concepts.md, "Determinism and resume")


def test_layout_invariance_torch_one_worker_equals_deepspeed_two_workers(small_corpus, tmp_path):
    common = {
        "grid.contamination": [0.0, 1.0],
        "study.generations": 2,
        "tracking.wandb": "disabled",
        "data.tokens_per_generation": 4096,
        "train.batch_size": 8,
    }
    layouts = {
        "torch": {
            "train.engine": "torch",
            "train.workers": 1,
            "train.micro_batch_size": 8,
            "train.checkpoint_every": 2,
        },
        "deepspeed": {
            "train.engine": "deepspeed",
            "train.workers": 2,
            "train.micro_batch_size": 2,
            "train.deepspeed": "zero2",
            "train.checkpoint_every": 5,
            "eval.batch_size": 16,
        },
    }
    rows = {}
    for name, layout in layouts.items():
        args = set_args(tiny_overrides(small_corpus, **common, **layout))
        assert main(["run", str(CONFIGS / "smoke.yaml"), "--out", str(tmp_path / name), "--num-cpus", "2"] + args) == 0
        rows[name] = {(r["lineage"], r["generation"]): r for r in read_metrics(tmp_path / name)}
    a, b = rows["torch"], rows["deepspeed"]
    assert a.keys() == b.keys()
    worst = 0.0
    for unit in a:
        assert a[unit].keys() == b[unit].keys()
        for key in ("ppl_real", "ppl_real_p99", "loss_tail", "train_loss", "ppl_samples_gen0", "distinct_2"):
            if key in a[unit]:
                rel = abs(a[unit][key] - b[unit][key]) / max(abs(a[unit][key]), 1e-12)
                worst = max(worst, rel)
                assert b[unit][key] == pytest.approx(a[unit][key], rel=LAYOUT_RTOL), (unit, key)
        for key in ("train_tokens", "train_rows", "synthetic_fraction", "train_steps", "num_params"):
            assert a[unit][key] == b[unit][key], (unit, key)  # the same data and schedule, exactly
    print(f"largest relative difference between layouts: {worst:.2e}")


def test_rank0_listens_on_the_node_ip_ray_knows_not_a_loopback_name(ray_session, monkeypatch):
    import socket

    import ray

    from collapse.engines.workers import TrainWorker

    # Common Linux hosts resolve their own name to 127.0.1.1: other nodes could never reach that.
    monkeypatch.setattr(socket, "gethostbyname", lambda name: "127.0.1.1")
    addr, port = TrainWorker(0, 1, 1).address()
    assert addr == ray.util.get_node_ip_address() and port > 0


def test_deepspeed_bf16_on_cpu_keeps_fp32_masters_and_matches_the_torch_engine_in_bf16(ray_session, setup):
    """`train.precision: bf16` turns on DeepSpeed's bf16 section (bf16 weights and activations, fp32
    master weights in the optimizer); the torch engine runs bf16 autocast over fp32 weights. Both are
    bf16 runs of one algorithm: equal to bf16 noise, and each deterministic."""
    root, tok, rows, init, _ = setup
    cfg = TrainConfig(**{**TRAIN.__dict__, "workers": 1, "deepspeed": "zero2", "precision": "bf16"})
    group = WorkerGroup(1, 1)
    try:
        result, _ = group.fit(
            init, root / "rows.npy", cfg, (0, "eq"), root / "bf16_ckpt", root / "bf16_model", root / "tok"
        )
    finally:
        group.shutdown()
    assert result.precision == "bf16"
    saved = load_model(root / "bf16_model")
    assert all(p.dtype == torch.float32 for p in saved.parameters())  # the consolidated fp32 master copy
    torch_cfg = TrainConfig(**{**TRAIN.__dict__, "engine": "torch", "workers": 1, "precision": "bf16"})
    reference = TorchEngine(torch_cfg).fit(init.build(), rows, (0, "eq"), root / "bf16_torch_ckpt")
    assert reference.precision == "bf16"
    np.testing.assert_allclose(result.losses, reference.losses, rtol=2e-3)

"""`sample.backend: vllm`, for real: vLLM's engine on this machine (CPU here, installed by
`launch/install.sh --vllm`; a GPU where there is one). Skipped, with the reason, where vLLM is absent.

What is checked: the sampler's reproducibility contract in fp32 (rerun, another process, batch
order, prefix of a larger corpus), the engine reused across generations by reloading weights in
place, head dims refused up front, a study that reruns to the same metrics, and no process left
behind after a study, a Ctrl-C, or a SIGKILL of the driver."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from collapse.core.rundir import read_metrics

from .conftest import CLI, CONFIGS, REPO, popen_study, set_args, tiny_overrides, wait_for, without_timings
from .test_executors import _assert_all_exit, _session

vllm = pytest.importorskip("vllm", reason="vLLM is not installed (bash launch/install.sh --vllm)")
pytestmark = pytest.mark.vllm

# A vLLM-runnable tiny Llama: head dim 32 (vLLM's CPU attention has no kernel for the smoke model's 16).
VLLM_MODEL = {"model.d_model": 64, "model.n_heads": 2, "model.d_ff": 128, "sample.backend": "vllm"}


@pytest.fixture(scope="module")
def model_dirs(tmp_path_factory):
    from collapse.core.config import ModelConfig
    from collapse.engines.model import build_model, save_model_dir
    from collapse.engines.tokenizer import train_bpe

    root = tmp_path_factory.mktemp("vllm")
    tok = train_bpe(["the quick brown fox jumps over the lazy dog " * 50], 300)
    for i in range(2):
        model = build_model(ModelConfig(d_model=64, n_layers=2, n_heads=2, d_ff=128), len(tok), 64, 0, i)
        save_model_dir(root / f"m{i}", model, tok)
    return root, tok


SAMPLER_SCRIPT = """
import sys, numpy as np, torch
from collapse.engines.sampling import SampleParams
from collapse.engines.vllm_sampler import VLLMSampler
root, out = sys.argv[1], sys.argv[2]
s = VLLMSampler(root + "/m0", max_num_seqs=16, max_model_len=40)
rng = np.random.default_rng(0)
prompts = rng.integers(3, 290, (16, 4)).astype(np.int32)
params = SampleParams(max_new_tokens=24)
a = s.generate(None, prompts, params, ("v",), 0)
b = s.generate(None, prompts[:8], params, ("v",), 0)
rev = s.generate(None, prompts[::-1].copy(), params, ("v",), 0, rows=np.arange(16)[::-1])
s.use(root + "/m1"); c = s.generate(None, prompts, params, ("v",), 0)
s.use(root + "/m0"); d = s.generate(None, prompts, params, ("v",), 0)
torch.set_num_threads(1)
np.savez(out, a=a, b=b, rev=rev, c=c, d=d, reloads=s.reloads, threads=torch.get_num_threads(), ran=s.ran)
s.close()
"""


def _sample_in_a_process(root, out):
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    done = subprocess.run(
        [sys.executable, "-c", SAMPLER_SCRIPT, str(root), str(out)],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return np.load(out)


def test_vllm_sampler_fp32_contract_and_weights_reloaded_in_place(model_dirs, tmp_path):
    root, _ = model_dirs
    one = _sample_in_a_process(root, tmp_path / "one.npz")
    a = one["a"]
    assert a.shape == (16, 4 + 24) and (a[:, :4] == one["a"][:, :4]).all()
    assert np.array_equal(one["b"], a[:8])  # a smaller corpus is a prefix of a larger one
    assert np.array_equal(one["rev"][::-1], a)  # the same rows in reversed order: independent of batch order
    assert not np.array_equal(one["c"], a)  # the reloaded engine samples the next generation's model
    assert np.array_equal(one["d"], a) and int(one["reloads"]) == 2  # ... and reloading back is exact
    assert int(one["threads"]) == 1  # vLLM's no-op torch.set_num_threads does not stay behind
    assert str(one["ran"]) == "vllm (fp32)"
    two = _sample_in_a_process(root, tmp_path / "two.npz")
    assert np.array_equal(two["a"], a)  # another process draws the same corpus


def test_head_dims_refused_up_front_are_the_installed_vllms(tmp_path):
    from vllm.v1.attention.backends.cpu_attn import CPUAttentionBackend

    from collapse.engines.environment import VLLM_CPU_HEAD_DIMS

    assert list(VLLM_CPU_HEAD_DIMS) == list(CPUAttentionBackend.get_supported_head_sizes())
    out = tmp_path / "run"
    t0 = time.time()
    done = subprocess.run(
        [*CLI, "run", str(CONFIGS / "smoke.yaml"), "--out", str(out), "--set", "sample.backend=vllm"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 2 and time.time() - t0 < 60
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and "model.n_heads" in lines[0] and "head dim 16" in lines[0] and "[32, 64" in lines[0]
    assert not out.exists()


def _vllm_study(small_corpus, **extra):
    overrides = tiny_overrides(small_corpus, **{**VLLM_MODEL, "tracking.wandb": "disabled", **extra})
    return [*CLI, "run", str(CONFIGS / "smoke.yaml"), "--num-cpus", "2"] + set_args(overrides)


def _engine_started(out) -> bool:
    logs = list((out / "logs").glob("*")) if (out / "logs").is_dir() else []
    return any("vLLM engine" in p.read_text(errors="replace") for p in logs if p.is_file())


def _corpus_meta(out) -> dict:
    corpus = out / "lineages" / "c1.00-replace-s0" / "gen_001" / "synthetic.json"
    return json.loads(corpus.read_text()) if corpus.is_file() else {}


@pytest.mark.ray
def test_vllm_study_in_worker_processes_and_in_ray_actors_gives_the_same_metrics(ray_session, small_corpus, tmp_path):
    """The same study twice: worker processes (a `collapse` process), then Ray lineage actors (this
    process holds a Ray session): vLLM runs in both, leaves nothing behind, and fp32 reproduces."""
    from collapse.cli.main import main

    out = tmp_path / "processes"
    cmd = _vllm_study(small_corpus) + ["--out", str(out)]
    proc = popen_study(cmd)
    try:
        assert proc.wait(timeout=400) == 0
        _assert_all_exit(proc)  # no engine, worker or forkserver outlives the study
    finally:
        for q in _session(proc):
            q.kill()
    assert _corpus_meta(out).get("sampler") == "vllm (fp32)" and _corpus_meta(out).get("precision") == "fp32"
    ray_out = tmp_path / "ray"
    overrides = tiny_overrides(small_corpus, **{**VLLM_MODEL, "tracking.wandb": "disabled"})
    assert main(["run", str(CONFIGS / "smoke.yaml"), "--out", str(ray_out)] + set_args(overrides)) == 0
    assert _corpus_meta(ray_out).get("sampler") == "vllm (fp32)"
    first, second = without_timings(read_metrics(out)), without_timings(read_metrics(ray_out))
    assert len(first) == 2 * 3 and first == second


@pytest.mark.parametrize("how", ["sigint", "sigkill-driver"])
def test_no_engine_outlives_a_ctrl_c_or_a_killed_driver(small_corpus, tmp_path, how):
    out = tmp_path / "run"
    proc = popen_study(_vllm_study(small_corpus, **{"study.generations": 3}) + ["--out", str(out)])
    try:
        assert wait_for(lambda: _engine_started(out), proc, timeout=300), "no vLLM engine started"
        if how == "sigint":
            os.killpg(proc.pid, signal.SIGINT)
            assert proc.wait(timeout=60) == 130
        else:
            os.kill(proc.pid, signal.SIGKILL)  # the driver alone: its workers must notice and go
            proc.wait(timeout=30)
        _assert_all_exit(proc, grace_s=30.0)
    finally:
        for q in _session(proc):
            q.kill()

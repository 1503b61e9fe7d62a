"""Shared fixtures: offline environment, one Ray per test session, small real-text corpora."""

from __future__ import annotations

import gzip
import json
import os
import sys
from pathlib import Path

import pytest

# Set before anything imports transformers / datasets / wandb.
os.environ.update(
    HF_HUB_OFFLINE="1",
    HF_DATASETS_OFFLINE="1",
    WANDB_MODE="offline",
    WANDB_SILENT="true",
    TOKENIZERS_PARALLELISM="false",
    HF_HUB_DISABLE_PROGRESS_BARS="1",
    HF_DATASETS_DISABLE_PROGRESS_BARS="1",
)

# The commands of the environment running the tests (collapse, ray, sbatch's collapse, moto_server,
# lint-imports, ruff) come first on PATH, also when pytest runs as .venv/bin/python without activation.
os.environ["PATH"] = os.pathsep.join([os.path.dirname(sys.executable), os.environ.get("PATH", "")])

REPO = Path(__file__).resolve().parents[1]
CONFIGS = REPO / "configs"
AUSTEN = REPO / "collapse" / "corpora" / "austen.jsonl.gz"


@pytest.fixture(scope="session", autouse=True)
def _cache(tmp_path_factory):
    # Tokenizers trained in tests are cached per session, never in the user's cache.
    os.environ["COLLAPSE_CACHE"] = str(tmp_path_factory.mktemp("cache"))


@pytest.fixture(scope="session")
def small_corpus(tmp_path_factory) -> Path:
    """40 real Austen chapters as JSONL (a fraction of the embedded corpus: fast to tokenize)."""
    path = tmp_path_factory.mktemp("corpus") / "austen40.jsonl"
    with gzip.open(AUSTEN, "rt") as f, open(path, "w") as out:
        for i, line in enumerate(f):
            if i % 6 == 0:
                out.write(line)
    return path


# The command line a user types, as a subprocess argv prefix: `collapse ...` in this environment.
CLI = [sys.executable, "-m", "collapse.cli.main"]


def set_args(overrides: list[str]) -> list[str]:
    """["k=v", ...] -> ["--set", "k=v", ...]"""
    return [a for o in overrides for a in ("--set", o)]


def tiny_overrides(corpus: Path, **extra) -> list[str]:
    """A study small enough to run in seconds, on real text."""
    base = {
        "data.source": str(corpus),
        "data.tokens_per_generation": 2048,
        "data.seq_len": 32,
        "data.eval_sequences": 48,
        "data.vocab_size": 300,
        "study.generations": 2,
        "eval.num_samples": 16,
        "sample.batch_size": 32,
        "train.batch_size": 16,
        "train.micro_batch_size": 8,
        "train.checkpoint_every": 2,
        "eval.embeddings": False,
        "eval.bootstrap": 20,
        "model.d_model": 32,
        "model.n_layers": 1,
        "model.n_heads": 2,
        "model.d_ff": 64,
    }
    base.update(extra)
    return [f"{k}={json.dumps(v) if not isinstance(v, str) else v}" for k, v in base.items()]


@pytest.fixture(scope="session")
def ray_session():
    """One real local Ray instance for every test that needs one."""
    import ray

    # address="local": a fresh instance, never a cluster some earlier `ray start` left behind
    ray.init(
        address="local", num_cpus=2, include_dashboard=False, object_store_memory=256 * 1024**2, log_to_driver=False
    )
    yield ray
    ray.shutdown()


def popen_study(cmd: list[str]):
    """Start a `collapse` process in its own session, as a user's shell would (and without this
    process's W&B service address, which a real run would not inherit)."""
    import subprocess

    env = {k: v for k, v in os.environ.items() if k != "WANDB_SERVICE"}
    return subprocess.Popen(
        cmd,
        start_new_session=True,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env=env,
        preexec_fn=_default_sigint,
    )


def _default_sigint() -> None:
    """Ctrl-C as a terminal's foreground job gets it. A shell's background job (`.ci/run &`, a
    CI runner's script) starts with SIGINT ignored, every child inherits that, and Python then
    installs no KeyboardInterrupt handler: a Ctrl-C test would see the study run to its end."""
    import signal

    signal.signal(signal.SIGINT, signal.SIG_DFL)


def without_timings(rows: list[dict]) -> list[dict]:
    """Metrics rows minus wall_s: what must be equal between runs of one study."""
    return [{k: v for k, v in r.items() if k != "wall_s"} for r in rows]


def wait_for(predicate, proc, timeout: float = 240.0) -> bool:
    """Poll `predicate` until it holds (True), `proc` exits or `timeout` passes (False)."""
    import time

    t0 = time.time()
    while time.time() - t0 < timeout:
        if predicate():
            return True
        if proc.poll() is not None:
            return False
        time.sleep(0.05)
    return False


def kill_session(proc) -> None:
    """SIGKILL everything in the process's session: the driver, the Ray head it started, the actors
    and training workers (Ray puts each worker in its own process group, so killpg is not enough).
    This is what a dead machine looks like to the run directory."""
    import psutil

    for q in psutil.process_iter():
        try:
            if os.getsid(q.pid) == proc.pid:
                q.kill()
        except (ProcessLookupError, PermissionError, psutil.Error):
            pass
    proc.wait()

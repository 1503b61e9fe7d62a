"""Run directories on a real S3 API (moto's server on 127.0.0.1, reached by s3fs through
AWS_ENDPOINT_URL): a study SIGKILLed mid-run resumes from the bucket alone, and every bad storage
path (mistyped bucket, bad credentials, server down, a server that never answers) is one line,
exit 2, in bounded time, with nothing created."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import threading
import time
from pathlib import Path

import pytest

from .conftest import CLI, CONFIGS, set_args, tiny_overrides

pytestmark = pytest.mark.service
s3fs = pytest.importorskip("s3fs", reason="s3fs is not installed (pip install -e '.[dev]')")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _start_moto(extra_env: dict | None = None) -> tuple[subprocess.Popen, str]:
    exe = shutil.which("moto_server") or pytest.skip("moto_server is not installed (pip install -e '.[dev]')")
    port = _free_port()
    proc = subprocess.Popen(
        [exe, "-H", "127.0.0.1", "-p", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env={**os.environ, **(extra_env or {})},
    )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return proc, url
        except OSError:
            time.sleep(0.2)
    proc.kill()
    pytest.skip("moto_server did not start")


@pytest.fixture(scope="module")
def s3(tmp_path_factory):
    """An S3 API on 127.0.0.1 with one bucket; the environment a user would set."""
    proc, url = _start_moto()
    env = {
        "AWS_ENDPOINT_URL": url,
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_DEFAULT_REGION": "us-east-1",
        "COLLAPSE_STORAGE_TIMEOUT_S": "5",
    }
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    fs = s3fs.S3FileSystem(client_kwargs={"endpoint_url": url})
    fs.mkdir("studies")
    yield fs, env
    for k, v in saved.items():
        os.environ.pop(k) if v is None else os.environ.__setitem__(k, v)
    proc.kill()


def _collapse(args: list[str], env: dict, cache: Path, timeout: float = 600, **kw) -> subprocess.CompletedProcess:
    full = {**os.environ, **env, "COLLAPSE_CACHE": str(cache)}
    full.pop("WANDB_SERVICE", None)
    return subprocess.run(
        [*CLI, *args],
        env=full,
        capture_output=True,
        text=True,
        timeout=timeout,
        **kw,
    )


def _rows(text: str) -> list[dict]:
    import json

    return [{k: v for k, v in json.loads(line).items() if k != "wall_s"} for line in text.splitlines() if line.strip()]


def test_sigkill_then_resume_from_the_bucket_alone(s3, small_corpus, tmp_path):
    fs, env = s3
    overrides = set_args(
        tiny_overrides(
            small_corpus,
            **{
                "grid.contamination": [0.0, 1.0],
                "tracking.wandb": "disabled",
                "train.checkpoint_every": 2,
                "study.generations": 2,
            },
        )
    )
    # the uninterrupted reference
    ref = _collapse(
        ["run", str(CONFIGS / "smoke.yaml"), "--out", "s3://studies/ref", "--local", *overrides], env, tmp_path / "c0"
    )
    assert ref.returncode == 0, ref.stderr[-2000:]
    assert "s3://studies/ref/metrics.jsonl" in ref.stderr  # messages name the URI, not the local cache
    # the same study, SIGKILLed (whole process group) once a unit is in the bucket
    cache = tmp_path / "c1"
    full = {**os.environ, **env, "COLLAPSE_CACHE": str(cache)}
    full.pop("WANDB_SERVICE", None)
    proc = subprocess.Popen(
        [
            *CLI,
            "run",
            str(CONFIGS / "smoke.yaml"),
            "--out",
            "s3://studies/killed",
            "--local",
            *overrides,
        ],
        env=full,
        start_new_session=True,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 300
    while not fs.exists("studies/killed/lineages/c0.00-replace-s0/gen_001/DONE"):
        assert proc.poll() is None and time.monotonic() < deadline, "the study ended before it could be killed"
        time.sleep(0.2)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    shutil.rmtree(cache)  # a fresh machine: nothing local
    resumed = _collapse(["resume", "s3://studies/killed", "--local"], env, cache)
    cache = next(cache.glob("runs/*"))
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert _rows(fs.cat_file("studies/killed/metrics.jsonl").decode()) == _rows(
        fs.cat_file("studies/ref/metrics.jsonl").decode()
    )
    remote = fs.find("studies/killed")
    assert not any(".tmp-" in p for p in remote)  # temporary objects never reach the bucket
    local_logs = [f.relative_to(cache).as_posix() for f in (cache / "logs").rglob("*") if f.is_file()]
    assert all(any(p.endswith(name) for p in remote) for name in local_logs)  # worker logs do (Ray runs)
    assert any(p.endswith("sessions.jsonl") for p in remote)
    # report re-reads what changed remotely and never pulls weights or corpora
    report_cache = tmp_path / "c2"
    out = _collapse(["report", "s3://studies/killed"], env, report_cache)
    assert out.returncode == 0, out.stderr[-2000:]
    assert not list(report_cache.rglob("model.safetensors")) and not list(report_cache.rglob("synthetic"))
    # the remote metrics change (another machine resumed the study): the next report shows the new
    # numbers, and the report.md it pushes back is not the stale one
    import json

    lines = fs.cat_file("studies/killed/metrics.jsonl").decode().splitlines()
    row = json.loads(lines[-1])
    row["ppl_real"] = 12345.678
    fs.pipe_file(
        "studies/killed/metrics.jsonl", ("\n".join(lines[:-1] + [json.dumps(row, sort_keys=True)]) + "\n").encode()
    )
    out = _collapse(["report", "s3://studies/killed"], env, report_cache)
    assert out.returncode == 0 and "12345" in out.stdout.replace(",", ""), out.stdout[-2000:]
    assert "12345" in fs.cat_file("studies/killed/report.md").decode()


def _bad(args: list[str], env: dict, cache: Path, budget_s: float = 60) -> str:
    t0 = time.monotonic()
    proc = _collapse(args, env, cache, timeout=budget_s + 30)
    took = time.monotonic() - t0
    assert proc.returncode == 2, proc.stderr[-2000:]
    err = proc.stderr.strip()
    assert err.startswith("error: ") and err.count("\n") == 0 and "Traceback" not in err, err
    assert took < budget_s, f"{took:.0f}s"
    assert not cache.exists()  # nothing written locally either
    return err


def test_a_mistyped_bucket_is_refused_and_never_created(s3, tmp_path):
    fs, env = s3
    err = _bad(["run", str(CONFIGS / "smoke.yaml"), "--out", "s3://studeis/x", "--local"], env, tmp_path / "c")
    assert "s3://studeis/x" in err and "does not exist" in err
    fs.invalidate_cache()
    assert "studeis" not in [b.rstrip("/") for b in fs.ls("")]
    err = _bad(["resume", "s3://studies/nothing-here"], env, tmp_path / "c")
    assert "no study here" in err
    err = _bad(["report", "s3://studeis/x"], env, tmp_path / "c")
    assert "does not exist" in err


def test_bad_credentials_are_one_line(tmp_path):
    # a server that checks credentials (moto's IAM enforcement from the first request)
    proc, url = _start_moto({"INITIAL_NO_AUTH_ACTION_COUNT": "0"})
    try:
        env = {
            "AWS_ENDPOINT_URL": url,
            "AWS_ACCESS_KEY_ID": "wrong",
            "AWS_SECRET_ACCESS_KEY": "wrong",
            "AWS_DEFAULT_REGION": "us-east-1",
            "COLLAPSE_STORAGE_TIMEOUT_S": "5",
        }
        err = _bad(["run", str(CONFIGS / "smoke.yaml"), "--out", "s3://studies/x", "--local"], env, tmp_path / "c")
        assert "s3://studies/x" in err and ("access denied" in err or "credentials" in err), err
    finally:
        proc.kill()


def test_a_server_that_is_down_is_one_line(tmp_path):
    env = {
        "AWS_ENDPOINT_URL": f"http://127.0.0.1:{_free_port()}",
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_DEFAULT_REGION": "us-east-1",
        "COLLAPSE_STORAGE_TIMEOUT_S": "5",
    }
    err = _bad(["run", str(CONFIGS / "smoke.yaml"), "--out", "s3://studies/x", "--local"], env, tmp_path / "c")
    assert "s3://studies/x" in err and "endpoint" in err


def test_a_server_that_never_answers_is_one_line_in_bounded_time(tmp_path):
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen()
    held = []
    stop = threading.Event()

    def accept_and_hold():  # accepts connections, never answers
        listener.settimeout(0.5)
        while not stop.is_set():
            try:
                held.append(listener.accept()[0])
            except OSError:
                pass

    thread = threading.Thread(target=accept_and_hold, daemon=True)
    thread.start()
    try:
        env = {
            "AWS_ENDPOINT_URL": f"http://127.0.0.1:{listener.getsockname()[1]}",
            "AWS_ACCESS_KEY_ID": "testing",
            "AWS_SECRET_ACCESS_KEY": "testing",
            "AWS_DEFAULT_REGION": "us-east-1",
            "COLLAPSE_STORAGE_TIMEOUT_S": "3",
        }
        err = _bad(["status", "s3://studies/x"], env, tmp_path / "c", budget_s=40)
        assert "s3://studies/x" in err and ("did not answer" in err or "endpoint" in err), err
    finally:
        stop.set()
        thread.join()
        listener.close()
        for conn in held:
            conn.close()

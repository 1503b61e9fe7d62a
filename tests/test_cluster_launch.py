"""Joining clusters the way users do: a driver given an explicit address joins a `ray start --head`
that runs with token auth; a run directory on a filesystem without flock is refused up front."""

from __future__ import annotations

import contextlib
import errno
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time

import pytest

from collapse.cli.main import EXIT_CONFIG, main

from .conftest import CLI, CONFIGS, set_args, tiny_overrides


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.ray
def test_driver_joins_a_token_auth_head_by_explicit_address(small_corpus, tmp_path):
    ray_exe = shutil.which("ray") or pytest.skip("the `ray` command is not on PATH")
    port = _free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("RAY_ADDRESS", "RAY_AUTH", "WANDB_SERVICE"))}
    subprocess.run([ray_exe, "get-auth-token", "--generate"], env=env, capture_output=True, check=True)
    # The head as `ray start --head` brings it up when a token exists: with token auth.
    temp_dir = tempfile.mkdtemp(prefix="ray-", dir="/tmp")  # short: Ray's socket paths must fit 107 bytes
    head = subprocess.Popen(
        [
            ray_exe,
            "start",
            "--head",
            "--block",
            f"--port={port}",
            "--num-cpus=2",
            "--include-dashboard=false",
            f"--temp-dir={temp_dir}",
        ],
        env={**env, "RAY_AUTH_MODE": "token"},
        start_new_session=True,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                assert head.poll() is None and time.monotonic() < deadline, "ray start --head did not come up"
                time.sleep(0.5)
        args = set_args(tiny_overrides(small_corpus, **{"study.generations": 1, "tracking.wandb": "disabled"}))
        proc = subprocess.run(
            [
                *CLI,
                "sweep",
                str(CONFIGS / "smoke.yaml"),
                "--out",
                str(tmp_path / "run"),
                "--address",
                f"127.0.0.1:{port}",
                *args,
            ],
            env=env,
            capture_output=True,
            text=True,
            timeout=600,
        )  # no RAY_AUTH_MODE in the driver's environment: collapse sends the token it finds
        assert proc.returncode == 0, proc.stderr[-3000:]
        assert (tmp_path / "run" / "metrics.jsonl").is_file()
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(head.pid, signal.SIGTERM)
        try:
            head.wait(60)
        except subprocess.TimeoutExpired:
            os.killpg(head.pid, signal.SIGKILL)
        shutil.rmtree(temp_dir, ignore_errors=True)


def test_a_filesystem_without_flock_is_refused_with_one_line(tmp_path, capsys, monkeypatch):
    import fcntl

    def no_locks(fd, op):
        raise OSError(errno.ENOLCK, "No locks available")

    monkeypatch.setattr(fcntl, "flock", no_locks)
    out = tmp_path / "lustre" / "run"
    out.parent.mkdir()
    assert main(["run", str(CONFIGS / "smoke.yaml"), "--out", str(out), "--local"]) == EXIT_CONFIG
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1 and "flock" in err and str(out.parent) in err
    assert not out.exists() and list(out.parent.iterdir()) == []  # nothing written, the probe removed

"""Run directories at fsspec URIs: everything written is mirrored, in order, and a study resumes
from the URI alone (its local working copy deleted)."""

from __future__ import annotations

import json
import shutil

import fsspec
import pytest

from collapse.cli.main import main
from collapse.core.rundir import read_metrics
from collapse.core.storage import cache_dir_for

from .conftest import CONFIGS, set_args, tiny_overrides


@pytest.fixture
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("COLLAPSE_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache"


def test_memory_filesystem_run_is_mirrored_and_resumes_from_the_uri_alone(small_corpus, cache):
    uri = "memory://bucket/studies/tiny"
    overrides = tiny_overrides(
        small_corpus,
        **{
            "grid.contamination": [0.0, 1.0],
            "tracking.wandb": "disabled",
            "train.checkpoint_every": 2,
            "study.generations": 2,
        },
    )
    assert main(["run", str(CONFIGS / "smoke.yaml"), "--out", uri, "--local"] + set_args(overrides)) == 0
    fs, base = fsspec.core.url_to_fs(uri)
    remote = {p[len(base) :].lstrip("/") for p in fs.find(base)}
    for must in (
        "study.yaml",
        "manifest.json",
        "metrics.jsonl",
        "data/train.npy",
        "tokenizer/tokenizer.json",
        "lineages/c1.00-replace-s0/gen_002/DONE",
        "lineages/c1.00-replace-s0/gen_002/model/model.safetensors",
        "lineages/c1.00-replace-s0/gen_001/synthetic/dataset_info.json",
    ):
        assert must in remote, must
    assert not any("train_state" in p for p in remote)  # step checkpoints were mirrored, then pruned with the stage
    assert not any(p.endswith(".lock") or "remote.json" in p for p in remote)
    rows = read_metrics(cache_dir_for(uri))

    # a fresh machine: no local copy at all; resume downloads it and finds nothing left to do
    shutil.rmtree(cache_dir_for(uri))
    assert main(["resume", uri, "--local"]) == 0
    assert read_metrics(cache_dir_for(uri)) == rows  # wall_s too: no unit ran again

    # an unfinished study: drop the last generation remotely and locally, resume rebuilds it identically
    for p in fs.find(base):
        if "/gen_002/" in p and "c1.00-replace" in p:
            fs.rm(p)
    shutil.rmtree(cache_dir_for(uri))
    assert main(["resume", uri, "--local"]) == 0
    strip = lambda rs: [{k: v for k, v in r.items() if k != "wall_s"} for r in rs]  # noqa: E731
    assert strip(read_metrics(cache_dir_for(uri))) == strip(rows)
    assert fs.exists(f"{base}/lineages/c1.00-replace-s0/gen_002/DONE")


def test_local_filesystem_uri_through_ray(ray_session, small_corpus, cache, tmp_path):
    """A second filesystem type (fsspec's local `file://`) with the Ray scheduler and actors, which
    mirror their own writes."""
    remote_root = tmp_path / "remote"
    uri = f"file://{remote_root}/study"
    overrides = tiny_overrides(small_corpus, **{"grid.contamination": [1.0], "tracking.wandb": "offline"})
    assert main(["run", str(CONFIGS / "smoke.yaml"), "--out", uri] + set_args(overrides)) == 0
    mirrored = remote_root / "study"
    assert (mirrored / "lineages" / "c1.00-replace-s0" / "gen_002" / "DONE").is_file()
    assert [json.loads(line) for line in (mirrored / "metrics.jsonl").read_text().splitlines()] == read_metrics(
        cache_dir_for(uri)
    )
    assert list((mirrored / "wandb").glob("offline-run-*"))  # W&B files go up at the end of the study


def test_a_write_whose_upload_failed_reaches_the_remote_before_the_study_continues(cache, tmp_path):
    """The store was full (or the process died) between a local write and its upload: the local
    copy is ahead, and no later write sends that file again. The next session uploads it first,
    in write order, so a marker still lands after what it vouches for."""
    import os

    from collapse.core.checkpoint import write_text_atomic
    from collapse.core.storage import attach, catch_up_remote

    remote = tmp_path / "remote"
    remote.mkdir()
    local = tmp_path / "cache-copy"
    attach(local, f"file://{remote}")
    write_text_atomic(local / "unit" / "kept.txt", "uploaded")
    for name in ("data.txt", "DONE"):  # written locally, never uploaded
        (local / "unit" / name).write_text(name)
    os.utime(local / "unit" / "DONE", ns=(2 * 10**18, 2 * 10**18))  # the marker: written last
    assert sorted(p.name for p in (remote / "unit").iterdir()) == ["kept.txt"]

    assert catch_up_remote(local) == 2
    assert sorted(p.name for p in (remote / "unit").iterdir()) == ["DONE", "data.txt", "kept.txt"]
    assert (remote / "unit" / "data.txt").stat().st_mtime_ns <= (remote / "unit" / "DONE").stat().st_mtime_ns
    assert catch_up_remote(local) == 0 and catch_up_remote(tmp_path / "plain-run") == 0

"""The reduced-scale reproduction configs run end to end (on a tiny slice, in CI)."""

from __future__ import annotations

import json

from collapse.cli.main import main
from collapse.core.rundir import read_metrics

from .conftest import CONFIGS, set_args, tiny_overrides


def test_shumailov_reduced_runs_and_refinetunes_generation0(small_corpus, tmp_path):
    out = tmp_path / "run"
    overrides = tiny_overrides(
        small_corpus, **{"tracking.wandb": "disabled", "train.epochs": 2, "sample.prompt_tokens": 32}
    )
    args = ["run", str(CONFIGS / "repro" / "shumailov2023.yaml"), "--out", str(out), "--local"]
    assert main(args + set_args(overrides)) == 0
    rows = read_metrics(out)
    assert len(rows) == 2 * 3 and {r["contamination"] for r in rows} == {1.0, 0.9}
    gen0_model = next((out / "shared").glob("*/gen_000/model"))
    for k in (1, 2):  # model.init gen0: every generation starts from the real-data model
        meta = json.loads((out / "lineages" / "c0.90-replace-s0" / f"gen_{k:03d}" / "train.json").read_text())
        assert meta["init"] == "gen0" and meta["init_from"] == str(gen0_model.relative_to(out))
        assert meta["training_set"]["rows_by_source"]["real"] > 0  # 10% original data kept
    import datasets

    corpus = datasets.load_from_disk(str(out / "lineages" / "c1.00-replace-s0" / "gen_001" / "synthetic"))
    # Shumailov's blocks: a whole real block (32 tokens here) continued by 32 new tokens by beam
    # search; the row is the continuation only, its prompt recorded by id
    assert set(corpus["num_prompt_tokens"]) == {0} and min(corpus["prompt_id"]) >= 0
    assert (
        set(corpus["decoding"]) == {"beam"}
        and set(corpus["num_beams"]) == {5}
        and set(corpus["repetition_penalty"]) == {3.0}
    )
    assert len(corpus[0]["input_ids"]) == 32

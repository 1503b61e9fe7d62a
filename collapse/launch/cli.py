"""`collapse run|sweep|resume|report|status|validate|plan`.

Exit codes: 0 success; 1 some lineage failed (the rest of the study is kept); 2 bad config,
override or path (one message naming the key/file and the fix, no traceback); 130 interrupted.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from rich.console import Console

from ..core.checkpoint import check_locking
from ..core.config import ConfigError, load_config

console = Console(stderr=True)
EXIT_OK, EXIT_FAILED, EXIT_CONFIG, EXIT_INTERRUPTED = 0, 1, 2, 130


def _offline_defaults() -> None:
    # Nothing in a study downloads weights or data: fail fast instead of waiting on a hub.
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    os.environ.setdefault("WANDB_SILENT", "true")
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    os.environ.setdefault("HF_DATASETS_DISABLE_PROGRESS_BARS", "1")
    if "DS_ACCELERATOR" not in os.environ and not _has_cuda():
        os.environ["DS_ACCELERATOR"] = "cpu"  # say it, instead of DeepSpeed warning that it guessed


def _has_cuda() -> bool:
    import torch

    return torch.cuda.is_available()


def _add_exec_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--local", action="store_true", help="run in this process without Ray (for pdb)")
    p.add_argument("--address", default=None, help="join an existing Ray cluster (e.g. auto or ray://host:10001)")
    p.add_argument("--num-cpus", type=int, default=None, help="CPUs for the local Ray instance (default: all)")
    p.add_argument("--dashboard", action="store_true", help="start the Ray dashboard (bound to 127.0.0.1)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="collapse", description="Recursive-training studies of model collapse.")
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("run", help="run a study from a YAML config")
    p.add_argument("config")
    p.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a config key (value parsed as YAML)",
    )
    p.add_argument("--out", default=None, help="run directory (default runs/<study.name>)")
    _add_exec_args(p)
    p = sub.add_parser("sweep", help="run a study on a Ray cluster (`run` that joins --address, default auto)")
    p.add_argument("config")
    p.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a config key (value parsed as YAML)",
    )
    p.add_argument("--out", default=None, help="run directory on storage every node sees (default runs/<study.name>)")
    p.add_argument(
        "--address",
        default="auto",
        help="the cluster: auto (RAY_ADDRESS or the local head), host:port, or ray://host:10001",
    )
    p.add_argument("--dashboard", action="store_true", help=argparse.SUPPRESS)
    p = sub.add_parser("resume", help="continue an interrupted study from its run directory")
    p.add_argument("dir")
    _add_exec_args(p)
    p = sub.add_parser("report", help="print the table and rewrite the plot and report.md")
    p.add_argument("dir")
    p = sub.add_parser("status", help="lineage x generation grid: done / running / failed / queued, with ETA")
    p.add_argument("dir")
    p.add_argument(
        "--watch", type=float, default=None, metavar="SECONDS", help="refresh every SECONDS until the study ends"
    )
    p = sub.add_parser("plan", help="estimate a study's device-hours and wall time on N GPUs, without running it")
    p.add_argument("config")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    p.add_argument("--gpus", type=int, default=8, help="GPUs available (default 8)")
    p.add_argument(
        "--peak-tflops", type=float, default=None, help="peak TFLOP/s per GPU (default: H100 bf16 dense, 989)"
    )
    p.add_argument("--mfu", type=float, default=None, help="sustained training model-FLOPs utilisation (default 0.35)")
    p = sub.add_parser("validate", help="check a config without running it")
    p.add_argument("config")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    return parser


def _load_checked(path: str, overrides: list[str]):
    """The config, schema-checked, then checked against this machine (paths, installed extras)."""
    from ..engines.environment import check_environment

    cfg = load_config(path, overrides)
    check_environment(cfg)
    return cfg


def _execute(run_dir: Path, args) -> int:
    from ..cluster.study import run_study
    from ..core.rundir import RunDir
    from ..core.storage import remote_uri
    from .report import print_table, write_report

    result = run_study(
        RunDir(run_dir), local=args.local, address=args.address, num_cpus=args.num_cpus, dashboard=args.dashboard
    )
    write_report(run_dir, result.failed)
    print_table(result.rows)
    where = remote_uri(run_dir) or str(run_dir)  # what the user typed, not the local cache
    console.print(
        f"study finished in {result.seconds:.0f}s: {len(result.rows)} rows in {where}/metrics.jsonl, plot "
        f"{where}/collapse_curves.png",
        soft_wrap=True,
    )
    if result.failed:
        for name, error in result.failed.items():
            last = error.strip().splitlines()[-1] if error.strip() else "unknown error"
            details = f"{where}/lineages/{name}/FAILED.json"
            console.print(f"[red]lineage {name} failed[/red]: {last} (details: {details})", soft_wrap=True)
        console.print(f"fix the cause, then `collapse resume {where}` reruns only what is missing", soft_wrap=True)
        return EXIT_FAILED
    return EXIT_OK


def cmd_run(args) -> int:
    from ..core.rundir import RunDir
    from ..core.storage import is_remote, local_run_dir

    cfg = _load_checked(args.config, args.overrides)
    out = str(args.out or Path("runs") / cfg.study.name)
    run_dir = local_run_dir(out, new=True)  # a URI: a local working copy, mirrored to the URI as it is written
    run = RunDir(run_dir)
    if run.exists():
        raise ConfigError(
            f"--out {out} already holds a study; `collapse resume {out}` continues it, or pass another --out"
        )
    check_locking(next(p for p in [run_dir, *run_dir.parents] if p.is_dir()))
    if is_remote(out):
        console.print(f"run directory {out} (working copy {run_dir})")
    run.create(cfg)
    return _execute(run_dir, args)


def cmd_sweep(args) -> int:
    """`run` on an existing cluster: the driver joins it, lineage actors spread over its nodes."""
    args.local, args.num_cpus = False, None
    return cmd_run(args)


def cmd_resume(args) -> int:
    from ..core.rundir import RunDir
    from ..core.storage import local_run_dir
    from ..engines.environment import check_environment

    run_dir = local_run_dir(args.dir)  # a URI: download what the local working copy lacks
    run = RunDir(run_dir)
    check_environment(run.load_config())  # ConfigError if this is not a run dir or cannot run here
    run.manifest()
    check_locking(run_dir)
    return _execute(run_dir, args)


def cmd_report(args) -> int:
    from ..core.rundir import PLOT_FILE, REPORT_FILE, RunDir
    from ..core.storage import local_run_dir
    from .report import print_table, write_report

    run_dir = local_run_dir(args.dir, metadata_only=True)  # a URI: its metrics and markers, fresh; no weights
    RunDir(run_dir).load_config()
    rows = write_report(run_dir)
    print_table(rows)
    console.print(f"wrote {run_dir / PLOT_FILE} and {run_dir / REPORT_FILE}")
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
    from ..core.plan import expand, gen0_groups

    cfg = _load_checked(args.config, args.overrides)
    specs = expand(cfg)
    Console().print(
        f"[green]ok[/green] {args.config}: {len(specs)} lineages x {cfg.study.generations + 1} generations, "
        f"{len(gen0_groups(specs))} shared generation-0 unit(s)"
    )
    return EXIT_OK


COMMANDS = {
    "run": cmd_run,
    "resume": cmd_resume,
    "report": cmd_report,
    "status": cmd_status,
    "validate": cmd_validate,
    "plan": cmd_plan,
    "sweep": cmd_sweep,
}


def main(argv: list[str] | None = None) -> int:
    _offline_defaults()
    args = build_parser().parse_args(argv)
    try:
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

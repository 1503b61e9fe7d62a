"""Seeded fault injection over a whole study: kill it, fill its disk and corrupt its files at points
drawn from every write it makes, recover the way a user would, and check one invariant.

    python -m benchmarks.faults [--points 50] [--seed 0] [--only 7]

A reference run of a small study (2 lineages x generations 0..2, real text, worker processes)
counts its write points (collapse/core/faults.py: every atomic write, rename, delete, link and
upload, in the driver and in the workers). Each fault point is then drawn from a seeded RNG:

    sigkill / sigterm / sigint   at write point n: the study's process group dies / the driver
                                 is preempted / Ctrl-C
    enospc                       write point n fails with "No space left on device"
    truncate / zero / delete     the run is killed at point n, then one of its finished files
                                 (a unit's artifact, a pool, the tokenizer, a log) is damaged
    concurrent                   at point n a second `collapse resume` starts on the same run
    remote                       the run lives at a file:// URI (the object-store path): killed
                                 at point n, and its local cache deleted (a lost node)
    remote-enospc                the same run, and write or upload n fails with ENOSPC

Recovery is what a user does: `collapse report` (must answer or refuse in one line), then
`collapse resume` (nothing to free: the injected disk is full once). The invariant:

  * no command prints a traceback, and a refusal is one line with exit 2;
  * after recovery metrics.jsonl equals the reference in every value but wall_s, and every
    unit's weights have the reference's sha256;
  * no unit that was DONE before recovery ran again, unless resume named it as damaged;
  * every finished unit matches its DONE record (all checksums), no temporary file is left,
    no process of the study outlives it, and nothing outside the run directory changed.

A point is `exact` (recovered to the reference), `refused` (a command said in one line, exit 2,
what the user must fix, and changed nothing) or `failed`. Writes
benchmarks/results/faults.json; `tests/test_faults.py` runs a fixed set of points, and its
`slow` test runs 50 seeded points.
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from collapse.core.faults import FAULTS_ENV
from collapse.core.rundir import DONE, TRAIN_META, RunDir
from collapse.core.storage import cache_dir_for

REPO = Path(__file__).resolve().parents[1]
CLI = [sys.executable, "-m", "collapse.cli.main"]
KINDS = (
    "sigkill",
    "sigterm",
    "sigint",
    "enospc",
    "truncate",
    "zero",
    "delete",
    "concurrent",
    "remote",
    "remote-enospc",
)
STUDY = {
    "grid.contamination": "[0.0,1.0]",
    "study.generations": "2",
    "data.tokens_per_generation": "2048",
    "data.eval_sequences": "48",
    "data.vocab_size": "300",
    "eval.num_samples": "16",
    "eval.bootstrap": "20",
    "eval.embeddings": "false",
    "sample.batch_size": "32",
    "train.checkpoint_every": "2",
    "tracking.wandb": "disabled",
}
TIMEOUT_S = 300  # any one command; a hang is a failure


@dataclass
class Point:
    index: int
    kind: str
    at: int  # the write point
    stage: str = ""  # what the reference run was writing at that point


@dataclass
class Outcome:
    point: Point
    verdict: str = "exact"  # exact | refused | failed
    problems: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    seconds: float = 0.0


@dataclass
class Command:
    rc: int | None  # None: timed out (killed)
    stderr: str
    leftovers: int  # processes of its session still alive 20 s after it exited


class Harness:
    """One working directory: the corpus, the shared cache, the reference run, one dir per point."""

    def __init__(self, work: Path):
        self.work = Path(work)
        self.work.mkdir(parents=True, exist_ok=True)
        self.corpus = self.work / "corpus.jsonl"
        if not self.corpus.is_file():
            with gzip.open(REPO / "collapse" / "corpora" / "austen.jsonl.gz", "rt") as f:
                self.corpus.write_text("".join(line for i, line in enumerate(f) if i % 6 == 0))
        self.cache = self.work / "cache"
        self.env = {k: v for k, v in os.environ.items() if k not in ("WANDB_SERVICE", FAULTS_ENV)}
        # HOME inside the work dir: a write to ~ (a cache, a config) shows up as a change outside the run
        (self.work / "home").mkdir(exist_ok=True)
        self.env.update(HOME=str(self.work / "home"), COLLAPSE_CACHE=str(self.cache))
        self.env.update(HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1")
        self.env.update(WANDB_MODE="offline", TOKENIZERS_PARALLELISM="false")
        self.reference = self.work / "reference"
        self.points_log = self.work / "reference-points.jsonl"

    # -- commands ----------------------------------------------------------------------------------
    def run_args(self, out: str) -> list[str]:
        sets = [a for k, v in {"data.source": str(self.corpus), **STUDY}.items() for a in ("--set", f"{k}={v}")]
        return ["run", str(REPO / "configs" / "smoke.yaml"), "--out", out, *sets]

    def start(self, args: list[str], faults: dict | None = None) -> subprocess.Popen:
        env = dict(self.env, **({FAULTS_ENV: json.dumps(faults)} if faults else {}))
        return subprocess.Popen(
            CLI + args, env=env, start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True
        )

    def finish(self, proc: subprocess.Popen) -> Command:
        try:
            _, err = proc.communicate(timeout=TIMEOUT_S)
            rc = proc.returncode
        except subprocess.TimeoutExpired:
            _kill_session(proc.pid)
            _, err = proc.communicate()
            rc = None
        return Command(rc, err, _wait_session(proc.pid))

    def collapse(self, args: list[str], faults: dict | None = None) -> Command:
        return self.finish(self.start(args, faults))

    # -- the reference -----------------------------------------------------------------------------
    def prepare_reference(self) -> int:
        """Run the study once, uninterrupted, counting its write points; return how many."""
        if not (self.reference / "metrics.jsonl").is_file():
            shutil.rmtree(self.reference, ignore_errors=True)
            counter = self.work / "reference-counter"
            counter.unlink(missing_ok=True)
            self.points_log.unlink(missing_ok=True)
            done = self.collapse(
                self.run_args(str(self.reference)), {"counter": str(counter), "log": str(self.points_log)}
            )
            if done.rc != 0:
                raise RuntimeError(f"the reference run failed (exit {done.rc}):\n{done.stderr}")
        return sum(1 for _ in open(self.points_log))

    def draw(self, seed: int, count: int) -> list[Point]:
        total = self.prepare_reference()
        stages = [_stage(json.loads(line)["path"]) for line in open(self.points_log)]
        rng = random.Random(seed)
        points = []
        for i in range(count):
            kind = KINDS[i % len(KINDS)] if i < len(KINDS) else rng.choice(KINDS)  # every kind at least once
            at = rng.randint(1, total)
            points.append(Point(i, kind, at, stages[at - 1]))
        return points

    # -- one point ---------------------------------------------------------------------------------
    def run_point(self, point: Point) -> Outcome:
        t0 = time.perf_counter()
        outcome = Outcome(point)
        where = self.work / f"point-{point.index:03d}"
        shutil.rmtree(where, ignore_errors=True)
        where.mkdir()
        outside = _snapshot(self.work, skip=("point-", "cache", "reference"))
        remote = point.kind.startswith("remote")
        out = f"file://{where / 'remote'}" if remote else str(where / "run")
        local = cache_dir_for(out) if remote else where / "run"
        counter = where / "counter"
        try:
            self._inject(point, out, local, counter, outcome)
            if outcome.verdict == "refused":
                return outcome
            durable = where / "remote" if remote else local
            before = _done_records(durable)
            report = self.collapse(["report", out])
            _check_command("report", report, outcome, allowed=(0, 2))
            resume = self.collapse(["resume", out])
            _check_command("resume", resume, outcome, allowed=(0, 2))
            if resume.rc == 2:
                outcome.verdict = "refused"
                outcome.notes.append(resume.stderr.strip())
                return outcome
            self._check_invariant(durable, before, outcome)
            if outside != _snapshot(self.work, skip=("point-", "cache", "reference")):
                outcome.problems.append("files outside the run directory changed")
        except Exception as exc:  # noqa: BLE001 - the harness reports, it does not stop
            outcome.problems.append(f"harness: {type(exc).__name__}: {exc}")
        finally:
            outcome.seconds = round(time.perf_counter() - t0, 1)
            if outcome.problems:
                outcome.verdict = "failed"  # its directory stays, with what went wrong
                (where / "outcome.json").write_text(json.dumps(asdict(outcome), indent=2) + "\n")
            else:
                shutil.rmtree(where, ignore_errors=True)
                shutil.rmtree(cache_dir_for(out), ignore_errors=True)
        return outcome

    def _inject(self, point: Point, out: str, local: Path, counter: Path, outcome: Outcome) -> None:
        args = self.run_args(out)
        if point.kind == "concurrent":
            first = self.start(args, {"counter": str(counter)})
            while proc_alive(first) and _count(counter) < point.at:
                time.sleep(0.05)
            second = self.collapse(["resume", out])
            _check_command("second resume", second, outcome, allowed=(0, 2))
            if second.rc == 2 and "in use" not in second.stderr:
                outcome.problems.append(f"second resume refused without saying why: {second.stderr.strip()}")
            outcome.notes.append(f"second resume: exit {second.rc}")
            _check_command("first run", self.finish(first), outcome)
            return
        kind = {"truncate": "sigkill", "zero": "sigkill", "delete": "sigkill", "remote": "sigkill"}.get(point.kind)
        kind = kind or point.kind.removeprefix("remote-")
        faulted = self.collapse(args, {"counter": str(counter), "at": point.at, "kind": kind})
        outcome.notes.append(f"faulted run: exit {faulted.rc}, fired: {_count(counter) >= point.at}")
        _check_command("faulted run", faulted, outcome, allowed=(0, 1, 130, -9, -15, -2))
        if point.kind == "remote":
            shutil.rmtree(local, ignore_errors=True)  # the node is gone; the URI is the run
        if point.kind in ("truncate", "zero", "delete"):
            target = _damage(local, point.kind, random.Random(point.index * 7919 + point.at))
            outcome.notes.append(f"damaged: {target}")

    def _check_invariant(self, run_dir: Path, before: dict[str, str], outcome: Outcome) -> None:
        check_invariant(run_dir, self.reference, before, outcome)


def check_invariant(run_dir: Path, reference: Path, before: dict[str, str], outcome: Outcome) -> None:
    """Recovered exactly: the reference's rows and weights, no DONE unit run again unless resume
    named it damaged, every checksum good, no temporary file left."""
    run, ref = RunDir(run_dir), RunDir(reference)
    problems = outcome.problems
    if _rows(run_dir) != _rows(reference):
        problems.append("metrics.jsonl differs from the uninterrupted run's")
    if _weights(run_dir) != _weights(reference):
        problems.append("some unit's weights differ from the uninterrupted run's")
    redone = {e["unit"] for e in run.events() if e.get("event") == "damaged"}
    for unit, record in before.items():
        now = (run_dir / unit / DONE).read_text() if (run_dir / unit / DONE).is_file() else None
        if now != record and unit not in redone:
            problems.append(f"{unit} was DONE and ran again")
    damaged = run.damaged_units(run.lineages(), ref.load_config().study.generations)
    problems += [f"{d.unit_dir.relative_to(run_dir)}/{d.name} {d.problem} after recovery" for d in damaged]
    leftovers = [p for p in run_dir.rglob(".*.tmp-*")]
    if leftovers:
        problems.append(f"temporary files left: {leftovers[:3]}")


# -- what the invariant compares -------------------------------------------------------------------
def _rows(run_dir: Path) -> list[dict]:
    path = run_dir / "metrics.jsonl"
    rows = [json.loads(line) for line in path.read_text().splitlines()] if path.is_file() else []
    return [{k: v for k, v in r.items() if k != "wall_s"} for r in rows]


def _weights(run_dir: Path) -> dict[str, str]:
    return {
        str(p.parent.relative_to(run_dir)): json.loads(p.read_text()).get("weights_sha256", "")
        for p in sorted(run_dir.glob("**/" + TRAIN_META))
    }


def _done_records(run_dir: Path) -> dict[str, str]:
    return {str(p.parent.relative_to(run_dir)): p.read_text() for p in run_dir.glob("**/" + DONE) if p.is_file()}


def _snapshot(root: Path, skip: tuple[str, ...]) -> dict[str, tuple[int, int]]:
    return {
        str(p.relative_to(root)): (p.stat().st_size, p.stat().st_mtime_ns)
        for p in root.rglob("*")
        if p.is_file() and not p.relative_to(root).parts[0].startswith(skip)
    }


def _damage(run_dir: Path, how: str, rng: random.Random) -> str:
    """Truncate, zero or delete one finished file: a unit's artifact (as DONE records them), a
    pool or tokenizer file, or one of the study's logs."""
    candidates = []
    for done in sorted(run_dir.glob("**/" + DONE)):
        try:
            files = json.loads(done.read_text()).get("files", {})
        except ValueError:
            continue
        candidates += [done.parent / name for name in sorted(files)]
    candidates += sorted(p for p in (run_dir / "data").rglob("*") if p.is_file())
    candidates += sorted(p for p in (run_dir / "tokenizer").rglob("*") if p.is_file())
    candidates += [run_dir / n for n in ("events.jsonl", "sessions.jsonl", "metrics.jsonl") if (run_dir / n).is_file()]
    if not candidates:
        return "nothing finished yet"
    target = rng.choice(candidates)
    if how == "delete":
        target.unlink()
    elif how == "zero":
        target.write_bytes(bytes(target.stat().st_size))
    else:
        target.write_bytes(target.read_bytes()[: target.stat().st_size // 2])
    return str(target.relative_to(run_dir))


def _stage(path: str) -> str:
    """Which part of a study a write point belongs to (for the coverage count)."""
    for part, stage in (
        ("/train_state", "train (step checkpoint)"),
        ("train_rows.npy", "train (rows)"),
        ("/model", "train (weights)"),
        ("train.json", "train (marker)"),
        ("synthetic", "sample"),
        ("metrics.jsonl", "metrics rewrite"),
        ("metrics.json", "evaluate (row)"),
        ("timing.json", "evaluate (row)"),
        ("/DONE", "commit"),
        ("wandb_logged", "tracking marker"),
        ("prepared.json", "prepare"),
        ("study.yaml", "create"),
        ("manifest.json", "create"),
        ("shared_from", "link generation 0"),
        ("/gen_000/", "link generation 0"),
        ("/tokenizer", "prepare"),
        ("/data", "prepare"),
        (".data.tmp", "prepare"),
        (".tokenizer.tmp", "prepare"),
        ("events.jsonl", "scheduler"),
        ("sessions.jsonl", "scheduler"),
        ("FAILED", "scheduler"),
        ("report", "report"),
        ("collapse_curves", "report"),
    ):
        if part in path:
            return stage
    return "study files"


def _check_command(name: str, cmd: Command, outcome: Outcome, allowed: tuple = (0,)) -> None:
    if cmd.rc is None:
        outcome.problems.append(f"{name} did not finish in {TIMEOUT_S} s")
    elif cmd.rc not in allowed:
        outcome.problems.append(f"{name} exited {cmd.rc}: {cmd.stderr.strip()[-400:]}")
    if "Traceback (most recent call last)" in cmd.stderr:
        outcome.problems.append(f"{name} printed a traceback: {cmd.stderr.strip()[-600:]}")
    if cmd.rc == 2 and len(cmd.stderr.strip().splitlines()) != 1:
        outcome.problems.append(f"{name} refused in more than one line: {cmd.stderr.strip()[-400:]}")
    if cmd.leftovers:
        outcome.problems.append(f"{name} left {cmd.leftovers} processes running")


def _count(counter: Path) -> int:
    try:
        return int(counter.read_text().strip() or 0)
    except (FileNotFoundError, ValueError):
        return 0


def proc_alive(proc: subprocess.Popen) -> bool:
    return proc.poll() is None


def _session(sid: int) -> list:
    import psutil

    found = []
    for q in psutil.process_iter():
        try:
            if os.getsid(q.pid) == sid:
                found.append(q)
        except (ProcessLookupError, PermissionError, psutil.Error):
            pass
    return found


def _wait_session(sid: int, timeout: float = 20.0) -> int:
    """How many processes of the session outlive its leader by `timeout` (then they are killed)."""
    t0 = time.time()
    while time.time() - t0 < timeout:
        if not _session(sid):
            return 0
        time.sleep(0.2)
    left = _session(sid)
    _kill_session(sid)
    return len(left)


def _kill_session(sid: int) -> None:
    for q in _session(sid):
        try:
            q.send_signal(signal.SIGKILL)
        except Exception:  # noqa: BLE001 - already gone
            pass


# -- the command ---------------------------------------------------------------------------------
def summarize(outcomes: list[Outcome], kinds: tuple[str, ...] = KINDS) -> dict:
    count = lambda v: sum(1 for o in outcomes if o.verdict == v)  # noqa: E731
    stages: dict[str, int] = {}
    for o in outcomes:
        stages[o.point.stage] = stages.get(o.point.stage, 0) + 1
    return {
        "tried": len(outcomes),
        "exact": count("exact"),
        "refused": count("refused"),
        "failed": count("failed"),
        "stages": dict(sorted(stages.items())),
        "kinds": {k: sum(1 for o in outcomes if o.point.kind == k) for k in kinds},
    }


def run_points(harness, points: list[Point]) -> list[Outcome]:
    """Run each point, printing one line per point (its verdict, and what went wrong or what happened)."""
    outcomes = []
    for point in points:
        o = harness.run_point(point)
        outcomes.append(o)
        said = "; ".join(o.problems) if o.problems else "; ".join(o.notes)
        print(
            f"{point.index:3d} {point.kind:11s} at {point.at:4d} ({point.stage}): {o.verdict} {o.seconds}s  {said}",
            flush=True,
        )
    return outcomes


def parse_harness_args(argv: list[str] | None, points: int, doc: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=doc.splitlines()[0])
    parser.add_argument("--points", type=int, default=points)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--only", type=int, help="replay one point of the seeded draw")
    parser.add_argument("--work", default=None, help="working directory (default: a fresh temporary one)")
    return parser.parse_args(argv)


def finish_points(name: str, config: dict, outcomes: list[Outcome], t0: float, kinds: tuple, **extra) -> int:
    """Print the summary line, write benchmarks/results/<name>.json; exit status 1 if a point failed."""
    summary = {**summarize(outcomes, kinds), "seconds": round(time.perf_counter() - t0, 1), **extra}
    print(
        f"{summary['tried']} points tried: {summary['exact']} recovered exactly, {summary['refused']} refused "
        f"clearly, {summary['failed']} failed ({summary['seconds']:.0f} s)"
    )
    from benchmarks.common import write_results

    write_results(name, config, {**summary, "outcomes": [asdict(o) for o in outcomes]})
    return 1 if summary["failed"] else 0


def main(argv: list[str] | None = None) -> int:
    args = parse_harness_args(argv, 50, __doc__)
    import tempfile

    work = Path(args.work or tempfile.mkdtemp(prefix="collapse-faults-"))
    harness = Harness(work)
    t0 = time.perf_counter()
    total = harness.prepare_reference()
    print(f"reference run: {total} write points ({time.perf_counter() - t0:.0f} s); work dir {work}", flush=True)
    points = harness.draw(args.seed, args.points)
    if args.only is not None:
        points = [points[args.only]]
    outcomes = run_points(harness, points)
    config = {"points": args.points, "seed": args.seed, "study": STUDY}
    return finish_points("faults", config, outcomes, t0, KINDS, write_points=total)


if __name__ == "__main__":
    sys.exit(main())

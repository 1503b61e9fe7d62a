"""Seeded faults on the Ray path: a multi-node cluster started with Ray's CLI on this machine (a head
and two worker nodes, one CPU each, distinct ports, one temp dir), `collapse sweep --address`, and
what clusters do to it, injected at seeded write points of the study.

    python -m benchmarks.ray_faults [--points 30] [--seed 0] [--only 7]

    node          SIGKILL a worker node (its raylet, agents and workers; preferably one hosting a lineage)
    actor         SIGKILL one lineage actor
    rank          SIGKILL one rank of a 2-worker DeepSpeed lineage (ZeRO-2 over gloo)
    driver-kill   SIGKILL the driver; the detached scheduler goes on; `collapse resume --address` re-attaches
    driver-term   SIGTERM the driver; the same
    head          SIGKILL every node (the head lost takes the cluster); a fresh cluster, then resume
    enospc        that write point fails with "No space left on device" (in the driver, scheduler or actor)
    damage        truncate or zero one finished file while the study runs on the cluster

A point is the study's write point n (core/faults.py counts them in every process of every node:
they share this machine's disk): the harness acts once the count reaches n. Recovery is what a
user does: the sweep's own ending, `collapse report`, then `collapse resume --address`. The
invariant is the local harness's (benchmarks/faults.py: exact metrics and weights, no DONE unit
rerun unless named damaged, checksums, no temporaries, no traceback, a refusal in one line with
exit 2, nothing changed outside the run directory) plus the ending rules: every command exits on its
own within its bound (a sweep that finished all its rows within ENDING_BOUND_S of its last row), and
once the cluster is stopped no process of the study or of Ray is left. Writes
benchmarks/results/ray_faults.json; `tests/test_ray_faults.py` runs two fixed points, and its
`slow` test 30 seeded points.
"""

from __future__ import annotations

import json
import random
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import asdict
from pathlib import Path

import psutil

from benchmarks.faults import (
    CLI,
    REPO,
    STUDY,
    Command,
    Harness,
    Outcome,
    Point,
    _check_command,
    _count,
    _damage,
    _done_records,
    _kill_session,
    _snapshot,
    _stage,
    _wait_session,
    check_invariant,
    finish_points,
    parse_harness_args,
    run_points,
)
from benchmarks.ray_cluster import CliCluster
from collapse.cluster.scheduler import WRAP_UP_S
from collapse.core.faults import FAULTS_ENV

KINDS = ("node", "actor", "rank", "driver-kill", "driver-term", "head", "enospc", "damage")
# The most a finished sweep may take after its last row: the wrap-up bound, and the report.
ENDING_BOUND_S = WRAP_UP_S + 60
TIMEOUT_S = 420  # any one command; a hang is a failure
DEEPSPEED_STUDY = {**STUDY, "grid.contamination": "[1.0]", "train.engine": "deepspeed", "train.workers": "2"}
# How each faulted sweep may end: on its own (0) where the cluster survives; killed by the signal
# sent to it; 1 where a unit failed (a full disk) and resume is the user's next step.
ALLOWED = {
    "node": (0,),
    "actor": (0,),
    "rank": (0,),
    "driver-kill": (0, -9),
    "driver-term": (0, 143),
    "head": (0, 1),
    "enospc": (0, 1),
    "damage": (0, 1),
}


class RayHarness:
    def __init__(self, work: Path):
        self.local = Harness(work)  # the corpus, the environment (HOME and caches inside the work dir)
        self.work = self.local.work
        self.env = self.local.env

    def study(self, kind: str) -> str:
        return "deepspeed" if kind == "rank" else "torch"

    def reference(self, study: str) -> Path:
        return self.work / f"reference-{study}"

    def sweep_args(self, study: str, out: Path, address: str) -> list[str]:
        sets = {"data.source": str(self.local.corpus), **(DEEPSPEED_STUDY if study == "deepspeed" else STUDY)}
        args = [a for k, v in sets.items() for a in ("--set", f"{k}={v}")]
        return ["sweep", str(REPO / "configs" / "smoke.yaml"), "--out", str(out), "--address", address, *args]

    def driver_env(self, cluster: CliCluster, faults: dict | None) -> dict[str, str]:
        # No RAY_AUTH_MODE: collapse finds the cluster's token itself, as for a user who has none set.
        env = {k: v for k, v in cluster.env.items() if k != "RAY_AUTH_MODE"}
        return {**env, **({FAULTS_ENV: json.dumps(faults)} if faults else {})}

    def start(self, args: list[str], cluster: CliCluster, faults: dict | None = None) -> subprocess.Popen:
        return subprocess.Popen(
            CLI + args,
            env=self.driver_env(cluster, faults),
            start_new_session=True,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )

    def finish(self, proc: subprocess.Popen) -> tuple[Command, float]:
        """The command's ending, and when it ended (time.time())."""
        try:
            _, err = proc.communicate(timeout=TIMEOUT_S)
            rc = proc.returncode
        except subprocess.TimeoutExpired:
            _kill_session(proc.pid)
            _, err = proc.communicate()
            rc = None
        ended = time.time()
        return Command(rc, err, _wait_session(proc.pid)), ended

    def cluster(self, where: Path) -> CliCluster:
        return CliCluster(where, workers=2, head_cpus=1, worker_cpus=1, env=self.env).start()

    # -- references --------------------------------------------------------------------------------
    def prepare_reference(self, study: str) -> int:
        ref, log = self.reference(study), self.work / f"reference-{study}-points.jsonl"
        if not (ref / "metrics.jsonl").is_file():
            shutil.rmtree(ref, ignore_errors=True)
            counter = self.work / f"reference-{study}-counter"
            counter.unlink(missing_ok=True)
            log.unlink(missing_ok=True)
            cluster = self.cluster(self.work / f"reference-{study}-cluster")
            try:
                proc = self.start(
                    self.sweep_args(study, ref, cluster.address), cluster, {"counter": str(counter), "log": str(log)}
                )
                done, _ = self.finish(proc)
            finally:
                cluster.stop()
            if done.rc != 0:
                raise RuntimeError(f"the {study} reference run failed (exit {done.rc}):\n{done.stderr[-3000:]}")
        return sum(1 for _ in open(log))

    def draw(self, seed: int, count: int) -> list[Point]:
        rng = random.Random(seed)
        points, stages = [], {}  # study -> what its reference wrote at each point
        for i in range(count):
            kind = KINDS[i % len(KINDS)] if i < len(KINDS) else rng.choice(KINDS)
            study = self.study(kind)
            if study not in stages:
                self.prepare_reference(study)
                log = self.work / f"reference-{study}-points.jsonl"
                stages[study] = [_stage(json.loads(line)["path"]) for line in open(log)]
            total = len(stages[study])
            # Not the first or last few points: before the cluster's actors exist, or after the rows.
            at = rng.randint(max(1, total // 8), max(1, total - total // 8))
            points.append(Point(i, kind, at, stages[study][at - 1]))
        return points

    # -- one point ---------------------------------------------------------------------------------
    def run_point(self, point: Point) -> Outcome:
        t0 = time.perf_counter()
        outcome = Outcome(point)
        where = self.work / f"point-{point.index:03d}"
        shutil.rmtree(where, ignore_errors=True)
        where.mkdir()
        study = self.study(point.kind)
        reference = self.reference(study)
        self.prepare_reference(study)
        outside = _snapshot(self.work, skip=("point-", "cache", "reference"))
        out = where / "run"
        clusters = [self.cluster(where / "cluster")]
        try:
            address = self._inject(point, study, out, clusters, where, outcome)
            before = _done_records(out)
            report, _ = self.finish(self.start(["report", str(out)], clusters[-1]))
            _check_command("report", report, outcome, allowed=(0, 2))
            resume = self.start(["resume", str(out), "--address", address], clusters[-1])
            resumed, ended = self.finish(resume)
            _check_command("resume", resumed, outcome, allowed=(0, 2))
            if resumed.rc == 2:
                outcome.verdict = "refused"
                outcome.notes.append(resumed.stderr.strip())
            else:
                self._check_ending("resume", out, ended, outcome)
                check_invariant(out, reference, before, outcome)
        except Exception as exc:  # noqa: BLE001 - the harness reports, it does not stop
            outcome.problems.append(f"harness: {type(exc).__name__}: {exc}")
        finally:
            for cluster in clusters:
                cluster.stop()
                left = cluster.leftovers()
                if left:
                    outcome.problems.append(f"processes of the stopped cluster left: {left[:5]}")
            if outside != _snapshot(self.work, skip=("point-", "cache", "reference")):
                outcome.problems.append("files outside the run directory changed")
            outcome.seconds = round(time.perf_counter() - t0, 1)
            if outcome.problems:
                outcome.verdict = "failed"
                (where / "outcome.json").write_text(json.dumps(asdict(outcome), indent=2) + "\n")
            else:
                shutil.rmtree(where, ignore_errors=True)
        return outcome

    def _inject(
        self, point: Point, study: str, out: Path, clusters: list[CliCluster], where: Path, outcome: Outcome
    ) -> str:
        """Run the faulted sweep to its end; return the address recovery joins."""
        cluster = clusters[0]
        counter = where / "counter"
        faults = {"counter": str(counter)}
        if point.kind == "enospc":
            faults.update(at=point.at, kind="enospc")
        proc = self.start(self.sweep_args(study, out, cluster.address), cluster, faults)
        while proc.poll() is None and _count(counter) < point.at:
            time.sleep(0.02)
        rng = random.Random(point.index * 7919 + point.at)
        fired = proc.poll() is None or point.kind == "enospc"
        if proc.poll() is None:
            outcome.notes.append(self._act(point.kind, cluster, proc, out, rng))
        else:
            outcome.notes.append(f"the sweep ended before point {point.at}")
        if point.kind == "head":
            done, ended = self.finish(proc)  # a driver whose cluster is gone ends on its own, in one line
            last = done.stderr.strip().splitlines()[-1:] or [""]
            outcome.notes.append(f"faulted sweep: exit {done.rc}, last line: {last[0][:200]}")
            _check_command("faulted sweep", done, outcome, allowed=ALLOWED[point.kind])
            cluster.stop()
            clusters.append(self.cluster(where / "cluster-2"))
            return clusters[-1].address
        done, ended = self.finish(proc)
        outcome.notes.append(f"faulted sweep: exit {done.rc}, fired: {fired}")
        _check_command("faulted sweep", done, outcome, allowed=ALLOWED[point.kind])
        if done.rc == 0:
            self._check_ending("faulted sweep", out, ended, outcome)
        return cluster.address

    def _act(self, kind: str, cluster: CliCluster, proc: subprocess.Popen, out: Path, rng: random.Random) -> str:
        if kind == "node":
            hosts = sorted(
                {cluster.node_of_process(p) for p in _actors(cluster, "ray::LineageWorker")} - {"head", None}
            )
            node = rng.choice(hosts or sorted(n for n in cluster.nodes if n != "head" and cluster.processes(n)))
            return f"killed {node} ({cluster.kill_node(node)} processes{', hosting a lineage' if hosts else ''})"
        if kind in ("actor", "rank"):
            name = "ray::LineageWorker" if kind == "actor" else "ray::TrainWorker"
            deadline = time.monotonic() + 30
            while not (found := _actors(cluster, name)) and time.monotonic() < deadline and proc.poll() is None:
                time.sleep(0.1)
            if not found:
                return f"no {name} alive at this point"
            victim = rng.choice(sorted(found, key=lambda p: p.pid))
            victim.kill()
            return f"killed {name} pid {victim.pid} on {cluster.node_of_process(victim)}"
        if kind == "driver-kill":
            proc.send_signal(signal.SIGKILL)
            return "SIGKILLed the driver"
        if kind == "driver-term":
            proc.send_signal(signal.SIGTERM)
            return "SIGTERMed the driver"
        if kind == "head":
            cluster.kill_all()
            return "killed every node (the head with its cluster)"
        if kind == "damage":
            how = rng.choice(("truncate", "zero"))
            return f"{how}: {_damage(out, how, rng)}"
        return "write point fails with ENOSPC"

    def _check_ending(self, name: str, out: Path, ended: float, outcome: Outcome) -> None:
        done = [p.stat().st_mtime for p in out.glob("**/DONE")]
        if done and ended - max(done) > ENDING_BOUND_S:
            outcome.problems.append(
                f"{name} exited {ended - max(done):.0f} s after its last row (bound {ENDING_BOUND_S:.0f} s)"
            )


def _actors(cluster: CliCluster, title: str) -> list[psutil.Process]:
    """The cluster's live processes whose title starts with `title` (Ray names its workers so)."""
    found = []
    for p in cluster.processes():
        try:
            if " ".join(p.cmdline()).startswith(title):
                found.append(p)
        except psutil.Error:
            pass
    return found


def main(argv: list[str] | None = None) -> int:
    args = parse_harness_args(argv, 30, __doc__)
    import tempfile

    work = Path(args.work or tempfile.mkdtemp(prefix="collapse-ray-faults-"))
    harness = RayHarness(work)
    t0 = time.perf_counter()
    points = harness.draw(args.seed, args.points)
    print(f"references ready ({time.perf_counter() - t0:.0f} s); work dir {work}", flush=True)
    if args.only is not None:
        points = [points[args.only]]
    outcomes = run_points(harness, points)
    config = {
        "points": args.points,
        "seed": args.seed,
        "study": STUDY,
        "deepspeed_study": DEEPSPEED_STUDY,
        "nodes": "head + 2 workers, 1 CPU each",
    }
    return finish_points("ray_faults", config, outcomes, t0, KINDS)


if __name__ == "__main__":
    sys.exit(main())

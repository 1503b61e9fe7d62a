"""A multi-node Ray cluster on this machine, started the way users start one: with Ray's CLI.

    with CliCluster(workdir, workers=2) as cluster:      # `ray start --head`, then `ray start --address`
        subprocess.run([... "collapse", "sweep", CONFIG, "--address", cluster.address], env=cluster.env)
        cluster.kill_node("worker-1")                   # SIGKILL that node's raylet and every worker on it

Each node is a `ray start` with its own ports (node manager, object manager, worker range, agents)
and a marker variable in its environment, which every process it starts (raylet, GCS, agents,
workers) inherits: that is how a node's processes are found to "lose" it, and how `stop` ends
exactly the processes of this cluster, never another Ray on the machine (a bare `ray stop` would).
Used by the Ray-path tests and by `benchmarks.faults --ray`.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import psutil

MARKER_ENV = "COLLAPSE_TEST_RAY_NODE"  # "<cluster id>/<node name>" in every process of a node
START_TIMEOUT_S = 120.0
START_ATTEMPTS = 3  # `ray start` runs for a node, where one timed out registering or lost a port
RETRIED = ("timed out during startup", "is used by other components", "Address already in use")


def free_port(avoid: range | None = None, taken: set[int] | None = None) -> int:
    """A free loopback port the kernel hands out, outside `avoid` (a node's worker-port range, which
    lies inside the ephemeral range) and not in `taken` (the node's other ports)."""
    while True:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        if (avoid is None or port not in avoid) and port not in (taken or set()):
            if taken is not None:
                taken.add(port)
            return port


def ray_exe() -> str:
    exe = Path(sys.executable).parent / "ray"
    return str(exe) if exe.is_file() else (shutil.which("ray") or "ray")


def marked_processes(prefix: str) -> list[psutil.Process]:
    """Live processes whose MARKER_ENV starts with `prefix` (a cluster id, or cluster id/node)."""
    needle = f"{MARKER_ENV}={prefix}".encode()
    found = []
    for pid in psutil.pids():
        if pid == os.getpid():
            continue
        try:
            with open(f"/proc/{pid}/environ", "rb") as f:
                if any(v.startswith(needle) for v in f.read().split(b"\0")):
                    found.append(psutil.Process(pid))
        except (OSError, psutil.Error):
            pass
    return found


class CliCluster:
    """A head (`head_cpus` CPUs) and `workers` worker nodes (`worker_cpus` each) on 127.0.0.1."""

    def __init__(
        self,
        workdir: str | Path,
        workers: int = 2,
        head_cpus: int = 1,
        worker_cpus: int = 1,
        env: dict[str, str] | None = None,
    ):
        self.id = uuid.uuid4().hex[:8]
        self.workdir = Path(workdir)
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.head_cpus, self.worker_cpus = head_cpus, worker_cpus
        self.n_workers = workers
        self.nodes: list[str] = []
        # Ray's socket paths must fit 107 bytes: a short temp dir, shared by the nodes of this cluster.
        self.temp_dir = tempfile.mkdtemp(prefix="rayc-", dir="/tmp")
        # Each node's worker ports: a block of 30 inside this cluster's 100 (below Linux's ephemeral
        # range on most machines, but not all), so every other port is picked outside the 100.
        self.worker_port_block = range(
            20000 + (int(self.id, 16) % 200) * 100, 20000 + (int(self.id, 16) % 200) * 100 + 100
        )
        self.port = free_port(self.worker_port_block)
        base = {
            k: v
            for k, v in (os.environ if env is None else env).items()
            if not k.startswith(("RAY_ADDRESS", "RAY_AUTH", "WANDB_SERVICE", "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"))
        }
        # Recent Ray turns token auth on whenever a token exists; make one so every node (and every
        # driver and `ray job submit` given `env`) runs the way a user's token-auth head does.
        subprocess.run([ray_exe(), "get-auth-token", "--generate"], env=base, capture_output=True, timeout=60)
        self.env = {**base, "RAY_AUTH_MODE": "token"}
        self._seen: dict[int, tuple[str, psutil.Process]] = {}  # every process of a node seen so far

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    # -- lifecycle ---------------------------------------------------------------------------------
    def start(self) -> CliCluster:
        head = ["--head", f"--port={self.port}", f"--num-cpus={self.head_cpus}", "--include-dashboard=false"]
        self._start_node("head", [*head, "--disable-usage-stats", f"--temp-dir={self.temp_dir}"])
        for _ in range(self.n_workers):
            self.add_worker()
        return self

    def add_worker(self) -> str:
        name = f"worker-{len([n for n in self.nodes if n.startswith('worker')]) + 1}"
        self._start_node(name, [f"--address={self.address}", f"--num-cpus={self.worker_cpus}"])
        return name

    def _start_node(self, name: str, args: list[str]) -> None:
        lo = self.worker_port_block.start + len(self.nodes) * 30  # a worker-port range per node
        workers = range(lo, lo + 30)

        def command() -> list[str]:
            taken: set[int] = set()  # fresh ports each attempt, none inside the worker range or repeated

            def port() -> int:
                return free_port(self.worker_port_block, taken)

            return [
                ray_exe(),
                "start",
                *args,
                f"--node-manager-port={port()}",
                f"--object-manager-port={port()}",
                f"--min-worker-port={workers.start}",
                f"--max-worker-port={workers.stop - 1}",
                f"--dashboard-agent-listen-port={port()}",
                f"--dashboard-agent-grpc-port={port()}",
                f"--runtime-env-agent-port={port()}",
                f"--metrics-export-port={port()}",
                "--node-ip-address=127.0.0.1",
                f"--object-store-memory={128 * 1024**2}",
            ]

        env = {**self.env, MARKER_ENV: f"{self.id}/{name}"}
        log_path = self.workdir / f"ray-start-{name}.log"
        for attempt in range(1, START_ATTEMPTS + 1):
            with open(log_path, "ab") as log:
                proc = subprocess.run(command(), env=env, stdout=log, stderr=subprocess.STDOUT, timeout=START_TIMEOUT_S)
            if proc.returncode == 0:
                self.nodes.append(name)
                return
            tail = log_path.read_text()[-2000:]
            # `ray start` gives a raylet a fixed 30 s to register with the GCS (ray/_private/node.py);
            # on a loaded 2-core machine that can pass. And a port picked free can be taken by another
            # process before Ray binds it. A user reruns `ray start`: so do we, with fresh ports, after
            # ending what this attempt left (its raylet may still be coming up).
            if attempt == START_ATTEMPTS or not any(sign in tail[-1500:] for sign in RETRIED):
                raise RuntimeError(f"`ray start` for {name} failed ({proc.returncode}, attempt {attempt}):\n{tail}")
            procs = marked_processes(f"{self.id}/{name}")
            for p in procs:
                try:
                    p.kill()
                except psutil.Error:
                    pass
            psutil.wait_procs(procs, timeout=10)

    def processes(self, node: str | None = None) -> list[psutil.Process]:
        """The live processes of `node` (default: all nodes). The raylet and GCS carry the marker;
        Python workers and agents overwrite their environment with their process title, so they are
        found as the raylet's descendants, and remembered: an agent orphaned by a killed raylet
        still belongs to its node."""
        for name in self.nodes:
            for p in marked_processes(f"{self.id}/{name}"):
                try:
                    family = [p, *p.children(recursive=True)]
                except psutil.Error:
                    family = [p]
                for q in family:
                    self._seen.setdefault(q.pid, (name, q))
        return [q for name, q in self._seen.values() if (node is None or name == node) and q.is_running()]

    def kill_node(self, node: str | None, sig: int = signal.SIGKILL) -> int:
        """SIGKILL a node's raylet and every process it started (a machine lost; None: every node).
        Returns how many processes."""
        procs = self.processes(node)
        for p in procs:
            try:
                p.send_signal(sig)
            except psutil.Error:
                pass
        psutil.wait_procs(procs, timeout=10)
        return len(procs)

    def kill_all(self) -> None:
        """Every node at once (the head lost with its cluster)."""
        self.kill_node(None)
        self._reap()

    def stop(self, timeout: float = 20.0) -> None:
        """End this cluster's processes only: SIGTERM, then SIGKILL what is left after `timeout`."""
        procs = self.processes()
        for p in procs:
            try:
                p.terminate()
            except psutil.Error:
                pass
        _, alive = psutil.wait_procs(procs, timeout=timeout)
        for p in alive:
            try:
                p.kill()
            except psutil.Error:
                pass
        self._reap()
        shutil.rmtree(self.temp_dir, ignore_errors=True)

    def _reap(self) -> None:
        deadline = time.monotonic() + 10
        while self.processes() and time.monotonic() < deadline:
            for p in self.processes():
                try:
                    p.kill()
                except psutil.Error:
                    pass
            time.sleep(0.2)

    def leftovers(self) -> list[str]:
        """Processes of this cluster still alive (after `stop`: none may be)."""
        return [f"{q.pid} {q.name()}" for q in self.processes() if q.is_running()]

    def node_of_process(self, process: psutil.Process) -> str | None:
        """Which of this cluster's nodes `process` belongs to (None: not one of ours)."""
        self.processes()
        name, known = self._seen.get(process.pid, (None, None))
        return name if known is not None and known == process else None

    def __enter__(self) -> CliCluster:
        try:
            return self.start()
        except BaseException:
            self.stop()
            raise

    def __exit__(self, *exc) -> None:
        self.stop()

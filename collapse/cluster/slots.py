"""Where units run: slots that each host one lineage at a time. `InProcessSlots` is one slot in
the driver (pdb works, no Ray); `RaySlots` is a pool of lineage actors. The dispatch loop
(`dispatch.py`) drives either through the same four calls: submit, wait, replace, shutdown."""

from __future__ import annotations

import os
import traceback
from pathlib import Path
from typing import Any, Protocol

from ..core.config import Config
from .worker import LineageWorker


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

    def replace(self, slot: int) -> None: ...

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

    def replace(self, slot: int) -> None:
        pass

    def shutdown(self) -> None:
        self.host.shutdown()


class RaySlots:
    """A pool of lineage actors. With DeepSpeed the lineage actor only coordinates; its training
    workers (a placement group of their own) hold the CPUs/GPUs."""

    def __init__(self, run_dir: str, uid: str, cfg: Config, work: int):
        import ray

        deepspeed = cfg.train.engine == "deepspeed"
        cpu, res = cfg.resources.cpu, cfg.resources
        cap = res.max_concurrent or max(1, int(ray.cluster_resources().get("CPU", 1)) // (cpu * cfg.train.workers))
        self.actor = ray.remote(LineageWorker).options(
            num_cpus=0 if deepspeed else cpu, num_gpus=0 if deepspeed else res.gpu, max_restarts=0
        )
        self.run_dir, self.uid = run_dir, uid
        self.size = min(cap, work)
        self.hosts = {h: self.actor.remote(run_dir, uid) for h in range(self.size)}

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

    def replace(self, slot: int) -> None:
        self.hosts[slot] = self.actor.remote(self.run_dir, self.uid)

    def shutdown(self) -> None:
        import ray

        ray.get([h.shutdown.remote() for h in self.hosts.values()])
        for actor in self.hosts.values():
            ray.kill(actor)


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


def init_ray(address: str | None, num_cpus: int | None, dashboard: bool) -> None:
    """Join `address`, or start a fresh local instance owned by this driver."""
    import logging

    if address:
        use_token_auth_if_available()  # before `import ray`: it reads the auth mode once, at import

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
    else:
        # address="local": always a fresh instance owned by this driver, never someone else's.
        ray.init(address="local", num_cpus=num_cpus or os.cpu_count(), object_store_memory=256 * 1024**2, **kwargs)

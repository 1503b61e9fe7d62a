"""`sample.backend: hf`: transformers `generate` with its KV cache, batched and seeded per batch."""

from __future__ import annotations

import numpy as np
import torch
from transformers import GenerationConfig

from ..core.seeding import derive_seed
from .precision import resolve_for, weights_for
from .sampling import SampleParams
from .watermark import WatermarkLogitsProcessor


class HFSampler:
    """`sample.backend: hf` — transformers `generate` with its KV cache, batched."""

    def __init__(self, batch_size: int, precision: str = "fp32"):
        self.batch_size, self.precision = batch_size, precision  # precision: sample.precision (auto resolves per model)
        self.ran = ""

    @staticmethod
    def generation_config(params: SampleParams, pad_id: int) -> GenerationConfig:
        sampling = params.decoding == "sample"
        return GenerationConfig(
            do_sample=sampling,
            temperature=params.temperature if sampling else None,
            top_k=params.top_k if sampling else None,
            top_p=params.top_p if sampling else None,
            num_beams=params.num_beams if params.decoding == "beam" else 1,
            length_penalty=params.length_penalty,
            repetition_penalty=params.repetition_penalty,
            max_new_tokens=params.max_new_tokens,
            eos_token_id=None,
            pad_token_id=pad_id,
        )

    @torch.no_grad()
    def generate_batch(
        self, model, prompts: np.ndarray, b: int, params: SampleParams, seed_parts: tuple, pad_id: int
    ) -> np.ndarray:
        """Batch b of the stream: rows [b*bs, (b+1)*bs) of `prompts`, seeded by (seed_parts, b)."""
        precision = resolve_for(self.precision, model)
        self.ran = f"hf (transformers generate, {precision})"
        model = weights_for(model, precision).eval()
        bs, n = self.batch_size, len(prompts)
        chunk = prompts[b * bs : (b + 1) * bs]
        if len(chunk) < bs:  # pad to full batch so the random stream doesn't depend on n
            chunk = np.concatenate([chunk, np.repeat(chunk[-1:], bs - len(chunk), axis=0)])
        device = next(model.parameters()).device
        ids = torch.from_numpy(np.ascontiguousarray(chunk, dtype=np.int64)).to(device)
        # EOS is an ordinary token here (a document boundary inside a chunk, as in the training
        # data): never stop at it and never suppress it. `generate` fills an unset eos_token_id in
        # from the model's generation config (and `min_new_tokens` would then mask EOS out at every
        # step), so the model's own EOS is switched off for the call instead.
        saved = model.generation_config.eos_token_id
        model.generation_config.eos_token_id = None
        try:
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(derive_seed(*seed_parts, "batch", b))
                extra = {}
                if params.watermark is not None:
                    from transformers import LogitsProcessorList

                    extra["logits_processor"] = LogitsProcessorList([WatermarkLogitsProcessor(params.watermark)])
                gen = model.generate(
                    input_ids=ids,
                    attention_mask=torch.ones_like(ids),
                    generation_config=self.generation_config(params, pad_id),
                    **extra,
                )
        finally:
            model.generation_config.eos_token_id = saved
        if gen.shape[1] != ids.shape[1] + params.max_new_tokens:
            raise RuntimeError(
                f"generate stopped early ({gen.shape[1] - ids.shape[1]} of {params.max_new_tokens} tokens)"
            )
        return gen.cpu().numpy()[: min(bs, n - b * bs)].astype(np.int32)

    def generate(self, model, prompts: np.ndarray, params: SampleParams, seed_parts: tuple, pad_id: int) -> np.ndarray:
        """prompts: [n, p] token ids (same length p). Returns [n, p + max_new_tokens]."""
        n_batches = -(-len(prompts) // self.batch_size)
        out = [self.generate_batch(model, prompts, b, params, seed_parts, pad_id) for b in range(n_batches)]
        return np.concatenate(out) if out else np.zeros((0, prompts.shape[1] + params.max_new_tokens), np.int32)

"""`sample.backend: fast` — a lean batched sampler for Llama-style models.

Why: for the small models of a collapse study, `generate` spends most of each decoding step in
Python (logits processors, cache objects, mask building), not in matmuls. This sampler runs the
model's own weights through a minimal forward with
  * a static KV cache preallocated once per batch ([layers, batch, kv_heads, max_len, head_dim]),
  * prompts bucketed by length (rows of one batch share a length, so no padding or masks),
  * temperature / top-k / top-p and the draw on the device, from a per-batch torch.Generator,
  * early removal of finished rows when stopping at EOS (the batch shrinks, the cache is compacted).
With `sample.compile: true`, decode steps run `static_step` under `torch.compile`: every step has
the same shapes (attention over the whole preallocated cache with a position mask, the position a
tensor), so it compiles once per batch shape. Meant for GPUs, where per-step launch overhead
dominates; on CPU it measured slower than eager (docs/performance.md).
Greedy decoding is token-for-token identical to `generate` (tested); sampling is reproducible for a
seed but draws a different stream than `generate`. Architectures other than Llama fall back to the
Hugging Face sampler.
"""

from __future__ import annotations

import logging
import math

import numpy as np
import torch
import torch.nn.functional as F

from ..core.seeding import derive_seed
from .hf_sampler import HFSampler
from .precision import resolve_for, weights_for

log = logging.getLogger(__name__)


def supports(model) -> bool:
    cfg = getattr(model, "config", None)
    return (
        type(model).__name__ == "LlamaForCausalLM"
        and getattr(cfg, "hidden_act", "") == "silu"
        and not getattr(cfg, "attention_bias", False)
        and not getattr(cfg, "mlp_bias", False)
        and getattr(getattr(cfg, "rope_scaling", None) or {}, "get", lambda *_: None)("rope_type") in (None, "default")
    )


class LlamaDecoder:
    """The forward of a HF LlamaForCausalLM, reading its weights in place, with a static KV cache."""

    def __init__(self, model):
        cfg = model.config
        self.model = model.eval()
        self.n_heads = cfg.num_attention_heads
        self.n_kv = cfg.num_key_value_heads
        self.head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads
        self.eps = cfg.rms_norm_eps
        self.scale = 1.0 / math.sqrt(self.head_dim)
        rotary = model.model.rotary_emb
        self.inv_freq = rotary.inv_freq.float()
        self.rope_scale = float(getattr(rotary, "attention_scaling", 1.0))
        self.layers = model.model.layers
        self.device = next(model.parameters()).device
        self.dtype = next(model.parameters()).dtype
        self.step = self._forward

    def _rms(self, x, weight):
        var = x.float().pow(2).mean(-1, keepdim=True)
        return weight * (x.float() * torch.rsqrt(var + self.eps)).to(x.dtype)

    def _rope(self, positions: torch.Tensor):
        freqs = positions.float()[:, None] * self.inv_freq[None, :]
        emb = torch.cat([freqs, freqs], dim=-1)
        return (emb.cos() * self.rope_scale).to(self.dtype), (emb.sin() * self.rope_scale).to(self.dtype)

    @staticmethod
    def _rotate(x, cos, sin):
        half = x.shape[-1] // 2
        rotated = torch.cat([-x[..., half:], x[..., :half]], dim=-1)
        return x * cos + rotated * sin

    def _decode_attention(self, q, keys, values, mask):
        """One query per row, q [B, H, 1, D] over keys / values [B, KV, S, D]. With grouped-query
        attention (SmolLM2: 9 query heads share 3 K/V heads) the rep query heads of a group become
        rep query rows against their shared K/V head, instead of copying the cache rep times every
        step. SmolLM2-135M, batch 32, 256 cached tokens, 2 CPU cores: 549 -> 404 ms per step."""
        B, H, _, D = q.shape
        if self.n_kv == self.n_heads:
            return F.scaled_dot_product_attention(q, keys, values, attn_mask=mask, scale=self.scale)
        grouped = q.view(B, self.n_kv, H // self.n_kv, D)  # head h reads K/V head h // rep, as in repeat_kv
        out = F.scaled_dot_product_attention(grouped, keys, values, attn_mask=mask, scale=self.scale)
        return out.view(B, H, 1, D)

    def new_cache(self, batch: int, max_len: int):
        shape = (len(self.layers), batch, self.n_kv, max_len, self.head_dim)
        return torch.zeros(shape, dtype=self.dtype, device=self.device), torch.zeros(
            shape, dtype=self.dtype, device=self.device
        )

    @torch.no_grad()
    def static_step(
        self, tokens: torch.Tensor, pos: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor
    ) -> torch.Tensor:
        """One decode step with static shapes: tokens [B, 1] at position `pos` (a 0-d tensor)."""
        B = tokens.shape[0]
        S = k_cache.shape[3]
        h = self.model.model.embed_tokens(tokens)
        freqs = pos.float().reshape(1, 1) * self.inv_freq[None, :]
        emb = torch.cat([freqs, freqs], dim=-1)
        cos, sin = (emb.cos() * self.rope_scale).to(self.dtype), (emb.sin() * self.rope_scale).to(self.dtype)
        mask = (torch.arange(S, device=self.device) <= pos)[None, None, None, :]
        index = pos.reshape(1)
        for i, layer in enumerate(self.layers):
            attn = layer.self_attn
            x = self._rms(h, layer.input_layernorm.weight)
            q = attn.q_proj(x).view(B, 1, self.n_heads, self.head_dim).transpose(1, 2)
            k = attn.k_proj(x).view(B, 1, self.n_kv, self.head_dim).transpose(1, 2)
            v = attn.v_proj(x).view(B, 1, self.n_kv, self.head_dim).transpose(1, 2)
            q, k = self._rotate(q, cos, sin), self._rotate(k, cos, sin)
            k_cache[i].index_copy_(2, index, k)
            v_cache[i].index_copy_(2, index, v)
            out = self._decode_attention(q, k_cache[i], v_cache[i], mask)
            h = h + attn.o_proj(out.transpose(1, 2).reshape(B, 1, -1))
            x = self._rms(h, layer.post_attention_layernorm.weight)
            mlp = layer.mlp
            h = h + mlp.down_proj(F.silu(mlp.gate_proj(x)) * mlp.up_proj(x))
        h = self._rms(h[:, -1], self.model.model.norm.weight)
        return self.model.lm_head(h).float()

    @torch.no_grad()
    def _forward(self, tokens: torch.Tensor, start: int, k_cache: torch.Tensor, v_cache: torch.Tensor) -> torch.Tensor:
        """tokens [B, T] at positions start..start+T-1; fills the cache; returns last-position logits."""
        B, T = tokens.shape
        h = self.model.model.embed_tokens(tokens)
        cos, sin = self._rope(torch.arange(start, start + T, device=self.device))
        end = start + T
        for i, layer in enumerate(self.layers):
            attn = layer.self_attn
            x = self._rms(h, layer.input_layernorm.weight)
            q = attn.q_proj(x).view(B, T, self.n_heads, self.head_dim).transpose(1, 2)
            k = attn.k_proj(x).view(B, T, self.n_kv, self.head_dim).transpose(1, 2)
            v = attn.v_proj(x).view(B, T, self.n_kv, self.head_dim).transpose(1, 2)
            q, k = self._rotate(q, cos, sin), self._rotate(k, cos, sin)
            k_cache[i, :, :, start:end] = k
            v_cache[i, :, :, start:end] = v
            keys, values = k_cache[i, :, :, :end], v_cache[i, :, :, :end]
            if T == 1:  # a decode step sees the whole cache
                out = self._decode_attention(q, keys, values, None)
            else:  # prefill: causal within the prompt (once per batch, so repeating the K/V heads is cheap)
                if self.n_kv != self.n_heads:
                    rep = self.n_heads // self.n_kv
                    keys, values = keys.repeat_interleave(rep, dim=1), values.repeat_interleave(rep, dim=1)
                out = F.scaled_dot_product_attention(q, keys, values, is_causal=start == 0, scale=self.scale)
            h = h + attn.o_proj(out.transpose(1, 2).reshape(B, T, -1))
            x = self._rms(h, layer.post_attention_layernorm.weight)
            mlp = layer.mlp
            h = h + mlp.down_proj(F.silu(mlp.gate_proj(x)) * mlp.up_proj(x))
        h = self._rms(h[:, -1], self.model.model.norm.weight)
        return self.model.lm_head(h).float()


def repetition_penalty(logits: torch.Tensor, seen: torch.Tensor, penalty: float) -> torch.Tensor:
    """CTRL's penalty, as transformers applies it: every token already in the row (prompt
    included) has its logit divided by `penalty` if positive, multiplied if negative."""
    score = logits.gather(1, seen)
    score = torch.where(score < 0, score * penalty, score / penalty)
    return logits.scatter(1, seen, score)


def pick(
    logits: torch.Tensor,
    temperature: float,
    top_k: int,
    top_p: float,
    greedy: bool,
    gen: torch.Generator | None,
    rows: torch.Tensor | None = None,
    width: int | None = None,
) -> torch.Tensor:
    """Next tokens [B] from logits [B, V], entirely on the device. `rows` / `width`: see
    `sample_categorical`."""
    if greedy:
        return logits.argmax(-1)
    logits = logits / temperature
    if top_k and top_k < logits.shape[-1]:
        kth = torch.topk(logits, top_k, dim=-1).values[:, -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p < 1.0:
        sorted_logits, order = torch.sort(logits, descending=True, dim=-1)
        probs = sorted_logits.softmax(-1)
        drop = probs.cumsum(-1) - probs > top_p  # keep the smallest prefix whose mass reaches top_p
        sorted_logits = sorted_logits.masked_fill(drop, float("-inf"))
        logits = torch.full_like(logits, float("-inf")).scatter(-1, order, sorted_logits)
    return sample_categorical(logits.softmax(-1), gen, rows, width)


def sample_categorical(
    probs: torch.Tensor, gen: torch.Generator | None, rows: torch.Tensor | None = None, width: int | None = None
) -> torch.Tensor:
    """One draw per row of probs [B, V] by inverting the CDF: B uniforms, where torch.multinomial
    on the CPU draws B x V of them (10 ms a step at batch 256, more than the model's forward).
    Zero-probability tokens own an empty interval of the CDF, so they are never drawn.
    Each step draws `width` uniforms (default B) and row i of probs takes uniform `rows[i]`: a row
    of a batch slot keeps its random stream whether or not the other slots are computed."""
    cdf = probs.cumsum(-1)
    u = torch.rand(width or probs.shape[0], 1, generator=gen, device=probs.device, dtype=cdf.dtype)
    u = (u if rows is None else u[rows]) * cdf[:, -1:]
    return torch.searchsorted(cdf, u, right=True).squeeze(-1).clamp_(max=probs.shape[-1] - 1)


class FastSampler:
    """Same interface as HFSampler (`generate_batch`, `generate`)."""

    def __init__(
        self,
        batch_size: int,
        greedy: bool = False,
        stop_at_eos: bool = False,
        compile: bool = False,
        precision: str = "fp32",
    ):
        self.batch_size, self.greedy, self.stop_at_eos, self.compile = batch_size, greedy, stop_at_eos, compile
        self.precision = precision  # sample.precision: `auto` resolves per model (engines/precision.py)
        self._compiled = None
        self._decoders: dict[int, LlamaDecoder] = {}
        self._fallback = None
        self.ran = ""  # which path sampled last: said in the log and in the corpus' synthetic.json

    def _decoder(self, model) -> LlamaDecoder:
        key = id(model)
        if key not in self._decoders:
            self._decoders = {key: LlamaDecoder(model)}  # one model at a time
        return self._decoders[key]

    @torch.no_grad()
    def generate_batch(self, model, prompts: np.ndarray, b: int, params, seed_parts: tuple, pad_id: int) -> np.ndarray:
        if not supports(model) or params.decoding == "beam":  # beam search: transformers generate
            why = "beam search" if params.decoding == "beam" else f"{type(model).__name__} is not a Llama-style decoder"
            self._fallback = self._fallback or HFSampler(self.batch_size, self.precision)
            out = self._fallback.generate_batch(model, prompts, b, params, seed_parts, pad_id)
            self.ran = f"fast backend fell back to transformers generate ({why}; {self._fallback.ran})"
            return out
        precision = resolve_for(self.precision, model)
        model = weights_for(model, precision)
        compiled_step = self.compile and not self.stop_at_eos
        self.ran = f"fast (KV-cache decoder{', compiled step' if compiled_step else ''}, {precision})"
        bs = self.batch_size
        # A last, partial batch computes only its rows; each row still draws the uniform of its
        # slot in a full batch, so its tokens do not depend on n. (Padding to the full batch, as
        # `generate` needs, doubled the cost of a 16-sample evaluation set at batch size 32.)
        chunk = prompts[b * bs : (b + 1) * bs]
        real = len(chunk)
        dec = self._decoder(model)
        gen = torch.Generator(device=dec.device).manual_seed(derive_seed(*seed_parts, "batch", b) % (1 << 63))
        ids = torch.from_numpy(np.ascontiguousarray(chunk, dtype=np.int64)).to(dec.device)
        p, new = ids.shape[1], params.max_new_tokens
        out = torch.full((real, p + new), pad_id, dtype=torch.long, device=dec.device)
        out[:, :p] = ids
        k_cache, v_cache = dec.new_cache(real, p + new)
        active = torch.arange(real, device=dec.device)  # rows still generating (early removal)
        logits = dec.step(ids, 0, k_cache, v_cache)
        wm, prev = params.watermark, ids[:, -1]
        compiled = self._compiled_step(dec) if self.compile and not self.stop_at_eos else None
        greedy = self.greedy or params.decoding == "greedy"
        for t in range(new):
            if params.repetition_penalty != 1.0:  # before the watermark and the warpers, as in generate
                logits = repetition_penalty(logits, out[active, : p + t], params.repetition_penalty)
            if wm is not None:
                logits = wm.bias(logits, prev)
            nxt = pick(logits, params.temperature, params.top_k, params.top_p, greedy, gen, active, bs)
            prev = nxt
            out[active, p + t] = nxt
            if self.stop_at_eos and model.config.eos_token_id is not None:
                keep = nxt != model.config.eos_token_id
                if not keep.all():
                    active, nxt, prev = active[keep], nxt[keep], prev[keep]
                    k_cache, v_cache = k_cache[:, keep], v_cache[:, keep]
                    if len(active) == 0:
                        break
            if t + 1 < new:
                if compiled is not None:
                    logits = compiled(nxt[:, None], torch.tensor(p + t, device=dec.device), k_cache, v_cache)
                else:
                    logits = dec.step(nxt[:, None], p + t, k_cache, v_cache)
        return out.cpu().numpy().astype(np.int32)

    def _compiled_step(self, dec: LlamaDecoder):
        if self._compiled is None or self._compiled[0] is not dec:
            self._compiled = (dec, torch.compile(dec.static_step, dynamic=False))
        return self._compiled[1]

    def generate(self, model, prompts: np.ndarray, params, seed_parts: tuple, pad_id: int) -> np.ndarray:
        """Length bucketing: all rows of `prompts` share a length here (one array); callers with
        mixed lengths call once per length bucket."""
        n_batches = -(-len(prompts) // self.batch_size)
        out = [self.generate_batch(model, prompts, b, params, seed_parts, pad_id) for b in range(n_batches)]
        return np.concatenate(out) if out else np.zeros((0, prompts.shape[1] + params.max_new_tokens), np.int32)

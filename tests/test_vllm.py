"""`sample.backend: vllm` on a GPU machine with vLLM installed; skipped cleanly elsewhere."""

from __future__ import annotations

import numpy as np
import pytest

pytestmark = pytest.mark.gpu
vllm = pytest.importorskip("vllm")
torch = pytest.importorskip("torch")
if not torch.cuda.is_available():
    pytest.skip("vLLM needs a CUDA device", allow_module_level=True)


def test_vllm_sampler_is_reproducible_prefix_stable_and_fixed_length(tmp_path):
    from collapse.core.config import ModelConfig
    from collapse.engines.model import build_model, save_model_dir
    from collapse.engines.sampling import SampleParams
    from collapse.engines.tokenizer import train_bpe
    from collapse.engines.vllm_sampler import VLLMSampler

    tok = train_bpe(["the quick brown fox jumps over the lazy dog " * 50], 300)
    model = build_model(ModelConfig(d_model=64, n_layers=2, n_heads=4, d_ff=128), len(tok), 128, tok.eos_token_id, 0)
    save_model_dir(tmp_path / "m", model, tok)
    sampler = VLLMSampler(tmp_path / "m", gpu_memory_utilization=0.2)
    prompts = np.full((16, 1), tok.eos_token_id, np.int32)
    params = SampleParams(max_new_tokens=32)
    a = sampler.generate(None, prompts, params, ("v",), 0)
    b = sampler.generate(None, prompts[:8], params, ("v",), 0)
    assert a.shape == (16, 33) and (a[:8] == b).all()
    sampler.close()

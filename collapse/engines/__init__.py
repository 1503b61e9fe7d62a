"""Models and the machinery that trains, samples and scores them.

Model and tokenizer builders, real-text sources and regime semantics, the torch and DeepSpeed
training engines and their worker group, the samplers (hf, fast, vllm), evaluation, mitigations
and the theory families. Imports only `collapse.core`.
"""

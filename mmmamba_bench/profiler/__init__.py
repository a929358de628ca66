"""``mmmamba-bench profile`` / ``speed``: decode latency and memory vs context (Fig. 1) and the Table-2 recipe.

- :mod:`.floor`: bytes that must move per decoded token and the bandwidth floor; size / context parsing.
- :mod:`.memory`: device copy bandwidth, peak-memory meters (allocator, NVML, RSS), the memory cap, OOM detection.
- :mod:`.models`: building a model from a preset (random weights, directly on the device) or a checkpoint dir.
- :mod:`.hf_style`: the paper-faithful baseline (Hugging Face style: growing KV cache by concatenation, eager).
- :mod:`.peer`: transformers' ``LlamaForCausalLM`` of HoVLE's shape, for the same-GPU comparison.
- :mod:`.run`: the per-context profile loop and the Table-2 speed run, producing ``ProfileRow`` / ``SpeedRow``.
"""

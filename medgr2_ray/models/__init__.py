"""Models: offline tiny Qwen2-VL builds, one loading path for tiny and real checkpoints, the shared
prompt encoding, and the reward model.

- `tokenizer.py`   byte-level BPE trained offline on shipped medical text, Qwen special tokens + chat template
- `tiny.py`        `build_tiny_vlm(cfg, out_dir, seed)`, `ensure_model_dir(model_cfg, cache_dir, seed, role)`
- `loading.py`     `load_vlm(path, dtype, trust_remote_code) -> LoadedVLM`, `apply_lora(model, lora_cfg)`
- `processing.py`  `encode_prompts`, `encode_prompt_completions`, `encode_shared_prompt_completions`, `forward_kwargs`
- `logprobs.py`    completion log-probs from the logits of the completion positions only; one prefill per shared prompt
- `verifier.py`    R's own belief in a sample's stated answer (`encode_verdicts`, `verdicts`)
- `reward_head.py` `RewardModel` (backbone + scalar head, + the verdict term for a verifier), safetensors save/load
"""

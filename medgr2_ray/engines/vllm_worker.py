"""The vLLM worker extension that takes weight updates in place (loaded inside vLLM's worker process).

`VLLMEngine` names this class in `LLM(worker_extension_cls=...)`; vLLM mixes it into its worker, so
`llm.collective_rpc("medgr2_reload_weights", args=(payload,))` runs the method below in every worker.

Why safetensors bytes: arguments of `collective_rpc` are serialised by vLLM's message codec, which
turns torch tensors into nested lists (slow, and the dtype is lost); bytes pass through unchanged.
Why `reload_weights` and not `model.load_weights`: the CPU backend repacks linear weights into its
kernel layout after loading, so writing checkpoint-format tensors straight into the parameters
corrupts them; `reload_weights` restores each layer to checkpoint format, loads, and repacks.
"""

from __future__ import annotations

from typing import Any


class WeightUpdateExtension:
    """Mixed into vLLM's worker class; `self` is the worker (it has `reload_weights`)."""

    def medgr2_reload_weights(self, payload: bytes) -> int:
        """Load safetensors-serialised tensors (checkpoint or HF in-memory names) in place; returns
        how many tensors were loaded. Every tensor of a fused layer (q, k and v for qkv_proj) must
        be present: a partly loaded layer is repacked with undefined values for the missing part."""
        from safetensors.torch import load

        tensors = load(payload)
        worker: Any = self
        worker.reload_weights(weights_iterator=iter(tensors.items()))
        return len(tensors)

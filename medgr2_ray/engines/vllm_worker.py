"""The vLLM worker extension that takes weight updates in place (loaded inside vLLM's worker process).

`VLLMEngine` names this class in `LLM(worker_extension_cls=...)`; vLLM mixes it into its worker, so
`llm.collective_rpc("medgr2_load_bucket", args=(path, index))` runs the method below in every worker
(every tensor-parallel rank maps the same file).

Why a file and an index instead of tensors in the call: arguments of `collective_rpc` go through vLLM's
message codec, which turns tensors into nested lists (slow, dtype lost) and refuses payloads over 4 GiB;
a bucket file on /dev/shm is mapped here without another copy (engines/weight_buckets.py).
Why `reload_weights` and not `model.load_weights`: the CPU backend repacks linear weights into its
kernel layout after loading, and every backend fuses q/k/v and gate/up, so writing checkpoint-format
tensors straight into the parameters corrupts them; `reload_weights` restores each layer to checkpoint
format, loads, and repacks. A bucket holds whole layers (a part-loaded layer would be processed with
undefined values for the rest); layers absent from a bucket keep their weights.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

# vLLM warns once per layer absent from a reload ("Failed to load weights", "weights not loaded"):
# with bucketed updates every bucket leaves most layers out on purpose, so those warnings are noise.
_QUIET = ("vllm.model_executor.model_loader.reload.layerwise", "vllm.model_executor.model_loader.reload.inplace")


class WeightUpdateExtension:
    """Mixed into vLLM's worker class; `self` is the worker (it has `reload_weights`)."""

    def medgr2_load_bucket(self, path: str, index: Sequence[Sequence[Any]]) -> int:
        """Load one bucket file (HF in-memory or checkpoint names) in place; returns how many tensors."""
        from medgr2_ray.engines.weight_buckets import BucketEntry, read_bucket

        entries = [BucketEntry(str(n), str(d), tuple(int(x) for x in s), int(o)) for n, d, s, o in index]
        tensors = read_bucket(path, entries)
        loggers = [logging.getLogger(name) for name in _QUIET]
        levels = [lg.level for lg in loggers]
        for lg in loggers:
            lg.setLevel(logging.ERROR)
        try:
            worker: Any = self
            worker.reload_weights(weights_iterator=iter(tensors))
        finally:
            for lg, level in zip(loggers, levels):
                lg.setLevel(level)
        return len(tensors)

"""Micro-batching with gradient accumulation across micro-batches and data-parallel ranks.

A learner step sees B rows on each rank and processes them `micro_batch_size` at a time. For the
accumulated gradient to equal the gradient of one big batch, every micro-batch loss is divided by the
*global* denominator (tokens or sequences summed over all micro-batches of all ranks), and gradients
are summed. Ranks may hold different numbers of rows (dynamic sampling drops groups per rank), yet
ZeRO reduces gradients inside every backward, so all ranks must run the same number of backwards:
short ranks run zero-weight padding micro-batches (`synced_micro_batch_count`).
"""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence
from typing import TypeVar

import torch
import torch.distributed as dist

T = TypeVar("T")


def split_micro_batches(items: Sequence[T], size: int) -> list[list[T]]:
    """Consecutive chunks of at most `size` items (the last may be shorter); none for no items."""
    if size < 1:
        raise ValueError(f"micro_batch_size must be >= 1, got {size}")
    return [list(items[i : i + size]) for i in range(0, len(items), size)]


def _distributed() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def _comm_device() -> torch.device:
    """NCCL only reduces CUDA tensors; gloo reduces CPU tensors."""
    if dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def global_sum(values: Sequence[float]) -> list[float]:
    """Element-wise sum of `values` over all ranks (identity without a process group)."""
    if not _distributed():
        return [float(v) for v in values]
    t = torch.tensor(list(values), dtype=torch.float64, device=_comm_device())
    dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return t.cpu().tolist()


def global_max(value: float) -> float:
    """Maximum of `value` over all ranks (identity without a process group)."""
    if not _distributed():
        return float(value)
    t = torch.tensor([value], dtype=torch.float64, device=_comm_device())
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return float(t.item())


def synced_micro_batch_count(local: int) -> int:
    """How many backwards every rank runs this step: the largest local count over ranks."""
    return int(global_max(local))


def reduce_metrics(
    parts: Sequence[Mapping[str, float]], weights: Sequence[float],
    summed: Collection[str] = (), maxed: Collection[str] = (),
) -> dict[str, float]:
    """Combine per-micro-batch metrics over micro-batches and ranks.

    Keys in `summed` add up (losses already divided by the global normaliser); keys in `maxed` take
    the maximum; every other key is a mean weighted by `weights` (tokens or rows). A weight of 0 marks a
    padding micro-batch, which counts in nothing. Every rank must pass the same key set: the reduction is one vector all-reduce.
    """
    keys = sorted({k for part in parts for k in part})
    means = [k for k in keys if k not in summed and k not in maxed]
    vector = [sum(p.get(k, 0.0) * w for p, w in zip(parts, weights)) for k in means]
    vector += [sum(p.get(k, 0.0) for p, w in zip(parts, weights) if w > 0) for k in keys if k in summed]
    vector.append(float(sum(weights)))
    totals = global_sum(vector)
    weight_total = totals[-1]
    out = {k: (v / weight_total if weight_total > 0 else 0.0) for k, v in zip(means, totals)}
    out.update(zip([k for k in keys if k in summed], totals[len(means) : -1]))
    for k in keys:
        if k in maxed:
            out[k] = global_max(max((p[k] for p, w in zip(parts, weights) if k in p and w > 0), default=0.0))
    return out

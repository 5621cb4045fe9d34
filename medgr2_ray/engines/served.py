"""How an engine holds published weights: it serves the fetched buffers themselves, copies only where it
must, and applies LoRA adapters unmerged.

* **Views** (`serve_tensors`): on one node a fetched `FlatWeights` is read-only shared memory of the Ray
  object store. Where a parameter has the buffer's dtype and lives on the CPU, the engine sets the
  parameter's `.data` to a view of that memory: an update then costs the learner's `ray.put` and nothing
  on the reader's side (load < 1 ms for 537 MB, `shared/notes/zero-copy-weights.md`). The views keep
  their numpy buffers, and so the object-store objects, alive (Ray pins an object while a fetched array
  of it lives); once the next version replaces every view, the old version's memory is freed. Nothing
  ever writes into a view: a parameter that must be copied into while it is a view first gets memory
  of its own.
* **One copy where a copy cannot be avoided** (`staged_copy`): another dtype, or a GPU engine. On the CPU
  that is one converting copy into the engine's own parameter; on a GPU it is host -> device through
  two pinned staging buckets of bounded size, alternating so that filling one overlaps the DMA of the
  other.
* **Unmerged LoRA** (`UnmergedLora`): W0 stays as it is; each adapted Linear gets a forward hook that
  adds `scale * (x @ A^T) @ B^T`, which equals `x @ (W0 + scale * B @ A)^T` up to float rounding. A LoRA
  update swaps the hooks' A and B (views again, on the CPU) instead of rebuilding W0 + s*B@A for every
  matrix, so it costs in proportion to the adapter. The price is two thin matmuls per adapted module
  in every forward.

Pure torch: no Ray here (the scorer actor and the HF engine both use it).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

DEFAULT_BUCKET_BYTES = 64 << 20  # pinned staging per bucket (x2) for host -> GPU copies
_ALIGN = 64  # byte alignment of each tensor in a staging bucket (any dtype can view it)


@dataclass(frozen=True)
class LoadStats:
    """What one weight update cost the engine: bytes it now serves as views of the published buffers
    (no copy) and bytes it had to copy (another dtype, or host -> device)."""

    viewed_bytes: int = 0
    copied_bytes: int = 0
    tensors: int = 0


def can_view(dst: torch.Tensor, src: torch.Tensor) -> bool:
    """Whether `dst` can serve `src`'s memory as it is: same dtype and shape, both on the CPU."""
    return (dst.device.type == "cpu" and src.device.type == "cpu" and dst.dtype == src.dtype
            and tuple(dst.shape) == tuple(src.shape))


@torch.no_grad()
def serve_tensors(state: Mapping[str, torch.Tensor], updates: Mapping[str, torch.Tensor], views: set[str],
                  bucket_bytes: int = DEFAULT_BUCKET_BYTES) -> LoadStats:
    """Make each `state[key]` (a live parameter or buffer, `state_dict(keep_vars=True)`) hold
    `updates[key]`: as a view where `can_view`, else by one copy. `views` is the caller's record of which
    keys are currently views of published memory (updated here); a key that is a view and now needs a
    copy gets memory of its own first, so published memory is never written. Validate names and shapes
    before calling: this changes every key it is given."""
    viewed = copied = 0
    pending: list[tuple[torch.Tensor, torch.Tensor]] = []
    for key, src in updates.items():
        dst = state[key]
        if can_view(dst, src):
            dst.data = src
            views.add(key)
            viewed += src.numel() * src.element_size()
            continue
        if key in views:  # still a view of an older version: never copy into published memory
            dst.data = torch.empty(dst.shape, dtype=dst.dtype, device=dst.device)
            views.discard(key)
        pending.append((dst, src))
        copied += src.numel() * src.element_size()
    staged_copy(pending, bucket_bytes)
    return LoadStats(viewed_bytes=viewed, copied_bytes=copied, tensors=len(updates))


def _chunks(pairs: Iterable[tuple[torch.Tensor, torch.Tensor]], bucket_bytes: int
            ) -> Iterable[list[tuple[torch.Tensor, torch.Tensor, int]]]:
    """Split flat (dst, src) element ranges into buckets of at most `bucket_bytes` (each entry:
    dst slice, src slice, byte offset in the bucket, aligned)."""
    bucket: list[tuple[torch.Tensor, torch.Tensor, int]] = []
    used = 0
    for dst, src in pairs:
        d, s, size = dst.reshape(-1), src.reshape(-1), src.element_size()
        start = 0
        while start < s.numel():
            room = (bucket_bytes - used) // size
            if room <= 0:
                yield bucket
                bucket, used = [], 0
                continue
            stop = min(s.numel(), start + room)
            bucket.append((d[start:stop], s[start:stop], used))
            used += -(-(stop - start) * size // _ALIGN) * _ALIGN
            start = stop
    if bucket:
        yield bucket


@torch.no_grad()
def staged_copy(pairs: list[tuple[torch.Tensor, torch.Tensor]], bucket_bytes: int = DEFAULT_BUCKET_BYTES) -> None:
    """Copy each src into its dst (converting dtype): one direct copy where the destination is on the
    CPU or the source already on the device, else through pinned buckets (`bucketed_copy`)."""
    direct = [(d, s) for d, s in pairs if d.device.type == "cpu" or s.device.type != "cpu"]
    for dst, src in direct:
        dst.copy_(src)
    bucketed_copy([(d, s) for d, s in pairs if d.device.type != "cpu" and s.device.type == "cpu"], bucket_bytes)


@torch.no_grad()
def bucketed_copy(pairs: list[tuple[torch.Tensor, torch.Tensor]], bucket_bytes: int = DEFAULT_BUCKET_BYTES) -> None:
    """Host -> device: host memory -> two alternating staging buckets -> device, so one bucket fills
    while the other is in flight and staging memory stays at 2 x `bucket_bytes` whatever the model's
    size. The buckets are pinned on CUDA (the DMA then runs asynchronously); on the CPU the same path
    runs unpinned (tests check the bucketing on machines without a GPU)."""
    if bucket_bytes < _ALIGN:
        raise ValueError(f"bucketed_copy: bucket_bytes must be >= {_ALIGN}, got {bucket_bytes}")
    if not pairs:
        return
    device = pairs[0][0].device
    pin = device.type == "cuda"
    slots = [torch.empty(bucket_bytes, dtype=torch.uint8, pin_memory=pin) for _ in range(2)]
    done: list[Any] = [None, None]  # the event after which a slot may be refilled
    for number, bucket in enumerate(_chunks(pairs, bucket_bytes)):
        slot = number % 2
        if done[slot] is not None:
            done[slot].synchronize()
        for dst, src, offset in bucket:
            nbytes = src.numel() * src.element_size()
            stage = slots[slot][offset : offset + nbytes].view(src.dtype)
            stage.copy_(src)
            dst.copy_(stage, non_blocking=pin)
        if pin:
            done[slot] = torch.cuda.Event()
            done[slot].record(torch.cuda.current_stream(device))
    if pin:
        torch.cuda.current_stream(device).synchronize()


class _Adapter:
    """The forward hook of one adapted Linear: output + scale * (x @ A^T) @ B^T."""

    def __init__(self, a: torch.Tensor, b: torch.Tensor, scale: float) -> None:
        self.a, self.b, self.scale = a, b, scale

    def __call__(self, module: torch.nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any],
                 output: torch.Tensor) -> torch.Tensor:
        x = args[0] if args else kwargs["input"]
        return output + self.scale * F.linear(F.linear(x, self.a), self.b)


class UnmergedLora:
    """LoRA adapters served unmerged on a model's Linear modules (see the module docstring)."""

    def __init__(self) -> None:
        self._hooks: dict[str, tuple[Any, _Adapter]] = {}  # module path -> (hook handle, adapter)

    @property
    def modules(self) -> frozenset[str]:
        """Paths of the modules that carry an adapter now."""
        return frozenset(self._hooks)

    @torch.no_grad()
    def update(self, modules: Mapping[str, torch.nn.Module], pairs: Mapping[str, tuple[torch.Tensor, torch.Tensor]],
               scale: float) -> LoadStats:
        """Serve `pairs` (module path -> (A, B)) from now on; modules absent from `pairs` lose their
        adapter (back to W0). A and B are used as they are (views) when they match the module's dtype and
        device, else copied once (they are small)."""
        for path in set(self._hooks) - set(pairs):
            self._hooks.pop(path)[0].remove()
        viewed = copied = 0
        for path, (a, b) in pairs.items():
            weight = modules[path].weight
            served = []
            for tensor in (a, b):
                nbytes = tensor.numel() * tensor.element_size()
                if tensor.dtype == weight.dtype and tensor.device == weight.device:
                    served.append(tensor)
                    viewed += nbytes
                else:
                    served.append(tensor.to(device=weight.device, dtype=weight.dtype))
                    copied += nbytes
            if path in self._hooks:
                adapter = self._hooks[path][1]
                adapter.a, adapter.b, adapter.scale = served[0], served[1], scale
            else:
                adapter = _Adapter(served[0], served[1], scale)
                handle = modules[path].register_forward_hook(adapter, with_kwargs=True)
                self._hooks[path] = (handle, adapter)
        return LoadStats(viewed_bytes=viewed, copied_bytes=copied, tensors=2 * len(pairs))

    def clear(self) -> None:
        """Drop every adapter (the model computes with W0 alone again)."""
        self.update({}, {}, 1.0)

    def merged_weight(self, path: str, weight: torch.Tensor) -> torch.Tensor:
        """W0 + scale * B @ A of one adapted module (what its forward computes with), for checks."""
        adapter = self._hooks[path][1]
        return weight + adapter.scale * (adapter.b.float() @ adapter.a.float()).to(weight.dtype)

"""Pack named tensors into a few contiguous numpy buffers (one per dtype) and unpack them zero-copy.

This is the wire format of weight sync (`FlatWeights` in types.py): a learner packs its weights once,
straight from its parameters, `ray.put`s the result (numpy buffers travel through the object store ~8x
faster than a dict of torch tensors, measured), and every engine unpacks views into the same memory
without copying (and serves them as its parameters where it can, `engines/served.py`).

Buffers are keyed by torch dtype name ("float32", "bfloat16", "int64", ...). bfloat16 has no numpy
dtype, so its buffer holds the same bits as uint16 and `TensorSpec.dtype` says "bfloat16"; unpacking
views the bits back as bfloat16. Pure numpy/torch: no Ray here.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Mapping

import numpy as np
import torch

from medgr2_ray.types import FlatWeights, TensorSpec

# torch dtypes whose bits travel as another numpy dtype of the same width.
_BIT_CARRIERS: dict[torch.dtype, torch.dtype] = {torch.bfloat16: torch.uint16}


def _dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


def is_lora_name(name: str) -> bool:
    """Whether a parameter name belongs to a LoRA adapter (PEFT's lora_A / lora_B matrices)."""
    return ".lora_A." in name or ".lora_B." in name


def _copy_into_buffer(dst: np.ndarray, tensor: torch.Tensor) -> None:
    """Copy a tensor's bits straight into a slice of the publish buffer: the only copy packing makes.

    A CPU tensor is read in place through its numpy view (no clone, no `.contiguous()` unless it is
    strided) and copied with numpy, which runs at memcpy speed where torch's one-thread `copy_` reached
    about half of it (benchmarks/weight_sync.py); a GPU tensor is copied device -> buffer by torch in one
    step (never to a CPU tensor first, which would be a second copy)."""
    source = tensor.detach()
    carrier = _BIT_CARRIERS.get(source.dtype)
    if source.device.type == "cpu":
        flat = source.contiguous().reshape(-1)
        np.copyto(dst, (flat.view(carrier) if carrier is not None else flat).numpy(), casting="no")
    else:
        target = torch.from_numpy(dst)
        target = target.view(source.dtype) if carrier is not None else target
        target.copy_(source.reshape(-1))


def _buffer_dtype(dtype: torch.dtype) -> np.dtype:
    """The numpy dtype a torch dtype's bits travel as (bf16 as uint16)."""
    carrier = _BIT_CARRIERS.get(dtype, dtype)
    return torch.empty(0, dtype=carrier).numpy().dtype


def pack_tensors(named: Mapping[str, torch.Tensor], lora_only: bool) -> FlatWeights:
    """One contiguous buffer per dtype plus an index. With `lora_only`, only LoRA adapter tensors
    (names with `.lora_A.` / `.lora_B.`) are packed, so a PeftModel's full state can be passed.

    Each tensor is copied once, straight from where it lives (a live parameter is fine: nothing is
    cloned first) into a freshly allocated buffer; a buffer is never reused for a later pack, so an
    engine serving views of an earlier pack never sees it change."""
    items = [(n, t) for n, t in named.items() if not lora_only or is_lora_name(n)]
    if not items:
        what = "LoRA tensors (names with .lora_A./.lora_B.)" if lora_only else "tensors"
        raise ValueError(f"pack_tensors: no {what} to pack among {len(named)} names")
    sizes: dict[str, int] = {}
    carriers: dict[str, np.dtype] = {}
    index: list[TensorSpec] = []
    for name, tensor in items:
        if not isinstance(tensor, torch.Tensor):
            raise TypeError(f"pack_tensors: '{name}' is a {type(tensor).__name__}, not a torch.Tensor")
        key = _dtype_name(tensor.dtype)
        index.append(TensorSpec(name=name, dtype=key, shape=tuple(tensor.shape), offset=sizes.get(key, 0)))
        sizes[key] = sizes.get(key, 0) + tensor.numel()
        carriers.setdefault(key, _buffer_dtype(tensor.dtype))
    buffers = {key: np.empty(size, dtype=carriers[key]) for key, size in sizes.items()}
    for (_, tensor), spec in zip(items, index):
        _copy_into_buffer(buffers[spec.dtype][spec.offset : spec.offset + tensor.numel()], tensor)
    return FlatWeights(buffers=buffers, index=tuple(index), lora_only=lora_only)


def unpack_tensors(flat: FlatWeights) -> dict[str, torch.Tensor]:
    """Named tensors that are views into `flat`'s buffers (no copy).

    Buffers fetched from the Ray object store are read-only shared memory; the views must never be
    written (an engine serves them as its parameters, `engines/served.py`). Each view keeps its buffer,
    and so the object-store object, alive for as long as the view lives.
    """
    out: dict[str, torch.Tensor] = {}
    with warnings.catch_warnings():
        # torch warns on read-only numpy arrays; the views are only ever read.
        warnings.filterwarnings("ignore", message="The given NumPy array is not writable")
        bases = {key: torch.from_numpy(buf) for key, buf in flat.buffers.items()}
    for spec in flat.index:
        if spec.dtype not in bases:
            raise ValueError(f"FlatWeights: tensor '{spec.name}' refers to missing buffer '{spec.dtype}'")
        numel = math.prod(spec.shape)  # math.prod: np.prod costs ~3 us per call, per tensor per load
        base = bases[spec.dtype]
        if spec.offset + numel > base.numel():
            raise ValueError(f"FlatWeights: tensor '{spec.name}' overruns its '{spec.dtype}' buffer")
        view = base[spec.offset : spec.offset + numel]
        if spec.dtype == "bfloat16":
            view = view.view(torch.bfloat16)
        out[spec.name] = view.view(spec.shape)
    return out

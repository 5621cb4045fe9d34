"""Weight updates for a vLLM engine in bounded buckets, read straight from published `FlatWeights`.

Why buckets: vLLM's message codec refuses a payload over 4 GiB (Qwen2.5-VL-3B in bf16 is ~7.5 GB), and
shipping the whole model as one `bytes` object held several full copies in host RAM at once. Here an
update is cut into buckets of at most `EngineConfig.weight_bucket_bytes`; each bucket is written once
into a file on shared memory (`/dev/shm`), straight from the published buffers (the only extra host
copy, one bucket at a time), and the worker maps that file and loads it (`vllm_worker.py`); then the
file is deleted and the next bucket is written. The RPC itself carries only the file name and an index.

Why whole layers per bucket: the worker loads with vLLM's `reload_weights`, which processes a layer
(fuses q/k/v into qkv_proj, gate/up into gate_up_proj, repacks for the CPU kernels) once every tensor
of it has arrived; a layer split over two calls would be processed half-empty. Tensors are therefore
grouped by their parent module (q/k/v/o of one attention block, gate/up/down of one MLP: a superset of
every vLLM fusion), and a group never straddles buckets. A group larger than the bucket (the 3B's
0.6 GB embedding) travels alone in a bucket of its own size.

LoRA without a full copy: an adapter update W = W0 + (alpha/r) * B @ A needs W0 only for the adapted
modules. `LoraMerger` reads those W0 from the model directory's safetensors (memory-mapped, by name)
once, keeps just them, and sends the adapted layers' groups, merged as each bucket is written (one
bucket of merged tensors at a time): the update costs in proportion to the adapted modules, never the
model. Pure torch/numpy: no vLLM, no Ray (tested in the main lane).
"""

from __future__ import annotations

import json
import os
import re
import tempfile
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from medgr2_ray.config import LoraConfig

ALIGN = 64  # byte alignment of every tensor in a bucket file (frombuffer needs dtype alignment)
_LORA_NAME = re.compile(r"^(?:base_model\.model\.)?(?P<module>.+)\.lora_(?P<ab>[AB])(?:\.[^.]+)?\.weight$")
_SAFETENSORS_DTYPES = {"F32": torch.float32, "BF16": torch.bfloat16, "F16": torch.float16, "I64": torch.int64,
                       "I32": torch.int32, "U8": torch.uint8}
_TORCH_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16,
                 "int64": torch.int64, "int32": torch.int32, "uint8": torch.uint8}


def strip_wrapper(name: str) -> str:
    """HF in-memory parameter name of a (possibly PEFT-wrapped) weight name."""
    return name.removeprefix("base_model.model.").replace(".base_layer.", ".")


def memory_name(checkpoint_name: str) -> str:
    """The in-memory (transformers 5) name of a Qwen2-VL checkpoint tensor name: `visual.*` lives under
    `model.visual`, the text model's `model.*` under `model.language_model` (transformers' own
    conversion mapping for Qwen2VLForConditionalGeneration); names already in that form pass through."""
    if checkpoint_name.startswith("visual."):
        return "model." + checkpoint_name
    if checkpoint_name.startswith("model.") and not checkpoint_name.startswith(("model.language_model.",
                                                                                  "model.visual.")):
        return "model.language_model." + checkpoint_name.removeprefix("model.")
    return checkpoint_name


def layer_group(name: str) -> str:
    """The group a weight travels with: its parent module (see the module docstring)."""
    module = strip_wrapper(name).rpartition(".")[0]
    return module.rpartition(".")[0]


def tensor_bytes(tensor: torch.Tensor) -> int:
    """Bytes of a tensor's data."""
    return tensor.numel() * tensor.element_size()


def plan_buckets(sizes: Mapping[str, int], bucket_bytes: int) -> list[list[str]]:
    """Names (with their sizes in bytes) in buckets of at most `bucket_bytes` (a single group larger than
    that: a bucket of its own), whole layer groups only, in first-appearance order; every name once."""
    if bucket_bytes < 1:
        raise ValueError(f"bucket size must be >= 1 byte, got {bucket_bytes}")
    groups: dict[str, list[str]] = {}
    for name in sizes:
        groups.setdefault(layer_group(name), []).append(name)
    buckets: list[list[str]] = []
    current: list[str] = []
    size = 0
    for names in groups.values():
        group_size = sum(_aligned(sizes[n]) for n in names)
        if current and size + group_size > bucket_bytes:
            buckets.append(current)
            current, size = [], 0
        current.extend(names)
        size += group_size
    if current:
        buckets.append(current)
    return buckets


def _aligned(nbytes: int) -> int:
    return -(-nbytes // ALIGN) * ALIGN


@dataclass(frozen=True)
class BucketEntry:
    """Where one tensor lies in a bucket file (what the worker needs to map it)."""

    name: str
    dtype: str  # torch dtype name, as in FlatWeights
    shape: tuple[int, ...]
    offset: int  # bytes from the file start


def _raw_bytes(tensor: torch.Tensor) -> np.ndarray:
    """The tensor's bits as a flat uint8 numpy view (no copy for a contiguous CPU tensor)."""
    flat = tensor.detach().to("cpu").contiguous().reshape(-1)
    return flat.view(torch.uint8).numpy()


def bucket_directory() -> str:
    """Where bucket files go: shared memory when the machine has it (a write there is a page copy, not
    disk I/O), else the temporary directory."""
    shm = Path("/dev/shm")
    return str(shm) if shm.is_dir() and os.access(shm, os.W_OK) else tempfile.gettempdir()


@contextmanager
def bucket_file(named: Mapping[str, torch.Tensor], names: Sequence[str], directory: str | None = None
                ) -> Iterator[tuple[str, list[BucketEntry]]]:
    """Write one bucket's tensors into a fresh file, yield (path, index), delete the file afterwards.

    Tensors are written straight from their memory (views into the published buffers): the file is the
    one extra host copy of the bucket, and it lives only inside the `with` block.
    """
    fd, path = tempfile.mkstemp(prefix="medgr2-weights-", suffix=".bin", dir=directory or bucket_directory())
    entries: list[BucketEntry] = []
    try:
        with os.fdopen(fd, "wb") as out:
            offset = 0
            for name in names:
                tensor = named[name]
                raw = _raw_bytes(tensor)
                out.write(b"\0" * (_aligned(offset) - offset))
                offset = _aligned(offset)
                out.write(memoryview(raw))
                dtype = str(tensor.dtype).removeprefix("torch.")
                entries.append(BucketEntry(name, dtype, tuple(int(d) for d in tensor.shape), offset))
                offset += raw.size
        yield path, entries
    finally:
        Path(path).unlink(missing_ok=True)


def read_bucket(path: str, entries: Sequence[BucketEntry]) -> list[tuple[str, torch.Tensor]]:
    """The tensors of a bucket file as read-only views of the mapped file (the worker side)."""
    import warnings

    data = np.memmap(path, dtype=np.uint8, mode="r")
    out = []
    with warnings.catch_warnings():  # the views are only read (copied into the engine's parameters)
        warnings.filterwarnings("ignore", message="The given buffer is not writable")
        for e in entries:
            dtype = _TORCH_DTYPES[e.dtype]
            numel = int(np.prod(e.shape, dtype=np.int64))
            tensor = torch.frombuffer(data, dtype=dtype, count=numel, offset=e.offset) if numel else torch.empty(0, dtype=dtype)
            out.append((e.name, tensor.view(e.shape)))
    return out


class CheckpointReader:
    """Tensors of a model directory's safetensors files by in-memory name, read on demand (mmap)."""

    def __init__(self, model_dir: str | Path) -> None:
        from safetensors import safe_open

        root = Path(model_dir)
        index = root / "model.safetensors.index.json"
        if index.is_file():
            files = sorted(set(json.loads(index.read_text())["weight_map"].values()))
        else:
            files = ["model.safetensors"]
        self._handles = [safe_open(str(root / f), framework="pt") for f in files]
        self._where: dict[str, tuple[int, str]] = {}
        self.shapes: dict[str, tuple[int, ...]] = {}
        self.dtypes: dict[str, torch.dtype] = {}
        for i, handle in enumerate(self._handles):
            for key in handle.keys():  # noqa: SIM118  (a safetensors handle is not iterable)
                name = memory_name(key)
                self._where[name] = (i, key)
                header = handle.get_slice(key)
                self.shapes[name] = tuple(int(d) for d in header.get_shape())
                self.dtypes[name] = _SAFETENSORS_DTYPES[header.get_dtype()]

    def get(self, name: str) -> torch.Tensor:
        """One tensor (a private copy) by in-memory name."""
        i, key = self._where[name]
        return self._handles[i].get_tensor(key)


class LoraMerger:
    """Turns LoRA adapter updates into the full tensors of the adapted layer groups (see module docstring),
    keeping W0 of those groups only (and the last adapter, a few MB, to re-base after a full update)."""

    def __init__(self, checkpoint: CheckpointReader, lora: LoraConfig) -> None:
        self.checkpoint = checkpoint
        self.lora = lora
        self.scale = lora.alpha / lora.r
        self.base: dict[str, torch.Tensor] = {}  # W0 of every tensor of every group LoRA ever touched
        self._served: dict[str, dict[str, torch.Tensor]] = {}  # weight -> the A, B the engine now serves
        self._groups: dict[str, list[str]] = {}
        for name in checkpoint.shapes:
            self._groups.setdefault(layer_group(name), []).append(name)

    def _pairs(self, adapters: Mapping[str, torch.Tensor]) -> dict[str, dict[str, torch.Tensor]]:
        """Validated {weight name: {"A": ..., "B": ...}}; raises before anything changes."""
        pairs: dict[str, dict[str, torch.Tensor]] = {}
        for name, tensor in adapters.items():
            match = _LORA_NAME.match(name)
            if match is None:
                raise KeyError(f"LoRA weight '{name}' is not a lora_A/lora_B matrix name")
            pairs.setdefault(f"{match['module']}.weight", {})[match["ab"]] = tensor
        for key, ab in pairs.items():
            if set(ab) != {"A", "B"} or key not in self.checkpoint.shapes:
                raise KeyError(f"LoRA update for '{key}' needs lora_A and lora_B of an existing linear weight")
            if ab["A"].shape[0] != self.lora.r:
                raise ValueError(f"LoRA rank {ab['A'].shape[0]} of '{key}' != model config lora.r={self.lora.r}")
            expected = (ab["B"].shape[0], ab["A"].shape[1])
            if self.checkpoint.shapes[key] != expected:
                raise ValueError(f"LoRA B@A of '{key}' has shape {expected}, weight {self.checkpoint.shapes[key]}")
        return pairs

    def _base(self, name: str) -> torch.Tensor:
        if name not in self.base:
            self.base[name] = self.checkpoint.get(name)
        return self.base[name]

    def _merged(self, name: str, ab: Mapping[str, torch.Tensor]) -> torch.Tensor:
        base = self._base(name)
        return (base.float() + self.scale * (ab["B"].float() @ ab["A"].float())).to(base.dtype)

    def merge(self, adapters: Mapping[str, torch.Tensor]) -> "MergedLayers":
        """The full tensors to send, made one at a time when read (so a bucket's worth at a time): every
        group with an adapter now or before (reverted to W0 when its adapter is gone), each weight
        W0 + scale * B @ A where adapted, W0 elsewhere. Validated here, before anything changes."""
        pairs = self._pairs(adapters)
        weights = sorted(set(pairs) | set(self._served))
        names = list(dict.fromkeys(n for w in weights for n in self._groups[layer_group(w)]))
        self._served = {w: {k: v.detach().clone() for k, v in ab.items()} for w, ab in pairs.items()}
        return MergedLayers(self, names, dict(self._served))

    def rebase(self, full: Mapping[str, torch.Tensor]) -> None:
        """After a full update the served weights are the new W0 (as HFEngine has it): a tracked tensor in
        the update takes its value (copied: the published buffers may be freed), an adapted one that the
        update left out keeps serving W0 + delta, which becomes its W0."""
        given = {strip_wrapper(n): t for n, t in full.items()}
        for name, ab in self._served.items():
            if name not in given:
                self.base[name] = self._merged(name, ab)
        for name, tensor in given.items():
            if name in self.base:
                self.base[name] = tensor.detach().clone()
        self._served = {}


class MergedLayers(Mapping[str, torch.Tensor]):
    """A LoRA update's full tensors, merged when read: `bucket_file` reads one bucket's names at a time,
    so at most one bucket of merged tensors exists at once (beside the kept W0)."""

    def __init__(self, merger: LoraMerger, names: list[str], pairs: dict[str, dict[str, torch.Tensor]]) -> None:
        self._merger, self._names, self._pairs = merger, names, pairs
        shapes, dtypes = merger.checkpoint.shapes, merger.checkpoint.dtypes
        self.sizes = {n: int(np.prod(shapes[n], dtype=np.int64)) * dtypes[n].itemsize for n in names}

    def __getitem__(self, name: str) -> torch.Tensor:
        if name not in self.sizes:
            raise KeyError(name)
        ab = self._pairs.get(name)
        return self._merger._merged(name, ab) if ab is not None else self._merger._base(name)

    def __iter__(self) -> Iterator[str]:
        return iter(self._names)

    def __len__(self) -> int:
        return len(self._names)

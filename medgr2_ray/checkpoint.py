"""Exact, pickle-free checkpoints: safetensors for tensors, JSON for everything else.

A checkpoint must (1) never execute code when read — so no pickle and no `torch.load` — and (2) let a
run continue as if it had never stopped, which means saving the optimizer state, the schedule, the step
counters and the RNG states of torch, numpy and Python, not only the weights.

Arbitrary nested state (a torch optimizer `state_dict`, a DeepSpeed ZeRO partition, a numpy RNG tuple)
is split by `flatten_state` into a flat `{key: tensor}` map, stored as safetensors, and a JSON
*skeleton* that records the structure, the Python scalars and the key of every tensor.
`unflatten_state` inverts it exactly (int dict keys stay ints, tuples stay tuples).

Every file is written to a temporary name and renamed into place (`os.replace` is atomic on POSIX),
and a checkpoint directory is built under a temporary name and renamed as a whole, so a crash never
leaves a half-written checkpoint that looks complete.
"""

from __future__ import annotations

import json
import math
import os
import random
import shutil
import tempfile
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

_TENSOR = "__tensor__"
_DICT = "__dict__"
_TUPLE = "__tuple__"
_NDARRAY = "__ndarray__"
_FLOAT = "__float__"  # non-finite floats, which strict JSON cannot hold


class CheckpointError(RuntimeError):
    """A checkpoint that is missing, incomplete or does not match what is being restored."""


# ---------------------------------------------------------------- atomic files


def _fsync_dir(path: Path) -> None:
    """Make a rename durable (best effort: some filesystems refuse to open directories)."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    """Write `data` to `path` via a temporary file in the same directory and an atomic rename."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    _fsync_dir(path.parent)


def save_json(path: str | Path, obj: Any) -> None:
    """Atomically write `obj` as JSON (strict: non-finite floats must be encoded by the caller)."""
    atomic_write_bytes(path, json.dumps(obj, indent=1, sort_keys=False, allow_nan=False).encode())


def load_json(path: str | Path) -> Any:
    """Read a JSON file, with an error that names the file when it is missing or corrupt."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: missing; is this a complete checkpoint directory?")
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise CheckpointError(f"{path}: not valid JSON ({exc}); the checkpoint is corrupt") from exc


def save_tensors(path: str | Path, tensors: Mapping[str, torch.Tensor]) -> None:
    """Atomically write named tensors as safetensors (copies to contiguous CPU memory first)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    # safetensors refuses tensors that share storage; cloning makes each entry independent.
    owned = {k: v.detach().to("cpu").contiguous().clone() for k, v in tensors.items()}
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        save_file(owned, tmp)
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    _fsync_dir(path.parent)


def load_tensors(path: str | Path) -> dict[str, torch.Tensor]:
    """Read a safetensors file (no code runs on load), with an error naming the file."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: missing; is this a complete checkpoint directory?")
    try:
        return load_file(str(path), device="cpu")
    except SafetensorError as exc:
        raise CheckpointError(f"{path}: not a readable safetensors file ({exc})") from exc


@contextmanager
def atomic_directory(final: str | Path) -> Iterator[Path]:
    """Yield a temporary sibling directory; on success it replaces `final` as a whole.

    An existing `final` is moved aside first and deleted only after the new one is in place, so at
    every moment either the old or the new complete checkpoint exists under some name.
    """
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.", suffix=".tmp", dir=final.parent))
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    commit_directory(tmp, final)


def staging_directory(final: str | Path) -> Path:
    """A fixed sibling name where several ranks can write one checkpoint before `commit_directory`.

    Unlike `atomic_directory`'s random name, every rank computes the same path without talking.
    """
    final = Path(final)
    return final.with_name(f".{final.name}.staging")


def commit_directory(staged: str | Path, final: str | Path) -> None:
    """Replace `final` by the complete directory `staged` (the old one is removed only afterwards)."""
    staged, final = Path(staged), Path(final)
    old = final.with_name(f".{final.name}.old")
    if final.exists():
        shutil.rmtree(old, ignore_errors=True)
        os.replace(final, old)
    os.replace(staged, final)
    _fsync_dir(final.parent)
    shutil.rmtree(old, ignore_errors=True)


# ---------------------------------------------------------------- nested state <-> tensors + JSON


def _encode_scalar(value: Any, where: str) -> Any:
    """A JSON-safe encoding of a Python/numpy scalar."""
    if isinstance(value, (bool, str)) or value is None:
        return value
    if isinstance(value, (int, np.integer)):
        return int(value)
    if isinstance(value, (float, np.floating)):
        v = float(value)
        return v if math.isfinite(v) else {_FLOAT: repr(v)}
    raise CheckpointError(
        f"state at '{where}' holds a {type(value).__name__}, which a checkpoint cannot store "
        "without pickle; convert it to tensors, numbers or strings"
    )


def flatten_state(obj: Any, tensors: dict[str, torch.Tensor] | None = None, where: str = "") -> tuple[Any, dict[str, torch.Tensor]]:
    """Split nested state into (JSON skeleton, {key: tensor}); see the module docstring."""
    tensors = {} if tensors is None else tensors
    if isinstance(obj, torch.Tensor):
        key = f"t{len(tensors)}"
        tensors[key] = obj
        return {_TENSOR: key}, tensors
    if isinstance(obj, np.ndarray):
        key = f"t{len(tensors)}"
        tensors[key] = torch.from_numpy(np.ascontiguousarray(obj))
        return {_NDARRAY: key}, tensors
    if isinstance(obj, Mapping):
        items = []
        for k, v in obj.items():
            enc_key = _encode_scalar(k, f"{where}/<key>")
            enc_val, _ = flatten_state(v, tensors, f"{where}/{k}")
            items.append([enc_key, enc_val])
        return {_DICT: items}, tensors
    if isinstance(obj, (list, tuple)):
        enc = [flatten_state(v, tensors, f"{where}[{i}]")[0] for i, v in enumerate(obj)]
        return ({_TUPLE: enc} if isinstance(obj, tuple) else enc), tensors
    return _encode_scalar(obj, where), tensors


def unflatten_state(skeleton: Any, tensors: Mapping[str, torch.Tensor]) -> Any:
    """Rebuild the nested state `flatten_state` split (the exact inverse)."""
    if isinstance(skeleton, list):
        return [unflatten_state(v, tensors) for v in skeleton]
    if not isinstance(skeleton, dict):
        return skeleton
    if _TENSOR in skeleton or _NDARRAY in skeleton:
        key = skeleton.get(_TENSOR, skeleton.get(_NDARRAY))
        if key not in tensors:
            raise CheckpointError(f"tensor '{key}' named in the JSON skeleton is missing from the safetensors file")
        return tensors[key] if _TENSOR in skeleton else tensors[key].numpy()
    if _DICT in skeleton:
        return {_decode_key(k): unflatten_state(v, tensors) for k, v in skeleton[_DICT]}
    if _TUPLE in skeleton:
        return tuple(unflatten_state(v, tensors) for v in skeleton[_TUPLE])
    if _FLOAT in skeleton:
        return float(skeleton[_FLOAT])
    raise CheckpointError(f"unrecognised node in checkpoint skeleton: {sorted(skeleton)}")


def _decode_key(key: Any) -> Any:
    """Dict keys come back as JSON gave them, except encoded non-finite floats."""
    return float(key[_FLOAT]) if isinstance(key, dict) and _FLOAT in key else key


def save_state(directory: str | Path, name: str, state: Any) -> None:
    """Write nested `state` as `<name>.safetensors` + `<name>.json` in `directory`."""
    skeleton, tensors = flatten_state(state)
    directory = Path(directory)
    save_tensors(directory / f"{name}.safetensors", tensors)
    save_json(directory / f"{name}.json", skeleton)


def load_state(directory: str | Path, name: str) -> Any:
    """Read what `save_state(directory, name, ...)` wrote."""
    directory = Path(directory)
    skeleton = load_json(directory / f"{name}.json")
    return unflatten_state(skeleton, load_tensors(directory / f"{name}.safetensors"))


# ---------------------------------------------------------------- RNG states


@dataclass(frozen=True)
class RNGState:
    """The global random states a training step may consume (dropout, sampling, shuffles)."""

    torch_cpu: torch.Tensor
    torch_cuda: tuple[torch.Tensor, ...]
    numpy: tuple[Any, ...]  # ('MT19937', uint32[624], pos, has_gauss, cached_gaussian)
    python: tuple[Any, ...]  # (version, tuple of 625 ints, gauss_next)


def capture_rng() -> RNGState:
    """Snapshot torch (CPU and every CUDA device), numpy and Python global RNG states."""
    cuda = tuple(torch.cuda.get_rng_state_all()) if torch.cuda.is_available() else ()
    return RNGState(torch.get_rng_state(), cuda, tuple(np.random.get_state()), random.getstate())


def restore_rng(state: RNGState) -> None:
    """Put back the RNG states `capture_rng` took."""
    torch.set_rng_state(state.torch_cpu)
    if state.torch_cuda and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(list(state.torch_cuda))
    kind, keys, pos, has_gauss, cached = state.numpy
    np.random.set_state((kind, np.asarray(keys, dtype=np.uint32), int(pos), int(has_gauss), float(cached)))
    version, internal, gauss_next = state.python
    random.setstate((version, tuple(internal), gauss_next))


def rng_to_state(rng: RNGState) -> dict[str, Any]:
    """The nested form of an RNGState, for `save_state`."""
    return {"torch_cpu": rng.torch_cpu, "torch_cuda": list(rng.torch_cuda), "numpy": rng.numpy, "python": rng.python}


def rng_from_state(state: Mapping[str, Any]) -> RNGState:
    """Inverse of `rng_to_state`, with a clear error on an incomplete record."""
    missing = {"torch_cpu", "torch_cuda", "numpy", "python"} - set(state)
    if missing:
        raise CheckpointError(f"RNG state is missing {sorted(missing)}")
    return RNGState(state["torch_cpu"], tuple(state["torch_cuda"]), tuple(state["numpy"]), tuple(state["python"]))

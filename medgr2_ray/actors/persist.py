"""Save and load typed messages (ScoredGroup, Sample, ...) without pickle: JSON for structure, safetensors
for arrays.

Actor state that must survive a restart or a `--resume` (the rollout buffer, the controller's request
cursor) is made of the frozen dataclasses in `medgr2_ray.types`. Pickle would round-trip them in one line,
but loading a pickle runs code from the file; run directories get copied between machines and people, so
we write a JSON tree whose objects name a dataclass or enum *from types.py only*, and put every numpy
array in one safetensors file beside it. Loading never executes anything from the files.
"""

from __future__ import annotations

import dataclasses
import enum
import json
from pathlib import Path
from typing import Any

import numpy as np
from safetensors.numpy import load_file, save_file

from medgr2_ray import types as message_types

_REGISTRY: dict[str, type] = {
    name: obj
    for name, obj in vars(message_types).items()
    if isinstance(obj, type) and (dataclasses.is_dataclass(obj) or issubclass(obj, enum.Enum))
    and obj.__module__ == message_types.__name__
}


class PersistError(ValueError):
    """A saved state file that cannot be read back; the message names the file and the problem."""


def _encode(value: Any, arrays: dict[str, np.ndarray]) -> Any:
    """A JSON-able tree for `value`; arrays are moved into `arrays` and referenced by key."""
    if isinstance(value, enum.Enum):
        return {"__enum__": type(value).__name__, "value": value.value}
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, np.ndarray):
        key = f"a{len(arrays)}"
        arrays[key] = np.ascontiguousarray(value)
        return {"__array__": key}
    if isinstance(value, np.generic):
        return value.item()
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        name = type(value).__name__
        if _REGISTRY.get(name) is not type(value):
            raise TypeError(f"cannot persist {name}: only medgr2_ray.types messages are saved")
        fields = {f.name: _encode(getattr(value, f.name), arrays) for f in dataclasses.fields(value)}
        return {"__type__": name, "fields": fields}
    if isinstance(value, tuple):
        return {"__tuple__": [_encode(v, arrays) for v in value]}
    if isinstance(value, list):
        return [_encode(v, arrays) for v in value]
    if isinstance(value, dict):
        return {"__map__": {str(k): _encode(v, arrays) for k, v in value.items()}}
    raise TypeError(f"cannot persist a {type(value).__name__}")


def _decode(tree: Any, arrays: dict[str, np.ndarray], where: str) -> Any:
    """Inverse of `_encode`; unknown type names are errors, never imports."""
    if isinstance(tree, list):
        return [_decode(v, arrays, where) for v in tree]
    if not isinstance(tree, dict):
        return tree
    if "__array__" in tree:
        if tree["__array__"] not in arrays:
            raise PersistError(f"{where}: array '{tree['__array__']}' is missing from the arrays file")
        return arrays[tree["__array__"]]
    if "__tuple__" in tree:
        return tuple(_decode(v, arrays, where) for v in tree["__tuple__"])
    if "__map__" in tree:
        return {k: _decode(v, arrays, where) for k, v in tree["__map__"].items()}
    name = tree.get("__enum__") or tree.get("__type__")
    cls = _REGISTRY.get(str(name))
    if cls is None:
        raise PersistError(f"{where}: unknown message type '{name}' (written by a newer version?)")
    if "__enum__" in tree:
        return cls(tree["value"])
    return cls(**{k: _decode(v, arrays, where) for k, v in tree["fields"].items()})


def save_messages(path: str | Path, payload: dict[str, Any]) -> None:
    """Write `payload` (a dict of messages, lists, numbers) to `path`.json and `path`.safetensors.

    Both files are written to temporary names and renamed, so a crash mid-save leaves the previous
    state intact instead of a half-written one.
    """
    base = Path(path)
    base.parent.mkdir(parents=True, exist_ok=True)
    arrays: dict[str, np.ndarray] = {}
    tree = _encode(payload, arrays)
    tmp_json, tmp_arr = base.with_suffix(".json.tmp"), base.with_suffix(".safetensors.tmp")
    tmp_json.write_text(json.dumps(tree), encoding="utf-8")
    save_file(arrays, str(tmp_arr))
    tmp_arr.replace(base.with_suffix(".safetensors"))
    tmp_json.replace(base.with_suffix(".json"))


def load_messages(path: str | Path) -> dict[str, Any]:
    """Read what `save_messages(path, ...)` wrote."""
    base = Path(path)
    json_path, arr_path = base.with_suffix(".json"), base.with_suffix(".safetensors")
    if not json_path.is_file() or not arr_path.is_file():
        raise PersistError(f"'{json_path}' or '{arr_path}' is missing; was the state saved?")
    try:
        tree = json.loads(json_path.read_text(encoding="utf-8"))
        arrays = load_file(str(arr_path))
    except Exception as exc:  # json, OS and safetensors each raise their own error types
        raise PersistError(f"'{base}': cannot read saved state: {exc}") from exc
    result = _decode(tree, arrays, str(json_path))
    if not isinstance(result, dict):
        raise PersistError(f"'{json_path}': expected a mapping at the top level")
    return result


def write_json_atomic(path: str | Path, payload: dict[str, Any]) -> None:
    """Write a small JSON state file so that a reader (or a crash mid-write) sees the old file or the new
    one, never half of one: a temporary file beside it, flushed to disk, then renamed over it."""
    import os

    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(target.name + ".tmp")
    with tmp.open("w", encoding="utf-8") as f:
        f.write(json.dumps(payload, allow_nan=False))
        f.flush()
        os.fsync(f.fileno())
    tmp.replace(target)


def read_json_state(path: str | Path) -> dict[str, Any]:
    """Read a `write_json_atomic` file; a clear `PersistError` when it is unreadable."""
    target = Path(path)
    try:
        state = json.loads(target.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise PersistError(f"'{target}': cannot read saved state: {exc}") from exc
    if not isinstance(state, dict):
        raise PersistError(f"'{target}': expected a JSON object")
    return state

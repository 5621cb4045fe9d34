"""Tests of medgr2_ray.checkpoint: exact pickle-free round trips, RNG restore, atomic replacement."""

from __future__ import annotations

import random
from pathlib import Path

import numpy as np
import pytest
import torch

from medgr2_ray.checkpoint import (
    CheckpointError,
    atomic_directory,
    capture_rng,
    flatten_state,
    load_state,
    load_tensors,
    restore_rng,
    rng_from_state,
    rng_to_state,
    save_state,
    save_tensors,
    unflatten_state,
)

torch.set_num_threads(1)


def _assert_same(a: object, b: object) -> None:
    """Structural equality that compares tensors/arrays exactly and checks container types."""
    assert type(a) is type(b), (type(a), type(b))
    if isinstance(a, torch.Tensor):
        assert a.dtype == b.dtype and torch.equal(a, b)  # type: ignore[union-attr, arg-type]
    elif isinstance(a, np.ndarray):
        assert a.dtype == b.dtype and np.array_equal(a, b)  # type: ignore[union-attr]
    elif isinstance(a, dict):
        assert list(a) == list(b)  # type: ignore[arg-type]
        for k in a:
            _assert_same(a[k], b[k])  # type: ignore[index]
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b)  # type: ignore[arg-type]
        for x, y in zip(a, b):  # type: ignore[call-overload]
            _assert_same(x, y)
    else:
        assert a == b or (a != a and b != b)  # NaN == NaN for our purpose


def test_optimizer_state_round_trip_is_exact(tmp_path: Path) -> None:
    model = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.ReLU(), torch.nn.Linear(4, 2))
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    for _ in range(2):
        model(torch.randn(5, 3)).square().mean().backward()
        opt.step()
    state = opt.state_dict()  # int keys, nested dicts, tensors, floats, bools, None
    save_state(tmp_path, "optim", state)
    back = load_state(tmp_path, "optim")
    _assert_same(state, back)
    assert 0 in back["state"]  # int keys survive JSON
    # The restored state drives an identical next step.
    clone = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.ReLU(), torch.nn.Linear(4, 2))
    clone.load_state_dict(model.state_dict())
    opt2 = torch.optim.AdamW(clone.parameters(), lr=1e-2)
    opt2.load_state_dict(back)
    x = torch.randn(5, 3)
    for m, o in ((model, opt), (clone, opt2)):
        o.zero_grad()
        m(x).square().mean().backward()
        o.step()
    for p, q in zip(model.parameters(), clone.parameters()):
        assert torch.equal(p, q)


def test_mixed_nested_state_round_trip(tmp_path: Path) -> None:
    state = {
        "step": 7,
        "lr": 0.5,
        "inf": float("inf"),
        "tup": (1, "a", None, True),
        "arr": np.arange(6, dtype=np.uint32).reshape(2, 3),
        "bf16": torch.randn(4).to(torch.bfloat16),
        "nested": [{"x": torch.tensor([1, 2])}, []],
        3: "int key",
    }
    skeleton, tensors = flatten_state(state)
    assert len(tensors) == 3
    _assert_same(state, unflatten_state(skeleton, tensors))
    save_state(tmp_path, "s", state)
    _assert_same(state, load_state(tmp_path, "s"))


def test_unstorable_state_is_a_clear_error() -> None:
    with pytest.raises(CheckpointError, match=r"'/opt/fn' holds a function"):
        flatten_state({"opt": {"fn": lambda: 0}})


def test_rng_states_restore_the_same_streams(tmp_path: Path) -> None:
    torch.manual_seed(1), np.random.seed(2), random.seed(3)
    torch.rand(3), np.random.rand(2), random.random(), np.random.randn()  # advance, leave a cached gauss
    save_state(tmp_path, "rng", rng_to_state(capture_rng()))
    expected = (torch.rand(5), np.random.rand(5), np.random.randn(3), [random.random() for _ in range(5)])
    torch.manual_seed(99), np.random.seed(99), random.seed(99)
    restore_rng(rng_from_state(load_state(tmp_path, "rng")))
    got = (torch.rand(5), np.random.rand(5), np.random.randn(3), [random.random() for _ in range(5)])
    assert torch.equal(expected[0], got[0])
    assert np.array_equal(expected[1], got[1]) and np.array_equal(expected[2], got[2])
    assert expected[3] == got[3]


def test_atomic_directory_replaces_whole_and_keeps_old_on_failure(tmp_path: Path) -> None:
    final = tmp_path / "ckpt"
    with atomic_directory(final) as d:
        save_tensors(d / "w.safetensors", {"w": torch.ones(2)})
    assert torch.equal(load_tensors(final / "w.safetensors")["w"], torch.ones(2))

    with pytest.raises(RuntimeError, match="crash"):
        with atomic_directory(final) as d:
            save_tensors(d / "w.safetensors", {"w": torch.zeros(2)})
            raise RuntimeError("crash while writing")
    # The old complete checkpoint is untouched and no temporary directory is left behind.
    assert torch.equal(load_tensors(final / "w.safetensors")["w"], torch.ones(2))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpt"]

    with atomic_directory(final) as d:
        save_tensors(d / "v.safetensors", {"v": torch.zeros(1)})
    assert sorted(p.name for p in final.iterdir()) == ["v.safetensors"]  # replaced, not merged


def test_missing_and_corrupt_files_name_the_file(tmp_path: Path) -> None:
    with pytest.raises(CheckpointError, match="optim.json: missing"):
        load_state(tmp_path, "optim")
    bad = tmp_path / "w.safetensors"
    bad.write_bytes(b"\x00garbage, not safetensors")
    with pytest.raises(CheckpointError, match="w.safetensors: not a readable safetensors"):
        load_tensors(bad)

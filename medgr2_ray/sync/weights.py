"""Weight sync over the Ray object store: publish a `FlatWeights` once, read it anywhere by version.

The learner packs its trainable weights (the LoRA adapter only when training LoRA) into a few contiguous
numpy buffers (`sync.flat.pack_tensors`) and calls `publish_weights`, which `ray.put`s them exactly once
and returns a small `WeightVersion` (version number + ObjectRef + size). That message is what travels:
the controller keeps the newest and hands it to rollout actors with their next batch; an actor whose
version is older calls `fetch_weights` between batches. Readers on the learner's node map the buffers
from shared memory without a copy, and an HF engine or scorer serves them as its parameters (read-only
views, `engines/served.py`): it holds the fetched `FlatWeights` until the next version replaces it,
which keeps the object pinned in the store that long and frees it after. Other nodes pull a version
once. Numpy buffers rather than
torch tensors because Ray serialises numpy out-of-band (pickle 5) while torch tensors go through a slow
pickle path (about 8x slower, measured in the design notes). Seconds and bytes go to the metrics.
"""

from __future__ import annotations

import time

import ray

from medgr2_ray.metrics import SYNC_BYTES, SYNC_SECONDS, Metrics
from medgr2_ray.types import FlatWeights, WeightVersion


class WeightSyncError(RuntimeError):
    """A published weight version that cannot be read (its owner died, or it is not FlatWeights)."""


def publish_weights(flat: FlatWeights, version: int, metrics: Metrics | None = None) -> WeightVersion:
    """`ray.put` the weights once and describe them as a `WeightVersion`.

    The caller (the learner actor) owns the object: it lives as long as some `WeightVersion` holding the
    ref is alive, so the controller dropping an old version frees its memory.
    """
    if version < 0:
        raise ValueError(f"weight versions start at 0, got {version}")
    start = time.perf_counter()
    ref = ray.put(flat)
    seconds = time.perf_counter() - start
    if metrics is not None:
        metrics.record(SYNC_SECONDS, seconds, side="publish")
        metrics.record(SYNC_BYTES, flat.num_bytes, side="publish")
    return WeightVersion(version, ref, flat.num_bytes, flat.lora_only, time.time())


def fetch_weights(weights: WeightVersion, metrics: Metrics | None = None, timeout_s: float = 600.0) -> FlatWeights:
    """Read a published version (zero-copy on the publisher's node: the arrays are read-only views)."""
    start = time.perf_counter()
    try:
        flat = ray.get(weights.ref, timeout=timeout_s)
    except (ray.exceptions.ObjectLostError, ray.exceptions.OwnerDiedError) as exc:
        raise WeightSyncError(
            f"weight version {weights.version} is gone (its learner died?); wait for the next publish"
        ) from exc
    if not isinstance(flat, FlatWeights):
        raise WeightSyncError(f"weight version {weights.version} holds a {type(flat).__name__}, not FlatWeights")
    if metrics is not None:
        metrics.record(SYNC_SECONDS, time.perf_counter() - start, side="load")
        metrics.record(SYNC_BYTES, flat.num_bytes, side="load")
    return flat


def object_store_bytes_used() -> int:
    """Bytes the Ray object store holds now, over the cluster (what a superseded weight version should
    give back once no engine serves it). Asks a raylet through Ray's internal API, as `ray memory` does."""
    from ray._private.internal_api import get_memory_info_reply, get_state_from_address

    state = get_state_from_address(ray.get_runtime_context().gcs_address)
    return int(get_memory_info_reply(state).store_stats.object_store_bytes_used)


def newest(a: WeightVersion | None, b: WeightVersion | None) -> WeightVersion | None:
    """The newer of two versions (None counts as older than any)."""
    if a is None:
        return b
    if b is None:
        return a
    return a if a.version >= b.version else b

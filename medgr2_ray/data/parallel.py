"""Parallel ingestion on a Ray cluster (local or remote) for large folders.

The driver walks the folders and reads the files; batches of file bytes go to Ray tasks that run the
pure `decode_bytes` and send back pixels and metadata; the driver writes the pool. Shipping bytes
instead of paths means workers need no shared file system, so a remote cluster (`--address`) works
the same as a local one. Results are written in file order (a small reorder buffer), so the pool,
including which of two identical images is kept, is the same as a sequential run's.
Ray is imported inside the functions: the rest of data/ must stay importable without it.
"""

from __future__ import annotations

from pathlib import Path

from medgr2_ray.data.ingest import (DecodedImage, IngestError, IngestOptions, IngestReport, collect_files,
                                    decode_guarded, finish_pool, record_outcome)
from medgr2_ray.data.store import PoolWriter

Outcome = list[DecodedImage] | IngestError


def _decode_batch(items: list[tuple[int, str, bytes | IngestError]], options: IngestOptions
                  ) -> list[tuple[int, Outcome]]:
    """Ray task body: decode each (index, name, bytes); read errors pass through unchanged."""
    return [(i, data if isinstance(data, IngestError) else decode_guarded(data, name, options))
            for i, name, data in items]


def _read(path: Path, options: IngestOptions) -> bytes | IngestError:
    try:
        if path.stat().st_size > options.max_file_bytes:
            return IngestError("too_large", f"file larger than max_file_bytes={options.max_file_bytes}")
        return path.read_bytes()
    except OSError as exc:
        return IngestError("unreadable", f"cannot read the file ({exc.strerror})")


def _batches(files: list[Path], options: IngestOptions, batch_bytes: int):
    """Yield lists of (index, name, bytes-or-error) of about `batch_bytes` each, in file order."""
    batch: list[tuple[int, str, bytes | IngestError]] = []
    size = 0
    for index, path in enumerate(files):
        data = _read(path, options)
        batch.append((index, path.name, data))
        size += len(data) if isinstance(data, bytes) else 0
        if size >= batch_bytes:
            yield batch
            batch, size = [], 0
    if batch:
        yield batch


def ingest_paths_parallel(paths: list[str | Path], out_dir: str | Path, options: IngestOptions, *,
                          address: str | None = None, batch_bytes: int = 32 << 20, max_in_flight: int = 8,
                          overwrite: bool = False, card: str | None = None) -> IngestReport:
    """Like `ingest.ingest_paths`, with decoding fanned out to Ray tasks.

    Connects to `address` (or starts a local cluster) unless Ray is already initialised; shuts down
    only a cluster it started. At most `max_in_flight` batches are in the object store at once.
    """
    import ray

    started = not ray.is_initialized()
    if started:
        ray.init(address=address, include_dashboard=False, log_to_driver=False)
    try:
        files = collect_files(paths)
        writer = PoolWriter(out_dir, overwrite=overwrite)
        report = IngestReport()
        decode = ray.remote(num_cpus=1, max_retries=2)(_decode_batch)
        pending: list = []
        ready: dict[int, Outcome] = {}
        next_index = 0
        for batch in _batches(files, options, batch_bytes):
            pending.append(decode.remote(batch, options))
            if len(pending) >= max_in_flight:
                done, pending = ray.wait(pending, num_returns=1)
                next_index = _drain(ray.get(done), ready, next_index, files, report, writer, options)
        for ref in pending:
            next_index = _drain([ray.get(ref)], ready, next_index, files, report, writer, options)
        finish_pool(writer, report, card)
        return report
    finally:
        if started:
            ray.shutdown()


def _drain(results: list[list[tuple[int, Outcome]]], ready: dict[int, Outcome], next_index: int,
           files: list[Path], report: IngestReport, writer: PoolWriter, options: IngestOptions) -> int:
    """Buffer finished outcomes and record every one whose turn (file order) has come."""
    for batch in results:
        ready.update(batch)
    while next_index in ready:
        record_outcome(report, writer, files[next_index], options, ready.pop(next_index))
        next_index += 1
    return next_index

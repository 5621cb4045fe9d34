"""Metrics: one catalogue of named figures, recorded to Ray (dashboard/Prometheus) and to the run dir.

Every figure the system reports is declared once below as a `MetricSpec` (name, kind, description,
tag keys), so an actor cannot invent an unlisted, misspelt metric: `Metrics.record(SPEC, value)` is the
only way in. Inside a Ray worker the figure goes to `ray.util.metrics` (Ray exports it on the node's
Prometheus endpoint as `ray_<name>`, which the dashboard's Grafana panels read). The driver also writes
figures to `metrics.jsonl` and TensorBoard in the run directory through `RunLog`, so a finished run can be
judged without a live cluster. `scrape_prometheus` reads the endpoint back (tests, `medgr2 status`).
"""

from __future__ import annotations

import enum
import json
import math
import re
import time
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any

import ray
from ray.util import metrics as ray_metrics


class Kind(str, enum.Enum):
    """Prometheus metric kinds that Ray supports."""

    COUNTER = "counter"
    GAUGE = "gauge"
    HISTOGRAM = "histogram"


@dataclass(frozen=True)
class MetricSpec:
    """A declared metric: its Prometheus name (without Ray's `ray_` prefix), kind and tag keys."""

    name: str
    kind: Kind
    description: str
    tag_keys: tuple[str, ...] = ()
    boundaries: tuple[float, ...] = ()  # histogram bucket edges


_SECONDS = (0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
_VERSIONS = (0.5, 1.5, 2.5, 3.5, 4.5, 8.5, 16.5)  # integer staleness lands in its own bucket

SAMPLES_GENERATED = MetricSpec("medgr2_samples_generated", Kind.COUNTER, "Completions generated.", ("pool", "actor"))
SAMPLES_SCORED = MetricSpec("medgr2_samples_scored", Kind.COUNTER, "Completions scored.", ("actor",))
SAMPLES_TRAINED = MetricSpec("medgr2_samples_trained", Kind.COUNTER, "Completions the learner trained on.", ())
GROUPS_DROPPED_STALE = MetricSpec(
    "medgr2_groups_dropped_stale", Kind.COUNTER, "Scored groups dropped for exceeding max_staleness.", ()
)
REQUESTS_REISSUED = MetricSpec(
    "medgr2_requests_reissued", Kind.COUNTER, "Requests re-issued after an actor died.", ("pool",)
)
TOKENS_GENERATED = MetricSpec("medgr2_tokens_generated", Kind.COUNTER, "Completion tokens generated.", ("pool", "actor"))
TOKENS_PER_S = MetricSpec("medgr2_tokens_per_s", Kind.GAUGE, "Generation throughput of the last batch.", ("pool", "actor"))
REWARD_MEAN = MetricSpec("medgr2_reward_mean", Kind.GAUGE, "Mean reward of the last scored or trained batch.", ("stage",))
WEIGHT_VERSION = MetricSpec("medgr2_weight_version", Kind.GAUGE, "Weight version an actor holds.", ("pool", "actor"))
LEARNER_VERSION = MetricSpec("medgr2_learner_version", Kind.GAUGE, "Newest published learner weight version.", ())
STALENESS = MetricSpec(
    "medgr2_staleness", Kind.HISTOGRAM, "Learner version minus rollout version of trained groups.", (), _VERSIONS
)
BUFFER_DEPTH = MetricSpec("medgr2_buffer_depth", Kind.GAUGE, "Scored groups waiting in the rollout buffer.", ())
LEARNER_WAIT_S = MetricSpec(
    "medgr2_learner_wait_seconds", Kind.HISTOGRAM, "Seconds the learner waited for data per step.", (), _SECONDS
)
LEARNER_STEP_S = MetricSpec("medgr2_learner_step_seconds", Kind.HISTOGRAM, "Seconds per learner step.", (), _SECONDS)
SYNC_SECONDS = MetricSpec(
    "medgr2_sync_seconds", Kind.HISTOGRAM, "Seconds to publish or load one weight version.", ("side",), _SECONDS
)
SYNC_BYTES = MetricSpec("medgr2_sync_bytes", Kind.COUNTER, "Bytes of weights published or loaded.", ("side",))
POOL_SIZE = MetricSpec("medgr2_pool_size", Kind.GAUGE, "Live actors in a pool.", ("pool",))
CANDIDATES = MetricSpec("medgr2_candidates", Kind.COUNTER, "Generated candidates decided by the kept-sample store.", ())
KEPT = MetricSpec("medgr2_kept", Kind.COUNTER, "Candidates the kept-sample store kept.", ())
GENERATOR_LAG = MetricSpec("medgr2_generator_lag", Kind.HISTOGRAM,
                           "Newest G version minus the G version that wrote a candidate.", (), _VERSIONS)
REWARD_LAG = MetricSpec("medgr2_reward_lag", Kind.HISTOGRAM,
                        "Newest R version minus the R version that scored a candidate.", (), _VERSIONS)

CATALOGUE: tuple[MetricSpec, ...] = (
    SAMPLES_GENERATED, SAMPLES_SCORED, SAMPLES_TRAINED, GROUPS_DROPPED_STALE, REQUESTS_REISSUED,
    TOKENS_GENERATED, TOKENS_PER_S, REWARD_MEAN, WEIGHT_VERSION, LEARNER_VERSION, STALENESS, BUFFER_DEPTH,
    CANDIDATES, KEPT, GENERATOR_LAG, REWARD_LAG,
    LEARNER_WAIT_S, LEARNER_STEP_S, SYNC_SECONDS, SYNC_BYTES, POOL_SIZE,
)


class Metrics:
    """Records catalogue metrics to Ray from the current process (driver or actor).

    Ray metric objects are created lazily, once per spec per process: creating them registers the
    metric with the node's exporter, which is not free, and an actor records the same figures often.
    Outside a Ray session recording is a no-op (pure unit tests of actor logic need no cluster).
    """

    def __init__(self, **default_tags: str) -> None:
        self._defaults = dict(default_tags)
        self._made: dict[str, Any] = {}

    def _metric(self, spec: MetricSpec) -> Any:
        made = self._made.get(spec.name)
        if made is None:
            if spec.kind is Kind.COUNTER:
                made = ray_metrics.Counter(spec.name, spec.description, tag_keys=spec.tag_keys)
            elif spec.kind is Kind.GAUGE:
                made = ray_metrics.Gauge(spec.name, spec.description, tag_keys=spec.tag_keys)
            else:
                made = ray_metrics.Histogram(
                    spec.name, spec.description, boundaries=list(spec.boundaries), tag_keys=spec.tag_keys
                )
            self._made[spec.name] = made
        return made

    def record(self, spec: MetricSpec, value: float, **tags: str) -> None:
        """Add (counter), set (gauge) or observe (histogram) `value` with the spec's tags."""
        all_tags = {k: str(v) for k, v in {**self._defaults, **tags}.items() if k in spec.tag_keys}
        missing = set(spec.tag_keys) - set(all_tags)
        if missing:
            raise ValueError(f"metric '{spec.name}' needs tags {sorted(missing)}")
        if not ray.is_initialized() or not math.isfinite(value):
            return  # no exporter outside Ray; NaN/inf would poison Prometheus sums
        metric = self._metric(spec)
        if spec.kind is Kind.COUNTER:
            if value > 0:
                metric.inc(value, tags=all_tags)
        elif spec.kind is Kind.GAUGE:
            metric.set(value, tags=all_tags)
        else:
            metric.observe(value, tags=all_tags)


class RunLog:
    """The run directory's record of figures: `metrics.jsonl` (one JSON object a line) and `tb/`.

    Written by the driver only (one writer per file). TensorBoard is optional at import time because
    the JSONL file alone is enough to plot a run; it is used whenever it imports.
    """

    def __init__(self, run_dir: str | Path, tensorboard: bool = True) -> None:
        self.run_dir = Path(run_dir)
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self.path = self.run_dir / "metrics.jsonl"
        self._file = self.path.open("a", encoding="utf-8")
        self._tb: Any = None
        if tensorboard:
            from torch.utils.tensorboard import SummaryWriter  # heavy import, only where a run logs

            self._tb = SummaryWriter(log_dir=str(self.run_dir / "tb"))

    def log(self, step: int, values: dict[str, float], stage: str = "grpo") -> None:
        """Append one record of scalar figures for `step` (non-finite values are kept as null)."""
        clean = {k: (float(v) if math.isfinite(float(v)) else None) for k, v in values.items()}
        record = {"time": time.time(), "stage": stage, "step": int(step), **clean}
        self._file.write(json.dumps(record) + "\n")
        self._file.flush()
        if self._tb is not None:
            for key, value in clean.items():
                if value is not None:
                    self._tb.add_scalar(f"{stage}/{key}", value, int(step))

    def close(self) -> None:
        """Flush and close both sinks."""
        self._file.close()
        if self._tb is not None:
            self._tb.close()

    def __enter__(self) -> "RunLog":
        return self

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        self.close()


def read_run_log(run_dir: str | Path) -> list[dict[str, Any]]:
    """All records of a run's `metrics.jsonl`, in order."""
    path = Path(run_dir) / "metrics.jsonl"
    with path.open(encoding="utf-8") as handle:
        return [json.loads(line) for line in handle if line.strip()]


def set_aside_records(run_dir: str | Path, redone: Callable[[dict[str, Any]], bool]) -> int:
    """Move the records for which `redone(record)` holds from `metrics.jsonl` to `metrics.redone.jsonl`
    (appended), before a resumed run logs the same steps again: the log keeps one record per step, and
    nothing is deleted. Returns how many were moved. The rewrite is atomic (a crash leaves the old file)."""
    import os

    path = Path(run_dir) / "metrics.jsonl"
    if not path.is_file():
        return 0
    records = read_run_log(run_dir)
    moved = [r for r in records if redone(r)]
    if not moved:
        return 0
    with (path.parent / "metrics.redone.jsonl").open("a", encoding="utf-8") as aside:
        aside.writelines(json.dumps(r) + "\n" for r in moved)
    tmp = path.with_name(path.name + ".tmp")
    with tmp.open("w", encoding="utf-8") as f:
        f.writelines(json.dumps(r) + "\n" for r in records if not redone(r))
        f.flush()
        os.fsync(f.fileno())
    tmp.replace(path)
    return len(moved)


_SAMPLE_RE = re.compile(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{[^}]*\})?\s+(\S+)$")
_TAG_RE = re.compile(r'(\w+)="((?:[^"\\]|\\.)*)"')


@dataclass(frozen=True)
class PromSample:
    """One sample line of a Prometheus text exposition."""

    name: str
    tags: dict[str, str]
    value: float


def node_metrics_port() -> int:
    """The Prometheus export port of the node this process runs on (needs `ray.init` first)."""
    here = ray.get_runtime_context().get_node_id()
    for node in ray.nodes():
        if node["NodeID"] == here:
            return int(node["MetricsExportPort"])
    raise RuntimeError("this process's Ray node is not in ray.nodes(); is Ray initialised?")


def scrape_prometheus(port: int, prefix: str = "ray_medgr2_", host: str = "127.0.0.1") -> list[PromSample]:
    """Samples whose name starts with `prefix` from `http://host:port/metrics`."""
    with urllib.request.urlopen(f"http://{host}:{port}/metrics", timeout=10) as response:
        body = response.read().decode("utf-8")
    found: list[PromSample] = []
    for line in body.splitlines():
        match = _SAMPLE_RE.match(line)
        if match and match.group(1).startswith(prefix):
            tags = dict(_TAG_RE.findall(match.group(2) or ""))
            found.append(PromSample(match.group(1), tags, float(match.group(3))))
    return found

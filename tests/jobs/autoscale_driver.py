"""Driver for the autoscaling test, run as its own process against a private autoscaling head.

It drives `loop.autoscale.PoolAutoscaler` exactly as the controller does: the learner-wait signal makes `decide` grow
the rollout pool, the pool's actors ask for a `rollout_slot` resource that only worker nodes have, so
Ray's autoscaler must add nodes for them; then the buffer-full signal shrinks the pool and the idle
nodes must go. It prints one JSON line with what it saw.
"""

from __future__ import annotations

import json
import sys
import time

import ray

from medgr2_ray.config import PoolConfig
from medgr2_ray.actors.pool import WorkerPool
from medgr2_ray.config import LoopConfig
from medgr2_ray.loop.autoscale import PoolAutoscaler, ScaleSignals


class RolloutProbe:
    """Stands in for RolloutActor (no model): what matters here is where Ray places it."""

    def __init__(self, index: int) -> None:
        self.index = index

    def ready(self) -> str:
        return ray.get_runtime_context().get_node_id()


def alive_nodes() -> list[str]:
    return sorted(n["NodeID"] for n in ray.nodes() if n["Alive"])


def wait_for(predicate: "object", what: str, timeout_s: float = 240.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():  # type: ignore[operator]
        if time.monotonic() > deadline:
            raise TimeoutError(f"gave up waiting for {what}; nodes: {alive_nodes()}")
        time.sleep(1.0)


def main(address: str) -> None:
    ray.init(address=address, namespace="autoscale-test")
    head_nodes = alive_nodes()
    config = PoolConfig(min_workers=0, max_workers=2, num_cpus=1, resources={"rollout_slot": 1}, max_restarts=0)
    pool = WorkerPool("rollout", RolloutProbe, config, lambda i: i)
    autoscaler = PoolAutoscaler(pool, config, LoopConfig(scale_up_wait_s=0.5, scale_down_fill=0.9, scale_patience=2))
    targets: list[int] = []
    while not targets or targets[-1] < 2:  # the learner keeps waiting for data: grow
        targets.append(autoscaler.observe(ScaleSignals(learner_wait_s=3.0, buffer_fill=0.0)))
    pending_right_after = len(pool.members) - pool.num_ready
    wait_for(lambda: pool.poll_ready(1.0) is not None and pool.num_ready == 2, "two placed rollout actors")
    nodes_up = alive_nodes()
    actor_nodes = sorted(str(m.info) for m in pool.members)
    while targets[-1] > 0:  # the buffer stays full: shrink
        targets.append(autoscaler.observe(ScaleSignals(learner_wait_s=0.0, buffer_fill=1.0)))
    wait_for(lambda: len(alive_nodes()) == len(head_nodes), "idle worker nodes to be removed")
    print("RESULT " + json.dumps({
        "head_nodes": head_nodes, "targets": targets, "pending_right_after": pending_right_after,
        "nodes_up": nodes_up, "actor_nodes": actor_nodes, "nodes_down": alive_nodes(),
    }))


if __name__ == "__main__":
    main(sys.argv[1])

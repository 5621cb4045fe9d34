"""Driver for the autoscaling test, run as its own process against a private autoscaling head.

It runs the flywheel's own data side — the generator pool of `RolloutActor`s (a real tiny generator), a
scorer, the kept-sample store and the `DataLane` — with `loop.autoscale.PoolAutoscaler` as the flywheel
drives it. The learners waiting for kept samples make `decide` grow the generator pool; its actors ask
for a `rollout_slot` resource that only worker nodes have, so Ray's autoscaler must add nodes for them;
generation goes on across the growth; then full queues shrink the pool (an actor with a call in flight
is never stopped) and the idle nodes must go. Every request launched must be answered exactly once by
the store. It prints one JSON line with what it saw.
"""

from __future__ import annotations

import json
import sys
import time
from collections import Counter

import ray

from medgr2_ray.actors.store import KeptStore, StoreSpec
from medgr2_ray.actors.system import ActorSystem, reward_objective, rollout_pool, scorer_pool
from medgr2_ray.config import load_config
from medgr2_ray.eval.rundata import prepare_data
from medgr2_ray.loop.autoscale import PoolAutoscaler, ScaleSignals
from medgr2_ray.loop.cycle import model_dirs
from medgr2_ray.loop.data_lane import DataLane, wait_any
from medgr2_ray.loop.flywheel import prompt_stream
from medgr2_ray.types import PromptStrategy, TaskType

REQUESTS = 24


def alive_nodes() -> list[str]:
    return sorted(n["NodeID"] for n in ray.nodes() if n["Alive"])


def wait_for(predicate: "object", what: str, timeout_s: float = 240.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():  # type: ignore[operator]
        if time.monotonic() > deadline:
            raise TimeoutError(f"gave up waiting for {what}; nodes: {alive_nodes()}")
        time.sleep(1.0)


def main(address: str, cache: str, out: str) -> None:
    ray.init(address=address, namespace="autoscale-test")
    cfg = load_config(None, [
        f"data.cache_dir={cache}", f"run.root={out}", "generator_pool.min_workers=0", "generator_pool.max_workers=2",
        "generator_pool.num_cpus=1", "generator_pool.resources={rollout_slot: 1}", "generator_pool.max_restarts=0",
        "scorer_pool.num_cpus=0.25", "cycle.samples_per_prompt=1", "cycle.max_new_tokens=24",
        "loop.requests_per_call=2", "cycle.tasks=[Modality Recognition]", "cycle.strategies=[direct]",
        "loop.scale_up_wait_s=0.5", "loop.scale_down_fill=0.9", "loop.scale_patience=2"])
    data, dirs = prepare_data(cfg), model_dirs(cfg)
    images = {i.image_id: ray.put(data.pool.read_rgb(i)) for i in data.train}
    shared = ActorSystem.shared(cfg, "as-", f"{out}/ray_train", images, {i.image_id: i for i in data.pool.images})
    generators = rollout_pool(shared, "generator-rollout", dirs.generator, cfg.generator, 7919, cfg.generator_pool)
    scorers = scorer_pool(shared, dirs.reward_model, reward_objective(cfg))
    scorers.scale_to(1)
    store = ray.remote(KeptStore).options(name="as-KeptStore", num_cpus=0).remote(StoreSpec(
        f"{out}/data", tuple(data.seeds), cfg.selection, cfg.run.seed, rounds=False))
    lane = DataLane(cfg, generators, scorers, store)
    autoscaler = PoolAutoscaler(generators, cfg.generator_pool, cfg.loop)
    stream = prompt_stream(data.train, [TaskType.MODALITY], [PromptStrategy.DIRECT], cfg.run.seed)
    head_nodes = alive_nodes()
    targets = []
    while not targets or targets[-1] < 2:  # the learners keep waiting for kept samples: grow
        targets.append(autoscaler.observe(ScaleSignals(learner_wait_s=3.0, buffer_fill=0.0)))
    pending_right_after = len(generators.members) - generators.num_ready
    served: set[str] = set()
    deadline = time.monotonic() + 300
    # Generate while the pool grows, until both generators have written something and REQUESTS were issued.
    while len(lane.ledger.issued) < REQUESTS or len(served) < 2 or not lane.idle():
        lane.pump()
        if len(lane.ledger.issued) < REQUESTS or len(served) < 2:
            lane.launch(stream, 0)
        for ref in wait_any(lane.refs(), 0.5):
            chain = lane.flights[ref]
            served.add(chain.members[0].name)
            lane.on_done(ref)
        assert time.monotonic() < deadline, "generation did not finish"
    nodes_up = alive_nodes()
    actor_nodes = sorted(ray.get(m.ready_ref).node_id for m in generators.members)
    while targets[-1] > 0:  # the queues stay full: shrink
        targets.append(autoscaler.observe(ScaleSignals(learner_wait_s=0.0, buffer_fill=1.0)))
    wait_for(lambda: len(alive_nodes()) == len(head_nodes), "idle worker nodes to be removed")
    answered = Counter(lane.ledger.answered)
    print("RESULT " + json.dumps({
        "head_nodes": head_nodes, "targets": targets, "pending_right_after": pending_right_after,
        "nodes_up": nodes_up, "actor_nodes": actor_nodes, "nodes_down": alive_nodes(),
        "issued_at_least": len(lane.ledger.issued) >= REQUESTS, "answered_once": sorted(answered) == sorted(set(lane.ledger.issued))
        and max(answered.values()) == 1, "served_by": sorted(served),
        "outputs_accounted": sum(r.candidates + r.unparseable + r.duplicates for r in lane.ledger.receipts)
        == len(lane.ledger.issued),
        "members_left": len(generators.members),
    }))


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], sys.argv[3])

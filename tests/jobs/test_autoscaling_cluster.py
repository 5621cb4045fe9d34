"""Autoscaling end to end on one machine, with the flywheel's own generator actors: pending generator
actors make Ray's autoscaler add (fake) nodes, generation goes on across the growth with every request
answered exactly once, and shrinking the pool lets the autoscaler remove the idle nodes.

`ray.cluster_utils.AutoscalingCluster` is used for its config generation shape, but two of its parts
cannot run here: it reads `fake_multi_node/example.yaml`, which the 2.60 wheel does not ship, and its
`start`/`shutdown` run `ray stop --force`, which would kill every other Ray cluster on this machine. The
subclass below builds the config inline and starts/stops a private head (`LocalHead`: own port, own temp
dir, stops only its own processes).
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

from ray.cluster_utils import AutoscalingCluster

from local_head import LocalHead  # type: ignore[import-not-found]

HERE = Path(__file__).parent


class PrivateAutoscalingCluster(AutoscalingCluster):
    """AutoscalingCluster on a private head, never `ray stop --force`."""

    def __init__(self, head_cpus: int, worker_node_types: dict[str, Any]) -> None:
        self.head = LocalHead(num_cpus=head_cpus)
        super().__init__(head_resources={"CPU": head_cpus}, worker_node_types=worker_node_types)

    def _generate_config(self, head_resources: dict, worker_node_types: dict, autoscaler_v2: bool = False,
                         **config_kwargs: Any) -> dict[str, Any]:
        # What example.yaml holds, with the provider pointed at our head's GCS port instead of 6379.
        return {
            "cluster_name": "medgr2-fake", "max_workers": 4, "upscaling_speed": 1.0,
            "idle_timeout_minutes": 0.05, "head_node_type": "ray.head.default",
            "provider": {"type": "fake_multinode", "use_node_id_as_ip": True, "disable_node_updaters": True,
                         "disable_launch_config_check": True, "gcs_address": self.head.address},
            "available_node_types": {
                **worker_node_types,
                "ray.head.default": {"resources": dict(head_resources), "node_config": {}, "max_workers": 0},
            },
            "auth": {}, "docker": {}, "initialization_commands": [], "setup_commands": [],
            "head_setup_commands": [], "worker_setup_commands": [], "head_start_ray_commands": [],
            "worker_start_ray_commands": [], "file_mounts": {}, "cluster_synced_files": [],
            "file_mounts_sync_continuously": False, "rsync_exclude": [], "rsync_filter": [],
            **config_kwargs,
        }

    def start(self, _system_config: dict | None = None, override_env: dict | None = None) -> None:
        self.head.autoscaling_config = self._config
        self.head.start()

    def shutdown(self) -> None:
        self.head.stop()


def test_the_generator_pool_grows_onto_new_nodes_and_shrinks_off_them_losing_nothing(
        tiny_cache: Path, tmp_path: Path) -> None:
    cluster = PrivateAutoscalingCluster(
        head_cpus=1,
        worker_node_types={"ray.worker.rollout": {
            "resources": {"CPU": 1, "rollout_slot": 1}, "node_config": {}, "min_workers": 0, "max_workers": 2,
        }},
    )
    cluster.start()
    try:
        done = subprocess.run(
            [sys.executable, str(HERE / "autoscale_driver.py"), cluster.head.address, str(tiny_cache), str(tmp_path)],
            env=cluster.head.env(), capture_output=True, text=True, timeout=900,
        )
        assert done.returncode == 0, done.stderr[-4000:]
        seen = json.loads(next(l for l in done.stdout.splitlines() if l.startswith("RESULT "))[7:])
    finally:
        cluster.shutdown()
    # patience 2: every second consecutive signal moves the target by one, clamped to [0, 2]
    assert seen["targets"] == [0, 1, 1, 2, 2, 1, 1, 0]
    assert seen["pending_right_after"] == 2  # nothing can host them until the autoscaler adds nodes
    assert len(seen["head_nodes"]) == 1 and len(seen["nodes_up"]) == 3  # head + two generation nodes
    workers = set(seen["nodes_up"]) - set(seen["head_nodes"])
    assert set(seen["actor_nodes"]) == workers  # one generator on each new node, none on the head
    assert len(seen["served_by"]) == 2  # both generators wrote candidates
    assert seen["issued_at_least"] and seen["answered_once"]  # no request lost or answered twice
    assert seen["outputs_accounted"]  # every output (1 per request) became a candidate or a counted failure
    assert seen["members_left"] == 0 and seen["nodes_down"] == seen["head_nodes"]  # idle nodes removed
    assert not cluster.head.my_pids()

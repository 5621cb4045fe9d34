"""The cluster configs in cluster/ say what the docs promise: a GPU generation worker type that advertises
the resource the rollout pool asks for, autoscaling bounds, the dashboard on loopback only, token auth on
every node, and a medgr2 config overlay that loads and matches them."""

from __future__ import annotations

import json
from pathlib import Path

import yaml

from medgr2_ray.config import load_config

CLUSTER = Path(__file__).resolve().parents[2] / "cluster"


def test_launcher_config_has_an_autoscaled_gpu_generation_worker_and_a_private_dashboard() -> None:
    cfg = yaml.safe_load((CLUSTER / "ray-cluster.yaml").read_text())
    gen = cfg["available_node_types"]["generation-gpu"]
    assert gen["resources"]["GPU"] == 1 and gen["resources"]["rollout_slot"] == 1
    assert gen["min_workers"] == 0 < gen["max_workers"]
    head_start = " ".join(cfg["head_start_ray_commands"])
    assert "--dashboard-host=127.0.0.1" in head_start and "--autoscaling-config" in head_start
    for command in (head_start, " ".join(cfg["worker_start_ray_commands"])):
        assert "RAY_AUTH_MODE=token ray start" in command
    assert "~/.ray/auth_token" in cfg["file_mounts"]


def test_kuberay_manifest_autoscales_generation_pods_with_token_auth_and_no_exposed_dashboard() -> None:
    docs = list(yaml.safe_load_all((CLUSTER / "kuberay-raycluster.yaml").read_text()))
    assert [d["kind"] for d in docs] == ["RayCluster"]  # no Service/Ingress exposing the dashboard
    spec = docs[0]["spec"]
    assert spec["enableInTreeAutoscaling"] is True
    assert spec["headGroupSpec"]["rayStartParams"]["dashboard-host"] == "127.0.0.1"
    groups = {g["groupName"]: g for g in spec["workerGroupSpecs"]}
    gen = groups["generation"]
    assert gen["minReplicas"] == 0 < gen["maxReplicas"]
    assert json.loads(json.loads(gen["rayStartParams"]["resources"])) == {"rollout_slot": 1}
    assert gen["template"]["spec"]["containers"][0]["resources"]["limits"]["nvidia.com/gpu"] == "1"
    containers = [spec["headGroupSpec"]["template"]["spec"]["containers"][0]] + [
        g["template"]["spec"]["containers"][0] for g in spec["workerGroupSpecs"]]
    for container in containers:
        env = {e["name"]: e for e in container["env"]}
        assert env["RAY_AUTH_MODE"]["value"] == "token" and "secretKeyRef" in env["RAY_AUTH_TOKEN"]["valueFrom"]


def test_gpu_config_overlay_loads_and_asks_for_what_the_generation_nodes_offer() -> None:
    cfg = load_config(CLUSTER / "medgr2-gpu.yaml")
    nodes = yaml.safe_load((CLUSTER / "ray-cluster.yaml").read_text())["available_node_types"]
    offered = nodes["generation-gpu"]["resources"]
    assert cfg.rollout_pool.resources == {"rollout_slot": 1} and cfg.rollout_pool.num_gpus == 1
    assert all(offered[k] >= v for k, v in cfg.rollout_pool.resources.items())
    assert cfg.rollout_pool.max_workers <= nodes["generation-gpu"]["max_workers"]
    learner_node = nodes["learner-gpu"]["resources"]
    assert cfg.learner.num_ranks * cfg.learner.num_gpus_per_rank <= learner_node["GPU"]  # ranks pack on one node
    assert cfg.engine.backend == "vllm" and not cfg.policy.trust_remote_code

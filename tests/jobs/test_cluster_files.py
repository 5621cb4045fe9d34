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


# ---- the image and what runs in it (issue 16: the deployable GPU image) --------------------------------
ROOT = CLUSTER.parent
IMAGE = "medgr2-ray:0.1.0-py311-gpu"  # what ./Dockerfile is built as, and what every cluster file runs
GPU_CONFIGS = [CLUSTER / "medgr2-gpu.yaml", ROOT / "configs" / "gpu-qwen2.5-vl-3b.yaml",
               ROOT / "configs" / "gpu-qwen2.5-vl-7b.yaml"]


def _pyproject() -> dict:
    import tomllib

    with open(ROOT / "pyproject.toml", "rb") as f:
        return tomllib.load(f)["project"]


def _dockerfile() -> list[str]:
    return [line.strip() for line in (ROOT / "Dockerfile").read_text().splitlines()
            if line.strip() and not line.strip().startswith("#")]


def test_dockerfile_builds_from_a_real_ray_gpu_tag_and_installs_the_gpu_extras() -> None:
    import re

    lines = _dockerfile()
    froms = [line.split()[1] for line in lines if line.startswith("FROM ")]
    assert len(froms) == 1
    # rayproject/ray tags are {Ray version}[-py{XY}][-{cpu|gpu|cuXXX}]; the ray-ml images stopped after 2.49.
    match = re.fullmatch(r"rayproject/ray:(\d+\.\d+\.\d+)-py(3)(\d+)-(gpu|cu\d{3})", froms[0])
    assert match, f"base image {froms[0]!r} is not a rayproject/ray GPU tag"
    ray_pin = next(d for d in _pyproject()["dependencies"] if d.startswith("ray["))
    assert ray_pin.endswith(f"=={match[1].rsplit('.', 1)[0]}.*")  # the image's Ray is the one we pin
    assert f"py{match[2]}{match[3]}" in IMAGE  # our image's name says the base's Python
    assert int(match[3]) in (10, 11, 12)  # a Python our requires-python admits (>=3.10,<3.13)
    install = " ".join(line for line in lines if line.startswith("RUN ") and "pip install" in line)
    assert "'.[gpu]'" in install and "DS_BUILD_OPS=0" in install
    assert "gpu" in _pyproject()["optional-dependencies"]
    copied = {line.split()[-2].rstrip("/") for line in lines if line.startswith("COPY ")}
    assert {"medgr2_ray", "jobs", "configs", "cluster"} <= {c.split("/")[-1] for c in copied}
    cmd = json.loads(next(line for line in lines if line.startswith("CMD ")).removeprefix("CMD "))
    assert cmd[:2] == ["python", "jobs/medgr2_cycle.py"] and (ROOT / cmd[1]).is_file() and (ROOT / cmd[2]).is_file()


def test_every_cluster_file_runs_our_image_and_the_whole_cycle() -> None:
    launcher = yaml.safe_load((CLUSTER / "ray-cluster.yaml").read_text())
    kuberay = yaml.safe_load((CLUSTER / "kuberay-raycluster.yaml").read_text())["spec"]
    images = [launcher["docker"]["image"], kuberay["headGroupSpec"]["template"]["spec"]["containers"][0]["image"]]
    images += [g["template"]["spec"]["containers"][0]["image"] for g in kuberay["workerGroupSpecs"]]
    assert set(images) == {IMAGE}
    assert not any("pip install" in c for c in launcher.get("setup_commands") or [])  # the image has it all
    for path in (CLUSTER / "ray-cluster.yaml", CLUSTER / "kuberay-raycluster.yaml"):
        text = path.read_text()
        assert "jobs/medgr2_cycle.py cluster/medgr2-gpu.yaml" in text and "grpo_async" not in text, path
    assert (ROOT / "jobs" / "medgr2_cycle.py").is_file()


def _path_leaves(node: object, key: str = "") -> list[tuple[str, str]]:
    """(dotted key, value) of every string in a YAML tree that is an absolute path."""
    if isinstance(node, dict):
        return [leaf for k, v in node.items() for leaf in _path_leaves(v, f"{key}.{k}" if key else str(k))]
    if isinstance(node, list):
        return [leaf for i, v in enumerate(node) for leaf in _path_leaves(v, f"{key}[{i}]")]
    return [(key, node)] if isinstance(node, str) and node.startswith("/") else []


def _read(cfg: object, dotted: str) -> object:
    """The loaded config's value at a dotted key (with [i] list indices): what the job reads there."""
    value = cfg
    for part in dotted.split("."):
        name, _, index = part.partition("[")
        value = getattr(value, name)
        if index:
            value = value[int(index.rstrip("]"))]
    return value


def test_gpu_configs_share_every_path_read_a_reward_model_and_ask_for_generation_nodes() -> None:
    launcher = yaml.safe_load((CLUSTER / "ray-cluster.yaml").read_text())
    kuberay = yaml.safe_load((CLUSTER / "kuberay-raycluster.yaml").read_text())["spec"]
    assert "-v /shared:/shared" in launcher["docker"]["run_options"]
    assert any("/shared" in c for c in launcher["initialization_commands"])
    pods = [kuberay["headGroupSpec"]] + kuberay["workerGroupSpecs"]
    for pod in pods:  # every pod mounts the shared claim at /shared and a memory-backed /dev/shm
        spec = pod["template"]["spec"]
        mounts = {m["mountPath"]: m["name"] for m in spec["containers"][0]["volumeMounts"]}
        volumes = {v["name"]: v for v in spec["volumes"]}
        assert volumes[mounts["/shared"]]["persistentVolumeClaim"]["claimName"] == "medgr2-shared"
        assert volumes[mounts["/dev/shm"]]["emptyDir"]["medium"] == "Memory"
    generation = launcher["available_node_types"]["generation-gpu"]
    gpus_per_node = generation["resources"]["GPU"]
    for path in GPU_CONFIGS:
        cfg = load_config(path)
        leaves = _path_leaves(yaml.safe_load(path.read_text()))
        assert leaves, path
        for key, value in leaves:  # a path only some nodes see breaks the first actor placed elsewhere
            assert value.startswith("/shared/"), f"{path}: {key}={value} is not on the shared mount"
            assert _read(cfg, key) == value, f"{path}: {key} is not a setting the job reads"
        assert {cfg.run.root, cfg.data.cache_dir} <= {v for _, v in leaves}
        for model in (cfg.policy, cfg.generator, cfg.reward_model):
            assert model.path is not None and model.path.startswith("/shared/models/"), path
        pools = (cfg.rollout_pool, cfg.generator_pool, cfg.scorer_pool)
        for pool in pools:  # what the generation nodes advertise, so pending workers add nodes
            assert pool.resources == {"rollout_slot": 1} and 0 < pool.num_gpus <= gpus_per_node, path
        assert sum(p.max_workers for p in pools) <= generation["max_workers"] * generation["resources"]["rollout_slot"]
        engine = cfg.engine
        assert engine.backend == "vllm" and engine.max_model_len is not None and engine.max_model_len <= 32768
        assert engine.tensor_parallel_size <= cfg.rollout_pool.num_gpus
        assert engine.weight_bucket_bytes <= 512 << 20
        learner_node = launcher["available_node_types"]["learner-gpu"]["resources"]
        assert cfg.learner.num_ranks * cfg.learner.num_gpus_per_rank <= learner_node["GPU"], path

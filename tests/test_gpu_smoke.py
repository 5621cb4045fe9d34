"""`benchmarks/gpu_smoke.py` cannot rot: its `--device cpu --tiny` mode runs here on every CI run, with
Ray and vLLM blocked (a bare CUDA machine has neither), through every step of the GPU run: build a
Qwen2.5-VL architecture offline, generate, a GRPO step with LoRA and one with full weights, export ->
load into the engine, and engine-vs-learner log-prob agreement."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
BLOCKED = "import sys; sys.modules['ray'] = None; sys.modules['vllm'] = None; import runpy; "


def _run(tmp_path: Path, *args: str) -> dict:
    out = tmp_path / "gpu_smoke.md"
    code = BLOCKED + f"sys.argv = ['gpu_smoke.py', *{list(args)!r}, '--out', {str(out)!r}]; " \
        "runpy.run_path('benchmarks/gpu_smoke.py', run_name='__main__')"
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=900,
                          check=False)
    assert done.returncode == 0, done.stderr[-4000:]
    assert "refit s" in out.read_text()
    return json.loads(out.with_suffix(".json").read_text())


def test_gpu_smoke_tiny_cpu_runs_every_step_without_ray_or_vllm(tmp_path: Path) -> None:
    results = _run(tmp_path, "--device", "cpu", "--tiny", "--publish", "none", "--prompts", "2", "--new-tokens", "8")
    assert results["device"] == "cpu" and results["publish"] == "none"
    assert results["generate"]["tokens"] > 0
    for phase in ("lora", "full"):
        r = results[phase]
        assert r["step_s"] > 0 and r["refit_s"] > 0
        assert r["logprob_max_diff"] < 1e-4  # float32: the engine serves exactly the learner's weights
    assert results["lora"]["bytes"] < results["full"]["bytes"] / 4  # LoRA ships the adapter only


@pytest.mark.gpu
def test_gpu_smoke_tiny_on_cuda(tmp_path: Path) -> None:
    results = _run(tmp_path, "--device", "cuda", "--tiny", "--publish", "none", "--prompts", "2", "--new-tokens", "8")
    assert results["device"] != "cpu" and results["full"]["logprob_max_diff"] < 1e-3

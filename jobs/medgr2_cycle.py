"""Ray job entrypoint for the whole MedGR² cycle: `ray job submit ... -- python jobs/medgr2_cycle.py CONFIG`.

Inside a Ray job RAY_ADDRESS points at the cluster, so the driver joins it (token authentication as the
cluster has it) instead of starting a local one. A bad config fails before any actor starts, with the
file, key and closest valid key in the job's log and a non-zero exit status.

    ray job submit --address http://127.0.0.1:8265 --working-dir . \
        --runtime-env jobs/runtime_env.yaml -- python jobs/medgr2_cycle.py configs/gpu-qwen2.5-vl-3b.yaml
"""

from __future__ import annotations

import sys

from medgr2_ray.cli import main

if __name__ == "__main__":
    sys.exit(main(["run", *sys.argv[1:]]))

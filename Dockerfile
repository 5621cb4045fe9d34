# The image every node of the GPU cluster runs (cluster/ray-cluster.yaml, cluster/kuberay-raycluster.yaml):
# Ray 2.60 on CUDA with Python 3.11, plus this package and its GPU extras, the one pinned set
# (vLLM 0.33.0, torch 2.14.0, transformers 5.20.2, DeepSpeed 0.19.8; scripts/check_gpu_extras.sh proves
# it resolves). Build and push it where your nodes pull from, under the name the cluster files use:
#   docker build -t medgr2-ray:0.1.0-py311-gpu .
#   docker tag medgr2-ray:0.1.0-py311-gpu <registry>/medgr2-ray:0.1.0-py311-gpu && docker push ...
# then point the cluster files' `image:` at <registry>/medgr2-ray:0.1.0-py311-gpu.
# Models and data are not in the image: every node mounts the same /models, /data and /shared (the
# cluster files say how), and jobs run offline (HF_HUB_OFFLINE).
FROM rayproject/ray:2.60.0-py311-gpu

WORKDIR /home/ray/medgr2_ray
# Dependencies first (a layer that changes only with pyproject.toml), then the code.
COPY --chown=ray:users pyproject.toml README.md ./
COPY --chown=ray:users medgr2_ray ./medgr2_ray
# DS_BUILD_OPS=0: no DeepSpeed op is compiled at install (none is needed with the torch AdamW we use).
RUN DS_BUILD_OPS=0 pip install --no-cache-dir '.[gpu]' \
    && python -c "import vllm, deepspeed, medgr2_ray.engines.vllm, medgr2_ray.learner.strategy"
COPY --chown=ray:users jobs ./jobs
COPY --chown=ray:users configs ./configs
COPY --chown=ray:users cluster ./cluster
COPY --chown=ray:users benchmarks/gpu_smoke.py ./benchmarks/gpu_smoke.py

ENV HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 RAY_USAGE_STATS_ENABLED=0 DS_BUILD_OPS=0
# The whole MedGR² cycle; `ray job submit` and the launcher start it the same way.
CMD ["python", "jobs/medgr2_cycle.py", "cluster/medgr2-gpu.yaml"]

"""medgr2_ray.learner: training without Ray — micro-batching, strategies (torch / DeepSpeed
ZeRO), the policy learner (GRPO, SFT) and the reward-model learner, weight export and checkpoints.

A Ray `LearnerActor` builds one learner per rank (after initialising torch.distributed) and calls its
step methods; nothing in here imports Ray.
"""

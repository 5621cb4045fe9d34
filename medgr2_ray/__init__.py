"""medgr2_ray: the Ray-native implementation of MedGR2 (Generative Reward Learning for Medical Reasoning).

A data generator and a reward model co-evolve to write medical image-question-answer data; the data
trains a compact solver by SFT and then GRPO. See README.md and shared DESIGN for the architecture.
"""

__version__ = "0.1.0"

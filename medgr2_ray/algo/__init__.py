"""medgr2_ray.algo: the mathematics of MedGR² and GRPO as pure, tested functions (no Ray, no models).

advantages  group-relative advantages, dynamic sampling
losses      GRPO policy loss (clip-higher, dual-clip truncation, KL k1/k2/k3), SFT, reward regression
rewards     answer extraction, accuracy/format rewards, the combined alpha*norm(R) + beta*acc reward
perturb     the reward model's graded data (faithful 10 / perturbed 6 / incoherent 0 / irrelevant -6)
selection   tau, top-K, balance over (modality, task), near-duplicate removal; the streaming selector
contamination  the guard against test-set leaks (held-out images, their pHash near-duplicates, test questions)
admission   the async loop's launch rule and the per-role staleness predicate
"""

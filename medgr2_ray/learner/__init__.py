"""medgr2_ray.learner: see the package layout in README.md."""

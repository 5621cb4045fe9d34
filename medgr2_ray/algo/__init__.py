"""medgr2_ray.algo: see the package layout in README.md."""

"""medgr2_ray.eval: see the package layout in README.md."""

"""medgr2_ray.sync: see the package layout in README.md."""

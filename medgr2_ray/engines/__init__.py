"""medgr2_ray.engines: see the package layout in README.md."""

"""medgr2_ray.loop: see the package layout in README.md."""

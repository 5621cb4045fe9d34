"""medgr2_ray.data: see the package layout in README.md."""

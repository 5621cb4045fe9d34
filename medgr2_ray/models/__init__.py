"""medgr2_ray.models: see the package layout in README.md."""

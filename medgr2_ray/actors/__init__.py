"""medgr2_ray.actors: see the package layout in README.md."""

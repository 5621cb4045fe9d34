"""medgr2_ray.data: real medical images in, typed samples out. No Ray at import time.

Entry points (see each module's docstring):
- seedpool.ensure_seed_pool(cache_dir) -> Path; seedpool.load_configured_pool(pool, cache_dir) -> ImagePool
- store.load_pool(dir) -> ImagePool (.images, .read_rgb(image)); store.write_samples / read_samples;
  store.write_dataset / read_dataset
- split.split_by_study(images, test_fraction, seed) -> (train, test)
- templates.make_template_samples(images, seed, ...) -> list[Sample]
- formats.read_omnimedvqa / read_vqa_rad / read_slake / read_pathvqa / read_pmc_vqa -> list[Sample]
- ingest.ingest_paths(paths, out_dir, IngestOptions) -> IngestReport (parallel.ingest_paths_parallel on Ray)
- vocab: modality/anatomy vocabularies (modality_from_text, parse_modality, display_name, ...)
"""

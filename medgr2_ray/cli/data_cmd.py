"""`medgr2 data`: build the bundled seed pool, ingest your own images, write template samples, convert
benchmark files.

    medgr2 data seed-pool --out DIR            counts by modality, CARD.md, contact_sheet.png
    medgr2 data fetch-debian                  the seed pool's optional Debian volumes, into the cache
    medgr2 data ingest PATH... --out DIR       DICOM/NIfTI/PNG/JPEG/TIFF, recursive; Ray for big folders
    medgr2 data templates POOL --out FILE      verifiable modality/anatomy multiple-choice samples
    medgr2 data convert FORMAT FILE --out FILE OmniMedVQA/VQA-RAD/SLAKE/PathVQA/PMC-VQA -> our JSONL

`ingest` exits non-zero only when nothing usable was ingested; skipped files are listed with reasons
on the console (the stored report has salted file keys instead of paths, which may hold names).
"""

from __future__ import annotations

import argparse
from pathlib import Path

from medgr2_ray.config import load_config
from medgr2_ray.types import Modality

_MAX_LISTED = 50  # skipped files printed in full; the rest are counted


def _add_config(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", default=None, help="YAML config (data.* settings are used)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="dotted config override, e.g. --set data.max_pixels=1e8 (repeatable)")


def _print_counts(title: str, counts: dict[str, int]) -> None:
    print(title)
    for name, n in sorted(counts.items()):
        print(f"  {name:<22} {n:>6}")


def _seed_pool(args: argparse.Namespace) -> int:
    from medgr2_ray.data.seedpool import build_seed_pool, ensure_seed_pool
    from medgr2_ray.data.store import load_pool

    if args.out:
        root = build_seed_pool(args.out, overwrite=args.overwrite)
    else:
        root = ensure_seed_pool(load_config(args.config, args.overrides).data.cache_dir)
    pool = load_pool(root)
    _print_counts(f"seed pool at {root}: {len(pool)} images, {len(pool.studies())} studies", pool.counts_by_modality())
    print(f"card: {root / 'CARD.md'}\ncontact sheet: {root / 'contact_sheet.png'}")
    return 0


def _fetch_debian(args: argparse.Namespace) -> int:
    from medgr2_ray.data.debian import fetch_debian_data

    cache = args.cache_dir or load_config(args.config, args.overrides).data.cache_dir
    status = fetch_debian_data(cache)
    for name, what in status.items():
        print(f"{name}: {what}")
    # not fetched is not fatal (the seed pool builds without them) unless --strict asks for it
    return 1 if args.strict and any(w.startswith("not fetched") for w in status.values()) else 0


def _ingest_card(report_dict: dict, n_inputs: int) -> str:
    by_mod = "\n".join(f"| {m} | {n} |" for m, n in report_dict["by_modality"].items())
    return (f"# Ingested pool\n\nBuilt by `medgr2 data ingest` from {n_inputs} input path(s): "
            f"{report_dict['files_ingested']} of {report_dict['files_seen']} files ingested, "
            f"{report_dict['images_written']} images.\n\n| modality | images |\n|---|---|\n{by_mod}\n\n"
            "DICOM headers were de-identified (PS3.15 basic profile superset) before use; file paths are "
            "stored only as salted keys. Text burned into pixels is not removed: "
            f"{report_dict['burned_in_annotation_flagged']} file(s) declare BurnedInAnnotation=YES. "
            "See report.json for every skipped file and its reason.\n")


def _ingest(args: argparse.Namespace) -> int:
    from medgr2_ray.data.ingest import IngestOptions, collect_files, ingest_paths, load_or_create_salt
    from medgr2_ray.data.sheet import contact_sheet
    from medgr2_ray.data.store import load_pool

    config = load_config(args.config, args.overrides)
    salt_file = args.salt_file or str(Path(config.data.cache_dir).expanduser() / "deid_salt")
    options = IngestOptions(
        salt=load_or_create_salt(salt_file), max_pixels=config.data.max_pixels, max_side=args.max_side,
        max_frames=args.max_frames, modality=Modality(args.modality) if args.modality else None,
        anatomy=args.anatomy, licence=args.licence)
    n_files = len(collect_files(args.paths))
    use_ray = args.address is not None or (args.workers != 0 and n_files >= args.parallel_threshold)
    if use_ray:
        from medgr2_ray.data.parallel import ingest_paths_parallel
        from medgr2_ray.loop.runtime import check_reachable

        if args.address:
            check_reachable(args.address)  # ray.init would retry a dead address for minutes

        report = ingest_paths_parallel(args.paths, args.out, options, address=args.address,
                                       overwrite=args.overwrite)
    else:
        report = ingest_paths(args.paths, args.out, options, overwrite=args.overwrite)
    summary = report.to_dict()
    (Path(args.out) / "CARD.md").write_text(_ingest_card(summary, len(args.paths)))
    print(f"ingested {report.files_ingested}/{report.files_seen} files -> {report.images_written} images "
          f"({report.duplicates} duplicates) into {args.out}{' with Ray' if use_ray else ''}")
    _print_counts("by modality:", summary["by_modality"])
    if report.skipped:
        _print_counts("skipped by reason:", summary["skipped_by_reason"])
        for line in report.skipped_paths[:_MAX_LISTED]:
            print(f"  skipped {line}")
        if len(report.skipped_paths) > _MAX_LISTED:
            print(f"  ... and {len(report.skipped_paths) - _MAX_LISTED} more (reasons in report.json)")
    if report.files_ingested == 0:
        print("nothing usable was ingested")
        return 1
    print(f"contact sheet: {contact_sheet(load_pool(args.out), Path(args.out) / 'contact_sheet.png')}")
    return 0


def _templates(args: argparse.Namespace) -> int:
    from medgr2_ray.data.store import load_pool, write_samples
    from medgr2_ray.data.templates import make_template_samples

    pool = load_pool(args.pool)
    samples = make_template_samples(pool.images, args.seed, per_image=args.per_image)
    write_samples(args.out, samples)
    counts: dict[str, int] = {}
    for s in samples:
        counts[s.task_type.value] = counts.get(s.task_type.value, 0) + 1
    _print_counts(f"{len(samples)} template samples from {len(pool)} images -> {args.out}", counts)
    return 0


def _convert(args: argparse.Namespace) -> int:
    from medgr2_ray.data import formats
    from medgr2_ray.data.store import RecordError, write_samples

    readers = {"omnimedvqa": formats.read_omnimedvqa, "vqa-rad": formats.read_vqa_rad,
               "slake": formats.read_slake, "pathvqa": formats.read_pathvqa, "pmc-vqa": formats.read_pmc_vqa}
    errors: list[RecordError] = []
    samples = readers[args.format](args.file, image_root=args.image_root, require_images=args.require_images,
                                   errors=errors)
    write_samples(args.out, samples)
    print(f"{len(samples)} samples -> {args.out}; {len(errors)} record(s) skipped")
    for err in errors[:_MAX_LISTED]:
        print(f"  {err}")
    return 0 if samples else 1


def register(sub: argparse._SubParsersAction) -> None:
    """Add the `data` command group."""
    group = sub.add_parser("data", help="image pools, ingestion, benchmark formats").add_subparsers(
        dest="action", required=True)
    seed = group.add_parser("seed-pool", help="build the bundled pool of real medical images (offline)")
    seed.add_argument("--out", default=None, help="pool directory (default: the cached pool in data.cache_dir)")
    seed.add_argument("--overwrite", action="store_true", help="replace a pool already at --out")
    _add_config(seed)
    seed.set_defaults(handler=_seed_pool)

    deb = group.add_parser("fetch-debian", help="download the seed pool's optional Debian volumes (head CT, "
                                                "brain MR) into the cache; SHA-256 pinned")
    deb.add_argument("--cache-dir", default=None, help="default: data.cache_dir of the config")
    deb.add_argument("--strict", action="store_true", help="exit 1 when a package cannot be fetched")
    _add_config(deb)
    deb.set_defaults(handler=_fetch_debian)

    ing = group.add_parser("ingest", help="ingest your DICOM/NIfTI/PNG/JPEG/TIFF files into a pool")
    ing.add_argument("paths", nargs="+", help="files or folders (searched recursively)")
    ing.add_argument("--out", required=True, help="new pool directory")
    ing.add_argument("--address", default=None, help="Ray cluster address (implies parallel decoding)")
    ing.add_argument("--workers", type=int, default=-1, help="0: never use Ray; default: Ray for big inputs")
    ing.add_argument("--parallel-threshold", type=int, default=64, help="files from which Ray is used")
    ing.add_argument("--modality", choices=[m.value for m in Modality], default=None,
                     help="modality for files that do not say (PNG, NIfTI, secondary capture)")
    ing.add_argument("--anatomy", default=None, help="anatomy for files that do not say")
    ing.add_argument("--licence", default="user-provided", help="licence recorded on every image")
    ing.add_argument("--max-side", type=int, default=1024, help="downscale longer side to at most this")
    ing.add_argument("--max-frames", type=int, default=32, help="frames kept per multi-frame file")
    ing.add_argument("--salt-file", default=None, help="de-identification salt (default: <cache_dir>/deid_salt)")
    ing.add_argument("--overwrite", action="store_true", help="replace a pool already at --out")
    _add_config(ing)
    ing.set_defaults(handler=_ingest)

    tpl = group.add_parser("templates", help="write verifiable multiple-choice samples for a pool")
    tpl.add_argument("pool", help="pool directory")
    tpl.add_argument("--out", required=True, help="samples JSONL to write")
    tpl.add_argument("--seed", type=int, default=0)
    tpl.add_argument("--per-image", type=int, default=1, help="samples per image and task")
    tpl.set_defaults(handler=_templates)

    conv = group.add_parser("convert", help="convert a benchmark file into our samples JSONL")
    conv.add_argument("format", choices=["omnimedvqa", "vqa-rad", "slake", "pathvqa", "pmc-vqa"])
    conv.add_argument("file", help="the benchmark's QA file (JSON, JSONL or CSV)")
    conv.add_argument("--out", required=True, help="samples JSONL to write")
    conv.add_argument("--image-root", default=None, help="folder the benchmark's image paths are relative to")
    conv.add_argument("--require-images", action="store_true", help="fail records whose image is missing")
    conv.set_defaults(handler=_convert)

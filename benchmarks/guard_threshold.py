"""Where to set the contamination guard's pHash threshold: measured on the bundled seed pool.

Not a timing: every number here is deterministic given the pool. For each study split (`run.seed`),
the guard is built from the held-out images and test questions exactly as a run builds it, and each
training image's distance to its nearest held-out image is measured; a threshold that flags training
images of distinct studies would throw away real training data (and "wholesale": every image of a
study). Beside that, what a leak looks like: every pool image resized to 60%, noised (sigma 3) and
JPEG-coded (q=75), and its distance to the original; and pairs of images of one study (slices, crops,
frames) against pairs of distinct studies. Last, the seeds a run trains on checked against its test
questions, with and without the generic-question rule.

    python benchmarks/guard_threshold.py [--cache DIR] [--seeds 0 1 2] [--config configs/cpu-tiny.yaml]
"""

from __future__ import annotations

import argparse
import io
import json
import sys
from collections import Counter
from pathlib import Path

import numpy as np
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import machine, markdown_table  # noqa: E402

from medgr2_ray.algo.contamination import ContaminationGuard, hamming, phash  # noqa: E402
from medgr2_ray.config import load_config  # noqa: E402
from medgr2_ray.data.images import ImageCache  # noqa: E402
from medgr2_ray.eval.rundata import prepare_data  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"
THRESHOLDS = (0, 2, 4, 6, 8, 10, 12, 14, 16, 18, 20)


def disguise(rgb: np.ndarray, seed: int) -> np.ndarray:
    """Resized to 60% (bilinear), Gaussian noise sigma 3, JPEG q=75: a leak after passing through other hands."""
    h, w = rgb.shape[:2]
    small = np.asarray(Image.fromarray(rgb).resize((max(8, int(w * 0.6)), max(8, int(h * 0.6))), Image.BILINEAR),
                       dtype=np.float64)
    noisy = np.clip(small + np.random.default_rng(seed).normal(0.0, 3.0, small.shape), 0, 255).astype(np.uint8)
    buf = io.BytesIO()
    Image.fromarray(noisy).save(buf, format="JPEG", quality=75)
    return np.asarray(Image.open(buf).convert("RGB"))


def split_row(cfg_path: str, cache: str, seed: int) -> dict:
    """One study split: nearest held-out distance per training image, and seeds flagged as test questions."""
    cfg = load_config(cfg_path, [f"run.seed={seed}", f"data.cache_dir={cache}"])
    data = prepare_data(cfg)
    lookup = ImageCache.of_images(data.pool.images, data.pool.root)
    guard = ContaminationGuard.from_lookup([i.image_id for i in data.test], lookup, data.test_samples, cfg.selection)
    nearest = {i.image_id: guard.nearest_heldout(i.image_id, lookup)[0] for i in data.train}
    study_of = {i.image_id: i.study_id for i in data.train}
    study_size = Counter(study_of.values())
    flagged = {}
    for t in THRESHOLDS:
        hit = [i for i, d in nearest.items() if d <= t]
        per_study = Counter(study_of[i] for i in hit)
        flagged[t] = {"images": len(hit), "studies_touched": len(per_study),
                      "studies_wholly": sum(1 for s, n in per_study.items() if n == study_size[s])}
    no_generic = ContaminationGuard({}, data.test_samples, cfg.selection.model_copy(update={"test_question_generic_images": 0}))
    return {
        "seed": seed, "train_images": len(data.train), "train_studies": len(study_size),
        "test_images": len(data.test), "test_studies": len({i.study_id for i in data.test}),
        "min_distance": min(nearest.values()), "distance_histogram": dict(sorted(Counter(nearest.values()).items())),
        "flagged": flagged, "seeds": len(data.seeds), "test_questions": len(data.test_samples),
        "generic_test_questions": len(guard.generic_questions),
        "seeds_flagged_as_test_question": sum(guard.check_question(s.question) is not None for s in data.seeds),
        "seeds_flagged_without_generic_rule": sum(no_generic.check_question(s.question) is not None for s in data.seeds),
    }


def pool_rows(cfg_path: str, cache: str) -> dict:
    """Pairs within a study vs across studies, and disguised copies vs their originals."""
    data = prepare_data(load_config(cfg_path, [f"data.cache_dir={cache}"]))
    lookup = ImageCache.of_images(data.pool.images, data.pool.root)
    images = data.pool.images
    hashes = [phash(lookup(i.image_id)) for i in images]
    within, across = Counter(), Counter()
    for a in range(len(images)):
        for b in range(a + 1, len(images)):
            same = images[a].study_id == images[b].study_id
            (within if same else across)[hamming(hashes[a], hashes[b])] += 1
    disguised = Counter(hamming(h, phash(disguise(lookup(i.image_id), k))) for k, (i, h) in enumerate(zip(images, hashes)))
    return {"images": len(images), "studies": len(data.pool.studies()),
            "within_study_pairs": dict(sorted(within.items())), "across_study_pairs": dict(sorted(across.items())),
            "disguised_vs_original": dict(sorted(disguised.items()))}


def at_most(hist: dict, t: int) -> int:
    return sum(n for d, n in hist.items() if int(d) <= t)


def markdown(splits: list[dict], pool: dict, default: int) -> str:
    rows = [[t, at_most(pool["disguised_vs_original"], t), at_most(pool["within_study_pairs"], t),
             at_most(pool["across_study_pairs"], t),
             *(f"{s['flagged'][t]['images']} / {s['flagged'][t]['studies_touched']} / {s['flagged'][t]['studies_wholly']}"
               for s in splits)] for t in THRESHOLDS]
    n_dis, n_within, n_across = (sum(pool[k].values()) for k in ("disguised_vs_original", "within_study_pairs",
                                                                  "across_study_pairs"))
    headers = ["distance <=", f"disguised copies caught (of {n_dis})", f"same-study pairs (of {n_within})",
               f"distinct-study pairs (of {n_across})",
               *(f"split {s['seed']}: train images / studies touched / studies wholly flagged" for s in splits)]
    questions = [[s["seed"], s["seeds"], s["test_questions"], s["generic_test_questions"],
                  s["seeds_flagged_as_test_question"], s["seeds_flagged_without_generic_rule"]] for s in splits]
    return "\n".join([
        "# Contamination guard: the pHash threshold on the seed pool", "",
        f"{pool['images']} images, {pool['studies']} studies. Default `selection.phash_max_distance` = {default}.",
        "Per split: training images whose nearest held-out image is within the distance (of "
        + ", ".join(f"{s['train_images']} images / {s['train_studies']} studies" for s in splits) + ").", "",
        markdown_table(headers, rows), "",
        "Nearest held-out distance of any training image, per split: "
        + ", ".join(f"split {s['seed']}: {s['min_distance']}" for s in splits) + ".", "",
        "## Test questions", "",
        markdown_table(["split", "seeds", "test questions", "generic (>= 2 test images)", "seeds flagged",
                        "seeds flagged without the generic rule"], questions), "",
    ])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--config", default="configs/cpu-tiny.yaml")
    parser.add_argument("--cache", default="~/.cache/medgr2_ray")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    args = parser.parse_args()
    splits = [split_row(args.config, args.cache, seed) for seed in args.seeds]
    pool = pool_rows(args.config, args.cache)
    default = load_config(args.config).selection.phash_max_distance
    text = markdown(splits, pool, default)
    print(text)
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "guard_threshold.md").write_text(text)
    (RESULTS / "guard_threshold.json").write_text(json.dumps(
        {"machine": machine(), "settings": vars(args), "default": default, "splits": splits, "pool": pool},
        indent=1, default=str))


if __name__ == "__main__":
    main()

"""Contact sheet: one PNG with a labelled thumbnail of every pool image, for a person to look at."""

from __future__ import annotations

from pathlib import Path

from PIL import Image, ImageDraw

from medgr2_ray.data.store import ImagePool


def contact_sheet(pool: ImagePool, out_path: str | Path, *, thumb: int = 96, columns: int = 16,
                  max_images: int = 512) -> Path:
    """Tile thumbnails (modality and anatomy written under each) into `out_path`; returns the path.

    Images are shown in pool order grouped by modality, so a glance shows what each modality holds.
    """
    images = sorted(pool.images, key=lambda i: (i.modality.value, i.study_id, i.image_id))[:max_images]
    if not images:
        raise ValueError(f"contact_sheet: the pool at {pool.root} is empty")
    label_h = 22
    rows = (len(images) + columns - 1) // columns
    sheet = Image.new("RGB", (columns * thumb, rows * (thumb + label_h)), (24, 24, 24))
    draw = ImageDraw.Draw(sheet)
    for n, image in enumerate(images):
        x, y = (n % columns) * thumb, (n // columns) * (thumb + label_h)
        with Image.open(image.path) as im:
            small = im.convert("RGB")
            small.thumbnail((thumb - 4, thumb - 4))
        sheet.paste(small, (x + (thumb - small.width) // 2, y + (thumb - small.height) // 2))
        draw.text((x + 2, y + thumb), image.modality.value[:14], fill=(230, 230, 230))
        draw.text((x + 2, y + thumb + 10), image.anatomy[:14], fill=(150, 200, 255))
    out = Path(out_path)
    sheet.save(out, format="PNG")
    return out

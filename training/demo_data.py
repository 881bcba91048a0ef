"""Draws a small labelled multimodal data set (coloured shapes + captions) for the demo heads.

``python -m training.demo_data --out data/demo [--n 1200 --seed 0]`` writes one PNG per
item under ``<out>/images/`` and three JSONL files of ``{"text", "image", "label"}`` rows
(``image`` is relative to the JSONL file), all drawing on the same images:

- ``match.jsonl``: does the caption describe the image? (``match`` / ``mismatch``). Half the
  captions are true; a false one changes the colour or the shape. Caption and image are drawn
  independently of the label, so neither modality alone beats chance: fusion is needed.
- ``shape_colour.jsonl``: which variant is ordered? The image shows the shape, the text asks
  for a colour ("make it blue"), the label is ``"<colour> <shape>"``. The image's own colour is
  random and irrelevant, so each modality alone gets at most one attribute right.
- ``align.jsonl``: each image with its true caption (label = its ``"<colour> <shape>"`` class,
  so an evaluation can tell which captions describe an image), for the alignment head.

Deterministic given ``--seed``: the same seed writes byte-identical files.
"""

from __future__ import annotations

import argparse
import json
import math
import random
from dataclasses import dataclass
from pathlib import Path

from PIL import Image, ImageDraw

# Far apart in hue so an ImageNet CNN separates them easily.
COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (220, 30, 35),
    "green": (35, 170, 50),
    "blue": (35, 70, 225),
    "yellow": (245, 215, 25),
    "purple": (140, 45, 190),
}
SHAPES = ("circle", "square", "triangle", "star")
IMAGE_SIZE_PX = 128

CAPTION_TEMPLATES = (
    "a {colour} {shape}",
    "a photo of a {colour} {shape}",
    "a {colour} {shape} on a plain background",
    "an image showing a {colour} {shape}",
    "there is a {colour} {shape} in the picture",
    "a drawing of one {colour} {shape}",
    "{colour} {shape}",
    "the picture contains a single {colour} {shape}",
)
COLOUR_REQUEST_TEMPLATES = (
    "make it {colour}",
    "I want this in {colour}",
    "the {colour} version, please",
    "colour: {colour}",
    "can I get it in {colour}?",
    "paint it {colour}",
    "{colour} one",
)
MATCH, MISMATCH = "match", "mismatch"


@dataclass(frozen=True)
class Item:
    colour: str
    shape: str
    path: str


def _shape_points(shape: str, cx: float, cy: float, radius: float, angle: float) -> list[tuple[float, float]]:
    if shape == "square":
        corners = [angle + math.pi / 4 + k * math.pi / 2 for k in range(4)]
        return [(cx + radius * math.cos(a), cy + radius * math.sin(a)) for a in corners]
    if shape == "triangle":
        corners = [angle - math.pi / 2 + k * 2 * math.pi / 3 for k in range(3)]
        return [(cx + radius * math.cos(a), cy + radius * math.sin(a)) for a in corners]
    if shape == "star":
        points = []
        for k in range(10):
            r = radius if k % 2 == 0 else radius * 0.45
            a = angle - math.pi / 2 + k * math.pi / 5
            points.append((cx + r * math.cos(a), cy + r * math.sin(a)))
        return points
    raise ValueError(f"unknown shape {shape!r}")


def draw_shape(colour: str, shape: str, rng: random.Random, size_px: int = IMAGE_SIZE_PX) -> Image.Image:
    """One shape of one colour at a random place, size and angle on a light, low-saturation background."""
    grey = rng.randint(200, 250)
    background = tuple(min(255, max(0, grey + rng.randint(-12, 12))) for _ in range(3))
    image = Image.new("RGB", (size_px, size_px), background)
    draw = ImageDraw.Draw(image)
    radius = rng.uniform(0.28, 0.42) * size_px
    margin = radius * 0.9
    cx = rng.uniform(margin, size_px - margin)
    cy = rng.uniform(margin, size_px - margin)
    # Small per-image shade changes so no two items of a class are identical.
    fill = tuple(min(255, max(0, c + rng.randint(-20, 20))) for c in COLOURS[colour])
    if shape == "circle":
        draw.ellipse((cx - radius, cy - radius, cx + radius, cy + radius), fill=fill)
    else:
        draw.polygon(_shape_points(shape, cx, cy, radius, rng.uniform(-0.3, 0.3)), fill=fill)
    return image


def caption(colour: str, shape: str, rng: random.Random) -> str:
    return rng.choice(CAPTION_TEMPLATES).format(colour=colour, shape=shape)


def _mismatched(colour: str, shape: str, rng: random.Random) -> tuple[str, str]:
    """Another class differing in exactly one attribute; colour and shape are changed equally often."""
    if rng.random() < 0.5:
        return rng.choice([c for c in COLOURS if c != colour]), shape
    return colour, rng.choice([s for s in SHAPES if s != shape])


def generate(out: Path, n: int = 1200, seed: int = 0) -> dict[str, Path]:
    """Writes the images and the three JSONL files; returns the JSONL paths by task name."""
    rng = random.Random(seed)
    images_dir = out / "images"
    images_dir.mkdir(parents=True, exist_ok=True)
    items = []
    for index in range(n):
        colour, shape = rng.choice(list(COLOURS)), rng.choice(SHAPES)
        relative = f"images/{index:05d}.png"
        draw_shape(colour, shape, rng).save(out / relative, format="PNG", optimize=False)
        items.append(Item(colour, shape, relative))

    match_rows, variant_rows, align_rows = [], [], []
    for item in items:
        if rng.random() < 0.5:
            match_rows.append(
                {"text": caption(item.colour, item.shape, rng), "image": item.path, "label": MATCH}
            )
        else:
            colour, shape = _mismatched(item.colour, item.shape, rng)
            match_rows.append({"text": caption(colour, shape, rng), "image": item.path, "label": MISMATCH})
        wanted = rng.choice(list(COLOURS))
        variant_rows.append(
            {
                "text": rng.choice(COLOUR_REQUEST_TEMPLATES).format(colour=wanted),
                "image": item.path,
                "label": f"{wanted} {item.shape}",
            }
        )
        align_rows.append(
            {
                "text": caption(item.colour, item.shape, rng),
                "image": item.path,
                "label": f"{item.colour} {item.shape}",
            }
        )

    paths = {
        "match": out / "match.jsonl",
        "shape_colour": out / "shape_colour.jsonl",
        "align": out / "align.jsonl",
    }
    for task, rows in (("match", match_rows), ("shape_colour", variant_rows), ("align", align_rows)):
        paths[task].write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")
    return paths


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m training.demo_data", description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True, help="Output directory.")
    parser.add_argument("--n", type=int, default=1200, help="Number of images.")
    parser.add_argument("--seed", type=int, default=0, help="Random seed.")
    args = parser.parse_args(argv)
    paths = generate(args.out, args.n, args.seed)
    print(f"wrote {args.n} images and {', '.join(str(p) for p in paths.values())}")


if __name__ == "__main__":
    main()

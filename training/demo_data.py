"""Draws a small labelled multimodal data set (coloured shapes, captions, sounds, numbers) for the demo heads.

``python -m training.demo_data --out data/demo [--n 1200 --seed 0]`` writes one PNG per
item under ``<out>/images/`` (and the region task's two-shape images under
``<out>/images/region/``) and one JSONL file per task (``image`` is relative to the JSONL
file); all but the region task draw on the same images:

- ``match.jsonl``: does the caption describe the image? (``match`` / ``mismatch``). Half the
  captions are true; a false one changes the colour or the shape. Caption and image are drawn
  independently of the label, so neither modality alone beats chance: fusion is needed.
- ``shape_colour.jsonl``: which variant is ordered? The image shows the shape, the text asks
  for a colour ("make it blue"), the label is ``"<colour> <shape>"``. The image's own colour is
  random and irrelevant, so each modality alone gets at most one attribute right.
- ``align.jsonl``: each image with its true caption (label = its ``"<colour> <shape>"`` class,
  so an evaluation can tell which captions describe an image), for the alignment head.
- ``order_total.jsonl`` (regression): the text orders a quantity ("three of these, please"),
  the image shows the shape, whose unit price is fixed (``UNIT_PRICES``); ``"target"`` is the
  order's total, quantity x unit price. Text alone knows the quantity, the image alone the unit
  price: each explains about half of the variance, the product needs both.
- ``order.jsonl`` (multi-task): the same kind of order, also naming a colour, with ``"labels":
  {"variant": "<colour> <shape>", "total": <number>}``; about one row in six lacks one of the
  two labels (never both), as real annotations often do.
- ``region.jsonl``: new two-shape images (one shape on the left, one on the right, different
  colours); the text asks for the colour of one side ("what colour is the shape on the
  left?"), the label is that colour. The text decides which image region matters: the text
  alone is at chance (1/5), the image alone at best picks one of its two colours.
- ``risk.jsonl`` (text + features, no image): a loan application. The text names its purpose
  (risky purposes such as "a trip to the casino", or safe ones such as "a new roof"), the
  ``features`` give ``debt_to_income``, ``age`` and ``years_employed`` (the last two carry
  nothing). The label is ``high`` when the debt-to-income ratio exceeds the purpose's limit
  (0.25 for risky purposes, 0.75 for safe ones), else ``low``: the text alone and the numbers
  alone each get about 3 in 4 rows right, both together all of them.
- ``sound_caption.jsonl`` (text + audio, no image): does the caption describe the sound?
  (``match`` / ``mismatch``). Clips of one second, written as WAV under ``<out>/audio/``, are
  one of ``SOUNDS`` (a low hum, a high whistle, static, a beeping alarm, a rising chirp), drawn
  with numpy; half the captions describe another sound, so each modality alone is at chance.

Deterministic given ``--seed``: the same seed writes byte-identical files (each task draws from
its own seeded generator, so adding a task leaves the others' rows unchanged).
"""

from __future__ import annotations

import argparse
import io
import json
import math
import random
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import soundfile
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

# The regression demo: what one unit of each shape costs (the image decides) times the quantity
# ordered (the text decides).
UNIT_PRICES: dict[str, float] = {"circle": 2.0, "square": 3.0, "triangle": 4.5, "star": 6.0}
QUANTITIES = {1: "one", 2: "two", 3: "three", 4: "four", 5: "five", 6: "six"}
ORDER_TEMPLATES = (
    "{quantity} of these, please",
    "I would like {quantity} of them",
    "order {quantity} pieces",
    "we need {quantity} of this one",
    "quantity: {quantity}",
    "please send {quantity}",
)
COLOUR_ORDER_TEMPLATES = (
    "{quantity} of these in {colour}, please",
    "I would like {quantity} of them, {colour}",
    "order {quantity} {colour} pieces",
    "we need {quantity} of this one in {colour}",
    "quantity {quantity}, colour {colour}",
)
SIDES = ("left", "right")
REGION_TEMPLATES = (
    "what colour is the shape on the {side}?",
    "the colour of the {side} shape",
    "which colour does the {side} one have?",
    "tell me the colour of the shape on the {side} side",
    "{side} shape: what colour?",
)


# The risk demo: loan purposes and the debt-to-income ratio above which each is high risk.
RISKY_PURPOSES = ("a trip to the casino", "day trading", "a wedding party", "betting on sports")
SAFE_PURPOSES = ("a new roof", "a child's tuition", "solar panels", "paying off a medical bill")
RISK_LIMITS = {"risky": 0.25, "safe": 0.75}
RISK_TEMPLATES = (
    "loan application for {purpose}",
    "I need the money for {purpose}",
    "purpose: {purpose}",
    "borrowing to pay for {purpose}",
)
# The sound demo: each sound's captions (one second at 16 kHz, drawn by ``draw_sound``).
SOUNDS: dict[str, tuple[str, ...]] = {
    "hum": ("a low hum", "a deep humming drone", "a low electrical buzz"),
    "whistle": ("a high whistle", "a shrill high-pitched tone", "someone whistling a high note"),
    "static": ("static noise", "a hiss of white noise", "radio static"),
    "alarm": ("a beeping alarm", "an alarm clock beeping", "short repeated beeps"),
    "chirp": ("a rising chirp", "a sweep going up in pitch", "a siren-like rising tone"),
}
SOUND_RATE_HZ = 16_000
SOUND_SECONDS = 1.0


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


def draw_two_shapes(
    left: tuple[str, str], right: tuple[str, str], rng: random.Random, size_px: int = IMAGE_SIZE_PX
) -> Image.Image:
    """Two (colour, shape) pairs, one in each half of the image, at random heights and sizes."""
    grey = rng.randint(200, 250)
    background = tuple(min(255, max(0, grey + rng.randint(-12, 12))) for _ in range(3))
    image = Image.new("RGB", (size_px, size_px), background)
    draw = ImageDraw.Draw(image)
    half = size_px / 2
    for (colour, shape), x0 in ((left, 0.0), (right, half)):
        radius = rng.uniform(0.17, 0.22) * size_px
        cx = rng.uniform(x0 + radius, x0 + half - radius)
        cy = rng.uniform(radius, size_px - radius)
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


def _quantity(rng: random.Random) -> tuple[int, str]:
    """A quantity and how the order spells it (a digit or a word, equally often)."""
    quantity = rng.choice(list(QUANTITIES))
    return quantity, (str(quantity) if rng.random() < 0.5 else QUANTITIES[quantity])


def _order_rows(items: list[Item], seed: int) -> tuple[list[dict], list[dict]]:
    """The regression rows (``target``) and the multi-task rows (``labels``, some missing)."""
    rng = random.Random(f"{seed}-order")
    regression, multitask = [], []
    for item in items:
        quantity, spelled = _quantity(rng)
        regression.append(
            {
                "text": rng.choice(ORDER_TEMPLATES).format(quantity=spelled),
                "image": item.path,
                "target": quantity * UNIT_PRICES[item.shape],
            }
        )
        quantity, spelled = _quantity(rng)
        colour = rng.choice(list(COLOURS))
        labels: dict[str, str | float] = {
            "variant": f"{colour} {item.shape}",
            "total": quantity * UNIT_PRICES[item.shape],
        }
        if rng.random() < 1 / 6:
            del labels[rng.choice(sorted(labels))]
        multitask.append(
            {
                "text": rng.choice(COLOUR_ORDER_TEMPLATES).format(quantity=spelled, colour=colour),
                "image": item.path,
                "labels": labels,
            }
        )
    return regression, multitask


def _region_rows(out: Path, n: int, seed: int) -> list[dict]:
    """Draws the two-shape images; each row asks for the colour of one side."""
    rng = random.Random(f"{seed}-region")
    # A folder of their own: images/*.png stays the one-shape images every other task uses.
    (out / "images" / "region").mkdir(parents=True, exist_ok=True)
    rows = []
    for index in range(n):
        left_colour, right_colour = rng.sample(list(COLOURS), 2)
        left, right = (left_colour, rng.choice(SHAPES)), (right_colour, rng.choice(SHAPES))
        relative = f"images/region/{index:05d}.png"
        draw_two_shapes(left, right, rng).save(out / relative, format="PNG", optimize=False)
        side = rng.choice(SIDES)
        rows.append(
            {
                "text": rng.choice(REGION_TEMPLATES).format(side=side),
                "image": relative,
                "label": left_colour if side == "left" else right_colour,
            }
        )
    return rows


def _risk_rows(n: int, seed: int) -> list[dict]:
    rng = random.Random(f"{seed}-risk")
    rows = []
    for _ in range(n):
        kind = rng.choice(sorted(RISK_LIMITS))
        purpose = rng.choice(RISKY_PURPOSES if kind == "risky" else SAFE_PURPOSES)
        ratio = rng.random()
        rows.append(
            {
                "text": rng.choice(RISK_TEMPLATES).format(purpose=purpose),
                "features": {
                    "debt_to_income": round(ratio, 4),
                    "age": rng.randint(18, 80),
                    "years_employed": round(rng.uniform(0, 40), 1),
                },
                "label": "high" if ratio > RISK_LIMITS[kind] else "low",
            }
        )
    return rows


def draw_sound(kind: str, rng: np.random.Generator) -> np.ndarray:
    """One second of one kind of sound (float32 mono at SOUND_RATE_HZ), with random pitch and level."""
    t = np.arange(int(SOUND_RATE_HZ * SOUND_SECONDS)) / SOUND_RATE_HZ
    if kind == "hum":
        f = rng.uniform(90, 140)
        wave = np.sin(2 * np.pi * f * t) + 0.3 * np.sin(4 * np.pi * f * t)
    elif kind == "whistle":
        wave = np.sin(2 * np.pi * rng.uniform(2500, 3500) * t)
    elif kind == "static":
        wave = rng.standard_normal(t.size)
    elif kind == "alarm":
        beeps = (np.floor(t * rng.uniform(5, 8)) % 2 == 0).astype(np.float64)
        wave = beeps * np.sin(2 * np.pi * rng.uniform(900, 1100) * t)
    elif kind == "chirp":
        start = rng.uniform(300, 500)
        wave = np.sin(2 * np.pi * (start * t + rng.uniform(1500, 2500) * t**2))
    else:
        raise ValueError(f"unknown sound {kind!r}")
    wave = wave / np.max(np.abs(wave)) * rng.uniform(0.3, 0.8)
    return (wave + 0.01 * rng.standard_normal(t.size)).astype(np.float32)


def wav_bytes(wave: np.ndarray, rate_hz: int = SOUND_RATE_HZ) -> bytes:
    buffer = io.BytesIO()
    soundfile.write(buffer, wave, rate_hz, format="WAV", subtype="PCM_16")
    return buffer.getvalue()


def _sound_rows(out: Path, n: int, seed: int) -> list[dict]:
    """Writes ``n`` clips under ``<out>/audio/``; each row a caption that matches half the time."""
    rng = random.Random(f"{seed}-sound")
    waves = np.random.default_rng(seed)
    (out / "audio").mkdir(parents=True, exist_ok=True)
    rows = []
    for index in range(n):
        kind = rng.choice(sorted(SOUNDS))
        relative = f"audio/{index:05d}.wav"
        (out / relative).write_bytes(wav_bytes(draw_sound(kind, waves)))
        matches = rng.random() < 0.5
        described = kind if matches else rng.choice([k for k in sorted(SOUNDS) if k != kind])
        rows.append(
            {
                "text": rng.choice(SOUNDS[described]),
                "audio": relative,
                "label": MATCH if matches else MISMATCH,
            }
        )
    return rows


def generate(out: Path, n: int = 1200, seed: int = 0, n_sounds: int = 500) -> dict[str, Path]:
    """Writes the images and the JSONL files; returns the JSONL paths by task name."""
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

    order_total_rows, order_rows = _order_rows(items, seed)
    tasks = {
        "match": match_rows,
        "shape_colour": variant_rows,
        "align": align_rows,
        "order_total": order_total_rows,
        "order": order_rows,
        "region": _region_rows(out, n, seed),
        "risk": _risk_rows(n, seed),
        "sound_caption": _sound_rows(out, n_sounds, seed),
    }
    paths = {}
    for task, rows in tasks.items():
        paths[task] = out / f"{task}.jsonl"
        paths[task].write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")
    return paths


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m training.demo_data", description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True, help="Output directory.")
    parser.add_argument("--n", type=int, default=1200, help="Number of images.")
    parser.add_argument("--n-sounds", type=int, default=500, help="Number of audio clips.")
    parser.add_argument("--seed", type=int, default=0, help="Random seed.")
    args = parser.parse_args(argv)
    paths = generate(args.out, args.n, args.seed, args.n_sounds)
    print(f"wrote {args.n} images, {args.n_sounds} clips and {', '.join(str(p) for p in paths.values())}")


if __name__ == "__main__":
    main()

"""Training data: the demo generator, JSONL / CSV / image-folder parsing, stratified splits and the
embedding cache."""

from __future__ import annotations

import base64
import io
import json
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from services.common.backend import EncoderInfo
from training import demo_data
from training.data import DataError, data_sha256, read_examples, read_jsonl, split_indices
from training.embedding_cache import CachedEmbedder

# --------------------------------------------------------------------------- demo data


def _rows(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def _named(caption: str) -> tuple[str, str]:
    colours = [c for c in demo_data.COLOURS if c in caption.split()]
    shapes = [s for s in demo_data.SHAPES if s in caption.split()]
    assert len(colours) == 1 and len(shapes) == 1, caption
    return colours[0], shapes[0]


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("demo")
    demo_data.main(["--out", str(out), "--n", "200", "--seed", "3"])
    return out


def test_demo_is_deterministic_by_seed(demo: Path, tmp_path: Path) -> None:
    demo_data.generate(tmp_path / "same", n=200, seed=3)
    demo_data.generate(tmp_path / "other", n=200, seed=4)
    for name in ("match.jsonl", "shape_colour.jsonl", "align.jsonl", "images/00017.png"):
        assert (tmp_path / "same" / name).read_bytes() == (demo / name).read_bytes()
    assert (tmp_path / "other" / "match.jsonl").read_bytes() != (demo / "match.jsonl").read_bytes()


def test_demo_images_are_small_pngs(demo: Path) -> None:
    image = Image.open(demo / "images" / "00000.png")
    assert image.format == "PNG" and image.size == (demo_data.IMAGE_SIZE_PX,) * 2
    assert len(list((demo / "images").glob("*.png"))) == 200
    assert len(list((demo / "images" / "region").glob("*.png"))) == 200


def test_match_task_needs_both_modalities(demo: Path) -> None:
    truth = {row["image"]: row["label"] for row in _rows(demo / "align.jsonl")}
    match = _rows(demo / "match.jsonl")
    counts = Counter(row["label"] for row in match)
    assert 0.4 < counts["match"] / len(match) < 0.6
    changed = Counter()
    for row in match:
        named = _named(row["text"])
        actual = tuple(truth[row["image"]].split())
        if row["label"] == "match":
            assert named == actual
        else:
            # A false caption differs in exactly one attribute, so it is plausible on its own.
            differs = [i for i in range(2) if named[i] != actual[i]]
            assert len(differs) == 1, (row, actual)
            changed[differs[0]] += 1
    assert changed[0] > 0 and changed[1] > 0
    # Caption colours are spread alike over both labels: the text alone says nothing.
    for label in ("match", "mismatch"):
        colours = Counter(_named(r["text"])[0] for r in match if r["label"] == label)
        assert len(colours) == len(demo_data.COLOURS)


def test_shape_colour_task_takes_colour_from_text_and_shape_from_image(demo: Path) -> None:
    truth = {row["image"]: row["label"] for row in _rows(demo / "align.jsonl")}
    rows = _rows(demo / "shape_colour.jsonl")
    for row in rows:
        colour, shape = row["label"].split()
        assert colour in row["text"].split() or f"{colour}?" in row["text"].split()
        assert shape == truth[row["image"]].split()[1]
    # the image's own colour disagrees with the label's colour most of the time
    disagree = sum(row["label"].split()[0] != truth[row["image"]].split()[0] for row in rows)
    assert disagree > len(rows) / 2


# --------------------------------------------------------------------------- JSONL parsing


def _png() -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (10, 10), (255, 0, 0)).save(buffer, format="PNG")
    return buffer.getvalue()


def test_read_jsonl_accepts_paths_data_urls_base64_and_missing_modalities(tmp_path: Path) -> None:
    png = _png()
    (tmp_path / "img").mkdir()
    (tmp_path / "img" / "a.png").write_bytes(png)
    encoded = base64.b64encode(png).decode()
    lines = [
        {"text": "a", "image": "img/a.png", "label": "x"},
        {"text": "b", "image": f"data:image/png;base64,{encoded}", "label": "y"},
        {"text": None, "image": encoded, "label": "x"},
        {"text": "only text", "label": "y"},
    ]
    path = tmp_path / "d.jsonl"
    path.write_text("\n".join(json.dumps(line) for line in lines) + "\n\n")
    examples = read_jsonl(path)
    assert [e.image == png for e in examples] == [True, True, True, False]
    assert examples[2].text is None and examples[3].image is None
    assert [e.label for e in examples] == ["x", "y", "x", "y"]


@pytest.mark.parametrize(
    "line,message",
    [
        ("not json", r"d\.jsonl:2: not valid JSON"),
        ('["a"]', "must be a JSON object"),
        (
            '{"text": "a", "image": "missing.png", "label": "x"}',
            r"d\.jsonl:2: cannot read image .*missing\.png",
        ),
        ('{"text": "a", "image": "%%%", "label": "x"}', "neither a path .* nor valid base64"),
        ('{"text": "a", "image": "data:image/png,raw", "label": "x"}', "must be base64-encoded"),
        ('{"text": "a"}', "missing label"),
        ('{"label": "x"}', "needs text, image, audio or features"),
        ('{"text": 3, "label": "x"}', "text must be a string"),
        ('{"text": "a", "label": ""}', "label must be a non-empty string"),
    ],
)
def test_read_jsonl_names_the_bad_line(tmp_path: Path, line: str, message: str) -> None:
    path = tmp_path / "d.jsonl"
    path.write_text('{"text": "fine", "label": "x"}\n' + line + "\n")
    with pytest.raises(DataError, match=message):
        read_jsonl(path)


def test_unlabelled_rows_are_fine_when_labels_are_not_needed(tmp_path: Path) -> None:
    path = tmp_path / "d.jsonl"
    path.write_text('{"text": "a"}\n')
    assert read_jsonl(path, require_label=False)[0].label is None


# --------------------------------------------------------------------------- splits


def test_split_is_a_deterministic_stratified_partition() -> None:
    labels = ["a"] * 50 + ["b"] * 30 + ["c"] * 20
    split = split_indices(labels, val_fraction=0.1, test_fraction=0.2, seed=7)
    everything = np.concatenate([split.train, split.val, split.test])
    assert sorted(everything.tolist()) == list(range(100))
    for part, fraction in ((split.test, 0.2), (split.val, 0.1)):
        counts = Counter(labels[i] for i in part)
        assert counts == {"a": round(50 * fraction), "b": round(30 * fraction), "c": round(20 * fraction)}
    again = split_indices(labels, 0.1, 0.2, seed=7)
    assert all(
        np.array_equal(x, y) for x, y in zip(split.__dict__.values(), again.__dict__.values(), strict=True)
    )
    other = split_indices(labels, 0.1, 0.2, seed=8)
    assert not np.array_equal(split.test, other.test)
    with pytest.raises(ValueError):
        split_indices(labels, 0.5, 0.5, seed=0)


# --------------------------------------------------------------------------- embedding cache


class CountingEmbedder:
    """Deterministic fake encoders that count what they were asked to embed."""

    def __init__(self, revision: str = "r1") -> None:
        self.text_info = EncoderInfo("fake-text", revision, 4)
        self.image_info = EncoderInfo("fake-image", revision, 3)
        self.texts: list[str] = []
        self.images: list[bytes] = []

    def embed_texts(self, texts):
        self.texts.extend(texts)
        return np.array([[len(t), t.count("a"), 1, 0] for t in texts], dtype=np.float32)

    def embed_images(self, images):
        self.images.extend(images)
        return np.array([[len(b), b[0], 2] for b in images], dtype=np.float32)

    def close(self) -> None:
        pass


def test_cache_embeds_each_distinct_input_once(tmp_path: Path) -> None:
    inner = CountingEmbedder()
    cached = CachedEmbedder(inner, tmp_path)
    first = cached.embed_texts(["aa", "b", "aa"])
    assert inner.texts == ["aa", "b"]  # duplicates within a call are embedded once
    np.testing.assert_array_equal(first, inner.embed_texts(["aa", "b", "aa"]))
    inner.texts.clear()
    again = CachedEmbedder(CountingEmbedder(), tmp_path)  # a new process sees the same files
    np.testing.assert_array_equal(
        again.embed_texts(["b", "aa", "ccc"]), [[1, 0, 1, 0], [2, 2, 1, 0], [3, 0, 1, 0]]
    )
    assert again.inner.texts == ["ccc"] and again.hits == 2 and again.misses == 1
    images = cached.embed_images([b"\x01xyz", b"\x02"])
    np.testing.assert_array_equal(images, [[4, 1, 2], [1, 2, 2]])
    assert cached.embed_texts([]).shape == (0, 4)


def test_cache_separates_encoder_revisions_and_heals_corrupt_entries(tmp_path: Path) -> None:
    CachedEmbedder(CountingEmbedder("r1"), tmp_path).embed_texts(["hello"])
    newer = CountingEmbedder("r2")
    CachedEmbedder(newer, tmp_path).embed_texts(["hello"])
    assert newer.texts == ["hello"]  # another revision never reuses r1's vectors
    directories = [p for p in tmp_path.iterdir() if p.is_dir()]
    assert len(directories) == 2  # a text cache per revision (each opens on first use)
    descriptions = [json.loads((p / "encoder.json").read_text()) for p in directories]
    assert {d["revision"] for d in descriptions} == {"r1", "r2"}

    entries = list(tmp_path.rglob("*.npy"))
    for entry in entries:
        entry.write_bytes(b"garbage")
    healed = CountingEmbedder("r1")
    cached = CachedEmbedder(healed, tmp_path)
    np.testing.assert_array_equal(cached.embed_texts(["hello"]), [[5, 0, 1, 0]])
    assert healed.texts == ["hello"]
    # the entry was rewritten: the next process reads it instead of re-embedding
    reread = CountingEmbedder("r1")
    CachedEmbedder(reread, tmp_path).embed_texts(["hello"])
    assert reread.texts == []


# --------------------------------------------------------------------------- CSV and image folders


def _solid_png(colour: tuple[int, int, int]) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (16, 16), colour).save(buffer, format="PNG")
    return buffer.getvalue()


def test_csv_reads_the_same_rows_as_jsonl(tmp_path: Path) -> None:
    (tmp_path / "red.png").write_bytes(_solid_png((255, 0, 0)))
    (tmp_path / "rows.jsonl").write_text(
        json.dumps({"text": "a red square", "image": "red.png", "label": "red"}) + "\n"
        + json.dumps({"text": "only words, with a comma", "image": None, "label": "none"}) + "\n"
    )  # fmt: skip
    (tmp_path / "rows.csv").write_text(
        'label,text,image,extra\nred,a red square,red.png,x\nnone,"only words, with a comma",,y\n'
    )
    assert read_examples(tmp_path / "rows.csv") == read_examples(tmp_path / "rows.jsonl")


def test_csv_errors_name_the_file_and_line(tmp_path: Path) -> None:
    bad = tmp_path / "bad.csv"
    bad.write_text("text,label\nfine,a\nno label here,\n")
    with pytest.raises(DataError, match=r"bad\.csv:3: missing label"):
        read_examples(bad)
    headless = tmp_path / "headless.csv"
    headless.write_text("caption,label\nx,y\n")
    with pytest.raises(DataError, match="needs a text or image column"):
        read_examples(headless)


def test_image_folder_labels_come_from_class_directories(tmp_path: Path) -> None:
    for label, colour in (("red", (255, 0, 0)), ("blue", (0, 0, 255))):
        (tmp_path / "data" / label).mkdir(parents=True)
        for i in range(2):
            (tmp_path / "data" / label / f"{i}.png").write_bytes(_solid_png(colour))
    (tmp_path / "data" / "red" / "notes.txt").write_text("not an image")
    examples = read_examples(tmp_path / "data")
    assert [e.label for e in examples] == ["blue", "blue", "red", "red"]
    assert all(
        e.text is None and e.image == _solid_png((255, 0, 0) if e.label == "red" else (0, 0, 255))
        for e in examples
    )
    before = data_sha256(tmp_path / "data")
    (tmp_path / "data" / "blue" / "1.png").write_bytes(_solid_png((0, 0, 254)))
    assert data_sha256(tmp_path / "data") != before
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="no examples"):
        read_examples(tmp_path / "empty")

"""Image folders read from disk on demand (edgetl.data.image_files): the lazy array equals the eager one for every
index kind, the decoded-image cache holds its bound, unreadable files are skipped and named (or stop the run in
"error" mode), the data fingerprint hashes file bytes, and DataLoader workers decode exactly the trainer's batches."""

from __future__ import annotations

import hashlib
import io
import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from edgetl.data import DecodedCache, ImageFiles, LabeledImages, describe_skipped, load_splits
from edgetl.data.file_check import bad_image_reason
from edgetl.errors import DataError
from edgetl.preprocess import ImagePreprocess
from edgetl.settings import DataConfig

PRE = ImagePreprocess(image_size=16)
_RNG = np.random.default_rng(0)


def _noise(height: int, width: int, channels: int = 3) -> np.ndarray:
    return _RNG.integers(0, 255, (height, width, channels), dtype=np.uint8)


def _encoded(image: Image.Image, fmt: str, **options) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, fmt, **options)
    return buffer.getvalue()


def _rotated_jpeg() -> bytes:
    exif = Image.Exif()
    exif[0x0112] = 6  # shown turned 90 degrees clockwise
    return _encoded(Image.fromarray(_noise(20, 36)), "JPEG", exif=exif, quality=90)


def _mixed_files() -> list[bytes]:
    """Valid files of every size and mode a photo folder holds."""
    return [
        _encoded(Image.fromarray(_noise(20, 30)), "PNG"),
        _encoded(Image.fromarray(_noise(31, 17)[:, :, 0]), "PNG"),  # grayscale
        _encoded(Image.fromarray(_noise(24, 24, 4), "RGBA"), "PNG"),
        _encoded(Image.fromarray(_noise(40, 25)).convert("P"), "PNG"),  # palette
        _encoded(Image.fromarray(np.full((18, 22), 0x7000, np.uint16)), "PNG"),  # 16-bit grayscale
        _encoded(Image.fromarray(_noise(48, 64)), "JPEG", quality=90),
        _encoded(Image.fromarray(_noise(30, 40)).convert("CMYK"), "JPEG", quality=90),
        _rotated_jpeg(),
        _encoded(Image.fromarray(_noise(33, 33)), "BMP"),
        _encoded(Image.fromarray(_noise(21, 19)), "WEBP", lossless=True),
    ]


SUFFIX = {b"\x89PNG": ".png", b"\xff\xd8": ".jpg", b"BM": ".bmp", b"RIFF": ".webp"}


def _suffix(data: bytes) -> str:
    return next(s for magic, s in SUFFIX.items() if data.startswith(magic))


def photo_folder(root: Path, classes=("cat", "dog")) -> Path:
    """root/<class>/<i>.<ext>: every kind of file of ``_mixed_files`` in every class."""
    for label, name in enumerate(classes):
        (root / name).mkdir(parents=True)
        for i, data in enumerate(_mixed_files()):
            (root / name / f"{label}{i:02d}{_suffix(data)}").write_bytes(data)
    return root


def _files(root: Path) -> list[Path]:
    return sorted(p for p in root.rglob("*") if p.is_file())


@pytest.fixture
def folder(tmp_path) -> list[Path]:
    return _files(photo_folder(tmp_path / "photos"))


@pytest.fixture
def decodes(monkeypatch) -> list[str]:
    """Every ``resize_image`` call in this process (a decode), by file name."""
    seen: list[str] = []
    original = ImagePreprocess.resize_image

    def counting(self, image):
        seen.append(Path(image).name)
        return original(self, image)

    monkeypatch.setattr(ImagePreprocess, "resize_image", counting)
    return seen


# -- the lazy array is the eager array ---------------------------------------------------------------------


INDEXES = {
    "int": 3, "negative int": -2, "numpy int": np.int64(5), "0-d array": np.array(4), "slice": slice(2, 9), "step slice": slice(None, None, 3),
    "reversed slice": slice(None, None, -1), "empty slice": slice(4, 4), "list": [4, 0, 19], "repeats": np.array([1, 1, 7, 1]),
    "negative array": np.array([-1, -20]), "uint array": np.array([2, 3], dtype=np.uint8), "empty array": np.array([], dtype=np.int64),
    "mask": np.arange(20) % 3 == 0, "empty mask": np.zeros(20, dtype=bool),
    "tuple": (slice(None), slice(0, 4), slice(2, 5)), "int tuple": (3, slice(0, 2)),
}


@pytest.mark.parametrize("cache_mb", [0, 64])
def test_the_lazy_array_equals_the_eager_array_for_every_index_kind(folder, cache_mb):
    eager = np.stack([PRE.resize_image(path) for path in folder])
    lazy = ImageFiles(folder, PRE, cache=DecodedCache.of_mb(cache_mb))
    assert (len(lazy), lazy.shape, lazy.dtype, lazy.ndim) == (len(eager), eager.shape, eager.dtype, eager.ndim) == (
        20, (20, 16, 16, 3), np.uint8, 4)
    for _ in range(2):  # decoded, then (with a cache) from the cache
        for name, index in INDEXES.items():
            got, want = lazy[index], eager[index]
            assert isinstance(got, np.ndarray) and got.dtype == np.uint8, name
            assert got.shape == want.shape and np.array_equal(got, want), name
    assert np.array_equal(np.asarray(lazy), eager) and all(np.array_equal(a, b) for a, b in zip(lazy, eager))
    assert np.array_equal(PRE.normalize(lazy), PRE.normalize(eager))  # a whole small split at once
    view = lazy.subset(np.array([5, 2, 9, 11]))
    assert isinstance(view, ImageFiles) and view.cache is lazy.cache
    assert np.array_equal(view[:], eager[[5, 2, 9, 11]]) and np.array_equal(view.subset([3, 0])[:], eager[[11, 5]])
    assert np.array_equal(lazy.subset(np.arange(20) >= 15)[:], eager[15:])
    for bad in (20, -21, [0, 20], np.ones(3, dtype=bool)):
        with pytest.raises(IndexError):
            lazy[bad]
        with pytest.raises(IndexError):
            eager[bad]


def test_a_folder_split_holds_lazy_rows_equal_to_decoding_each_file(tmp_path, decodes):
    root = photo_folder(tmp_path / "photos")
    splits = load_splits(DataConfig(source="folder", path=str(root), val_fraction=0.2, test_fraction=0.2), PRE)
    assert not decodes  # listing and splitting decode nothing
    parts = (splits.train, splits.val, splits.test)
    assert all(isinstance(p.images, ImageFiles) for p in parts) and sum(map(len, parts)) == 20
    assert len({id(p.images.cache) for p in parts}) == 1  # one cache, one bound, for the whole dataset
    assert splits.skipped == []
    for part in parts:
        for row in range(len(part)):
            path = Path(part.images.files[row])
            assert np.array_equal(part.images[row], PRE.resize_image(path))
            assert part.labels[row] == ["cat", "dog"].index(path.parent.name)
    half = splits.train.subset(np.arange(len(splits.train)) % 2 == 0)
    assert isinstance(half.images, ImageFiles) and np.array_equal(half.labels, splits.train.labels[::2])


def test_labeled_images_takes_arrays_or_image_files_only(folder):
    LabeledImages(ImageFiles(folder[:2], PRE), np.zeros(2, np.int64), ["a"])
    with pytest.raises(DataError, match="2 images but 3 labels"):
        LabeledImages(ImageFiles(folder[:2], PRE), np.zeros(3, np.int64), ["a"])
    with pytest.raises(DataError, match="uint8 array .* or ImageFiles, got list"):
        LabeledImages([np.zeros((4, 4, 3), np.uint8)], np.zeros(1, np.int64), ["a"])


# -- the cache ------------------------------------------------------------------------------------------------


def test_the_cache_holds_its_bound_and_evicts_the_least_recently_used(folder, decodes):
    one_image = 16 * 16 * 3
    lazy = ImageFiles(folder, PRE, cache=DecodedCache(3 * one_image))
    lazy[[0, 1, 2]]
    assert len(decodes) == 3 and len(lazy.cache) == 3 and lazy.cache.nbytes == 3 * one_image
    lazy[[2, 0, 1]]
    lazy[0]
    assert len(decodes) == 3 and lazy.cache.hits == 4  # all from the cache; now least recent first: 2, 1, 0
    lazy[3]  # evicts row 2, the least recently used
    assert len(decodes) == 4 and lazy.cache.nbytes == 3 * one_image
    lazy[[0, 1, 3]]
    assert len(decodes) == 4
    lazy[2]
    assert decodes[-1] == folder[2].name and len(decodes) == 5
    for row in range(20):
        lazy[row]
        assert lazy.cache.nbytes <= 3 * one_image and len(lazy.cache) <= 3


def test_without_a_cache_every_read_decodes_and_with_one_a_second_pass_decodes_nothing(tmp_path, decodes):
    root = photo_folder(tmp_path / "photos")
    for cache_mb, second_pass in ((0, 20), (1, 0)):
        decodes.clear()
        splits = load_splits(DataConfig(source="folder", path=str(root), cache_mb=cache_mb), PRE)
        for _ in range(2):
            for part in (splits.train, splits.val, splits.test):
                part.images[:]
        assert len(decodes) == 20 + second_pass, cache_mb


def test_cached_pixels_cannot_be_changed_through_what_callers_get(folder):
    lazy = ImageFiles(folder, PRE, cache=DecodedCache.of_mb(1))
    first = lazy[0].copy()
    lazy[0][:] = 0
    lazy[[0, 1]][:] = 0
    assert np.array_equal(lazy[0], first)


# -- bad files ------------------------------------------------------------------------------------------------


def _photo_jpeg() -> bytes:
    return _encoded(Image.fromarray(_noise(96, 128)), "JPEG", quality=90)


BAD_FILES = {
    "dog/not-an-image.jpg": b"\xff\xd8\xff\xe0 not a jpeg",
    "dog/empty.png": b"",
    "cat/cut.jpg": _photo_jpeg()[:2000],  # a header Pillow opens, then the data stops
    "cat/cut.png": _encoded(Image.fromarray(_noise(64, 64)), "PNG")[:3000],
    "dog/notes.png": b"shopping list",
    "cat/cut.webp": _encoded(Image.fromarray(_noise(64, 64)), "WEBP")[:200],
}


def test_the_listing_check_catches_cut_files_and_keeps_odd_valid_ones(tmp_path):
    for name, data in BAD_FILES.items():
        path = tmp_path / name.replace("/", "-")
        path.write_bytes(data)
        assert bad_image_reason(path), name
    valid = {"motion-photo.jpg": _photo_jpeg() + b"\x00\x00ftypmp42" + bytes(3000),  # data after the image
             "padded.jpg": _photo_jpeg() + b"\x00" * 16, **{f"{i}{_suffix(d)}": d for i, d in enumerate(_mixed_files())}}
    for name, data in valid.items():
        (tmp_path / name).write_bytes(data)
        assert bad_image_reason(tmp_path / name) is None, name
    reason = bad_image_reason(tmp_path / "cat-cut.jpg")
    assert "truncated" in reason and str(tmp_path) not in reason  # one short line: the path is named beside it


def test_unreadable_files_are_skipped_named_and_counted(tmp_path, decodes):
    root = photo_folder(tmp_path / "photos")
    for name, data in BAD_FILES.items():
        (root / name).write_bytes(data)
    splits = load_splits(DataConfig(source="folder", path=str(root)), PRE)
    assert sorted(Path(s.path).relative_to(root).as_posix() for s in splits.skipped) == sorted(BAD_FILES)
    assert sum(splits.sizes().values()) == 20 and not decodes
    listed = {path for part in (splits.train, splits.val, splits.test) for path in part.images.files}
    assert not listed & {str(root / name) for name in BAD_FILES}
    lines = describe_skipped(splits.skipped)
    assert len(lines) == len(BAD_FILES) and all(line.startswith("data: skipped unreadable image ") for line in lines)
    assert any("cut.jpg" in line and "truncated" in line for line in lines)
    for part in (splits.train, splits.val, splits.test):
        assert part.images[:].shape == (len(part), 16, 16, 3)


def test_the_skipped_files_log_names_ten_then_counts_the_rest(tmp_path):
    root = photo_folder(tmp_path / "photos")
    for i in range(13):
        (root / "cat" / f"bad{i:02d}.png").write_bytes(b"nope")
    splits = load_splits(DataConfig(source="folder", path=str(root)), PRE)
    lines = describe_skipped(splits.skipped)
    assert len(splits.skipped) == 13 and len(lines) == 11
    assert all(f"bad{i:02d}.png" in lines[i] for i in range(10))
    assert lines[-1] == "data: ... and 3 more unreadable images skipped (13 in all)"


def test_error_mode_stops_at_the_first_bad_file_in_one_line(tmp_path):
    root = photo_folder(tmp_path / "photos")
    for name, data in BAD_FILES.items():
        (root / name).write_bytes(data)
    with pytest.raises(DataError) as error:
        load_splits(DataConfig(source="folder", path=str(root), on_bad_file="error"), PRE)
    message = str(error.value)
    assert "\n" not in message and message.startswith(f"cannot read image {root / 'cat' / 'cut.jpg'}: ")
    assert "truncated" in message and 'data.on_bad_file = "skip"' in message and "valid PNG/JPEG" in message


def test_a_class_left_without_readable_images_is_an_error(tmp_path):
    root = photo_folder(tmp_path / "photos")
    (root / "owl").mkdir()
    (root / "owl" / "a.jpg").write_bytes(b"nope")
    (root / "owl" / "b.png").write_bytes(b"")
    with pytest.raises(DataError, match=r"owl has no readable images \(2 unreadable file\(s\) skipped"):
        load_splits(DataConfig(source="folder", path=str(root)), PRE)


@pytest.mark.parametrize("workers", [0, 2])
def test_a_file_damaged_after_listing_stops_training_naming_it(tmp_path, workers):
    from edgetl.train.image_loader import decoded_batches

    root = photo_folder(tmp_path / "photos")
    splits = load_splits(DataConfig(source="folder", path=str(root), cache_mb=0), PRE)
    damaged = Path(splits.train.images.files[4])
    damaged.write_bytes(damaged.read_bytes()[:40])
    rows = [np.arange(0, 4), np.arange(4, 8)]
    with pytest.raises(DataError) as error:
        list(decoded_batches(splits.train.images, rows, workers=workers))
    message = str(error.value)
    assert "\n" not in message and f"cannot read image {damaged}" in message
    assert "passed the check when the folder was listed" in message and "rerun" in message


# -- the fingerprint --------------------------------------------------------------------------------------------


def test_the_fingerprint_hashes_file_bytes_without_decoding(tmp_path, decodes):
    from edgetl.tasks.image import ImageClassification

    task = ImageClassification()
    root = photo_folder(tmp_path / "photos")
    config = DataConfig(source="folder", path=str(root))
    first = task.fingerprint(load_splits(config, PRE))
    edited = root / "dog" / "105.jpg"
    stat = edited.stat()
    os.utime(edited, ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))  # touched, not changed
    assert task.fingerprint(load_splits(config, PRE)) == first and not decodes
    edited.write_bytes(_encoded(Image.fromarray(_noise(48, 64)), "JPEG", quality=90))  # edited in place
    second = task.fingerprint(load_splits(config, PRE))
    assert second != first
    assert task.fingerprint(load_splits(config, ImagePreprocess(image_size=16, resize="letterbox"))) != second
    assert task.fingerprint(load_splits(config, ImagePreprocess(image_size=24))) != second
    assert not decodes


def test_the_fingerprint_covers_every_file_and_the_preprocessing(folder):
    digests = []
    for files, pre in ((folder, PRE), (folder[:-1], PRE), (folder[::-1], PRE), (folder, ImagePreprocess(16, channels=1))):
        digest = hashlib.sha256()
        ImageFiles(files, pre).update_digest(digest)
        digests.append(digest.hexdigest())
    assert len(set(digests)) == 4
    folder[0].unlink()
    with pytest.raises(DataError, match=f"cannot read image {folder[0]} .*put it back, or rerun"):
        ImageFiles(folder, PRE).update_digest(hashlib.sha256())


# -- DataLoader workers --------------------------------------------------------------------------------------------


def test_workers_yield_exactly_the_trainers_batches_and_leave_the_rng_alone(tmp_path):
    import torch

    from edgetl.train.image_loader import decoded_batches

    files = _files(photo_folder(tmp_path / "photos"))
    torch.manual_seed(3)
    plan = list(torch.randperm(20).split(6)) + [torch.tensor([1, 1, 19, 0])]  # as ImageTrainHooks._rows makes them
    results = {}
    for workers in (0, 2):
        images = ImageFiles(files, PRE, cache=DecodedCache.of_mb(1))
        torch.manual_seed(7)
        batches = list(decoded_batches(images, plan, workers=workers))
        results[workers] = (batches, torch.rand(3))
        assert [rows for rows, _ in batches] == plan  # the trainer's own row objects, in its order
        assert all(np.array_equal(batch, images.uncached()[rows.numpy()]) for rows, batch in batches)
    zero, two = results[0], results[2]
    assert all(np.array_equal(a, b) for (_, a), (_, b) in zip(zero[0], two[0]))
    assert torch.equal(zero[1], two[1])  # starting workers drew nothing from the global RNG


def test_with_workers_the_cache_stays_in_the_training_process(folder):
    from edgetl.train.image_loader import decoded_batches

    images = ImageFiles(folder, PRE, cache=DecodedCache.of_mb(1))
    plan = [np.arange(0, 10), np.arange(10, 20), np.array([3, 3, 17])]
    first = [batch for _, batch in decoded_batches(images, plan, workers=2)]
    assert len(images.cache) == 20  # what the workers decoded joined this process's cache
    for path in folder:
        path.unlink()  # a second pass needs no file: every row comes from the cache, none goes to a worker
    again = [batch for _, batch in decoded_batches(images, plan, workers=2)]
    assert all(np.array_equal(a, b) for a, b in zip(first, again))


def test_in_memory_images_are_batched_in_process():
    from edgetl.train.image_loader import decoded_batches

    images = np.arange(6 * 2 * 2 * 3, dtype=np.uint8).reshape(6, 2, 2, 3)
    batches = list(decoded_batches(images, [np.array([5, 0]), [2]], workers=2))
    assert np.array_equal(batches[0][1], images[[5, 0]]) and np.array_equal(batches[1][1], images[[2]])
    with pytest.raises(DataError, match="data.workers must be 0 or more"):
        list(decoded_batches(images, [[0]], workers=-1))


def test_a_run_names_each_skipped_file_in_its_log_and_counts_them_in_its_summary(tmp_path):
    """The pipeline level: RunContext logs the skipped files once, the summary lists them (edgetl.pipeline.run)."""
    from edgetl.pipeline.context import RunContext
    from edgetl.recipe import load_recipe

    root = photo_folder(tmp_path / "photos")
    (root / "cat" / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 not a jpeg")
    recipe = load_recipe(None, ["data.source=folder", f"data.path={str(root)!r}", "model.backbone='tiny_convnet'",
                                f"run.output_dir={str(tmp_path / 'runs')!r}", "distill.enabled=false"])
    lines: list[str] = []
    ctx = RunContext(recipe, progress=False, log=lines.append)
    assert [Path(s.path).name for s in ctx.splits.skipped] == ["broken.jpg"]
    assert ctx.splits.skipped is ctx.splits.skipped  # computed once
    assert sum("broken.jpg" in line for line in lines) == 1, lines

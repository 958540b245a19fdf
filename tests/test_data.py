import gzip

import numpy as np
import pytest
from PIL import Image

from conftest import needs_fashion_mnist
from edgetl.data.dataset import LabeledImages, split_stratified
from edgetl.preprocess import ImagePreprocess
from edgetl.data.sources import folder_splits, read_idx, scan_image_folder
from edgetl.errors import DataError
from edgetl.recipe import DataConfig


def _write_idx(path, array, gz=True):
    header = bytes([0, 0, 0x08, array.ndim]) + b"".join(int(d).to_bytes(4, "big") for d in array.shape)
    (gzip.open if gz else open)(path, "wb").write(header + array.astype(np.uint8).tobytes())


@pytest.mark.parametrize("gz", [True, False])
def test_read_idx_round_trip(tmp_path, gz):
    array = np.arange(2 * 3 * 4, dtype=np.uint8).reshape(2, 3, 4)
    path = tmp_path / ("x.idx.gz" if gz else "x.idx")
    _write_idx(path, array, gz)
    assert np.array_equal(read_idx(path), array)


def test_truncated_idx_is_named(tmp_path):
    path = tmp_path / "bad.idx"
    _write_idx(path, np.zeros((10, 4, 4)), gz=False)
    path.write_bytes(path.read_bytes()[:-5])
    with pytest.raises(DataError, match="truncated"):
        read_idx(path)


def test_preprocess_normalises_grayscale_to_three_channels():
    pre = ImagePreprocess(image_size=8, channels=3, mean=(0.5,) * 3, std=(0.5,) * 3)
    batch = pre([np.full((28, 28), 255, dtype=np.uint8), np.zeros((28, 28), dtype=np.uint8)])
    assert batch.shape == (2, 3, 8, 8) and batch.dtype == np.float32
    assert np.allclose(batch[0], 1.0) and np.allclose(batch[1], -1.0)
    assert ImagePreprocess.from_dict(pre.to_dict()) == pre


def test_split_is_stratified_and_deterministic():
    data = LabeledImages(np.zeros((100, 2, 2, 1), np.uint8), np.repeat(np.arange(4), 25), list("abcd"))
    train, held = split_stratified(data, 0.2, seed=3)
    again, _ = split_stratified(data, 0.2, seed=3)
    assert len(held) == 20 and set(held.class_counts().values()) == {5}
    assert np.array_equal(train.labels, again.labels)


def _image_folder(root, classes=("cat", "dog"), per_class=6):
    for name in classes:
        (root / name).mkdir(parents=True)
        for i in range(per_class):
            Image.fromarray(np.full((10, 12, 3), 40 * i, np.uint8)).save(root / name / f"{i}.png")
    return root


def test_image_folder_splits(tmp_path, tiny_preprocess):
    root = _image_folder(tmp_path / "photos")
    splits = folder_splits(DataConfig(source="folder", path=str(root), val_fraction=0.2, test_fraction=0.2), tiny_preprocess)
    assert splits.classes == ["cat", "dog"]
    assert sum(splits.sizes().values()) == 12 and min(splits.sizes().values()) >= 2
    assert splits.train.images.shape[1:] == (32, 32, 3)


def test_corrupt_image_names_the_file(tmp_path, tiny_preprocess):
    root = _image_folder(tmp_path / "photos")
    (root / "dog" / "broken.png").write_bytes(b"not a png")
    with pytest.raises(DataError, match="broken.png"):
        folder_splits(DataConfig(source="folder", path=str(root), on_bad_file="error"), tiny_preprocess)


def test_corrupt_image_is_skipped_and_named_by_default(tmp_path, tiny_preprocess):
    root = _image_folder(tmp_path / "photos")
    (root / "dog" / "broken.png").write_bytes(b"not a png")
    splits = folder_splits(DataConfig(source="folder", path=str(root)), tiny_preprocess)
    assert [s.path for s in splits.skipped] == [str(root / "dog" / "broken.png")]
    assert sum(splits.sizes().values()) == 12  # the six cats and six dogs, without the broken file
    files = [f for part in (splits.train, splits.val, splits.test) for f in part.images.files]
    assert str(root / "dog" / "broken.png") not in files


def test_image_folder_splits_are_files_decoded_on_demand(tmp_path, tiny_preprocess):
    from edgetl.data import ImageFiles

    root = _image_folder(tmp_path / "photos")
    splits = folder_splits(DataConfig(source="folder", path=str(root), cache_mb=0), tiny_preprocess)
    for part in (splits.train, splits.val, splits.test):
        assert isinstance(part.images, ImageFiles) and part.images.shape == (len(part), 32, 32, 3)
        for row, path in enumerate(part.images.files):
            assert np.array_equal(part.images[row], tiny_preprocess.resize_image(path))


def test_folder_with_one_class_or_empty_class_is_refused(tmp_path):
    root = _image_folder(tmp_path / "one", classes=("only",))
    with pytest.raises(DataError, match="at least 2"):
        scan_image_folder(root)
    root = _image_folder(tmp_path / "two")
    (root / "empty").mkdir()
    with pytest.raises(DataError, match="no images"):
        scan_image_folder(root)


def test_missing_fashion_mnist_folder_says_how_to_install(tmp_path, tiny_preprocess):
    from edgetl.data import load_splits

    with pytest.raises(DataError, match="apt-get install dataset-fashion-mnist"):
        load_splits(DataConfig(path=str(tmp_path)), tiny_preprocess)


@needs_fashion_mnist
def test_fashion_mnist_subset_is_balanced_and_reproducible(tiny_preprocess):
    from edgetl.data import load_splits

    config = DataConfig(train_per_class=20, val_per_class=5, test_per_class=10)
    a, b = load_splits(config, tiny_preprocess), load_splits(config, tiny_preprocess)
    assert a.sizes() == {"train": 200, "val": 50, "test": 100}
    assert set(a.train.class_counts().values()) == {20}
    assert np.array_equal(a.train.images, b.train.images) and a.classes[0] == "T-shirt/top"
    other = load_splits(DataConfig(train_per_class=20, val_per_class=5, test_per_class=10, seed=1), tiny_preprocess)
    assert not np.array_equal(a.train.images, other.train.images)

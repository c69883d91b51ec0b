import logging
import os
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from localearn import data
from localearn.data import (
    DATASETS,
    DataError,
    DataSplit,
    iterate_batches,
    load_dataset,
    random_crop_flip,
    resolve_device,
)

CLASSES = ["bee", "ant", "cat"]  # written unsorted: the loader must sort them


def make_tree(root: Path, classes=CLASSES, n_train=6, n_test=2, size=(8, 8), mode="RGB") -> Path:
    g = torch.Generator().manual_seed(len(str(root)))
    for split, n in (("train", n_train), ("test", n_test)):
        for cls in classes:
            (root / split / cls).mkdir(parents=True, exist_ok=True)
            for i in range(n):
                px = torch.randint(0, 256, (size[1], size[0], 3), generator=g, dtype=torch.uint8).numpy()
                im = Image.fromarray(px).convert(mode)
                im.save(root / split / cls / f"{i:03}.png")
    return root


def read_images(paths) -> torch.Tensor:
    """uint8 [N, C, H, W] straight from the files, for comparison with the loader."""
    arrs = [torch.from_numpy(np.array(Image.open(p))) for p in paths]
    return torch.stack([a.permute(2, 0, 1) if a.ndim == 3 else a[None] for a in arrs])


@pytest.fixture
def tree(tmp_path):
    return make_tree(tmp_path / "tree")


@pytest.fixture
def cache(tmp_path):
    return tmp_path / "cache"


def test_image_folder_shapes_labels_and_order(tree, cache):
    train, val, test = load_dataset(str(tree), val_fraction=1 / 3, cache_dir=cache)
    assert (len(train), len(val), len(test)) == (12, 6, 6)
    for s in (train, val, test):
        assert s.x.dtype == torch.float32 and s.y.dtype == torch.int64
        assert s.input_shape == (3, 8, 8) and s.num_classes == 3 and s.device == torch.device("cpu")
        assert s.classes == ["ant", "bee", "cat"] and s.name == str(tree) and not s.augment
    assert test.y.tolist() == [0, 0, 1, 1, 2, 2]
    assert torch.equal(torch.cat([train.y, val.y]).bincount(), torch.tensor([6, 6, 6]))


def test_pixels_order_and_computed_normalisation(tree, cache):
    train, val, test = load_dataset(str(tree), val_fraction=0, cache_dir=cache)
    assert val.x.shape == (0, 3, 8, 8) and val.y.shape == (0,)
    std, mean = torch.std_mean(train.x, dim=(0, 2, 3), correction=0)
    assert torch.allclose(mean, torch.zeros(3), atol=1e-5) and torch.allclose(std, torch.ones(3), atol=1e-4)
    # Files in sorted class/file order, normalised with the training part's own statistics.
    raw_train = read_images(sorted(tree.glob("train/*/*.png"))).double() / 255
    raw_test = read_images(sorted(tree.glob("test/*/*.png"))).double() / 255
    s, m = torch.std_mean(raw_train, dim=(0, 2, 3), correction=0)
    norm = lambda r: ((r - m.view(1, -1, 1, 1)) / s.view(1, -1, 1, 1)).float()  # noqa: E731
    assert torch.allclose(train.x, norm(raw_train), atol=1e-5)
    assert torch.allclose(test.x, norm(raw_test), atol=1e-5)
    assert train.y.tolist() == [0] * 6 + [1] * 6 + [2] * 6


def test_grayscale_tree(tmp_path, cache):
    root = make_tree(tmp_path / "gray", classes=["a", "b"], n_train=4, n_test=1, size=(6, 5), mode="L")
    train, val, test = load_dataset(str(root), val_fraction=0.25, cache_dir=cache)
    assert train.input_shape == (1, 5, 6) and (len(train), len(val), len(test)) == (6, 2, 2)


def test_split_determinism(tree, cache):
    a = load_dataset(str(tree), seed=1, val_fraction=0.5, cache_dir=cache)
    b = load_dataset(str(tree), seed=1, val_fraction=0.5, cache_dir=cache)
    c = load_dataset(str(tree), seed=2, val_fraction=0.5, cache_dir=cache)
    assert torch.equal(a[1].x, b[1].x) and torch.equal(a[0].y, b[0].y)
    assert not torch.equal(a[1].x, c[1].x)
    assert len(a[1]) == len(c[1]) == 9
    assert torch.equal(torch.cat([a[0].y, a[1].y]).sort().values, torch.cat([c[0].y, c[1].y]).sort().values)


def test_cache_hit_and_read_only_data_dir(tree, cache, monkeypatch, caplog):
    before = sorted(p for p in tree.rglob("*"))
    dirs = [tree, *[p for p in tree.rglob("*") if p.is_dir()]]
    for d in dirs:
        d.chmod(0o555)
    try:
        with caplog.at_level(logging.INFO, logger="localearn.data"):
            first = load_dataset(str(tree), cache_dir=cache)
        assert "decoding" in caplog.text
        assert len(list(cache.glob("*.pt"))) == 1 and not list(cache.glob("*.tmp"))

        def fail(*args, **kwargs):
            raise AssertionError("decoded again despite the cache")

        monkeypatch.setattr(data, "_decode_images", fail)
        caplog.clear()
        with caplog.at_level(logging.INFO, logger="localearn.data"):
            second = load_dataset(str(tree), cache_dir=cache)
        assert "from cache" in caplog.text
        assert torch.equal(first[0].x, second[0].x) and torch.equal(first[2].y, second[2].y)
    finally:
        for d in dirs:
            d.chmod(0o755)
    assert sorted(tree.rglob("*")) == before  # nothing written in the data directory


def test_cache_follows_source_changes(tree, cache):
    load_dataset(str(tree), cache_dir=cache)
    make_tree(tree, classes=["ant"], n_train=7, n_test=0)  # one more training image
    train, val, _ = load_dataset(str(tree), val_fraction=0, cache_dir=cache)
    assert len(train) == 19
    assert len(list(cache.glob("*.pt"))) == 1  # the stale cache was replaced


def test_pool_decoding_matches_serial(tree, tmp_path, monkeypatch):
    serial = load_dataset(str(tree), cache_dir=tmp_path / "c1")
    monkeypatch.setattr(data, "_POOL_MIN_FILES", 1)
    pooled = load_dataset(str(tree), cache_dir=tmp_path / "c2")
    assert all(torch.equal(a.x, b.x) and torch.equal(a.y, b.y) for a, b in zip(serial, pooled, strict=True))


def test_named_dataset_from_image_folder_copy_uses_constants(tmp_path, cache):
    make_tree(tmp_path / "cifar10", classes=["airplane", "automobile"], n_train=2, n_test=1)
    train, _, test = load_dataset("cifar10", data_dir=tmp_path, val_fraction=0, cache_dir=cache)
    assert train.name == "cifar10" and train.classes == ["airplane", "automobile"]
    info = DATASETS["cifar10"]
    pix = torch.tensor(Image.open(tmp_path / "cifar10/test/airplane/000.png").getpixel((0, 0))) / 255
    expected = (pix - torch.tensor(info.mean)) / torch.tensor(info.std)
    assert torch.allclose(test.x[0, :, 0, 0], expected, atol=1e-5)


def test_augment_only_on_train(tree, cache):
    train, val, test = load_dataset(str(tree), augment=True, cache_dir=cache)
    assert train.augment and not val.augment and not test.augment


# ---------------------------------------------------------------- errors


def test_unknown_name_lists_valid_names(tmp_path):
    with pytest.raises(DataError) as e:
        load_dataset("imagenet-nope", data_dir=tmp_path)
    msg = str(e.value)
    assert "imagenet-nope" in msg and all(n in msg for n in DATASETS) and "ImageFolder" in msg


def test_empty_tree(tmp_path, cache):
    root = tmp_path / "empty"
    (root / "train").mkdir(parents=True)
    (root / "test").mkdir()
    with pytest.raises(DataError, match="no class folders") as e:
        load_dataset(str(root), cache_dir=cache)
    assert str(root) in str(e.value)
    (root / "train" / "a").mkdir()
    (root / "train" / "a" / "notes.txt").write_text("not an image")
    with pytest.raises(DataError, match="no images") as e:
        load_dataset(str(root), cache_dir=cache)
    assert str(root / "train") in str(e.value)


@pytest.mark.parametrize("pool", [False, True])
def test_mismatched_image_sizes(tree, cache, monkeypatch, pool):
    if pool:  # the error must cross the process boundary intact
        monkeypatch.setattr(data, "_POOL_MIN_FILES", 1)
    odd = tree / "train" / "cat" / "999.png"
    Image.new("RGB", (9, 8)).save(odd)
    with pytest.raises(DataError, match="999.png is 9x8.*8x8"):
        load_dataset(str(tree), cache_dir=cache)


@pytest.mark.parametrize("fraction", [-0.1, 1.0, 1.5])
def test_bad_val_fraction(tree, cache, fraction):
    with pytest.raises(DataError, match=r"val_fraction.*\[0, 1\)"):
        load_dataset(str(tree), val_fraction=fraction, cache_dir=cache)


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
@pytest.mark.parametrize("device", ["cuda", "cuda:1", torch.device("cuda")])
def test_cuda_not_available(device):
    with pytest.raises(DataError, match="CUDA is not available.*valid: auto, cpu"):
        resolve_device(device)


def test_resolve_device():
    assert resolve_device("cpu") == torch.device("cpu") == resolve_device(torch.device("cpu"))
    assert resolve_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")
    with pytest.raises(DataError, match="'gpu'.*valid: auto, cpu"):
        resolve_device("gpu")


@pytest.mark.parametrize("name", ["mnist", "cifar100"])
def test_missing_named_dataset_offline(tmp_path, monkeypatch, name):
    import torchvision

    cls = getattr(torchvision.datasets, DATASETS[name].torchvision_class)

    def no_network(self):
        raise OSError("no network (test)")

    monkeypatch.setattr(cls, "download", no_network)
    monkeypatch.delenv("LOCALEARN_DATA", raising=False)
    with pytest.raises(DataError) as e:
        load_dataset(name, data_dir=tmp_path, cache_dir=tmp_path / "cache")
    msg = str(e.value)
    assert str(tmp_path / name / "train") in msg  # the ImageFolder place
    assert str(tmp_path / DATASETS[name].torchvision_dir) in msg  # torchvision's layout
    assert "no network (test)" in msg and "LOCALEARN_DATA" in msg and "--data-dir" in msg


# ---------------------------------------------------------------- augmentation and batches


def test_random_crop_flip_shape_and_forced_flip():
    x = torch.randn(5, 3, 8, 8)
    assert random_crop_flip(x).shape == x.shape
    assert torch.equal(random_crop_flip(x, padding=0, flip_prob=1.0), torch.flip(x, dims=[-1]))
    assert torch.equal(random_crop_flip(x, padding=0, flip_prob=0.0), x)


def test_random_crop_flip_rows_are_crops_of_padded_input():
    x = torch.arange(2 * 2 * 4 * 5, dtype=torch.float32).reshape(2, 2, 4, 5).repeat(20, 1, 1, 1)
    out = random_crop_flip(x, padding=2, generator=torch.Generator().manual_seed(0))
    padded = F.pad(x, (2, 2, 2, 2), mode="reflect")
    crops_seen = set()
    for i in range(len(x)):
        matches = [
            (dy, dx, f)
            for dy in range(5)
            for dx in range(5)
            for f in (False, True)
            if torch.equal(out[i], (lambda c: c.flip(-1) if f else c)(padded[i, :, dy : dy + 4, dx : dx + 5]))
        ]
        assert matches, f"row {i} is not a crop of the padded input"
        crops_seen.add(matches[0])
    assert len(crops_seen) > 5  # offsets and flips actually vary


def test_random_crop_flip_reproducible():
    x = torch.randn(16, 3, 8, 8)
    a = random_crop_flip(x, generator=torch.Generator().manual_seed(3))
    b = random_crop_flip(x, generator=torch.Generator().manual_seed(3))
    c = random_crop_flip(x, generator=torch.Generator().manual_seed(4))
    assert torch.equal(a, b) and not torch.equal(a, c)


def make_split(n=10, augment=False):
    x = torch.arange(n, dtype=torch.float32).view(n, 1, 1, 1).expand(n, 1, 8, 8).contiguous()
    return DataSplit(x, torch.arange(n), [str(i) for i in range(n)], "toy", augment=augment)


def test_iterate_batches_in_order_with_partial_last():
    batches = list(iterate_batches(make_split(10), 4))
    assert [len(y) for _, y in batches] == [4, 4, 2]
    assert torch.cat([y for _, y in batches]).tolist() == list(range(10))


def test_iterate_batches_shuffle_covers_each_index_once():
    split = make_split(10)
    g = torch.Generator().manual_seed(0)
    epochs = [
        torch.cat([y for _, y in iterate_batches(split, 3, shuffle=True, generator=g)]) for _ in range(2)
    ]
    for ys in epochs:
        assert sorted(ys.tolist()) == list(range(10))
    assert epochs[0].tolist() != list(range(10)) and epochs[0].tolist() != epochs[1].tolist()
    for xb, yb in iterate_batches(split, 3, shuffle=True):
        assert torch.equal(xb[:, 0, 0, 0], yb.float())  # x and y stay paired


def test_iterate_batches_augments():
    split = make_split(6, augment=True)
    split.x = torch.randn(6, 1, 8, 8)
    a = [xb for xb, _ in iterate_batches(split, 4, generator=torch.Generator().manual_seed(0))]
    b = [xb for xb, _ in iterate_batches(split, 4, generator=torch.Generator().manual_seed(0))]
    assert [x.shape[0] for x in a] == [4, 2]
    assert all(torch.equal(p, q) for p, q in zip(a, b, strict=True))
    assert not torch.equal(torch.cat(a), split.x)


def test_iterate_batches_bad_batch_size():
    with pytest.raises(DataError, match="batch_size"):
        next(iterate_batches(make_split(), 0))


# ---------------------------------------------------------------- real data


def test_real_mnist(tmp_path):
    root = os.environ.get("LOCALEARN_DATA")
    if not root or not (Path(root) / "MNIST" / "raw").is_dir():
        pytest.skip("set LOCALEARN_DATA to a folder with MNIST/raw to run this")
    train, val, test = load_dataset("mnist", val_fraction=0.1, cache_dir=tmp_path)
    assert (len(train), len(val), len(test)) == (54000, 6000, 10000)
    assert train.input_shape == (1, 28, 28) and train.num_classes == 10
    assert abs(train.x.mean().item()) < 0.05 and abs(train.x.std().item() - 1) < 0.05
    assert torch.equal(torch.cat([train.y, val.y]).bincount().sum(), torch.tensor(60000))


# ---------------------------------------------------------------- damaged data is named


@pytest.mark.parametrize("pool", [False, True])
def test_a_truncated_image_is_named_with_its_class_folder(tree, cache, monkeypatch, pool):
    """PIL's 'Truncated File Read' names no file; through the decoding pool it was a 50-line traceback."""
    if pool:
        monkeypatch.setattr(data, "_POOL_MIN_FILES", 1)
    good = tree / "train" / "cat" / "003.png"
    Image.open(good).convert("RGB").save(tree / "train" / "cat" / "010.jpg")
    whole = (tree / "train" / "cat" / "010.jpg").read_bytes()
    (tree / "train" / "cat" / "010.jpg").write_bytes(whole[: len(whole) // 2])
    with pytest.raises(DataError, match=r"cannot read image .*train/cat/010\.jpg \(class folder 'cat'\)"):
        load_dataset(str(tree), cache_dir=cache)


def test_an_empty_class_folder_is_refused(tree, cache):
    (tree / "train" / "dog").mkdir()
    with pytest.raises(DataError, match=r"train/dog: a class folder with no images"):
        load_dataset(str(tree), cache_dir=cache)


def test_a_truncated_mnist_file_is_named_and_nothing_is_downloaded(tmp_path, monkeypatch):
    import torchvision

    def no_download(self):
        raise AssertionError("a present copy must not be downloaded over")

    monkeypatch.setattr(torchvision.datasets.MNIST, "download", no_download)
    raw = tmp_path / "MNIST" / "raw"
    raw.mkdir(parents=True)
    for file, size in data._IDX_SIZES:
        (raw / file).write_bytes(b"\0" * (size if "t10k-images" not in file else 1000))
    with pytest.raises(DataError, match=r"t10k-images-idx3-ubyte has 1000 bytes, expected 7840016"):
        load_dataset("mnist", data_dir=tmp_path, cache_dir=tmp_path / "cache")
    (raw / "train-labels-idx1-ubyte").unlink()  # a file missing from a present copy: named too
    (raw / "t10k-images-idx3-ubyte").write_bytes(b"\0" * 7840016)
    with pytest.raises(DataError, match=r"MNIST/raw cannot be read .* incomplete or damaged"):
        load_dataset("mnist", data_dir=tmp_path, cache_dir=tmp_path / "cache")


@pytest.mark.parametrize(
    "change, message",
    [
        ({"y": torch.zeros(6, dtype=torch.int32)}, "y must be a 1-D int64 tensor .* got torch.int32"),
        ({"y": torch.tensor([0, 1, 2, 3, 0, 1])}, "label 3 is outside 0..2"),
        ({"y": torch.tensor([0, 1, -1, 0, 1, 2])}, "label -1 is outside 0..2"),
        ({"y": torch.zeros(5, dtype=torch.long)}, "x has 6 examples but y has 5"),
        ({"x": torch.zeros(6, 3, 2, 2, dtype=torch.uint8)}, "x must be a floating-point tensor"),
        (
            {"x": torch.ones(6, 3, 2, 2).index_fill_(0, torch.tensor([4]), float("nan"))},
            "1 examples have NaN",
        ),
        ({"classes": ["only"]}, "at least 2 classes"),
    ],
)
def test_a_split_is_checked_when_it_is_built(change, message):
    """Each of these surfaced later from inside torch (NaN inputs as "diverged, try a smaller lr")."""
    fields = {"x": torch.ones(6, 3, 2, 2), "y": torch.tensor([0, 1, 2, 0, 1, 2]), "classes": ["a", "b", "c"]}
    with pytest.raises(DataError, match=message):
        DataSplit(**{**fields, **change}, name="mine")


def test_the_trainer_refuses_a_missing_split(tmp_path):
    import localearn as ll

    split = DataSplit(torch.randn(8, 4), torch.tensor([0, 1] * 4), ["a", "b"], "mine")
    algo = ll.make("backprop", ll.models.mlp(4, [4], 2), 2)
    with pytest.raises(TypeError, match="val must be a DataSplit"):
        ll.Trainer(algo, split, None, split)

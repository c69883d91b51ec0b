import os
from pathlib import Path

import pytest
import torch

# A test rule that builds its own blocks joins the registry as a plugin would, here and in every process
# the tests start (the command line's children included): the registry-wide tests cover it, no special case.
TESTS = str(Path(__file__).parent)
os.environ["LOCALEARN_PLUGINS"] = "noisy_label_blocks"
os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [TESTS, os.environ.get("PYTHONPATH")]))

from localearn.algorithms import ALGORITHMS  # noqa: E402
from localearn.data import DataSplit  # noqa: E402

assert "noisy_label_blocks" in ALGORITHMS

CLASSES = ["a", "b", "c", "d"]


def gaussian_blobs(n: int, seed: int, features: int = 20) -> DataSplit:
    """Four well-separated Gaussian classes: every rule should learn them far above chance in a few epochs."""
    centers = torch.randn(len(CLASSES), features, generator=torch.Generator().manual_seed(1234)) * 2
    g = torch.Generator().manual_seed(seed)
    y = torch.randint(0, len(CLASSES), (n,), generator=g)
    x = centers[y] + torch.randn(n, features, generator=g)
    return DataSplit(x, y, list(CLASSES), "blobs")


@pytest.fixture
def blobs():
    return gaussian_blobs(512, 1), gaussian_blobs(128, 2), gaussian_blobs(256, 3)


@pytest.fixture
def image_blobs():
    """The same task shaped as 3x8x8 images, for convolutional units."""
    splits = []
    for n, seed in ((256, 1), (64, 2), (64, 3)):
        s = gaussian_blobs(n, seed, features=3 * 8 * 8)
        splits.append(DataSplit(s.x.view(n, 3, 8, 8), s.y, s.classes, "image_blobs"))
    return splits


def write_image_tree(root, classes=4, train_per_class=30, test_per_class=8, size=8, seed=0):
    """A small ImageFolder tree whose classes differ in colour, so a network can learn them."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(seed)
    colours = rng.uniform(40, 215, size=(classes, 3))
    for split, n in (("train", train_per_class), ("test", test_per_class)):
        for c in range(classes):
            folder = root / split / f"class{c}"
            folder.mkdir(parents=True)
            for i in range(n):
                pixels = np.clip(colours[c] + rng.normal(0, 30, size=(size, size, 3)), 0, 255).astype(
                    np.uint8
                )
                Image.fromarray(pixels).save(folder / f"{i:03d}.png")
    return root


@pytest.fixture(scope="session")
def image_tree(tmp_path_factory):
    return write_image_tree(tmp_path_factory.mktemp("data") / "tiny")

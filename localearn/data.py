"""Datasets as device-resident tensors: finding, decoding, caching and splitting them (splits.py holds the
DataSplit, its batches and augmentation).

Image folders are decoded once and cached as uint8 tensors in a cache directory, never in the data
directory, which may be read-only. A file that cannot be read is named, with what was expected of it.
"""

from __future__ import annotations

import hashlib
import json
import logging
import multiprocessing as mp
import os
import sys
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from .rundir import atomic_write
from .splits import DataError, DataSplit, iterate_batches, random_crop_flip

__all__ = [
    "DATASETS",
    "DataError",
    "DataSplit",
    "DatasetInfo",
    "iterate_batches",
    "load_dataset",
    "random_crop_flip",
    "resolve_device",
]

logger = logging.getLogger(__name__)

IMG_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp")
_GRAY_MODES = ("1", "L", "LA", "I", "I;16", "F")
_LAYOUT = "<root>/train/<class>/<image> and <root>/test/<class>/<image>"
_CACHE_VERSION = 1  # bump when the cache file format changes, so old files are not read
_POOL_MIN_FILES = 2000  # below this, starting worker processes costs more than it saves


@dataclass(frozen=True)
class DatasetInfo:
    torchvision_class: str
    mean: tuple[float, ...]
    std: tuple[float, ...]
    num_classes: int
    torchvision_dir: str  # where torchvision keeps the files under data_dir; named in error messages
    file_sizes: tuple[tuple[str, int], ...] = ()  # exact sizes of its files, where they are fixed (MNIST)


_IDX_SIZES = (  # the uncompressed idx files of MNIST and Fashion-MNIST
    ("train-images-idx3-ubyte", 47040016),
    ("train-labels-idx1-ubyte", 60008),
    ("t10k-images-idx3-ubyte", 7840016),
    ("t10k-labels-idx1-ubyte", 10008),
)
DATASETS: dict[str, DatasetInfo] = {
    "mnist": DatasetInfo("MNIST", (0.1307,), (0.3081,), 10, "MNIST/raw", _IDX_SIZES),
    "fashion_mnist": DatasetInfo("FashionMNIST", (0.2860,), (0.3530,), 10, "FashionMNIST/raw", _IDX_SIZES),
    "cifar10": DatasetInfo(
        "CIFAR10", (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616), 10, "cifar-10-batches-py"
    ),
    "cifar100": DatasetInfo(
        "CIFAR100", (0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762), 100, "cifar-100-python"
    ),
}


def _valid_devices() -> str:
    names = ["auto", "cpu"]
    if torch.cuda.is_available():
        names += ["cuda"] + [f"cuda:{i}" for i in range(torch.cuda.device_count())]
    if torch.backends.mps.is_available():
        names.append("mps")
    return ", ".join(names)


def resolve_device(device: str | torch.device) -> torch.device:
    """'auto' -> cuda if available else cpu; otherwise check that the device exists on this machine."""
    if isinstance(device, str) and device.strip().lower() == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError) as e:
        raise DataError(f"unknown device {device!r}; valid: {_valid_devices()}") from e
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise DataError(
                f"device {device!r} asked for but CUDA is not available on this machine; "
                f"valid: {_valid_devices()}"
            )
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise DataError(f"device {device!r} does not exist; valid: {_valid_devices()}")
    elif dev.type == "mps" and not torch.backends.mps.is_available():
        raise DataError(f"device {device!r} asked for but MPS is not available; valid: {_valid_devices()}")
    return dev


# ---------------------------------------------------------------- ImageFolder trees


def _subdirs(path: Path) -> list[str]:
    return sorted(e.name for e in os.scandir(path) if e.is_dir() and not e.name.startswith("."))


def _scan_tree(root: Path) -> tuple[list[str], dict[str, list[tuple[str, int]]], list[tuple[str, int, int]]]:
    """Classes (train folders, sorted), per split the sorted (relative file, label) list, and a stamp list
    (relative file, size, mtime) that keys the cache."""
    for split in ("train", "test"):
        if not (root / split).is_dir():
            raise DataError(f"ImageFolder tree {root}: missing folder {root / split}; expected {_LAYOUT}")
    classes = _subdirs(root / "train")
    if not classes:
        raise DataError(f"ImageFolder tree {root}: no class folders in {root / 'train'}; expected {_LAYOUT}")
    label = {c: i for i, c in enumerate(classes)}
    files: dict[str, list[tuple[str, int]]] = {}
    stamp = []
    for split in ("train", "test"):
        found = []
        for cls in _subdirs(root / split):
            if cls not in label:
                raise DataError(f"{root / split / cls}: class {cls!r} has no folder in {root / 'train'}")
            before = len(found)
            for e in sorted(os.scandir(root / split / cls), key=lambda e: e.name):
                if e.is_file() and e.name.lower().endswith(IMG_EXTENSIONS) and not e.name.startswith("."):
                    rel, st = f"{split}/{cls}/{e.name}", e.stat()
                    found.append((rel, label[cls]))
                    stamp.append((rel, st.st_size, st.st_mtime_ns))
            if len(found) == before:  # a class nothing can be learnt (or tested) from
                raise DataError(
                    f"{root / split / cls}: a class folder with no images (extensions "
                    f"{', '.join(IMG_EXTENSIONS)}); add images or remove the folder"
                )
        if not found:
            raise DataError(
                f"ImageFolder tree {root}: no images in {root / split} "
                f"(expected {root / split}/<class>/<image>, extensions {', '.join(IMG_EXTENSIONS)})"
            )
        files[split] = found
    return classes, files, stamp


def _unreadable(path: str | Path, e: Exception) -> DataError:
    """A broken image file, named with its class folder (PIL's own errors name neither)."""
    path = Path(path)
    return DataError(f"cannot read image {path} (class folder {path.parent.name!r}): {type(e).__name__}: {e}")


def _decode_chunk(paths: list[str], mode: str, size: tuple[int, int]) -> np.ndarray:
    w, h = size
    channels = 1 if mode == "L" else 3
    out = np.empty((len(paths), h, w, channels), np.uint8)
    for i, path in enumerate(paths):
        try:
            with Image.open(path) as im:
                if im.size != size:
                    raise DataError(
                        f"image {path} is {im.size[0]}x{im.size[1]} but the first image is {w}x{h}; "
                        "all images of a tree must be the same size"
                    )
                out[i] = np.asarray(im.convert(mode)).reshape(h, w, channels)
        except DataError:
            raise
        except Exception as e:  # PIL raises OSError, SyntaxError, ValueError, ... for a damaged file
            raise _unreadable(path, e) from None
    return out


def _decode_images(root: Path, paths: list[str]) -> torch.Tensor:
    """Decode all files (relative to root) to uint8 [N, C, H, W], in order."""
    modes, size = [], None
    for p in paths[:8]:
        try:
            with Image.open(root / p) as im:
                modes.append(im.mode)
                size = size or im.size
        except Exception as e:
            raise _unreadable(root / p, e) from None
    mode = "L" if all(m in _GRAY_MODES for m in modes) else "RGB"
    logger.info("decoding %d images from %s (%s, %dx%d); cached after this", len(paths), root, mode, *size)
    full = [str(root / p) for p in paths]
    try:
        workers = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        workers = os.cpu_count() or 1
    step = max(1, min(1000, len(full) // (4 * workers)))
    chunks = [full[i : i + step] for i in range(0, len(full), step)]
    decode = partial(_decode_chunk, mode=mode, size=size)
    if len(full) < _POOL_MIN_FILES or workers < 2:
        parts = [decode(c) for c in chunks]
    else:
        # fork is cheap on Linux (no re-import); workers only use PIL and numpy.
        ctx = mp.get_context("fork" if sys.platform == "linux" else None)
        with ctx.Pool(min(workers, len(chunks))) as pool:
            parts = list(pool.imap(decode, chunks))  # imap keeps order, so errors name the first bad file
    return torch.from_numpy(np.concatenate(parts)).permute(0, 3, 1, 2).contiguous()


def _write_cache(blob: dict, cache_file: Path, stale_glob: str) -> None:
    try:
        cache_file.parent.mkdir(parents=True, exist_ok=True)
        atomic_write(cache_file, lambda f: torch.save(blob, f))  # readers never see half a file
    except OSError as e:
        logger.warning("could not write cache %s (%s); images will be decoded again next time", cache_file, e)
        return
    logger.info("cached decoded images in %s", cache_file)
    for old in cache_file.parent.glob(stale_glob):  # earlier versions of the same tree: dead weight
        if old != cache_file:
            old.unlink(missing_ok=True)


def _load_image_folder(root: Path, cache_dir: Path) -> dict:
    root = root.resolve()
    classes, files, stamp = _scan_tree(root)
    path_key = hashlib.sha256(str(root).encode()).hexdigest()[:12]
    digest = hashlib.sha256(json.dumps([_CACHE_VERSION, str(root), stamp]).encode()).hexdigest()[:16]
    cache_file = cache_dir / f"imagefolder-{path_key}-{digest}.pt"
    if cache_file.is_file():
        try:
            blob = torch.load(cache_file, weights_only=True)
            logger.info("loaded %s from cache %s", root, cache_file)
            return blob
        except Exception as e:  # a damaged cache is only a lost shortcut
            logger.warning("ignoring unreadable cache %s (%s); decoding again", cache_file, e)
    n_train = len(files["train"])
    x = _decode_images(root, [rel for rel, _ in files["train"] + files["test"]])
    y = torch.tensor([lab for _, lab in files["train"] + files["test"]], dtype=torch.int64)
    blob = {"train_x": x[:n_train], "train_y": y[:n_train], "test_x": x[n_train:], "test_y": y[n_train:]}
    blob["classes"] = classes
    _write_cache(blob, cache_file, f"imagefolder-{path_key}-*.pt")
    return blob


# ---------------------------------------------------------------- named datasets


def _load_torchvision(info: DatasetInfo, data_dir: Path, download: bool) -> dict:
    import torchvision  # slow import; only needed on this path

    cls = getattr(torchvision.datasets, info.torchvision_class)
    blob: dict = {}
    for split in ("train", "test"):
        ds = cls(root=str(data_dir), train=split == "train", download=download)
        x = torch.as_tensor(ds.data)  # MNIST: [N, 28, 28] tensor; CIFAR: [N, 32, 32, 3] numpy
        blob[f"{split}_x"] = (x.unsqueeze(1) if x.ndim == 3 else x.permute(0, 3, 1, 2)).contiguous()
        blob[f"{split}_y"] = torch.as_tensor(ds.targets, dtype=torch.int64)
        blob["classes"] = list(ds.classes)
    return blob


def _load_named(name: str, info: DatasetInfo, data_dir: Path, cache_dir: Path) -> dict:
    folder = data_dir / name
    if (folder / "train").is_dir():
        blob = _load_image_folder(folder, cache_dir)
        if len(blob["classes"]) != info.num_classes:
            n = len(blob["classes"])
            logger.warning("%s has %d class folders; %s has %d", folder, n, name, info.num_classes)
        return blob
    present = data_dir / info.torchvision_dir
    if present.is_dir():  # a copy is there: read it, or say what is wrong with it; never download over it
        for file, size in info.file_sizes:
            actual = (present / file).stat().st_size if (present / file).is_file() else None
            if actual is not None and actual != size:
                raise DataError(
                    f"{present / file} has {actual} bytes, expected {size}: a truncated or damaged copy of "
                    f"{name}; replace it (or remove {present} to download it again)"
                )
        try:
            return _load_torchvision(info, data_dir, download=False)
        except Exception as e:
            raise DataError(
                f"{name} in {present} cannot be read ({type(e).__name__}: {e}); the copy is incomplete or "
                f"damaged: replace it, or remove {present} to download it again"
            ) from None
    logger.info("%s: no copy in %s; trying a download", name, present)
    try:
        return _load_torchvision(info, data_dir, download=True)
    except Exception as e:  # offline errors come in many types; all mean the same here
        raise DataError(
            f"dataset {name!r} not found, and downloading it failed ({type(e).__name__}: {e}).\n"
            f"Looked for:\n"
            f"  1. an ImageFolder tree at {folder}/train/<class>/* and {folder}/test/<class>/*\n"
            f"  2. torchvision's files under {data_dir} (expected in {data_dir / info.torchvision_dir})\n"
            f"  3. a torchvision download into {data_dir}\n"
            f"To provide the files: put them in one of those places, or point LOCALEARN_DATA (or --data-dir) "
            f"at a folder that holds them, or pass a path to an ImageFolder tree ({_LAYOUT})."
        ) from e


def load_dataset(
    name: str,
    data_dir: str | os.PathLike | None = None,
    device: str | torch.device = "cpu",
    val_fraction: float = 0.1,
    seed: int = 0,
    augment: bool = False,
    cache_dir: str | os.PathLike | None = None,
) -> tuple[DataSplit, DataSplit, DataSplit]:
    """train, val, test as normalised float tensors on `device`. Only train gets augment=True when asked.

    `name` is one of DATASETS or a path to an ImageFolder tree. val is a seeded random part of the
    training set of size round(val_fraction * N).
    """
    if not 0 <= val_fraction < 1:
        raise DataError(f"val_fraction must be in [0, 1), got {val_fraction!r}")
    dev = resolve_device(device)
    data_dir = Path(data_dir or os.environ.get("LOCALEARN_DATA") or "data").expanduser().absolute()
    cache_dir = Path(cache_dir or os.environ.get("LOCALEARN_CACHE") or "~/.cache/localearn").expanduser()

    key = name.lower().replace("-", "_")
    if key in DATASETS:
        info = DATASETS[key]
        blob, mean, std, label = _load_named(key, info, data_dir, cache_dir), info.mean, info.std, key
    elif Path(name).expanduser().is_dir():
        blob, mean, std, label = _load_image_folder(Path(name).expanduser(), cache_dir), None, None, name
    else:
        raise DataError(
            f"unknown dataset {name!r}; valid: {', '.join(DATASETS)}, "
            f"or a path to an ImageFolder tree ({_LAYOUT})"
        )

    n = len(blob["train_y"])
    n_val = round(val_fraction * n)
    if n_val >= n:
        raise DataError(f"val_fraction={val_fraction} leaves no training examples out of {n}")
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    val_idx, train_idx = perm[:n_val].sort().values, perm[n_val:].sort().values
    parts = {
        "train": (blob["train_x"][train_idx], blob["train_y"][train_idx]),
        "val": (blob["train_x"][val_idx], blob["train_y"][val_idx]),
        "test": (blob["test_x"], blob["test_y"]),
    }
    # Move uint8 (4x less to transfer), then convert on the device.
    xs = {k: x.to(dev).float().div_(255) for k, (x, _) in parts.items()}
    channels = xs["train"].shape[1]
    if mean is None:
        std_t, mean_t = torch.std_mean(xs["train"], dim=(0, 2, 3), correction=0)
        std_t = torch.where(std_t > 0, std_t, torch.ones_like(std_t))  # a constant channel stays finite
        logger.info("%s: per-channel mean %s, std %s (training part)", label, mean_t.tolist(), std_t.tolist())
    else:
        if len(mean) != channels:
            raise DataError(f"{label}: images have {channels} channels but its constants have {len(mean)}")
        mean_t, std_t = torch.tensor(mean, device=dev), torch.tensor(std, device=dev)
    for x in xs.values():
        x.sub_(mean_t.view(1, -1, 1, 1)).div_(std_t.view(1, -1, 1, 1))

    classes = list(blob["classes"])
    train, val, test = (
        DataSplit(xs[k], parts[k][1].to(dev), classes, label, augment=augment and k == "train")
        for k in ("train", "val", "test")
    )
    return train, val, test

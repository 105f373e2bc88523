"""MNIST and Fashion-MNIST, read from the official IDX files.

Files (gzip or already uncompressed, found as described in ``cnnkit.data.locate``):
``train-images-idx3-ubyte.gz``, ``train-labels-idx1-ubyte.gz`` (60000 samples) and
``t10k-images-idx3-ubyte.gz``, ``t10k-labels-idx1-ubyte.gz`` (10000). A download checks the MD5
published by the dataset authors (the same list torchvision uses); local files are only checked
for structure (IDX magic, sizes, label range), since repackaged copies differ in gzip bytes.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from .dataset import Dataset
from .download import download_file
from .errors import DataFormatError
from .idx import read_idx
from .resolve import find_file, resolve_dataset


class _IDXDataset(Dataset):
    NAME = ""
    TITLE = ""
    BASE_URL = ""
    MD5: dict[str, str] = {}
    CLASSES: list[str] = []
    HINT = ""

    def __init__(self, root=None, train: bool = True, download: bool = True, transform=None):
        self.train = bool(train)
        self.split = "train" if self.train else "test"
        images_file, labels_file = self.files_for(self.train)
        needed = [images_file, labels_file]
        self.root = resolve_dataset(
            self.NAME, f"{self.TITLE} ({self.split} split)",
            lambda folder: self.is_complete(folder, self.train),
            root=root, download=download, download_into=self._download_into(needed),
            urls=[self.BASE_URL + f for f in needed], needed=needed, hint=self.HINT)
        images_path, labels_path = find_file(self.root, images_file), find_file(self.root, labels_file)
        images = read_idx(images_path, "images")
        labels = read_idx(labels_path, "labels")
        if len(images) != len(labels):
            raise DataFormatError(f"{images_path.name} has {len(images)} images but "
                                  f"{labels_path.name} has {len(labels)} labels (in {self.root})")
        if labels.size and labels.max() >= len(self.CLASSES):
            raise DataFormatError(f"{labels_path.name}: label {int(labels.max())} out of range "
                                  f"0..{len(self.CLASSES) - 1} for {self.TITLE}")
        self.data: np.ndarray = images
        self.targets: np.ndarray = labels.astype(np.int64)
        self.classes = list(self.CLASSES)
        self.name = self.NAME
        self.transform = transform

    @staticmethod
    def files_for(train: bool) -> tuple[str, str]:
        prefix = "train" if train else "t10k"
        return f"{prefix}-images-idx3-ubyte.gz", f"{prefix}-labels-idx1-ubyte.gz"

    @classmethod
    def is_complete(cls, folder: Path, train: bool) -> bool:
        """True when ``folder`` holds both files of the split (gzip or uncompressed)."""
        return all(find_file(folder, f) is not None for f in cls.files_for(train))

    def _download_into(self, needed: list[str]):
        def run(folder: Path) -> None:
            for f in needed:
                if find_file(folder, f) is None:
                    download_file(self.BASE_URL + f, folder / f, md5=self.MD5[f])
        return run


class FashionMNIST(_IDXDataset):
    """Zalando's Fashion-MNIST: 28x28 grayscale clothing images, 10 classes.

    Args:
        root: folder to look in first (``root/fashion-mnist`` or ``root`` itself).
        train: the 60000-image training split, else the 10000-image test split.
        download: fetch the files into ``~/.cache/cnnkit/fashion-mnist`` when not found.
        transform: optional batch transform applied by ``get_batch`` / ``ds[i]``.

    Attributes:
        data: uint8 ``(N, 28, 28)``; targets: int64 ``(N,)``; classes: 10 names; root: the folder used.

    Shape:
        ``ds[i]`` -> ``(x float32 (1, 28, 28) in [0, 1], label int)``.
    """

    NAME = "fashion-mnist"
    TITLE = "Fashion-MNIST"
    BASE_URL = "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/"
    MD5 = {
        "train-images-idx3-ubyte.gz": "8d4fb7e6c68d591d4c3dfef9ec88bf0d",
        "train-labels-idx1-ubyte.gz": "25c81989df183df01b3e8a0aad5dffbe",
        "t10k-images-idx3-ubyte.gz": "bef4ecab320f06d8554ea6380940ec79",
        "t10k-labels-idx1-ubyte.gz": "bb300cfdad3c16e7a12a480ee83cd310",
    }
    CLASSES = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
               "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot"]
    HINT = "`apt-get install dataset-fashion-mnist` (installs /usr/share/datasets/fashion-mnist)"


class MNIST(_IDXDataset):
    """LeCun's MNIST handwritten digits: 28x28 grayscale, 10 classes ``"0"``..``"9"``.

    Args:
        root: folder to look in first (``root/mnist`` or ``root`` itself).
        train: the 60000-image training split, else the 10000-image test split.
        download: fetch the files into ``~/.cache/cnnkit/mnist`` (ossci-datasets S3 mirror).
        transform: optional batch transform.

    Attributes:
        data: uint8 ``(N, 28, 28)``; targets: int64 ``(N,)``; classes; root.

    Shape:
        ``ds[i]`` -> ``(x float32 (1, 28, 28) in [0, 1], label int)``.
    """

    NAME = "mnist"
    TITLE = "MNIST"
    BASE_URL = "https://ossci-datasets.s3.amazonaws.com/mnist/"
    MD5 = {
        "train-images-idx3-ubyte.gz": "f68b3c2dcbeaaa9fbdd348bbdeb94873",
        "train-labels-idx1-ubyte.gz": "d53e105ee54ea40749a09fcbcd1e9432",
        "t10k-images-idx3-ubyte.gz": "9fb629c4189551a2d022fa330f9573f3",
        "t10k-labels-idx1-ubyte.gz": "ec29112dd5afa0611ce80d1b7f02629c",
    }
    CLASSES = [str(d) for d in range(10)]

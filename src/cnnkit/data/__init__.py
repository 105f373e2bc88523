"""cnnkit.data: datasets, DataLoader and batch transforms.

Datasets keep whole uint8 arrays (``data``: ``(N, H, W)`` grayscale or ``(N, H, W, 3)`` colour;
``targets``: int64; ``classes``; ``name``) and ``ds[i]`` returns ``(x float32 (C, H, W) in [0, 1],
label)``. ``DataLoader`` builds batches ``(x float32 (N, C, H, W), y int64 (N,))`` by fancy
indexing. Built-in datasets are looked for in the ``root`` argument, ``$CNNKIT_DATA``,
``~/.cache/cnnkit/<name>`` and ``/usr/share/datasets/<name>``, then downloaded (checksummed).
``cnnkit.data.transforms`` holds the vectorised augmentations.

Names are imported on first use (PEP 562).
"""

from .._lazy import lazy_exports

_EXPORTS = {
    "Dataset": "dataset", "ArrayDataset": "dataset", "Subset": "dataset", "random_split": "dataset",
    "FashionMNIST": "mnist", "MNIST": "mnist", "CIFAR10": "cifar",
    "ImageFolder": "image_folder", "DataLoader": "loader",
    "read_idx": "idx", "write_idx": "idx",
    "find_datasets": "catalog", "datasets_report": "catalog",
    "DataFormatError": "errors", "DatasetNotFoundError": "errors", "DownloadError": "errors",
    "Compose": "transforms", "Normalize": "transforms", "RandomCrop": "transforms",
    "RandomHorizontalFlip": "transforms", "RandomVerticalFlip": "transforms",
    "GaussianNoise": "transforms", "Resize": "transforms", "CenterCrop": "transforms",
    "RandomErasing": "transforms",
}
_SUBMODULES = {"transforms", "dataset", "mnist", "cifar", "image_folder", "loader", "idx",
               "locate", "download", "resolve", "catalog", "errors"}

__all__ = [*_EXPORTS, "transforms"]


__getattr__, __dir__ = lazy_exports(__name__, globals(), _EXPORTS, _SUBMODULES)

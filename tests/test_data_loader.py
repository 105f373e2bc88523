"""DataLoader, ArrayDataset, Subset and random_split."""

import json

import numpy as np
import pytest

import cnnkit
from cnnkit.data import ArrayDataset, DataLoader, Subset, random_split


def make_ds(n=10, hwc=False, transform=None):
    rng = np.random.default_rng(0)
    shape = (n, 4, 3, 3) if hwc else (n, 4, 3)
    return ArrayDataset(rng.integers(0, 256, size=shape, dtype=np.uint8), np.arange(n) % 3,
                        transform=transform)


def labels_of(loader):
    return np.concatenate([y for _, y in loader])


def test_batches_shapes_dtypes_values_in_order():
    ds = make_ds(10)
    loader = DataLoader(ds, batch_size=4)
    batches = list(loader)
    assert len(loader) == 3 and len(batches) == 3
    assert [x.shape for x, _ in batches] == [(4, 1, 4, 3), (4, 1, 4, 3), (2, 1, 4, 3)]
    for x, y in batches:
        assert x.dtype == np.float32 and y.dtype == np.int64
    x0, y0 = batches[0]
    np.testing.assert_array_equal(x0[:, 0], ds.data[:4].astype(np.float32) / np.float32(255))
    np.testing.assert_array_equal(labels_of(loader), ds.targets)


def test_colour_images_become_nchw():
    ds = make_ds(5, hwc=True)
    x, _ = next(iter(DataLoader(ds, batch_size=5)))
    assert x.shape == (5, 3, 4, 3)
    np.testing.assert_array_equal(x, ds.data.transpose(0, 3, 1, 2) / np.float32(255))


def test_drop_last():
    loader = DataLoader(make_ds(10), batch_size=4, drop_last=True)
    assert len(loader) == 2 and [len(y) for _, y in loader] == [4, 4]
    assert len(DataLoader(make_ds(8), batch_size=4, drop_last=True)) == 2
    assert len(DataLoader(make_ds(3), batch_size=4, drop_last=True)) == 0


def test_shuffle_is_a_permutation_and_reproducible_with_seed():
    ds = make_ds(20)
    ds.targets = np.arange(20)  # make labels identify samples
    a = DataLoader(ds, batch_size=6, shuffle=True, seed=123)
    b = DataLoader(ds, batch_size=6, shuffle=True, seed=123)
    ea1, ea2 = labels_of(a), labels_of(a)
    assert sorted(ea1) == list(range(20)) and sorted(ea2) == list(range(20))
    assert not np.array_equal(ea1, np.arange(20))
    assert not np.array_equal(ea1, ea2)  # a new order each pass
    np.testing.assert_array_equal(labels_of(b), ea1)
    np.testing.assert_array_equal(labels_of(b), ea2)
    assert not np.array_equal(labels_of(DataLoader(ds, batch_size=6, shuffle=True, seed=124)), ea1)


def test_shuffle_with_global_generator():
    ds = make_ds(20)
    ds.targets = np.arange(20)
    cnnkit.manual_seed(7)
    first = labels_of(DataLoader(ds, batch_size=5, shuffle=True))
    cnnkit.manual_seed(7)
    np.testing.assert_array_equal(labels_of(DataLoader(ds, batch_size=5, shuffle=True)), first)


def test_state_dict_resumes_the_same_order():
    ds = make_ds(20)
    ds.targets = np.arange(20)
    full = DataLoader(ds, batch_size=6, shuffle=True, seed=5)
    epochs = [labels_of(full) for _ in range(3)]
    run = DataLoader(ds, batch_size=6, shuffle=True, seed=5)
    labels_of(run)
    state = json.loads(json.dumps(run.state_dict()))  # must survive JSON (checkpoint metadata)
    assert state["epochs_started"] == 1
    resumed = DataLoader(ds, batch_size=6, shuffle=True, seed=999)
    resumed.load_state_dict(state)
    np.testing.assert_array_equal(labels_of(resumed), epochs[1])
    np.testing.assert_array_equal(labels_of(resumed), epochs[2])
    assert resumed.epochs_started == 3


def test_loader_transform_after_dataset_transform():
    ds = make_ds(6, transform=lambda x: x + 1)
    loader = DataLoader(ds, batch_size=3, transform=lambda x: x * 2)
    x, _ = next(iter(loader))
    np.testing.assert_allclose(x[:, 0], (ds.data[:3] / np.float32(255) + 1) * 2, rtol=1e-6)


def test_generic_dataset_without_arrays():
    class Squares:
        def __len__(self):
            return 5

        def __getitem__(self, i):
            return np.full((1, 2, 2), i, np.float32), i * i

    x, y = next(iter(DataLoader(Squares(), batch_size=5)))
    assert x.shape == (5, 1, 2, 2) and x.dtype == np.float32
    np.testing.assert_array_equal(y, [0, 1, 4, 9, 16])
    assert y.dtype == np.int64


def test_bad_arguments():
    with pytest.raises(ValueError, match="batch_size must be a positive int, got 0"):
        DataLoader(make_ds(), batch_size=0)
    with pytest.raises(TypeError, match="transform must be callable"):
        DataLoader(make_ds(), transform="flip")


# --- ArrayDataset ----------------------------------------------------------------------------

def test_array_dataset_float_input_and_items():
    x = np.random.default_rng(0).standard_normal((4, 2, 3, 3))
    ds = ArrayDataset(x, [1, 0, 1, 2], classes=["a", "b", "c"])
    xi, yi = ds[3]
    assert xi.dtype == np.float32 and xi.shape == (2, 3, 3) and yi == 2
    np.testing.assert_array_equal(xi, x[3].astype(np.float32))
    assert ds.classes == ["a", "b", "c"] and len(ds) == 4
    assert ArrayDataset(x, [0, 4, 1, 1]).classes == ["0", "1", "2", "3", "4"]


def test_array_dataset_errors():
    with pytest.raises(ValueError, match="differ in length: 3 images, 2 targets"):
        ArrayDataset(np.zeros((3, 2, 2), np.uint8), [0, 1])
    with pytest.raises(ValueError, match=r"uint8 images must be .* got shape \(3, 3, 8, 8\)"):
        ArrayDataset(np.zeros((3, 3, 8, 8), np.uint8), [0, 1, 2])
    with pytest.raises(ValueError, match="targets must be a 1-D integer array"):
        ArrayDataset(np.zeros((2, 2, 2), np.uint8), [0.5, 1.0])
    ds = make_ds(3)
    with pytest.raises(IndexError, match="index 3 out of range for 3 samples"):
        ds[3]
    with pytest.raises(TypeError, match="index must be an int"):
        ds[1:2]
    assert ds[-1][1] == ds.targets[-1]


# --- Subset / random_split ---------------------------------------------------------------------

def test_subset_views_parent():
    ds = make_ds(10)
    sub = Subset(ds, [7, 2, 5])
    assert len(sub) == 3 and sub.classes == ds.classes and sub.name == ds.name
    np.testing.assert_array_equal(sub.targets, ds.targets[[7, 2, 5]])
    np.testing.assert_array_equal(sub.data, ds.data[[7, 2, 5]])
    x, y = sub[1]
    np.testing.assert_array_equal(x, ds[2][0])
    xs, ys = next(iter(DataLoader(sub, batch_size=3)))
    np.testing.assert_array_equal(ys, ds.targets[[7, 2, 5]])
    with pytest.raises(IndexError):
        Subset(ds, [10])


def test_random_split_lengths_and_fractions():
    ds = make_ds(10)
    a, b = random_split(ds, [7, 3], seed=0)
    assert len(a) == 7 and len(b) == 3
    assert sorted(np.concatenate([a.indices, b.indices])) == list(range(10))
    a2, _ = random_split(ds, [7, 3], seed=0)
    np.testing.assert_array_equal(a.indices, a2.indices)
    parts = random_split(ds, [0.5, 0.3, 0.2], seed=1)
    assert [len(p) for p in parts] == [5, 3, 2]
    parts = random_split(make_ds(11), [0.5, 0.5], seed=1)  # remainder goes to the first split
    assert [len(p) for p in parts] == [6, 5]
    with pytest.raises(ValueError, match="sum to the dataset length 10"):
        random_split(ds, [5, 4])
    with pytest.raises(ValueError, match="fractions .* sum to 1"):
        random_split(ds, [0.5, 0.4])


def test_transform_on_one_split_only():
    ds = make_ds(10)
    train, val = random_split(ds, [0.8, 0.2], seed=0)
    train.transform = lambda x: x * 0
    assert next(iter(DataLoader(train, batch_size=8)))[0].max() == 0
    assert next(iter(DataLoader(val, batch_size=8)))[0].max() > 0

"""Datamodules: fixed digits split, batched device-side augmentation, file errors, ImageFolder."""
import os
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from PIL import Image

from lightning_kd.datamodules import (CIFAR10DataModule, CIFAR100DataModule, DigitsDataModule,
                         ImageFolderDataModule, SyntheticDataModule)
from lightning_kd.datamodules.base import augment, normalize


def test_digits_split_is_fixed_disjoint_and_complete():
    from sklearn.datasets import load_digits

    dm = DigitsDataModule()
    assert dm.num_classes == 10 and dm.input_shape == (1, 8, 8)  # known before setup (CLI links them)
    dm.setup()
    sizes = {k: len(v[1]) for k, v in dm.splits.items()}
    assert sizes == {"train": 1257, "val": 180, "test": 360}
    # every original image appears exactly once across the three splits
    full = torch.from_numpy(load_digits().images * (255.0 / 16.0)).round().to(torch.uint8)
    ours = torch.cat([dm.splits[k][0][:, 0] for k in ("train", "val", "test")])
    key = lambda t: sorted(bytes(row.flatten().tolist()) for row in t)  # noqa: E731
    assert key(ours) == key(full)
    again = DigitsDataModule()
    again.setup()
    assert torch.equal(again.splits["test"][0], dm.splits["test"][0])


def test_random_crop_cuts_a_window_of_the_padded_image():
    torch.manual_seed(0)
    x = torch.randint(0, 256, (16, 3, 6, 6), dtype=torch.uint8)
    out = augment(x, pad=2, flip=False)
    assert out.shape == x.shape and out.dtype == torch.uint8
    padded = torch.nn.functional.pad(x, (2, 2, 2, 2))
    offsets = set()
    for i in range(len(x)):
        hits = [(r, c) for r in range(5) for c in range(5) if torch.equal(out[i], padded[i, :, r:r + 6, c:c + 6])]
        assert hits, f"image {i} is not a window of its padded original"
        offsets.add(hits[0])
    assert len(offsets) > 1  # the offsets are random per image


def test_random_flip_mirrors_about_half():
    torch.manual_seed(0)
    x = torch.randint(0, 256, (400, 1, 4, 4), dtype=torch.uint8)
    out = augment(x, pad=0, flip=True)
    same = torch.tensor([torch.equal(a, b) for a, b in zip(out, x)])
    mirrored = torch.tensor([torch.equal(a, b.flip(2)) for a, b in zip(out, x)])
    assert bool((same | mirrored).all())
    assert 150 < int(mirrored.sum()) < 250


@pytest.mark.parametrize("pad, flip", [(4, True), (2, False), (0, True)])
def test_one_gather_equals_a_crop_then_a_flip_per_image(pad, flip):
    """The fused crop + flip gives the images of the two-step version, pixel for pixel, from the same draws
    (per image in Python: pad, slice the drawn window, mirror it where drawn)."""
    x = torch.randint(0, 256, (64, 3, 7, 5), dtype=torch.uint8)
    torch.manual_seed(1)
    out = augment(x, pad, flip)
    torch.manual_seed(1)
    n, _, h, w = x.shape
    top = torch.randint(0, 2 * pad + 1, (n,)) if pad else torch.zeros(n, dtype=torch.long)
    left = torch.randint(0, 2 * pad + 1, (n,)) if pad else torch.zeros(n, dtype=torch.long)
    mirrored = torch.rand(n) < 0.5 if flip else torch.zeros(n, dtype=torch.bool)
    padded = torch.nn.functional.pad(x, (pad, pad, pad, pad))
    for i in range(n):
        window = padded[i, :, top[i]:top[i] + h, left[i]:left[i] + w]
        assert torch.equal(out[i], window.flip(2) if mirrored[i] else window), i
    torch.manual_seed(1)
    augment(x, pad, flip)
    after = torch.rand(3)
    torch.manual_seed(1)
    if pad:
        torch.randint(0, 2 * pad + 1, (n,)), torch.randint(0, 2 * pad + 1, (n,))
    if flip:
        torch.rand(n)
    assert torch.equal(after, torch.rand(3))  # it draws exactly what the two steps drew


def test_normalize_formula():
    x = torch.tensor([[[[0, 255]], [[51, 102]]]], dtype=torch.uint8)
    mean, std = torch.tensor([0.5, 0.2]), torch.tensor([0.5, 0.1])
    expected = torch.tensor([[[[-1.0, 1.0]], [[0.0, 2.0]]]])
    assert torch.allclose(normalize(x, mean, std), expected)


def test_batch_transfer_augments_only_while_training():
    dm = SyntheticDataModule(num_classes=3, input_shape=(3, 8, 8), train_size=32, pad=2, flip=True)
    dm.setup()
    x, y = next(iter(dm.train_dataloader()))
    assert x.dtype == torch.uint8 and x.shape == (32, 3, 8, 8) and y.dtype == torch.long
    dm.trainer = SimpleNamespace(training=False)
    ev, _ = dm.on_after_batch_transfer((x, y), 0)
    assert torch.allclose(ev, normalize(x, dm.mean, dm.std))
    dm.trainer = SimpleNamespace(training=True)
    torch.manual_seed(1)
    tr, _ = dm.on_after_batch_transfer((x, y), 0)
    assert tr.dtype == torch.float32 and not torch.allclose(tr, ev)


def test_train_loader_drops_last_partial_batch_and_shuffles():
    dm = SyntheticDataModule(num_classes=2, input_shape=(1, 2, 2), train_size=10, val_size=20, batch_size=4)
    dm.setup()
    assert [len(b[1]) for b in dm.train_dataloader()] == [4, 4]
    assert [len(b[1]) for b in dm.val_dataloader()] == [8, 8, 4]  # eval keeps every image
    torch.manual_seed(0)
    first = torch.cat([b[1] for b in dm.train_dataloader()])
    second = torch.cat([b[1] for b in dm.train_dataloader()])
    assert not torch.equal(first, second) or not torch.equal(dm.splits["train"][1][:8], first)


@pytest.mark.parametrize("cls,folder", [(CIFAR10DataModule, "cifar-10-batches-py"), (CIFAR100DataModule, "cifar-100-python")])
def test_cifar_missing_files_name_what_is_expected(tmp_path, cls, folder):
    with pytest.raises(FileNotFoundError) as err:
        cls(root=str(tmp_path), download=False)
    message = str(err.value)
    assert folder in message and "download" in message
    assert ("data_batch_1" in message) if folder.startswith("cifar-10-") else ("'train'" in message)


def make_tree(root, classes=("cat", "dog"), per_class=3, size=5):
    rng = np.random.default_rng(0)
    for split in ("train", "test"):
        for c in classes:
            (root / split / c).mkdir(parents=True)
            for i in range(per_class):
                pixels = rng.integers(0, 256, (size, size, 3), dtype=np.uint8)
                Image.fromarray(pixels).save(root / split / c / f"{i}.png")


def test_image_folder_loads_uint8_tensors_with_sorted_classes(tmp_path):
    make_tree(tmp_path, size=4)
    dm = ImageFolderDataModule(root=str(tmp_path), image_size=4, batch_size=2, val_dir="test")
    assert dm.classes == ["cat", "dog"] and dm.num_classes == 2 and dm.input_shape == (3, 4, 4)
    dm.setup()
    x, y = dm.splits["train"]
    assert x.dtype == torch.uint8 and x.shape == (6, 3, 4, 4)
    assert y.tolist() == [0, 0, 0, 1, 1, 1]
    first = np.asarray(Image.open(tmp_path / "train" / "cat" / "0.png"))
    assert torch.equal(x[0], torch.from_numpy(first).permute(2, 0, 1))


def test_image_folder_missing_root(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        ImageFolderDataModule(root=str(tmp_path / "nope"))


def test_image_folder_rejects_stray_files(tmp_path):
    make_tree(tmp_path)
    (tmp_path / "train" / "cat" / "notes.txt").write_text("not an image")
    with pytest.raises(ValueError, match="non-image file"):
        ImageFolderDataModule(root=str(tmp_path), image_size=5).setup()


def decoded_splits(root, **kwargs):
    dm = ImageFolderDataModule(root=str(root), **{"image_size": 5, "val_dir": "test", **kwargs})
    dm.setup()
    return dm.splits


def forbid_decoding(monkeypatch):
    def fail(self, path):
        raise AssertionError(f"decoded {path} although the cache is current")
    monkeypatch.setattr(ImageFolderDataModule, "_decode", fail)


def test_image_folder_second_setup_loads_the_cache_without_decoding(tmp_path, monkeypatch):
    make_tree(tmp_path)
    first = decoded_splits(tmp_path)
    files = sorted(p.name for p in (tmp_path / "cache" / "lightning_kd").iterdir())
    assert len(files) == 2 and files[0].startswith("test-5px-") and files[1].startswith("train-5px-")
    forbid_decoding(monkeypatch)
    second = decoded_splits(tmp_path)
    for split in ("train", "val", "test"):
        assert torch.equal(second[split][0], first[split][0]) and torch.equal(second[split][1], first[split][1])
    # the cached pixels are the files' pixels, not just self-consistent
    cat0 = torch.from_numpy(np.asarray(Image.open(tmp_path / "train" / "cat" / "0.png"))).permute(2, 0, 1)
    assert torch.equal(second["train"][0][0], cat0)


@pytest.mark.parametrize("change", ["rewrite", "touch", "add", "remove"])
def test_image_folder_cache_is_invalidated_by_a_changed_file_list(tmp_path, monkeypatch, change):
    make_tree(tmp_path)
    decoded_splits(tmp_path)
    dog0 = tmp_path / "train" / "dog" / "0.png"
    new = np.full((5, 5, 3), 7, dtype=np.uint8)
    if change == "rewrite":  # same name and size (PNG of a constant image differs in size, so the mtime also counts)
        Image.fromarray(new).save(dog0)
        os.utime(dog0, ns=(10**18, 10**18))
    elif change == "touch":  # same bytes, new mtime: re-decoded (a size check alone would miss an edit)
        os.utime(dog0, ns=(10**18, 10**18))
    elif change == "add":
        Image.fromarray(new).save(tmp_path / "train" / "dog" / "9.png")
    else:
        dog0.unlink()
    calls = []
    original = ImageFolderDataModule._decode
    monkeypatch.setattr(ImageFolderDataModule, "_decode", lambda self, p: calls.append(p.name) or original(self, p))
    x, y = decoded_splits(tmp_path)["train"]
    assert len(calls) == {"rewrite": 6, "touch": 6, "add": 7, "remove": 5}[change]  # the train split only; test is cached
    assert y.tolist() == {"rewrite": [0, 0, 0, 1, 1, 1], "touch": [0, 0, 0, 1, 1, 1], "add": [0, 0, 0, 1, 1, 1, 1], "remove": [0, 0, 0, 1, 1]}[change]
    if change != "remove":
        assert bool((x[3] == 7).all()) == (change == "rewrite") and bool((x[-1] == 7).all()) == (change == "add")
    forbid_decoding(monkeypatch)  # and the rewritten cache is current again
    assert torch.equal(decoded_splits(tmp_path)["train"][0], x)


def test_image_folder_cache_sees_a_file_replaced_with_the_same_size_and_mtime(tmp_path, monkeypatch):
    make_tree(tmp_path)
    dog0 = tmp_path / "train" / "dog" / "0.png"
    rng = np.random.default_rng(1)
    # Uncompressed PNGs: the byte size depends on the image's dimensions only.
    Image.fromarray(rng.integers(0, 256, (5, 5, 3), dtype=np.uint8)).save(dog0, compress_level=0)
    decoded_splits(tmp_path)
    before = dog0.stat()
    Image.fromarray(np.full((5, 5, 3), 7, dtype=np.uint8)).save(dog0, compress_level=0)
    os.utime(dog0, ns=(before.st_atime_ns, before.st_mtime_ns))  # as a copy tool that keeps times would
    after = dog0.stat()
    assert (after.st_size, after.st_mtime_ns) == (before.st_size, before.st_mtime_ns)
    x, _ = decoded_splits(tmp_path)["train"]
    assert bool((x[3] == 7).all()), "the stale decoded image was served"


def test_image_folder_scales_16_bit_images_to_8_bits(tmp_path):
    make_tree(tmp_path)
    values = np.array([0, 257, 32768, 40000, 65535] * 5, dtype=np.uint16).reshape(5, 5)
    Image.fromarray(values).save(tmp_path / "train" / "dog" / "0.png")  # a 16-bit greyscale PNG
    assert Image.open(tmp_path / "train" / "dog" / "0.png").mode.startswith("I")
    x, _ = decoded_splits(tmp_path)["train"]
    expected = torch.from_numpy(np.rint(values * 255.0 / 65535).astype(np.uint8))
    assert all(torch.equal(x[3][c], expected) for c in range(3))  # grey: the same in R, G and B
    assert x[3].max() == 255 and x[3][0, 0, 2] == 128  # 65535 -> 255, 32768 -> 128 (not saturated to white)


def test_image_folder_scales_float_images_from_0_1_and_refuses_other_ranges(tmp_path):
    make_tree(tmp_path)
    values = np.array([0.0, 0.25, 0.5, 0.998, 1.0] * 5, dtype=np.float32).reshape(5, 5)
    Image.fromarray(values).save(tmp_path / "train" / "dog" / "0.tif")  # a 32-bit float TIFF
    (tmp_path / "train" / "dog" / "0.png").unlink()
    assert Image.open(tmp_path / "train" / "dog" / "0.tif").mode == "F"
    x, _ = decoded_splits(tmp_path)["train"]
    expected = torch.tensor([0, 64, 128, 254, 255] * 5, dtype=torch.uint8).reshape(5, 5)  # round(255 v) by hand
    assert all(torch.equal(x[3][c], expected) for c in range(3))  # PIL's own conversion gave 0 and 1: black
    Image.fromarray(values * 2).save(tmp_path / "train" / "dog" / "0.tif")
    with pytest.raises(ValueError, match=r"0.tif': it is a 32-bit float image with values in \[0, 2\]"):
        decoded_splits(tmp_path)


def test_image_folder_cache_is_keyed_on_the_image_size(tmp_path, monkeypatch):
    make_tree(tmp_path)
    decoded_splits(tmp_path)
    forbid_decoding(monkeypatch)
    with pytest.raises(AssertionError, match="although the cache is current"):
        ImageFolderDataModule(root=str(tmp_path), image_size=3).setup()


@pytest.mark.parametrize("damage", ["garbage", "truncated", "wrong_shape"])
def test_image_folder_corrupt_cache_warns_and_is_rewritten(tmp_path, monkeypatch, damage):
    make_tree(tmp_path)
    first = decoded_splits(tmp_path)
    cache = next((tmp_path / "cache" / "lightning_kd").glob("train-*.pt"))
    if damage == "garbage":
        cache.write_bytes(b"not a torch file")
    elif damage == "truncated":
        cache.write_bytes(cache.read_bytes()[:200])
    else:  # readable, right fingerprint, wrong tensors: must not be trusted
        entry = torch.load(cache, weights_only=True)
        entry["images"] = entry["images"][:, :, :3]
        torch.save(entry, cache)
    with pytest.warns(UserWarning, match="ignoring unreadable decode cache"):
        again = decoded_splits(tmp_path)
    assert torch.equal(again["train"][0], first["train"][0])
    forbid_decoding(monkeypatch)
    assert torch.equal(decoded_splits(tmp_path)["train"][0], first["train"][0])
    assert [p.name for p in cache.parent.iterdir() if p.suffix == ".tmp"] == []  # no leftover temporary files


def test_image_folder_cache_false_writes_nothing(tmp_path):
    make_tree(tmp_path)
    before = sorted(tmp_path.rglob("*"))
    decoded_splits(tmp_path, cache=False, cache_dir=str(tmp_path / "elsewhere"))
    assert sorted(tmp_path.rglob("*")) == before


def test_image_folder_cache_dir_option_and_the_default_never_writes_into_the_dataset(tmp_path):
    make_tree(tmp_path / "data")
    decoded_splits(tmp_path / "data", cache_dir=str(tmp_path / "mine"))
    assert len(list((tmp_path / "mine").glob("*.pt"))) == 2
    before = sorted(p.relative_to(tmp_path / "data") for p in (tmp_path / "data").rglob("*"))
    decoded_splits(tmp_path / "data")
    assert len(list((tmp_path / "cache" / "lightning_kd").glob("*.pt"))) == 2  # $XDG_CACHE_HOME/lightning_kd
    assert sorted(p.relative_to(tmp_path / "data") for p in (tmp_path / "data").rglob("*")) == before


def test_image_folder_defaults_for_your_own_data_hold_out_validation_from_train(tmp_path):
    make_tree(tmp_path, per_class=10)
    dm = ImageFolderDataModule(root=str(tmp_path))
    assert dm.input_shape == (3, 5, 5) and dm.pad == 0 and not dm.flip  # the images' own size, no augmentation
    dm.setup()
    (tx, ty), (vx, vy), (sx, _) = dm.splits["train"], dm.splits["val"], dm.splits["test"]
    assert torch.bincount(vy).tolist() == [1, 1] and torch.bincount(ty).tolist() == [9, 9]  # 10% of each class
    full = decoded_splits(tmp_path, val_dir="test")["train"][0]
    rows = {tuple(img.flatten().tolist()) for img in full}
    seen_train, seen_val = ({tuple(img.flatten().tolist()) for img in x} for x in (tx, vx))
    assert seen_train | seen_val == rows and not seen_train & seen_val  # a partition of train
    assert len(sx) == 20  # the test folder stays the test split
    again = ImageFolderDataModule(root=str(tmp_path))
    again.setup()
    assert torch.equal(again.splits["val"][0], vx)  # seeded (split_seed)
    other = ImageFolderDataModule(root=str(tmp_path), split_seed=1)
    other.setup()
    assert not torch.equal(other.splits["val"][0], vx)
    with pytest.raises(ValueError, match="val_fraction must be in"):
        ImageFolderDataModule(root=str(tmp_path), val_fraction=1.0)


def test_image_folder_keeps_greyscale_as_one_channel(tmp_path):
    rng = np.random.default_rng(0)
    for split in ("train", "test"):
        for c in ("a", "b"):
            (tmp_path / split / c).mkdir(parents=True)
            for i in range(3):
                Image.fromarray(rng.integers(0, 256, (6, 6), dtype=np.uint8), mode="L").save(tmp_path / split / c / f"{i}.png")
    dm = ImageFolderDataModule(root=str(tmp_path), val_dir="test")
    assert dm.input_shape == (1, 6, 6)
    dm.setup()
    first = np.asarray(Image.open(tmp_path / "train" / "a" / "0.png"))
    assert torch.equal(dm.splits["train"][0][0, 0], torch.from_numpy(first))
    rgb = ImageFolderDataModule(root=str(tmp_path), val_dir="test", channels=3, cache=False)
    rgb.setup()
    assert rgb.splits["train"][0].shape[1:] == (3, 6, 6)


def test_image_folder_prepare_data_decodes_once_and_setup_reads_the_cache(tmp_path, monkeypatch):
    make_tree(tmp_path)
    ImageFolderDataModule(root=str(tmp_path)).prepare_data()  # what one process per node runs under DDP
    forbid_decoding(monkeypatch)
    dm = ImageFolderDataModule(root=str(tmp_path))
    dm.setup()  # every rank
    assert len(dm.splits["train"][1]) + len(dm.splits["val"][1]) == 6


def test_train_per_class_keeps_the_first_images_of_every_class_and_leaves_val_and_test():
    full, small = DigitsDataModule(), DigitsDataModule(train_per_class=20)
    full.setup(), small.setup()
    (x, y), (fx, fy) = small.splits["train"], full.splits["train"]
    assert torch.bincount(y).tolist() == [20] * 10
    expected = torch.cat([(fy == c).nonzero().flatten()[:20] for c in range(10)]).sort().values
    assert torch.equal(x, fx[expected]) and torch.equal(y, fy[expected])  # the first 20 of each, in split order
    for split in ("val", "test"):
        assert torch.equal(small.splits[split][0], full.splits[split][0])
    with pytest.raises(ValueError, match=r"train_per_class=500, but class \d has only \d+ training images"):
        DigitsDataModule(train_per_class=500).setup()
    with pytest.raises(ValueError, match="train_per_class must be >= 1"):
        DigitsDataModule(train_per_class=0)


def test_a_ddp_checkpoint_written_mid_epoch_is_refused_when_a_fit_resumes_from_it_only():
    """Its position in the epoch cannot be restored under DDP; testing, validating or predicting it needs none."""
    from pytorch_lightning.trainer.states import TrainerFn

    data = DigitsDataModule()
    for world, last_batch, fn, refused in [(2, False, "fit", True), (2, False, "test", False),
                                           (2, False, "predict", False), (2, True, "fit", False), (1, False, "fit", False)]:
        data.trainer = SimpleNamespace(world_size=world, is_last_batch=last_batch, state=SimpleNamespace(fn=TrainerFn(fn)))
        state = data.state_dict()
        if refused:
            with pytest.raises(ValueError, match="middle of an epoch of a multi-process.*epoch end"):
                data.load_state_dict(state)
        else:
            data.load_state_dict(state)

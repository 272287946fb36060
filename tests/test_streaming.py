"""Streamed shards (litdata): conversion, the loaders, resume mid-epoch, 2-process DDP sharding, bad input.

One small JPEG tree (4 classes, 128 train and 32 val images of 40x48 px, random pixels) is converted
once per module. Also a script: ``python tests/test_streaming.py SHARDS OUT MODE`` fits one epoch on 2
processes (gloo, CPU): MODE ``ddp`` a supervised network, MODE ``peer_parallel`` two DML peers, one per
process, with random crops drawn in 2 loader workers; each rank saves the sample indices it trained on
(and, peer-parallel, the images).
"""
from __future__ import annotations

import io
import json
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import pytorch_lightning as pl
import torch
from PIL import Image
from pytorch_lightning.callbacks import ModelCheckpoint
from pytorch_lightning.trainer.states import TrainerFn

from helpers import run_ddp_script, trainer as quick_trainer
import lightning_kd.tools.shards as converter
from lightning_kd.datamodules import StreamingImageDataModule
from lightning_kd.datamodules.streaming import litdata
from lightning_kd.tools.shards import convert_tree
from lightning_kd.methods import DML, Supervised

litdata()  # fails here, naming the install, where litdata is missing
CLASSES, TRAIN_PER_CLASS, VAL_PER_CLASS, HEIGHT, WIDTH = 4, 32, 8, 40, 48
SMALL = dict(image_size=32, resize=40, num_workers=0)  # 40x48 images: resize keeps them, crops 32x32


def make_tree(root: Path) -> None:
    rng = np.random.default_rng(0)
    for split, count in (("train", TRAIN_PER_CLASS), ("val", VAL_PER_CLASS)):
        for c in range(CLASSES):
            folder = root / split / f"class{c}"
            folder.mkdir(parents=True)
            for i in range(count):
                pixels = rng.integers(0, 256, (HEIGHT, WIDTH, 3), dtype=np.uint8)
                Image.fromarray(pixels).save(folder / f"{i:03d}.jpg", quality=90)


def source_files(split_dir: Path) -> list[Path]:
    """The split's files in the order of their sample indices: classes sorted, then files sorted."""
    return [f for c in sorted(split_dir.iterdir()) for f in sorted(c.iterdir())]


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    base = tmp_path_factory.mktemp("streaming")
    make_tree(base / "tree")
    convert_tree(str(base / "tree"), str(base / "shards"), num_workers=1)
    return base


def decoded(data: bytes) -> np.ndarray:
    with Image.open(io.BytesIO(data)) as img:
        return np.asarray(img.convert("RGB"))


def assert_shards_hold_the_split(out: Path, split_dir: Path) -> None:
    """Every source image of the split is in the shards once, with its label and its exact pixels."""
    files = source_files(split_dir)
    records = list(litdata().StreamingDataset(str(out / split_dir.name)))
    assert sorted(r["index"] for r in records) == list(range(len(files)))
    assert json.loads((out / "shards.json").read_text())["splits"][split_dir.name]["count"] == len(files)
    for record in records:
        source = files[record["index"]]
        assert record["label"] == int(source.parent.name.removeprefix("class"))
        np.testing.assert_array_equal(decoded(record["image"]), np.asarray(Image.open(source).convert("RGB")))


def test_shards_hold_every_image_with_its_label_and_pixels(shards):
    meta = json.loads((shards / "shards" / "shards.json").read_text())
    assert meta["classes"] == [f"class{c}" for c in range(CLASSES)]
    for split in ("train", "val"):
        assert_shards_hold_the_split(shards / "shards", shards / "tree" / split)


class LoggedRead:
    """``read_sample`` that logs each index it reads to a file (the workers are other processes) and fails
    at ``fail_at``: an interrupted conversion."""

    def __init__(self, log: Path, fail_at=None):
        self.log, self.fail_at = log, fail_at

    def __call__(self, item):
        with open(self.log, "a") as f:
            f.write(f"{item[2]}\n")
        if item[2] == self.fail_at:
            raise RuntimeError("interrupted")
        return converter.read_sample(item)


def test_an_interrupted_conversion_resumes_from_its_finished_shards(shards, tmp_path, monkeypatch, capsys):
    out, val = tmp_path / "out", shards / "tree" / "val"
    options = dict(splits=["val"], num_workers=1, chunk_bytes="12KB")  # a shard every 2 or 3 images
    monkeypatch.setattr(converter, "read_sample", LoggedRead(tmp_path / "first.log", fail_at=25))
    with pytest.raises(RuntimeError):
        convert_tree(str(val.parent), str(out), **options)
    monkeypatch.setattr(converter, "read_sample", LoggedRead(tmp_path / "second.log"))
    convert_tree(str(val.parent), str(out), **{**options, "num_workers": 2})  # resumes with the first count
    printed = capsys.readouterr().out
    assert f"val: resuming 32 images of 4 classes into {out / 'val'} (1 workers)" in printed
    first, second = ([int(i) for i in (tmp_path / f"{run}.log").read_text().split()] for run in ("first", "second"))
    assert 0 < min(second) and max(second) == 31  # the second run read only the images after the last shard
    assert set(first) | set(second) == set(range(32))
    assert_shards_hold_the_split(out, val)


def test_evaluation_batches_are_the_center_crops_of_the_sources(shards):
    data = StreamingImageDataModule(str(shards / "shards"), batch_size=8, **SMALL)
    files = source_files(shards / "tree" / "val")
    top, left = (HEIGHT - 32) // 2, (WIDTH - 32) // 2
    seen = []
    for x, y, index in data.val_dataloader():
        assert x.dtype == torch.uint8 and x.shape[1:] == (3, 32, 32)
        for image, i in zip(x, index.tolist()):
            crop = np.asarray(Image.open(files[i]).convert("RGB"))[top:top + 32, left:left + 32]
            np.testing.assert_array_equal(image.permute(1, 2, 0).numpy(), crop)
        seen += index.tolist()
    assert sorted(seen) == list(range(len(files)))


def test_every_epoch_trains_on_each_sample_once_in_a_new_order(shards):
    data = StreamingImageDataModule(str(shards / "shards"), batch_size=16, **SMALL)
    loader = data.train_dataloader()
    epochs = [[i for _, _, index in loader for i in index.tolist()] for _ in range(2)]
    for order in epochs:
        assert sorted(order) == list(range(CLASSES * TRAIN_PER_CLASS))
    assert epochs[0] != epochs[1]


class Recorder(pl.Callback):
    """The sample indices of every training batch, and the range of the (normalized) images."""

    def __init__(self):
        self.batches, self.ranges = [], []

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        self.batches.append(batch[2].tolist())
        self.ranges.append((batch[0].min().item(), batch[0].max().item()))


def fit(shards: Path, ckpt_path=None, callbacks=(), **trainer_args) -> Recorder:
    pl.seed_everything(0)
    data = StreamingImageDataModule(str(shards / "shards"), batch_size=8, return_index=True, **SMALL)
    model = Supervised(student={"name": "small_cnn", "width": 4}, num_classes=data.num_classes,
                       input_shape=data.input_shape)
    recorder = Recorder()
    trainer = quick_trainer(shards, callbacks=[recorder, *callbacks], limit_train_batches=None, **trainer_args)
    trainer.fit(model, datamodule=data, ckpt_path=ckpt_path)
    recorder.trainer = trainer
    return recorder


def test_a_fit_resumed_mid_epoch_trains_on_exactly_the_rest_of_the_epoch(shards, tmp_path):
    whole = fit(shards, max_epochs=1)
    assert sorted(i for b in whole.batches for i in b) == list(range(CLASSES * TRAIN_PER_CLASS))
    # normalized on the device: [0, 255] became [(0 - mean) / std, (1 - mean) / std] of ImageNet's statistics
    low, high = min(r[0] for r in whole.ranges), max(r[1] for r in whole.ranges)
    assert -0.485 / 0.229 - 1e-4 <= low < -2 and 2.6 < high <= (1 - 0.406) / 0.225 + 1e-4
    # a checkpoint written during training, after batch 5 of 16 (the run then stops, as if killed, at 7)
    step5 = ModelCheckpoint(tmp_path, "step5", every_n_train_steps=5, save_top_k=1)
    stopped = fit(shards, max_steps=7, callbacks=[step5], enable_checkpointing=True)
    rest = fit(shards, ckpt_path=str(tmp_path / "step5.ckpt"), max_epochs=1)
    assert stopped.batches == whole.batches[:7]
    assert rest.batches == whole.batches[5:]


def test_a_fit_resumed_at_an_epoch_end_trains_the_next_epoch_in_its_own_order(shards, tmp_path):
    """Not the finished epoch's order again: the resumed second epoch is the uninterrupted run's second epoch."""
    whole = fit(shards, max_epochs=2)
    first = fit(shards, max_epochs=1, callbacks=[ModelCheckpoint(tmp_path, "epoch0")], enable_checkpointing=True)
    second = fit(shards, ckpt_path=str(tmp_path / "epoch0.ckpt"), max_epochs=2)
    per_epoch = len(whole.batches) // 2
    assert first.batches == whole.batches[:per_epoch]
    assert second.batches == whole.batches[per_epoch:] != whole.batches[:per_epoch]


@pytest.mark.parametrize("batch_size, num_workers", [(4, 0), (8, 1)])
def test_a_loader_resumed_with_another_batch_size_or_worker_count_yields_the_rest(shards, batch_size, num_workers):
    def loader(**options):
        return StreamingImageDataModule(str(shards / "shards"), **{**SMALL, "batch_size": 8, **options}).train_dataloader()

    first = loader()
    batches = iter(first)
    seen = [i for _ in range(3) for i in next(batches)[2].tolist()]
    resumed = loader(batch_size=batch_size, num_workers=num_workers)
    resumed.load_state_dict(first.state_dict())
    rest = [i for _, _, index in resumed for i in index.tolist()]
    assert len(rest) == CLASSES * TRAIN_PER_CLASS - 24
    assert sorted(seen + rest) == list(range(CLASSES * TRAIN_PER_CLASS))


def test_bad_input_is_refused_with_the_fix(shards, tmp_path):
    with pytest.raises(FileNotFoundError, match="no split folder.*--splits"):
        convert_tree(str(tmp_path / "missing"), str(tmp_path / "out"))
    with pytest.raises(FileNotFoundError, match="no shards.json.*tools.shards"):
        StreamingImageDataModule(str(shards / "tree"))
    with pytest.raises(ValueError, match="test split 'test' is not converted.*converted: \\['train', 'val'\\]"):
        StreamingImageDataModule(str(shards / "shards"), test_split="test")
    empty = tmp_path / "tree"
    for c in ("a", "b"):
        (empty / "train" / c).mkdir(parents=True)
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(empty / "train" / "a" / "0.png")
    with pytest.raises(ValueError, match="class folder .*b' holds no image"):
        convert_tree(str(empty), str(tmp_path / "out"), splits=["train"])
    # shards of another tree (other classes) in the output folder, and of another format
    for c in ("b", "c"):
        (empty / "train" / c).mkdir(exist_ok=True)
        (empty / "train" / c / "0.png").write_bytes((empty / "train" / "a" / "0.png").read_bytes())
    with pytest.raises(ValueError, match="shards of another tree or format.*--overwrite"):
        convert_tree(str(empty), str(shards / "shards"), splits=["train"])
    old = tmp_path / "old"
    old.mkdir()
    meta = json.loads((shards / "shards" / "shards.json").read_text())
    (old / "shards.json").write_text(json.dumps({**meta, "format": 0}))
    with pytest.raises(ValueError, match="format 0, this version reads format 1.*--overwrite"):
        StreamingImageDataModule(str(old))


def test_converting_again_skips_the_converted_splits(shards, capsys):
    meta = convert_tree(str(shards / "tree"), str(shards / "shards"), num_workers=1)
    printed = capsys.readouterr().out
    assert "train: 128 images already converted, skipped" in printed and "val: 32 images already" in printed
    assert meta == json.loads((shards / "shards" / "shards.json").read_text())


def ddp_run(shards: Path, out: Path) -> None:
    recorder = fit(shards, max_epochs=1, devices=2, strategy="ddp")
    torch.save(recorder.batches, out / f"rank{recorder.trainer.global_rank}.pt")


class ImageRecorder(Recorder):
    """Also the images of every training batch, and whether a checkpoint written then would be flagged as
    taken in the middle of a peer-parallel epoch."""

    def __init__(self):
        super().__init__()
        self.images, self.flagged = [], []

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        super().on_train_batch_start(trainer, pl_module, batch, batch_idx)
        self.images.append(batch[0].clone())
        self.flagged.append(trainer.datamodule.state_dict()["mid_epoch_peer_parallel"])


def peer_parallel_run(shards: Path, out: Path) -> None:
    """DML, one peer per process; the random resized crops are drawn in 2 workers per process, seeded as
    the CLI seeds them (``workers=True``)."""
    pl.seed_everything(0, workers=True)
    data = StreamingImageDataModule(str(shards / "shards"), batch_size=8, return_index=True,
                                    **{**SMALL, "num_workers": 2})
    model = DML(peers=[{"name": "small_cnn", "width": 4}, {"name": "small_cnn", "width": 6}],
                num_classes=data.num_classes, input_shape=data.input_shape, placement="peer_parallel")
    recorder = ImageRecorder()
    trainer = quick_trainer(shards, callbacks=[recorder], limit_train_batches=None, max_epochs=1, devices=2,
                            strategy="peer_parallel")
    trainer.fit(model, datamodule=data)
    torch.save({"indices": recorder.batches, "images": recorder.images, "flagged": recorder.flagged},
               out / f"rank{trainer.global_rank}.pt")


@pytest.mark.slow
def test_two_ddp_ranks_split_each_epoch_between_them(shards, tmp_path):
    run_script(shards, tmp_path, "ddp")
    ranks = [[i for b in torch.load(tmp_path / f"rank{r}.pt") for i in b] for r in (0, 1)]
    assert len(ranks[0]) == len(ranks[1]) == CLASSES * TRAIN_PER_CLASS // 2
    assert sorted(ranks[0] + ranks[1]) == list(range(CLASSES * TRAIN_PER_CLASS))


@pytest.mark.slow
def test_peer_parallel_ranks_of_a_data_group_stream_the_same_crops_of_the_whole_epoch(shards, tmp_path):
    """W=2, K=2: one data group, so both peers train on every sample of the epoch, in the same batches and
    with the same random crops (litdata shards by data group, not by process; workers seeded by data group)."""
    run_script(shards, tmp_path, "peer_parallel")
    ranks = [torch.load(tmp_path / f"rank{r}.pt") for r in (0, 1)]
    assert ranks[0]["indices"] == ranks[1]["indices"]
    assert sorted(i for b in ranks[0]["indices"] for i in b) == list(range(CLASSES * TRAIN_PER_CLASS))
    assert len(ranks[0]["images"]) == len(ranks[1]["images"]) == CLASSES * TRAIN_PER_CLASS // 8
    for x0, x1 in zip(ranks[0]["images"], ranks[1]["images"]):
        assert torch.equal(x0, x1), "the peers trained on different random crops of the same samples"
    for rank in ranks:  # the strategy's parts (data groups) are not its processes: flagged until the last batch
        assert rank["flagged"] == [True] * (len(rank["images"]) - 1) + [False]


def test_a_peer_parallel_checkpoint_written_mid_epoch_is_refused_on_resume_only(shards):
    """Refused when a fit resumes from it; testing, validating or predicting it reads no loader position."""
    data = StreamingImageDataModule(str(shards / "shards"), **SMALL)
    peer_parallel = {"num_replicas": 1, "rank": 0}  # 2 processes, 1 data group: the strategy's parts
    ddp = {"num_replicas": 2, "rank": 0}  # one part per process
    for sharding, last_batch, fn, refused in [(peer_parallel, False, "fit", True), (peer_parallel, False, "test", False),
                                              (peer_parallel, False, "validate", False),
                                              (peer_parallel, True, "fit", False), (ddp, False, "fit", False)]:
        data.trainer = SimpleNamespace(strategy=SimpleNamespace(distributed_sampler_kwargs=sharding), world_size=2,
                                       is_last_batch=last_batch, state=SimpleNamespace(fn=TrainerFn(fn)))
        state = data.state_dict()
        if refused:
            with pytest.raises(ValueError, match="middle of an epoch of a peer-parallel run.*epoch end"):
                data.load_state_dict(state)
        else:
            data.load_state_dict(state)


def run_script(shards: Path, out: Path, mode: str) -> None:
    subprocess.run([sys.executable, __file__, str(shards), str(out), mode], check=True, cwd=out, timeout=300)


if __name__ == "__main__":
    run = {"ddp": ddp_run, "peer_parallel": peer_parallel_run}[sys.argv[3]]
    run_ddp_script(run, Path(sys.argv[1]), Path(sys.argv[2]))

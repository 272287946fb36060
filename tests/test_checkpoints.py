"""Checkpoint files: the formats users have load strictly into the right network, files that are not
checkpoints say what they are, and writes are atomic on any filesystem, even when killed mid-write."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
import torch

from helpers import save_teacher
from lightning_kd.checkpoints import SafeCheckpointIO, load_network_weights, read_weights
from lightning_kd.models import build_network

SPEC = {"name": "small_cnn", "width": 4}


@pytest.fixture
def weights(tmp_path) -> dict[str, torch.Tensor]:
    save_teacher(tmp_path / "plain.pt", SPEC, seed=3)
    return torch.load(tmp_path / "plain.pt", weights_only=True)


def prefixed(state: dict, prefix: str) -> dict:
    return {prefix + k: v for k, v in state.items()}


FORMATS = {
    "plain state_dict": lambda s: s,
    "Lightning checkpoint of a Supervised run": lambda s: {"state_dict": prefixed(s, "student."), "epoch": 3},
    "Lightning checkpoint with an adapter beside the student": lambda s: {
        "state_dict": {**prefixed(s, "student."), "regressor.0.weight": torch.zeros(2, 2)}},
    "RepDistiller {'model': ...}": lambda s: {"model": s, "epoch": 240, "accuracy": 79.4},
    "{'net': ...}": lambda s: {"net": s, "acc": 0.9},
    "{'module': ...}": lambda s: {"module": s},
    "{'state_dict': ...} of plain keys": lambda s: {"state_dict": s},
    "DDP module. prefix": lambda s: prefixed(s, "module."),
    "torch.compile _orig_mod. prefix": lambda s: prefixed(s, "_orig_mod."),
    "both prefixes": lambda s: prefixed(s, "module._orig_mod."),
    "compiled submodules inside a wrapper": lambda s: {"model": {k.replace("stem.", "stem._orig_mod."): v
                                                                 for k, v in prefixed(s, "module.").items()}},
}


@pytest.mark.parametrize("layout", FORMATS)
def test_the_common_formats_load_the_exact_weights(layout, weights, tmp_path):
    path = tmp_path / "file.pt"
    torch.save(FORMATS[layout](weights), path)
    net = build_network(SPEC, 10, 1)
    load_network_weights(net, path, what="teacher_ckpt")
    assert all(torch.equal(net.state_dict()[k], v) for k, v in weights.items())


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_weights_holding_nan_or_inf_are_refused_where_read_and_finite_ones_load(weights, tmp_path, bad):
    """A teacher, ensemble member or route anchor that diverged (one NaN BatchNorm statistic) would teach at chance."""
    key = next(k for k in weights if k.endswith("running_var"))
    poisoned = {**weights, key: weights[key].clone().index_fill_(0, torch.tensor([1]), bad)}
    torch.save(poisoned, tmp_path / "bad.pt")
    with pytest.raises(ValueError, match=rf"teacher_ckpt '.*bad.pt' holds NaN/Inf in 1 of its {len(weights)} tensors "
                                         rf"\(e.g. \['{key}'\]\): it is the file of a run that diverged"):
        load_network_weights(build_network(SPEC, 10, 1), tmp_path / "bad.pt", what="teacher_ckpt")
    torch.save({**weights, key: weights[key] * 1e30}, tmp_path / "large.pt")  # finite, however large: read
    assert torch.equal(read_weights(tmp_path / "large.pt", weights)[key], weights[key] * 1e30)


def test_a_deeper_network_of_the_same_family_is_refused(tmp_path):
    """resnet56's state_dict holds every key of resnet20 with the same shapes, plus its extra blocks:
    a loader that ignores unexpected keys would take it silently."""
    save_teacher(tmp_path / "deep.pt", "resnet56", in_channels=3)
    shallow = build_network("resnet20", 10, 3)
    deep_keys = set(torch.load(tmp_path / "deep.pt", weights_only=True))
    assert set(shallow.state_dict()) < deep_keys  # the trap is real
    with pytest.raises(ValueError, match=r"does not fit CifarResNet: \d+ tensors are not in it \(e.g. \['layer1.3"):
        load_network_weights(shallow, tmp_path / "deep.pt")


def test_a_smaller_network_names_the_missing_keys(tmp_path):
    save_teacher(tmp_path / "shallow.pt", "resnet20", in_channels=3)
    with pytest.raises(ValueError, match=r"\d+ of its \d+ tensors are missing.*a smaller network of the same family"):
        read_weights(tmp_path / "shallow.pt", build_network("resnet56", 10, 3).state_dict())


# ----------------------------------------------------------------------------- atomic writes
def other_filesystem_folder() -> Path:
    """A folder on another filesystem than $TMPDIR: /dev/shm (a tmpfs) where that differs, else a tmpfs
    mounted for the test (needs root); skips with the reason when neither is possible."""
    tmp_device = os.stat(tempfile.gettempdir()).st_dev
    shm = Path("/dev/shm")
    if shm.is_dir() and os.access(shm, os.W_OK) and os.stat(shm).st_dev != tmp_device:
        return Path(tempfile.mkdtemp(dir=shm))
    target = Path(tempfile.mkdtemp())
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64m", "tmpfs", str(target)], capture_output=True)
    if done.returncode != 0 or os.stat(target).st_dev == tmp_device:
        pytest.skip("needs a folder on another filesystem than $TMPDIR: /dev/shm is not a separate tmpfs here "
                    f"and mounting one was not permitted ({done.stderr.decode().strip()[:80]})")
    return target


SLOW_WRITER = """
import io, sys, time, torch
from pathlib import Path
from lightning_kd.checkpoints import SafeCheckpointIO
dest, marker = Path(sys.argv[1]), Path(sys.argv[2])
real_save = torch.save
def slow_save(obj, f, *args, **kwargs):  # writes half, says so, and waits to be killed
    buffer = io.BytesIO()
    real_save(obj, buffer)
    data = buffer.getvalue()
    f.write(data[: len(data) // 2]); f.flush()
    marker.write_text(str(len(data)))
    time.sleep(120)
    f.write(data[len(data) // 2:])
torch.save = slow_save
SafeCheckpointIO().save_checkpoint({"state_dict": {"w": torch.ones(1_000_000)}, "epoch": 2}, dest)
"""


def test_a_kill_during_the_write_leaves_the_previous_checkpoint_on_another_filesystem(tmp_path):
    folder = other_filesystem_folder()
    dest = folder / "last.ckpt"
    SafeCheckpointIO().save_checkpoint({"state_dict": {"w": torch.zeros(10)}, "epoch": 1}, dest)
    before = dest.read_bytes()
    marker = tmp_path / "half_written"
    child = subprocess.Popen([sys.executable, "-c", SLOW_WRITER, str(dest), str(marker)])
    deadline = time.time() + 120
    while not marker.exists() and child.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    assert marker.exists(), "the writer never got halfway"
    child.send_signal(signal.SIGKILL)
    child.wait()
    assert dest.read_bytes() == before  # the previous checkpoint, whole
    assert SafeCheckpointIO().load_checkpoint(dest)["epoch"] == 1
    partial = list(folder.glob(".last.ckpt.*.tmp"))
    assert len(partial) == 1 and partial[0].stat().st_size < int(marker.read_text())  # written beside it, cut off


def test_writes_never_touch_tmpdir(tmp_path, monkeypatch):
    """A full or missing $TMPDIR cannot fail a save while the checkpoint folder has room."""
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path / "no_such_tmpdir"))
    dest = tmp_path / "ckpt" / "best.ckpt"
    SafeCheckpointIO().save_checkpoint({"state_dict": {"w": torch.arange(3.0)}, "epoch": 0}, dest)
    assert torch.equal(SafeCheckpointIO().load_checkpoint(dest)["state_dict"]["w"], torch.arange(3.0))
    assert sorted(p.name for p in dest.parent.iterdir()) == ["best.ckpt"]

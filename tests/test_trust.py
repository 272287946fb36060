"""Nothing named in a file runs code (lightning_kd.trust): a checkpoint whose hyper-parameters name a callable
or a class of the module ``helpers.payload`` (whose import or call writes a marker file) is read on every
path that reads a checkpoint; the marker never appears and the module is never imported. Shards that declare
another format than the converter's (pickle) are refused before litdata reads them."""
from __future__ import annotations

import json
import os
import re
import sys
from pathlib import Path

import pytest
import torch

import helpers
from helpers import DIGITS_SHAPE, MARKER_VARIABLE, ROOT, TINY_CNN, png_bytes, trainer as quick_trainer, write_shards
from lightning_kd.cli import main
from lightning_kd.datamodules import DigitsDataModule, StreamingImageDataModule
from lightning_kd.methods import KD, Supervised
from lightning_kd.models import CheckpointEnsemble, build_network
from lightning_kd.trust import UntrustedNameError, already_imported, reading

PAYLOAD = "helpers.payload"
MARKER_NET = {"name": f"{PAYLOAD}.marker_network"}
BASELINE = str(ROOT / "configs/quickstart/baseline.yaml")


@pytest.fixture(scope="module")
def good_checkpoint(tmp_path_factory) -> Path:
    """A Supervised checkpoint of small_cnn width 4 on digits, written by lightning-kd fit (one step)."""
    folder = tmp_path_factory.mktemp("good")
    main(["fit", "-c", BASELINE, "--trainer.logger=false", "--trainer.max_epochs=1", "--trainer.limit_train_batches=1",
          "--trainer.limit_val_batches=1", f"--checkpoint.dirpath={folder}", "--summary=false"])
    return folder / "last.ckpt"


@pytest.fixture
def marker(tmp_path, monkeypatch) -> Path:
    """The file helpers.payload writes when imported or called; the module starts unimported."""
    path = tmp_path / "payload_ran"
    monkeypatch.setenv(MARKER_VARIABLE, str(path))
    monkeypatch.delitem(sys.modules, PAYLOAD, raising=False)
    monkeypatch.delattr(helpers, "payload", raising=False)
    monkeypatch.chdir(tmp_path)
    return path


def crafted(good: Path, out: Path, checkpoint_keys: dict = {}, **hparams) -> str:
    """``good`` with ``hparams`` replacing its hyper-parameters (and ``checkpoint_keys`` its top-level keys)."""
    checkpoint = torch.load(good, weights_only=True)
    checkpoint["hyper_parameters"].update(hparams)
    checkpoint.update(checkpoint_keys)
    torch.save(checkpoint, out)
    return str(out)


def cli(subcommand: str, *args: str) -> list[str]:
    return [subcommand, "-c", BASELINE, "--trainer.logger=false", "--summary=false", *args]


def ensemble(*paths: str) -> str:
    return json.dumps({"name": "lightning_kd.models.CheckpointEnsemble", "checkpoints": list(paths)})


def one_line_error(args: list[str], capsys) -> str:
    """The CLI's message: exit 1 and one line (plus the traceback hint), never a traceback."""
    with pytest.raises(SystemExit) as info:
        main(args)
    err = capsys.readouterr().err.strip().splitlines()
    assert info.value.code == 1 and len(err) == 2 and err[0].startswith("lightning-kd: "), err
    return err[0]


NETWORK_PATHS = {  # every path that reads a checkpoint: what it does with the crafted file, and its error
    "cli-test": (lambda ckpt, capsys: one_line_error(cli("test", f"--ckpt_path={ckpt}"), capsys), "names the network"),
    "cli-predict": (lambda ckpt, capsys: one_line_error(cli("predict", f"--ckpt_path={ckpt}"), capsys),
                    "names the network"),
    "cli-validate": (lambda ckpt, capsys: one_line_error(cli("validate", f"--ckpt_path={ckpt}"), capsys),
                     "names the network"),
    "cli-fit-resume": (lambda ckpt, capsys: one_line_error(cli("fit", f"--ckpt_path={ckpt}"), capsys),
                       r"other settings than this one \(student.name"),
    "load_from_checkpoint": (lambda ckpt, capsys: Supervised.load_from_checkpoint(ckpt), "names the network"),
    "cli-test-ensemble-member": (lambda ckpt, capsys: one_line_error(
        cli("test", f"--model.init_args.student={ensemble(ckpt)}"), capsys), "ensemble member .* names the network"),
    "ensemble-teacher": (lambda ckpt, capsys: KD(student=TINY_CNN, input_shape=DIGITS_SHAPE, teacher={
        "name": "lightning_kd.models.CheckpointEnsemble", "checkpoints": [ckpt]}), "ensemble member .* names the network"),
    "teacher_ckpt": (lambda ckpt, capsys: KD(student=TINY_CNN, teacher=TINY_CNN, teacher_ckpt=ckpt,
                                              input_shape=DIGITS_SHAPE), None),  # reads weights only: loads
    "trainer-test-ckpt_path": (lambda ckpt, capsys: quick_trainer(limit_test_batches=1).test(
        Supervised(student=TINY_CNN, input_shape=DIGITS_SHAPE), DigitsDataModule(), ckpt_path=ckpt,
        verbose=False), None),
}


@pytest.mark.parametrize("path", list(NETWORK_PATHS))
def test_a_network_a_checkpoint_names_is_never_built_on_any_path(path, good_checkpoint, marker, tmp_path, capsys):
    ckpt = crafted(good_checkpoint, tmp_path / "crafted.ckpt", student=MARKER_NET)
    call, message = NETWORK_PATHS[path]
    try:
        text = call(ckpt, capsys)  # the CLI's one-line message
    except UntrustedNameError as err:
        text = str(err)
    if message is not None:
        assert isinstance(text, str) and re.search(message, text), text
    assert not marker.exists() and PAYLOAD not in sys.modules


def test_a_stdlib_callable_a_checkpoint_names_never_runs(good_checkpoint, marker, tmp_path):
    # logging.basicConfig(filename=..., force=True) truncates any file: the example
    spec = {"name": "logging.basicConfig", "filename": str(marker), "filemode": "w", "force": True}
    ckpt = crafted(good_checkpoint, tmp_path / "crafted.ckpt", student=spec, input_shape=(3, 8, 8))
    with pytest.raises(UntrustedNameError, match=r"names the network 'logging.basicConfig'"):
        Supervised.load_from_checkpoint(ckpt)
    assert not marker.exists()


CLASS_PATHS = {  # hyper-parameters (or checkpoint keys) naming a class or function of helpers.payload
    "method": ({"_class_path": f"{PAYLOAD}.MarkerMethod"}, {}, r"names the method 'helpers.payload.MarkerMethod'"),
    "optimizer-string": ({"optimizer": f"{PAYLOAD}.MarkerOptimizer"}, {}, r"at hyper-parameter 'optimizer'"),
    "optimizer-class_path": ({"optimizer": {"class_path": f"{PAYLOAD}.MarkerOptimizer"}}, {}, r"'optimizer'"),
    "nested-class_path": ({"student": {"name": "small_cnn", "width": {"class_path": f"{PAYLOAD}.X"}}}, {},
                          r"at hyper-parameter 'student.width'"),
    "instantiator": ({"_instantiator": f"{PAYLOAD}.instantiate"}, {}, r"names the instantiator"),
    "recorded-method": ({}, {"lightning_kd_method": f"{PAYLOAD}.MarkerMethod"},
                        r"is a checkpoint of helpers.payload.MarkerMethod, but this run trains"),
}


@pytest.mark.parametrize("case", list(CLASS_PATHS))
@pytest.mark.parametrize("reader", ["cli-test", "cli-fit-resume", "load_from_checkpoint"])
def test_a_class_path_a_checkpoint_names_is_never_imported(case, reader, good_checkpoint, marker, tmp_path, capsys):
    hparams, keys, message = CLASS_PATHS[case]
    ckpt = crafted(good_checkpoint, tmp_path / "crafted.ckpt", keys, **hparams)
    if reader == "load_from_checkpoint":
        if case == "recorded-method":  # only compared by the resume checks; the class loading it is named
            Supervised.load_from_checkpoint(ckpt)
        else:
            with pytest.raises(UntrustedNameError, match=message):
                Supervised.load_from_checkpoint(ckpt)
    else:
        text = one_line_error(cli("test" if reader == "cli-test" else "fit", f"--ckpt_path={ckpt}"), capsys)
        assert re.search(message, text), text
    assert not marker.exists() and PAYLOAD not in sys.modules


def test_a_network_the_user_names_is_built_from_a_checkpoint(good_checkpoint, marker, tmp_path, capsys):
    ckpt = crafted(good_checkpoint, tmp_path / "crafted.ckpt", student=MARKER_NET)
    loaded = Supervised.load_from_checkpoint(ckpt, student=MARKER_NET)  # named in Python
    assert marker.read_text() == "called"
    state = torch.load(ckpt, weights_only=True)["state_dict"]
    assert all(torch.equal(v, state[f"student.{k}"]) for k, v in loaded.student.state_dict().items())
    marker.unlink()
    main(cli("test", f"--model.init_args.student={json.dumps(MARKER_NET)}", f"--ckpt_path={ckpt}"))  # in the config
    assert marker.read_text() == "called"
    marker.unlink()
    members = CheckpointEnsemble([ckpt, ckpt], network=MARKER_NET, num_classes=10, in_channels=1)  # as `network`
    assert marker.exists() and len(members.members) == 2


def test_a_file_resolves_to_the_library_torchvision_and_timm_constructors_only(marker):
    with reading("the file 'x.ckpt'"):
        assert type(build_network("lightning_kd.models.resnet20", 10)).__name__ == "CifarResNet"
        assert type(build_network("torchvision.models.resnet18", 10)).__name__ == "ResNet"
        assert type(build_network({"name": "lightning_kd.models.embedding.EmbeddingNet", "backbone": "resnet20"},
                                  10)).__name__ == "EmbeddingNet"
        for spec, why in [("lightning_kd.models.build_network", "which is not a network constructor"),
                          ("torchvision.models.get_model", "which is not a network constructor"),
                          ("os.system", "names the network 'os.system'"),
                          ({"name": "resnet20", "checkpoint_path": "/tmp/evil.pkl"}, "loads another file"),
                          ({"name": "resnet20", "model_name": "hf-hub:evil/x"}, "loads another file")]:
            with pytest.raises(UntrustedNameError, match=why):
                build_network(spec, 10)
    assert already_imported("os.path.join") is os.path.join
    assert already_imported(f"{PAYLOAD}.marker_network") is None and PAYLOAD not in sys.modules
    assert not marker.exists()
    build_network(MARKER_NET, 10)  # named in code (or a config): any constructor
    assert marker.read_text() == "called"


def test_shards_of_another_format_are_refused_before_litdata_reads_them(marker, tmp_path):
    class Payload:  # pickled into the shard: unpickling it writes the marker
        def __reduce__(self):
            return exec, (f"open({str(marker)!r}, 'w').write('ran')",)

    root = Path(write_shards(tmp_path / "pickled", [Payload()] * 4))
    assert json.loads((root / "train" / "index.json").read_text())["config"]["data_format"] == ["int", "int", "pickle"]
    with pytest.raises(ValueError, match=r"declare \{'data_format': \['int', 'int', 'pickle'\]\}.*were not read"):
        StreamingImageDataModule(str(root), image_size=8, resize=8, num_workers=0)
    assert not marker.exists()
    good = write_shards(tmp_path / "good", [png_bytes()] * 4)  # the converter's format is read
    assert StreamingImageDataModule(good, image_size=8, resize=8, num_workers=0).num_classes == 2
    index = json.loads((Path(good) / "train" / "index.json").read_text())
    index["chunks"][0]["filename"] = "../elsewhere.bin"
    (Path(good) / "train" / "index.json").write_text(json.dumps(index))
    with pytest.raises(ValueError, match=r"chunk files outside the folder: \['../elsewhere.bin'\]"):
        StreamingImageDataModule(good, image_size=8, resize=8, num_workers=0)

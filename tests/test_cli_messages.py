"""What the shell shows: `lightning-kd list`, one-line parse errors with a suggestion, library errors alone."""
from __future__ import annotations

import pytest

import lightning_kd.methods as methods
from lightning_kd.cli import SHIPPED_CONFIGS, main
from lightning_kd.cli_messages import TRACEBACK_VARIABLE, raised_by_library, root_cause
from lightning_kd.models import MODELS, build_network


def run(args, capsys) -> tuple[int, str]:
    with pytest.raises(SystemExit) as info:
        main(args)
    return info.value.code, capsys.readouterr().err


def test_list_names_every_method_network_and_shipped_config(capsys):
    main(["list"])
    out = capsys.readouterr().out
    assert all(f"  {name} " in out for name in methods.__all__)
    assert ", ".join(MODELS) in out
    for folder in (p for p in SHIPPED_CONFIGS.iterdir() if p.is_dir() and not p.name.startswith("_")):
        assert f"  {folder.name}/: " + ", ".join(sorted(p.name for p in folder.glob("*.yaml"))) in out


@pytest.mark.parametrize("args, shown, hint", [
    (["--model.init_args.temprature=1.5"], "Option 'temprature' is not accepted", "Did you mean 'temperature'?"),
    (["--trainer.max_epohcs=3"], "unrecognized arguments: --trainer.max_epohcs", "Did you mean '--trainer.max_epochs'"),
    (["--model=KDD"], "KDD", "Did you mean 'KD'"),
    (["--data.init_args.batch_sise=3"], "Option 'batch_sise' is not accepted", "Did you mean 'batch_size'"),
])
def test_a_bad_command_line_is_one_line_with_the_closest_option(args, shown, hint, capsys):
    code, err = run(["fit", "-c", "configs/quickstart/kd.yaml", *args], capsys)
    first, *rest = err.strip().splitlines()
    assert code == 2 and first.startswith("lightning-kd fit: error: ") and shown in first and hint in first
    assert "usage:" not in err and "Given value" not in err and "NoneType" not in err and len(rest) == 1


def test_a_library_error_is_printed_alone_and_the_variable_brings_the_traceback(tmp_path, capsys, monkeypatch):
    args = ["fit", "-c", "configs/quickstart/kd.yaml", f"--model.init_args.teacher_ckpt={tmp_path / 'nope.ckpt'}",
            f"--checkpoint.dirpath={tmp_path / 'run'}"]
    code, err = run(args, capsys)
    assert code == 1
    assert err.splitlines() == [f"lightning-kd: FileNotFoundError: teacher_ckpt '{tmp_path / 'nope.ckpt'}' does not exist. "
                                f"Point it at a Lightning .ckpt (e.g. <checkpoint.dirpath>/best.ckpt from a Supervised "
                                f"run) or a state_dict saved with torch.save(model.state_dict(), path).",
                                f"({TRACEBACK_VARIABLE}=1 shows the traceback.)"]
    monkeypatch.setenv(TRACEBACK_VARIABLE, "1")
    with pytest.raises(Exception) as info:
        main(args)
    assert isinstance(root_cause(info.value), FileNotFoundError)


def test_only_errors_raised_in_the_library_are_shortened():
    with pytest.raises(ValueError) as ours:
        build_network("resnet9000", 10)
    assert raised_by_library(ours.value)
    with pytest.raises(ZeroDivisionError) as elsewhere:
        1 / 0
    assert not raised_by_library(elsewhere.value)  # a bug keeps its traceback


@pytest.mark.parametrize("args, shown", [(["--model.help", "KD"], "--model.temperature TEMPERATURE"),
                                         (["--data.help=ImageFolderDataModule"], "--data.val_fraction VAL_FRACTION")])
def test_class_help_takes_short_names(args, shown, capsys):
    with pytest.raises(SystemExit) as info:
        main(["fit", *args])
    assert info.value.code == 0 and shown in capsys.readouterr().out


def test_the_library_error_is_found_between_what_wraps_it_and_what_it_explains():
    with pytest.raises(ValueError) as info:
        try:
            build_network("nope_module.net", 10)  # the library's error, raised from the ImportError below it
        except ValueError as library:
            raise ValueError("Does not validate against any of the Union subtypes") from library  # as jsonargparse
    found = root_cause(info.value)
    assert isinstance(info.value.__cause__.__cause__, ModuleNotFoundError)
    assert found is info.value.__cause__ and str(found).startswith("Cannot import network 'nope_module.net'")


@pytest.mark.parametrize("args, shown", [
    (["--model.init_args.student=nope_module.net"],
     "lightning-kd: ValueError: Cannot import network 'nope_module.net': ModuleNotFoundError: No module named"),
    (["--model.init_args.optimizer=torch.optim.SDG"],
     "lightning-kd fit: error: Parser key \"model\": Problem with given class_path 'lightning_kd.methods.KD': Parser key "
     "\"optimizer\": module 'torch.optim' has no attribute 'SDG' Did you mean 'SGD'?"),
])
def test_a_union_failure_is_one_line_naming_the_error_that_matters(args, shown, tmp_path, capsys):
    code, err = run(["fit", "-c", "configs/quickstart/kd.yaml", f"--checkpoint.dirpath={tmp_path}", *args], capsys)
    lines = [line for line in err.splitlines() if not line.startswith("Seed set")]
    assert code in (1, 2) and lines[0].startswith(shown) and len(lines) == 2  # the message, then the --help hint
    assert "Subtypes" not in err and " - " not in lines[0] and "Traceback" not in err

"""A resume's settings are checked once: by the CLI for ``lightning-kd fit --ckpt_path`` (it alone sees the
command line), by the module for a fit resumed from Python (lightning_kd.resume)."""
from __future__ import annotations

import pytest

import lightning_kd.base
import lightning_kd.cli
import lightning_kd.resume
from helpers import ROOT, save_teacher
from lightning_kd.cli import make_cli


@pytest.fixture
def checks(monkeypatch) -> list[str]:
    """Who called check_resume, in order."""
    calls, real = [], lightning_kd.resume.check_resume
    for module in (lightning_kd.cli, lightning_kd.resume):
        def counted(*args, _who=module.__name__, **kwargs):
            calls.append(_who)
            return real(*args, **kwargs)
        monkeypatch.setattr(module, "check_resume", counted)
    return calls


def test_a_resume_is_checked_once_by_the_cli_or_by_the_module(tmp_path, monkeypatch, checks):
    monkeypatch.chdir(tmp_path)
    teacher = save_teacher(tmp_path / "teacher.pt", {"name": "small_cnn", "width": 64})

    def fit(*extra: str, run=True):
        return make_cli([*(["fit"] if run else []), "-c", str(ROOT / "configs/quickstart/kd.yaml"), "--trainer.logger=false",
                         "--trainer.enable_progress_bar=false", "--trainer.max_epochs=2",
                         "--trainer.limit_train_batches=2", "--trainer.limit_val_batches=1",
                         f"--model.init_args.teacher_ckpt={teacher}", f"--checkpoint.dirpath={tmp_path / 'run'}",
                         *extra], run=run)

    fit("--trainer.max_steps=2")
    assert checks == []
    last = tmp_path / "run" / "last.ckpt"
    fit(f"--ckpt_path={last}")
    assert checks == ["lightning_kd.cli"]
    checks.clear()
    built = fit(run=False)  # the tools' way: built by the CLI, resumed from Python
    built.trainer.fit(built.model, datamodule=built.datamodule, ckpt_path=last)
    assert checks == ["lightning_kd.resume"]
    # and the module's check is the policy's: another loss weight is refused there
    built = fit("--model.init_args.kd_weight=0.5", run=False)
    with pytest.raises(ValueError, match="kd_weight: 0.9 in the checkpoint, 0.5 now"):
        built.trainer.fit(built.model, datamodule=built.datamodule, ckpt_path=last)

"""The results command: schedule scaling, statistics, the markdown table and a tiny end-to-end run."""
from __future__ import annotations

import json
import math
import re
import tarfile
from pathlib import Path

import pytest

from helpers import ROOT
from lightning_kd.tools.options import prepare_data_root
from lightning_kd.tools.records import Run, network_name, resolved_sha256
from lightning_kd.tools.report import REPDISTILLER_CIFAR100, markdown_table, mean_std, summarize
from lightning_kd.tools.results import discover_configs
from lightning_kd.tools.runner import data_overrides
from lightning_kd.tools.results import main as results_main
from lightning_kd.tools.results import parse_args as results_parse_args
from lightning_kd.tools.born_again import parse_args as born_again_parse_args
import lightning_kd.configs


def test_network_name():
    assert network_name({"model": {"init_args": {"student": "resnet8x4"}}}) == "resnet8x4"
    assert network_name({"model": {"init_args": {"student": {"name": "small_cnn", "width": 4}}}}) == \
        "small_cnn(width=4)"
    peers = {"model": {"init_args": {"peers": [{"name": "small_cnn", "width": 4}, "resnet8x4"]}}}
    assert network_name(peers) == "small_cnn(width=4), peer 0 of 2"


def test_mean_std_and_delta_by_hand():
    assert mean_std([1.0, 2.0, 3.0]) == (2.0, 1.0)  # sample std: sqrt(((1)^2 + 0 + (1)^2) / 2)
    assert mean_std([5.0]) == (5.0, 0.0)
    runs = [Run("teacher", Path("t.yaml"), 0, [], 0.90, 10.0),
            Run("baseline", Path("b.yaml"), 0, [], 0.70, 4.0), Run("baseline", Path("b.yaml"), 1, [], 0.72, 6.0),
            Run("kd", Path("k.yaml"), 0, [], 0.74, 5.0), Run("kd", Path("k.yaml"), 1, [], 0.78, 7.0)]
    rows = summarize(runs)
    assert list(rows) == ["teacher", "baseline", "kd"]
    assert rows["baseline"]["mean"] == pytest.approx(71.0)
    assert rows["baseline"]["std"] == pytest.approx(math.sqrt(2.0))  # (70, 72): sqrt((1 + 1) / 1)
    assert rows["kd"]["mean"] == pytest.approx(76.0) and rows["kd"]["std"] == pytest.approx(math.sqrt(8.0))
    assert rows["kd"]["delta"] == pytest.approx(5.0)
    assert rows["baseline"]["delta"] is None and rows["teacher"]["delta"] is None
    assert rows["kd"]["wall_s"] == pytest.approx(6.0) and rows["kd"]["n"] == 2


def table_rows(text: str) -> list[list[str]]:
    lines = [line for line in text.splitlines() if line.startswith("|")]
    return [[cell.strip() for cell in line.strip("|").split("|")] for line in lines]


def test_markdown_table_is_well_formed():
    runs = [Run("baseline", Path("b.yaml"), 0, [], 0.70, 4.0), Run("kd", Path("k.yaml"), 0, [], 0.75, 5.0),
            Run("mystery", Path("m.yaml"), 0, [], 0.5, 1.0)]
    rows = table_rows(markdown_table(summarize(runs), REPDISTILLER_CIFAR100))
    header, separator, *body = rows
    assert all(len(r) == len(header) for r in rows)
    assert all(re.fullmatch(r"-{3,}", cell) for cell in separator)
    assert [r[0] for r in body] == ["student baseline", "KD", "mystery"]
    assert body[1][3] == "75.00 ± 0.00" and body[1][4] == "+5.00"
    assert body[0][-1] == "72.50" and body[1][-1] == "73.33" and body[2][-1] == "—"


def test_discover_configs_orders_and_skips():
    teacher, baseline, methods = discover_configs(ROOT / "configs" / "cifar10", skip=["*_tv_*"])
    assert teacher.name == "teacher_resnet32x4.yaml" and baseline.name == "baseline_resnet8x4.yaml"
    names = [m.name for m in methods]
    assert "kd_resnet32x4_tv_resnet18.yaml" not in names
    assert names[0] == "kd_resnet32x4_resnet8x4.yaml"
    assert names.index("fitnet_resnet32x4_resnet8x4.yaml") < names.index("dml_resnet8x4.yaml")


def test_discover_configs_needs_one_teacher(tmp_path):
    (tmp_path / "baseline.yaml").write_text("{}")
    with pytest.raises(ValueError, match="teacher"):
        discover_configs(tmp_path)


@pytest.mark.parametrize("tool", ["results", "born_again"])
def test_the_tools_find_the_shipped_configs_from_any_directory(tmp_path, monkeypatch, tool):
    parse_args = {"results": results_parse_args, "born_again": born_again_parse_args}[tool]
    folder = {"results": "quickstart", "born_again": "ban_digits"}[tool]
    monkeypatch.chdir(tmp_path)
    shipped = Path(lightning_kd.configs.__file__).parent / folder
    assert parse_args(["--configs", f"configs/{folder}"]).configs == shipped
    assert parse_args(["--configs", folder]).configs == shipped
    (tmp_path / "configs" / folder).mkdir(parents=True)  # a folder of that name here comes first, as with fit -c
    assert parse_args(["--configs", f"configs/{folder}"]).configs == Path("configs") / folder
    with pytest.raises(SystemExit):
        parse_args(["--configs", "configs/no_such_folder"])


def test_tiny_end_to_end_run_writes_report_and_png(tmp_path, capsys):
    out = tmp_path / "docs" / "RESULTS.md"
    runs = results_main(["--configs", str(ROOT / "configs" / "quickstart"), "--seeds", "0", "--epochs", "2",
                         "--limit-train-batches", "2", "--only", "kd", "fsp", "rco", "--out", str(out),
                         "--run-dir", str(tmp_path / "runs")])
    # FSP's student is as wide as the teacher: a baseline of that network is trained for it.
    assert [r.key for r in runs] == ["teacher", "baseline", "baseline@small_cnn(width=64)", "kd", "fsp", "rco"]
    # --epochs is every run's student epochs: FSP's stage 1 (5 of 35 epochs in the config) comes on top.
    assert [len(r.history) for r in runs] == [2, 2, 2, 2, 2 + 1, 2]
    text = out.read_text()
    table = table_rows(text.split("## Runs")[0])[2:]
    assert [r[0] for r in table] == ["teacher", "student baseline", "student baseline (small_cnn(width=64))", "KD",
                                     "FSP", "RCO"]
    assert [r[2] for r in table] == ["small_cnn(width=64)", "small_cnn(width=4)", "small_cnn(width=64)",
                                     "small_cnn(width=4)", "small_cnn(width=64)", "small_cnn(width=4)"]
    top1 = {r.key: 100 * r.test_acc for r in runs}
    deltas = {row[0]: row[4] for row in table}
    assert deltas["FSP"] == f"{top1['fsp'] - top1['baseline@small_cnn(width=64)']:+.2f}"  # against its own width
    assert deltas["KD"] == f"{top1['kd'] - top1['baseline']:+.2f}"
    assert "RepDistiller CIFAR-100 ref." not in text  # digits: the CIFAR-100 reference does not apply
    printed = capsys.readouterr().out
    assert printed.count("[results] KD seed 0: epoch ") == 2 and "[results] KD seed 0: epoch 2/2, val/acc " in printed
    # The teacher checkpoint of this run is wired into the students that need one (the file the
    # config names, best.ckpt), and for RCO also the route the teacher recorded next to it.
    kd, rco = runs[3], runs[5]
    assert f"--model.init_args.teacher_ckpt={runs[0].best_ckpt}" in kd.overrides
    assert f"--model.init_args.teacher_ckpt={runs[0].best_ckpt}" in rco.overrides
    teacher_ckpts = Path(runs[0].best_ckpt).parent
    assert (teacher_ckpts / "route" / "route.json").is_file()
    assert "route_dir: null" in rco.resolved_config.read_text()  # RCO walked the route next to teacher_ckpt
    assert Path(runs[0].best_ckpt).is_file() and kd.resolved_config.is_file()
    # Parsed once per run, the recorded digest is still that of `--print_config` (records of earlier versions are reused).
    assert [r.config_sha256 for r in runs] == [resolved_sha256(r.config, *r.overrides) for r in runs]
    png = out.with_suffix(".png")
    assert "](RESULTS.png)" in text
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 1000


def test_data_root_archive_is_extracted_once_and_wired(tmp_path):
    tree = tmp_path / "src" / "cifar10" / "train" / "cat"
    tree.mkdir(parents=True)
    (tree / "0001.jpg").write_bytes(b"not decoded here")
    archive = tmp_path / "cifar10-jpeg.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(tmp_path / "src" / "cifar10", arcname="cifar10")
    root = prepare_data_root(archive, tmp_path / "out")
    assert root == tmp_path / "out" / "data" / "cifar10" and (root / "train" / "cat" / "0001.jpg").is_file()
    assert prepare_data_root(archive, tmp_path / "out") == root  # the second call reuses the folder
    assert prepare_data_root(root, tmp_path / "elsewhere") == root  # a folder is used as it is
    assert data_overrides(root, None, False) == [  # no config data given: nothing carried
        "--data=lightning_kd.datamodules.ImageFolderDataModule", f"--data.root={root}"]
    assert data_overrides(None, "data", True) == ["--data.init_args.root=data", "--data.init_args.download=true"]


def test_a_cifar_config_on_an_image_tree_keeps_the_papers_settings(tmp_path):
    from lightning_kd.tools.runner import resolve

    config = ROOT / "configs" / "cifar10" / "kd_resnet32x4_resnet8x4.yaml"
    overrides = data_overrides(tmp_path / "cifar10", None, False, resolve(config)["data"])
    assert overrides[2:] == ["--data.init_args.batch_size=64", "--data.init_args.pad=4", "--data.init_args.flip=true",
                             "--data.init_args.val_dir=test"]
    data = resolve(config, *overrides)["data"]
    assert data["class_path"] == "lightning_kd.datamodules.ImageFolderDataModule"
    assert (data["init_args"]["val_dir"], data["init_args"]["pad"], data["init_args"]["flip"],
            data["init_args"]["batch_size"]) == ("test", 4, True, 64)  # validate on test, pad-crop 4, flip, batch 64
    quickstart = resolve(ROOT / "configs" / "quickstart" / "kd.yaml")["data"]  # digits: its own validation split
    assert not any("val_dir" in o for o in data_overrides(tmp_path, None, False, quickstart))


def resumable_setup(tmp_path, monkeypatch):
    """A config folder of teacher, baseline and KD (copied, so a test may edit one) and a run command
    that returns (runs, report, names of the configs it fitted, printed output)."""
    import shutil

    import lightning_kd.tools.records as records

    configs = tmp_path / "configs"
    configs.mkdir()
    shutil.copytree(ROOT / "configs" / "_base", tmp_path / "_base")  # the blocks they include
    for name in ("teacher.yaml", "baseline.yaml", "kd.yaml"):
        shutil.copy(ROOT / "configs" / "quickstart" / name, configs / name)
    fitted: list[str] = []
    real_fit = records.fit_and_test

    def counting_fit(config, *overrides, **kwargs):
        fitted.append(Path(config).stem)
        return real_fit(config, *overrides, **kwargs)

    monkeypatch.setattr(records, "fit_and_test", counting_fit)
    out = tmp_path / "RESULTS.md"

    def invoke(*extra: str, capsys):
        fitted.clear()
        runs = results_main(["--configs", str(configs), "--seeds", "0", "--epochs", "1", "--limit-train-batches",
                             "2", "--out", str(out), "--run-dir", str(tmp_path / "runs"), *extra])
        return runs, out.read_text(), list(fitted), capsys.readouterr().out

    return configs, tmp_path / "runs", invoke


def test_second_invocation_reuses_every_run_and_writes_the_same_report(tmp_path, monkeypatch, capsys):
    configs, run_dir, invoke = resumable_setup(tmp_path, monkeypatch)
    first, report, fitted, _ = invoke(capsys=capsys)
    assert fitted == ["teacher", "baseline", "kd"]
    record = json.loads((run_dir / "kd" / "seed0" / "run.json").read_text())
    assert record["test_acc"] == first[2].test_acc and record["history"] == first[2].history
    assert record["teacher_finished"] == first[0].finished != ""  # KD read this teacher's checkpoint
    assert json.loads((run_dir / "baseline" / "seed0" / "run.json").read_text())["teacher_finished"] == ""
    teacher_ckpt = Path(first[0].best_ckpt)
    mtime = teacher_ckpt.stat().st_mtime_ns
    again, report_again, fitted, printed = invoke(capsys=capsys)
    assert fitted == [] and printed.count(": reused ") == 3
    assert report_again == report  # recorded wall times, date and device: byte for byte the same
    assert again == first
    assert teacher_ckpt.stat().st_mtime_ns == mtime  # and the teacher checkpoint is still the one students read
    assert not list(run_dir.rglob("*.tmp"))


def test_changes_rerun_exactly_what_they_touch(tmp_path, monkeypatch, capsys):
    configs, run_dir, invoke = resumable_setup(tmp_path, monkeypatch)
    invoke(capsys=capsys)
    # The KD config's bytes change but not what it resolves to (a comment, its optimizer block read from a copy):
    # reused. Then the copied block it includes changes: KD alone runs again.
    kd, block = configs / "kd.yaml", tmp_path / "_base" / "kd_sgd.yaml"
    block.write_text((tmp_path / "_base" / "sgd.yaml").read_text())
    kd.write_text(kd.read_text().replace("../_base/sgd.yaml", "../_base/kd_sgd.yaml") + "# edited\n")
    _, _, fitted, printed = invoke(capsys=capsys)
    assert fitted == [] and printed.count(": reused ") == 3
    block.write_text(block.read_text().replace("momentum: 0.9", "momentum: 0.8"))
    _, _, fitted, printed = invoke(capsys=capsys)
    assert fitted == ["kd"] and "KD seed 0: running (the config (or a file it includes) changed since it ran (model." \
        "init_args.optimizer.init_args.momentum: 0.9 -> 0.8))" in printed  # the setting named; no word of an
    # unfinished run (the earlier one had finished)
    # The baseline's recorded overrides differ from this command's (as after another --epochs): it runs again.
    record = run_dir / "baseline" / "seed0" / "run.json"
    data = json.loads(record.read_text())
    data["overrides"][-1] = "--trainer.limit_train_batches=3"
    record.write_text(json.dumps(data))
    _, _, fitted, printed = invoke(capsys=capsys)
    assert fitted == ["baseline"] and "its overrides changed" in printed and "limit_train_batches=3" in printed
    # A retrained teacher makes the students that read it stale (KD), not the baseline.
    record = run_dir / "teacher" / "seed0" / "run.json"
    data = json.loads(record.read_text())
    data["overrides"].append("--trainer.max_epochs=9")
    record.write_text(json.dumps(data))
    runs, _, fitted, printed = invoke(capsys=capsys)
    assert fitted == ["teacher", "kd"] and "its teacher was trained again" in printed
    assert runs[2].teacher_finished == runs[0].finished


def test_rerun_flag_and_a_corrupt_record(tmp_path, monkeypatch, capsys):
    _, run_dir, invoke = resumable_setup(tmp_path, monkeypatch)
    invoke(capsys=capsys)
    record = run_dir / "kd" / "seed0" / "run.json"
    record.write_text(record.read_text()[:40])  # cut off mid-write by hand (save_record itself is atomic)
    runs, _, fitted, printed = invoke(capsys=capsys)
    assert fitted == ["kd"] and "KD seed 0: running (its record" in printed and "is unreadable" in printed
    assert "is unreadable: " in printed and "; resuming after epoch 0)" in printed  # its last epoch: only tested again
    assert json.loads(record.read_text())["finished"] == runs[2].finished  # a whole record again
    record.write_text("[]")
    _, _, fitted, printed = invoke(capsys=capsys)
    assert fitted == ["kd"] and "not the fields" in printed
    _, _, fitted, printed = invoke("--rerun", capsys=capsys)
    assert fitted == ["teacher", "baseline", "kd"] and printed.count("running (--rerun)") == 3


def test_an_interrupted_run_resumes_from_last_ckpt_and_ends_like_an_uninterrupted_one(tmp_path, monkeypatch,
                                                                                      capsys):
    import pytorch_lightning as pl

    import lightning_kd.tools.records as records

    (tmp_path / "clean").mkdir()
    (tmp_path / "killed").mkdir()
    _, _, invoke_clean = resumable_setup(tmp_path / "clean", monkeypatch)
    clean, _, _, _ = invoke_clean("--epochs", "2", capsys=capsys)
    configs, run_dir, invoke = resumable_setup(tmp_path / "killed", monkeypatch)
    counting_fit = records.fit_and_test

    class Crash(pl.Callback):  # the command is killed once KD's epoch 0 (and its last.ckpt) is done
        def on_train_epoch_start(self, trainer, pl_module):
            if trainer.current_epoch == 1:
                raise RuntimeError("killed")

    def crashing_fit(config, *overrides, callbacks=(), **kwargs):
        extra = [Crash()] if Path(config).stem == "kd" and kwargs.get("ckpt_path") is None else []
        return counting_fit(config, *overrides, callbacks=[*callbacks, *extra], **kwargs)

    monkeypatch.setattr(records, "fit_and_test", crashing_fit)
    with pytest.raises(RuntimeError, match="killed"):
        invoke("--epochs", "2", capsys=capsys)
    assert not (run_dir / "kd" / "seed0" / "run.json").exists()
    runs, _, fitted, printed = invoke("--epochs", "2", capsys=capsys)
    assert fitted == ["kd"] and "KD seed 0: running (no record yet; resuming after epoch 0)" in printed
    assert runs[2].test_acc == clean[2].test_acc
    assert runs[2].history == clean[2].history and len(runs[2].history) == 2  # epoch 0 came from last.ckpt
    # A checkpoint of other settings (here: the config's temperature changed) is not resumed but started afresh.
    monkeypatch.setattr(records, "fit_and_test", counting_fit)  # no more crashes
    (run_dir / "kd" / "seed0" / "run.json").unlink()
    (configs / "kd.yaml").write_text((configs / "kd.yaml").read_text().replace("temperature: 4.0", "temperature: 3.0"))
    _, _, fitted, printed = invoke("--epochs", "2", capsys=capsys)
    assert fitted == ["kd"] and "KD seed 0: running (no record yet; its unfinished run had other settings: starting afresh)" in printed



def test_a_rerun_keeps_the_earlier_run_until_it_is_recorded(tmp_path, monkeypatch, capsys):
    """A finished run whose config changed is run again; its checkpoints and record are moved aside, not
    deleted, so a rerun that dies loses nothing; once the new run is recorded they are removed."""
    import pytorch_lightning as pl

    import lightning_kd.tools.records as records

    configs, run_dir, invoke = resumable_setup(tmp_path, monkeypatch)
    invoke(capsys=capsys)
    kd = run_dir / "kd" / "seed0"
    earlier = json.loads((kd / "run.json").read_text())
    earlier_best = Path(earlier["best_ckpt"])
    earlier_bytes = earlier_best.read_bytes()
    counting_fit = records.fit_and_test

    class Crash(pl.Callback):
        def on_train_epoch_start(self, trainer, pl_module):
            raise RuntimeError("killed")

    def crashing_fit(config, *overrides, callbacks=(), **kwargs):
        extra = [Crash()] if Path(config).stem == "kd" else []
        return counting_fit(config, *overrides, callbacks=[*callbacks, *extra], **kwargs)

    monkeypatch.setattr(records, "fit_and_test", crashing_fit)
    (configs / "kd.yaml").write_text((configs / "kd.yaml").read_text().replace("temperature: 4.0", "temperature: 3.0"))
    with pytest.raises(RuntimeError, match="killed"):
        invoke(capsys=capsys)
    kept = kd / records.PREVIOUS
    assert (kept / earlier_best.relative_to(kd)).read_bytes() == earlier_bytes
    assert json.loads((kept / "run.json").read_text()) == earlier
    assert not (kd / "run.json").exists() and not earlier_best.exists()
    monkeypatch.setattr(records, "fit_and_test", counting_fit)
    _, _, fitted, printed = invoke(capsys=capsys)
    assert fitted == ["kd"] and f"kept in {kept}" in printed
    assert not kept.exists() and json.loads((kd / "run.json").read_text())["config_sha256"] != earlier["config_sha256"]

def test_jobs_run_the_table_in_processes_and_match_the_sequential_table(tmp_path):
    def table(run_dir, *extra):
        return results_main(["--configs", str(ROOT / "configs" / "quickstart"), "--seeds", "0", "1", "--epochs", "1",
                             "--limit-train-batches", "2", "--only", "kd", "dml", "--out", str(run_dir / "R.md"),
                             "--run-dir", str(run_dir), *extra])

    sequential, parallel = table(tmp_path / "one"), table(tmp_path / "three", "--jobs", "3")
    # The same runs in the table's order, whichever finished first.
    assert [(r.key, r.seed) for r in parallel] == [(r.key, r.seed) for r in sequential] == \
        [("teacher", 0), ("baseline", 0), ("baseline", 1), ("kd", 0), ("kd", 1), ("dml", 0), ("dml", 1)]
    assert [r.test_acc for r in parallel] == [r.test_acc for r in sequential]
    teacher = parallel[0]
    for run in parallel[1:]:  # KD read the finished teacher; the baseline and DML needed none
        assert run.teacher_finished == (teacher.finished if run.key == "kd" else "")
        assert Path(run.best_ckpt).is_file() and str(tmp_path / "three") in run.best_ckpt
    with pytest.raises(SystemExit):
        results_main(["--configs", str(ROOT / "configs" / "quickstart"), "--jobs", "0"])


@pytest.mark.parametrize("data, teacher, applies", [
    ("lightning_kd.datamodules.CIFAR100DataModule", "resnet32x4", True),
    ("lightning_kd.datamodules.CIFAR10DataModule", "resnet32x4", False),
    ("lightning_kd.datamodules.CIFAR100DataModule", "resnet56", False)])
def test_the_repdistiller_column_appears_only_for_its_own_setting(tmp_path, data, teacher, applies):
    from lightning_kd.tools.report import reference_applies

    config = tmp_path / "config.yaml"
    config.write_text(f"data:\n  class_path: {data}\n")
    runs = [Run("teacher", Path("t.yaml"), 0, [], 0.8, network=teacher, resolved_config=config),
            Run("baseline", Path("b.yaml"), 0, [], 0.7, network="resnet8x4", resolved_config=config)]
    assert reference_applies(runs) is applies

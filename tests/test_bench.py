"""The benchmark command on CPU at a tiny size: its table is well formed (no timing assertions)."""
from __future__ import annotations

import pytest

from helpers import ROOT
from lightning_kd.tools import bench

CONFIGS = ["baseline_resnet8x4", "kd_resnet32x4_resnet8x4", "iekd_resnet32x4_resnet8x4",
           "rco_resnet32x4_resnet8x4"]


def table_rows(text: str) -> tuple[list[str], list[list[str]]]:
    lines = [ln for ln in text.splitlines() if ln.startswith("|")]
    cells = [[c.strip() for c in ln.strip("|").split("|")] for ln in lines]
    assert set("".join(cells[1])) <= set("-"), f"second line is not a separator: {lines[1]}"
    return cells[0], cells[2:]


def test_bench_writes_a_table_per_config(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    out = tmp_path / "BENCHMARKS.md"
    out.write_text("# Benchmarks\n\nhand-written text that must survive\n")
    argv = ["--configs", *CONFIGS, "--batch-size", "4", "--steps", "3", "--warmup", "1",
            "--accelerator", "cpu", "--ceiling", "kd_ceiling.py", "--out", str(out), "--section", "cpu"]
    rows = bench.main(argv)
    assert [r.error for r in rows] == [""] * len(CONFIGS)

    text = out.read_text()
    assert text.startswith("# Benchmarks\n\nhand-written text that must survive\n")
    assert text.count("<!-- bench:cpu -->") == 1 and text.count("<!-- /bench:cpu -->") == 1
    assert "skipped" in text  # the ceiling needs CUDA: said, not silently dropped
    header, body = table_rows(text)
    assert header == bench.COLUMNS
    assert sorted(r[0] for r in body) == sorted(f"{c}.yaml" for c in CONFIGS)
    by_config = {r[0]: r for r in body}
    assert by_config["baseline_resnet8x4.yaml"][1] == "Supervised"
    assert by_config["kd_resnet32x4_resnet8x4.yaml"][1] == "KD"
    assert by_config["iekd_resnet32x4_resnet8x4.yaml"][1] == "IEKD"  # timed in its student stage
    assert by_config["rco_resnet32x4_resnet8x4.yaml"][1] == "KD"  # with a route written for it
    for r in body:
        assert len(r) == len(header)
        assert int(r[2]) == 4
        assert float(r[3]) > 0 and float(r[4]) > 0

    # A second run replaces its section instead of appending a copy.
    bench.write_section(out, "cpu", "replaced")
    assert out.read_text().count("<!-- bench:cpu -->") == 1 and "replaced" in out.read_text()
    assert "| config |" not in out.read_text()


def test_timer_counts_only_batches_after_warmup():
    timer = bench.ThroughputTimer(warmup=2, steps=3)

    class FakeTrainer:
        should_stop = False
        current_epoch = 0

    trainer, batch = FakeTrainer(), (__import__("torch").zeros(5, 1), None)
    for i in range(5):
        timer.on_train_batch_end(trainer, None, None, batch, i)
    assert timer.images == 3 * 5 and trainer.should_stop and timer.seconds >= 0


def test_timer_ignores_epochs_before_the_student_stage():
    timer = bench.ThroughputTimer(warmup=1, steps=2, start_epoch=1)

    class FakeTrainer:
        should_stop = False
        current_epoch = 0

    trainer, batch = FakeTrainer(), (__import__("torch").zeros(4, 1), None)
    for _ in range(3):  # stage 1: not counted, not even as warm-up
        timer.on_train_batch_end(trainer, None, None, batch, 0)
    assert timer.batches == 0 and not trainer.should_stop
    trainer.current_epoch = 1
    for _ in range(3):
        timer.on_train_batch_end(trainer, None, None, batch, 0)
    assert timer.images == 2 * 4 and trainer.should_stop


def test_method_configs_skip_teachers():
    found = bench.method_configs(ROOT / "configs" / "cifar10")
    names = {p.name for p in found}
    assert names and not any(n.startswith("teacher") or n.endswith("_peer_parallel.yaml") for n in names)
    assert "kd_resnet32x4_resnet8x4.yaml" in names and "baseline_resnet8x4.yaml" in names


def test_each_config_is_compared_with_its_own_ceiling_step(tmp_path, monkeypatch):
    """A method without a teacher is timed against the raw student step, one with a teacher against the
    raw KD step: with reference rates of 1 and 1000 img/s the ratios tell which one each row used."""
    monkeypatch.chdir(tmp_path)
    reference = {"batch": 4, "imgs_per_s": {"fp32": {"student_step": 1.0, "kd_step": 1000.0}}}
    monkeypatch.setattr(bench, "raw_pytorch_reference", lambda batch_size, iters: reference)
    out = tmp_path / "B.md"
    argv = ["--configs", "baseline_resnet8x4", "kd_resnet32x4_resnet8x4", "--batch-size", "4",
            "--steps", "2", "--warmup", "1", "--accelerator", "cpu", "--raw-reference", "--out", str(out)]
    rows = {r.config: r for r in bench.main(argv)}
    baseline, kd = rows["baseline_resnet8x4.yaml"], rows["kd_resnet32x4_resnet8x4.yaml"]
    assert baseline.ceiling_step == "fp32 student_step (1.0 img/s)" and kd.ceiling_step == "fp32 kd_step (1000.0 img/s)"
    assert baseline.ratio == pytest.approx(baseline.images_per_s / 1.0)
    assert kd.ratio == pytest.approx(kd.images_per_s / 1000.0)
    header, body = table_rows(out.read_text())
    assert {r[0]: r[header.index("ratio to ceiling")] for r in body} == {
        "baseline_resnet8x4.yaml": f"{baseline.ratio:.2f}", "kd_resnet32x4_resnet8x4.yaml": f"{kd.ratio:.2f}"}


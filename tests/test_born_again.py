"""Born-Again Networks: the objective against the paper's cross-entropy, checkpoint ensembles against their
members' mean probabilities (also through the CLI and as a KD teacher), bad ensembles, and the generations
command: generation k's teacher is generation k-1's best checkpoint, the BAN ensemble's accuracy, resuming."""
from __future__ import annotations

import csv
import json
import math

import pytest
import torch

from helpers import DIGITS_SHAPE, ROOT, TINY_CNN, build_method, trainer
from lightning_kd.batch import Batch
from lightning_kd.cli import make_cli
from lightning_kd.datamodules import DigitsDataModule
from lightning_kd.datamodules.base import normalize
from lightning_kd.features import NetOutput
from lightning_kd.methods import BAN, KD
from lightning_kd.models import CheckpointEnsemble, build_network
from lightning_kd.tools import born_again

ENSEMBLE = "lightning_kd.models.CheckpointEnsemble"


# ----------------------------------------------------------------------------- the objective
def paper_terms(s: torch.Tensor, t: torch.Tensor, y: torch.Tensor) -> tuple[float, float, float]:
    """By hand, in float64, batch-averaged: the paper's cross-entropy -sum p_t log p_s, the teacher's
    entropy -sum p_t log p_t and the label cross-entropy -log p_s[y]."""
    cross, entropy, labels = 0.0, 0.0, 0.0
    for s_row, t_row, label in zip(s.double().tolist(), t.double().tolist(), y.tolist()):
        log_zs = math.log(sum(math.exp(v) for v in s_row))
        log_zt = math.log(sum(math.exp(v) for v in t_row))
        log_ps = [v - log_zs for v in s_row]
        log_pt = [v - log_zt for v in t_row]
        cross -= sum(math.exp(b) * a for a, b in zip(log_ps, log_pt))
        entropy -= sum(math.exp(b) * b for b in log_pt)
        labels -= log_ps[label]
    n = len(s)
    return cross / n, entropy / n, labels / n


@pytest.mark.parametrize("objective, label_weight", [("BAN", None), ("BAN+L", None), ("BAN+L", 0.3)])
def test_objective_is_the_papers_cross_entropy(objective, label_weight, tiny_teacher):
    """The weighted sum of BAN's terms is the paper's cross-entropy to the teacher's outputs (T = 1) minus the
    teacher's entropy (constant in the student), plus the labels' for BAN+L; its gradient is exactly that of the
    paper's objective: (softmax(s) - softmax(t)) / N, plus w (softmax(s) - onehot(y)) / N for BAN+L."""
    model = build_method("BAN", tiny_teacher, objective=objective, label_weight=label_weight)
    gen = torch.Generator().manual_seed(7)
    s = (3 * torch.randn(6, 10, generator=gen)).requires_grad_(True)
    t, y = 3 * torch.randn(6, 10, generator=gen), torch.randint(0, 10, (6,), generator=gen)
    losses = model.distill_losses(NetOutput(s, {}), NetOutput(t, {}), Batch(torch.zeros(6, 1, 8, 8), y))
    total = sum(model.loss_weights[name] * value for name, value in losses.items())

    cross, entropy, labels = paper_terms(s.detach(), t, y)
    w = 0.0 if objective == "BAN" else (1.0 if label_weight is None else label_weight)
    assert float(total.detach()) == pytest.approx(cross - entropy + w * labels, rel=1e-5, abs=1e-6)
    total.backward()
    p_s, p_t = s.detach().double().softmax(1), t.double().softmax(1)
    expected = (p_s - p_t + w * (p_s - torch.nn.functional.one_hot(y, 10).double())) / 6
    assert torch.allclose(s.grad.double(), expected, atol=1e-6)


def test_objective_refuses_unknown_names_and_a_label_weight_without_labels(tiny_teacher):
    with pytest.raises(ValueError, match="objective must be 'BAN'"):
        build_method("BAN", tiny_teacher, objective="BAN+labels")
    with pytest.raises(ValueError, match="only objective 'BAN\\+L' has"):
        build_method("BAN", tiny_teacher, objective="BAN", label_weight=0.5)


# ----------------------------------------------------------------------------- ensembles
def members(tmp_path, count: int = 3, lightning: bool = True, num_classes=10) -> tuple[list[str], list[torch.nn.Module]]:
    """``count`` randomly initialised TINY_CNN networks (BatchNorm statistics made non-trivial) saved as
    Lightning-style checkpoints (network under ``student.``, its spec in the hyper-parameters) or plain
    state_dicts; returns the files and the networks, in eval mode."""
    paths, nets = [], []
    for i in range(count):
        torch.manual_seed(100 + i)
        net = build_network(TINY_CNN, num_classes if isinstance(num_classes, int) else num_classes[i], 1)
        net.train()(torch.randn(32, *DIGITS_SHAPE) * (1 + i))  # moves the running statistics
        net.eval()
        state = net.state_dict()
        classes = state[[k for k in state if k.endswith("weight") and state[k].ndim == 2][-1]].shape[0]
        saved = ({"state_dict": {f"student.{k}": v for k, v in state.items()},
                  "hyper_parameters": {"student": TINY_CNN, "num_classes": classes}} if lightning else state)
        paths.append(str(tmp_path / f"member{i}.{'ckpt' if lightning else 'pt'}"))
        torch.save(saved, paths[-1])
        nets.append(net)
    return paths, nets


def mean_probabilities(nets, x: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return torch.stack([net(x).double().softmax(1) for net in nets]).mean(0)


@pytest.mark.parametrize("lightning", [True, False])
def test_ensemble_probabilities_are_the_mean_of_its_members(lightning, tmp_path):
    paths, nets = members(tmp_path, lightning=lightning)
    ensemble = CheckpointEnsemble(paths, network=None if lightning else TINY_CNN, num_classes=10, in_channels=1).eval()
    x = torch.randn(16, *DIGITS_SHAPE, generator=torch.Generator().manual_seed(3))
    expected = mean_probabilities(nets, x)
    with torch.no_grad():
        got = ensemble(x).double().softmax(1)
    assert torch.allclose(got, expected, atol=1e-6)
    assert not torch.allclose(expected, mean_probabilities(nets[:1], x), atol=1e-3), "members too alike to tell"


def digits_test_split() -> tuple[torch.Tensor, torch.Tensor]:
    data = DigitsDataModule()
    data.setup("test")
    x, y = data.splits["test"]
    return normalize(x, data.mean, data.std), y


def test_cli_test_and_predict_score_the_mean_probabilities(tmp_path, capsys):
    paths, nets = members(tmp_path)
    spec = json.dumps({"name": ENSEMBLE, "checkpoints": paths})
    args = ["--model=Supervised", f"--model.init_args.student={spec}", "--data=DigitsDataModule",
            "--trainer.logger=false", "--trainer.accelerator=cpu", f"--checkpoint.dirpath={tmp_path / 'ens'}"]
    x, y = digits_test_split()
    expected = mean_probabilities(nets, x)

    make_cli(["predict", *args])
    with open(tmp_path / "ens" / "predictions.csv") as f:
        rows = list(csv.DictReader(f))
    got = torch.tensor([[float(r[f"p{c}"]) for c in range(10)] for r in rows], dtype=torch.float64)
    assert torch.allclose(got, expected, atol=2e-6)  # the file keeps 6 significant digits
    assert [int(r["label"]) for r in rows] == y.tolist()

    cli = make_cli(["test", *args])
    accuracy = float((expected.argmax(1) == y).double().mean())
    assert float(cli.trainer.callback_metrics["test/acc"]) == pytest.approx(accuracy, abs=1e-6)


def test_kd_from_an_ensemble_of_teachers_reads_their_mean(tmp_path):
    paths, nets = members(tmp_path)
    model = KD(student=TINY_CNN, teacher={"name": ENSEMBLE, "checkpoints": paths}, num_classes=10,
               input_shape=DIGITS_SHAPE)
    x = torch.randn(8, *DIGITS_SHAPE)
    assert torch.allclose(model.teacher(x).logits.double().softmax(1), mean_probabilities(nets, x), atol=1e-6)
    before = {k: v.clone() for k, v in model.teacher.net.state_dict().items()}
    trainer(tmp_path).fit(model, datamodule=DigitsDataModule(batch_size=16))
    assert math.isfinite(float(model.loss_terms["kd"]))
    assert all(torch.equal(v, model.teacher.net.state_dict()[k]) for k, v in before.items())


def test_bad_ensembles_name_the_problem_and_the_fix(tmp_path):
    with pytest.raises(ValueError, match=r"at least one member: give `checkpoints: \[a.ckpt"):
        CheckpointEnsemble([], num_classes=10, in_channels=1)
    mixed, _ = members(tmp_path, count=2, num_classes=[10, 5])
    with pytest.raises(ValueError, match=r"classify different numbers of classes \(.*member0.ckpt': 10, .*member1.ckpt': 5\)"):
        CheckpointEnsemble(mixed, num_classes=10, in_channels=1)
    with pytest.raises(ValueError, match="members classify 10 classes, but the data has num_classes=5"):
        CheckpointEnsemble(mixed[:1], num_classes=5, in_channels=1)
    (tmp_path / "plain").mkdir()
    plain, _ = members(tmp_path / "plain", count=1, lightning=False)
    with pytest.raises(ValueError, match="names no network .* give the members' architecture as `network:`"):
        CheckpointEnsemble(plain, num_classes=10, in_channels=1)


# ----------------------------------------------------------------------------- the generations command
def student_weights(path: str) -> dict[str, torch.Tensor]:
    """The student's tensors of a Lightning checkpoint, read directly (not through the library's loader)."""
    state = torch.load(path, map_location="cpu", weights_only=True)["state_dict"]
    return {k[len("student."):]: v for k, v in state.items() if k.startswith("student.")}


def test_generations_chain_teachers_score_the_ensemble_and_resume(tmp_path, capsys):
    argv = ["--configs", str(ROOT / "configs" / "ban_digits"),
            "--generations", "2", "--seeds", "0", "--epochs", "1", "--limit-train-batches", "2",
            "--out", str(tmp_path / "RESULTS.md"), "--run-dir", str(tmp_path / "runs")]
    rows = born_again.main(argv)
    records = [json.loads((tmp_path / "runs" / f"gen{k}" / "seed0" / "run.json").read_text()) for k in range(3)]
    assert [r["seed"] for r in records] == [0, 1000, 2000]  # a new random seed per generation
    assert records[0]["config"].endswith("gen0.yaml") and records[1]["config"].endswith("ban.yaml")

    # Generation k's teacher is generation k-1's best checkpoint, tensor for tensor.
    for k in (1, 2):
        loaded = BAN.load_from_checkpoint(records[k]["best_ckpt"])
        assert loaded.hparams.teacher_ckpt == records[k - 1]["best_ckpt"]
        previous = student_weights(records[k - 1]["best_ckpt"])
        teacher = loaded.teacher.net.state_dict()
        assert teacher.keys() == previous.keys()
        assert all(torch.equal(teacher[name], previous[name]) for name in previous)
        assert any(not torch.equal(loaded.student.state_dict()[n], previous[n]) for n in previous)

    # The BAN ensemble of generations 1-2: the mean probabilities of their best checkpoints, on test.
    nets = []
    for record in records[1:]:
        net = build_network(TINY_CNN, 10, 1).eval()
        net.load_state_dict(student_weights(record["best_ckpt"]))
        nets.append(net)
    x, y = digits_test_split()
    by_hand = float((mean_probabilities(nets, x).argmax(1) == y).double().mean())
    assert rows["BAN ensemble, gens 1-2"][0][1] == pytest.approx(by_hand, abs=1e-6)
    assert [rows[born_again.generation_key(k)][0][1] for k in range(3)] == [r["test_acc"] for r in records]
    report = (tmp_path / "RESULTS.md").read_text()
    delta = 100 * (rows["BAN gen 2"][0][1] - rows["gen 0 (Supervised)"][0][1])
    assert f"| BAN gen 2 | small_cnn(width=4) | {100 * records[2]['test_acc']:.2f} ± 0.00 | {delta:+.2f} ± 0.00 |" in report
    assert (tmp_path / "RESULTS.png").read_bytes()[:4] == b"\x89PNG"

    # Resumable: the same command reuses every generation; a generation retrained retrains its successors.
    capsys.readouterr()
    assert born_again.main(argv) == rows
    assert capsys.readouterr().out.count(": reused ") == 3
    (tmp_path / "runs" / "gen1" / "seed0" / "run.json").unlink()
    born_again.main(argv)
    printed = capsys.readouterr().out
    assert "gen 0 (Supervised) seed 0: reused" in printed
    assert "BAN gen 1 seed 1000: running (no record yet" in printed
    assert "BAN gen 2 seed 2000: running (its teacher was trained again since it ran" in printed


def test_generations_folder_needs_one_gen0_and_one_ban_config(tmp_path):
    (tmp_path / "gen0.yaml").write_text("{}")
    with pytest.raises(ValueError, match=r"needs exactly one ban\*.yaml, found \[\]"):
        born_again.discover(tmp_path)


def test_a_generation_s_teacher_network_is_the_one_its_config_states_never_its_run_s_files(tmp_path, monkeypatch):
    from lightning_kd.tools.results import Run

    calls = []

    def run_one(key, config, seed, overrides, run_dir, teacher_finished, rerun):  # records a tampered resolved config
        calls.append(overrides)
        run_dir.mkdir(parents=True, exist_ok=True)
        (run_dir / "config.yaml").write_text(json.dumps({"model": {"init_args": {"student": "helpers.payload.x"}}}))
        return Run(key, config, seed, overrides, resolved_config=run_dir / "config.yaml",
                   best_ckpt=str(run_dir / "best.ckpt"), finished=f"gen {len(calls)}")

    monkeypatch.setattr(born_again, "run_one", run_one)
    gen0, ban = born_again.discover(ROOT / "configs/ban_digits")
    widths = {gen0: 6, ban: 8}
    overrides = {c: [f"--model.init_args.student={json.dumps({'name': 'small_cnn', 'width': w})}"]
                 for c, w in widths.items()}
    born_again.run_chain(0, gen0, ban, 2, tmp_path, overrides, rerun=False)
    teachers = [next(a for a in call if a.startswith("--model.init_args.teacher=")) for call in calls[1:]]
    assert [json.loads(t.split("=", 1)[1]) for t in teachers] == [{"name": "small_cnn", "width": 6},
                                                                   {"name": "small_cnn", "width": 8}]
    assert not any("helpers.payload" in arg for call in calls for arg in call)

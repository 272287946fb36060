"""RunReport through the CLI: metrics.csv beside the checkpoints, the summaries, predict's predictions.csv."""
from __future__ import annotations

import csv
import shutil

import numpy as np
import torch
from PIL import Image

from helpers import ROOT
from helpers.trees import image_tree
from lightning_kd.cli import make_cli

QUIET = ["--trainer.logger=false", "--trainer.enable_progress_bar=false", "--trainer.enable_model_summary=false"]
BASELINE = str(ROOT / "configs/quickstart/baseline.yaml")


def rows(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def fit(folder, *extra):
    return make_cli(["fit", "-c", BASELINE, *QUIET, f"--checkpoint.dirpath={folder}", *extra])


def test_fit_writes_every_epochs_metrics_and_prints_a_summary(tmp_path, capsys):
    cli = fit(tmp_path / "run", "--trainer.max_epochs=3")
    table = rows(tmp_path / "run/metrics.csv")
    val = [float(r["value"]) for r in table if r["metric"] == "val/acc"]
    assert [int(r["epoch"]) for r in table if r["metric"] == "val/acc"] == [0, 1, 2]
    assert val[-1] == float(cli.trainer.callback_metrics["val/acc"])
    best = cli.trainer.checkpoint_callback
    assert max(val) == float(best.best_model_score)  # best.ckpt is the epoch of the highest val/acc in the file
    out = capsys.readouterr().out
    assert "fit done: 3 epoch(s), 57 step(s)" in out and f"best val/acc {max(val):.4g}: {best.best_model_path}" in out


def test_a_resumed_fit_appends_and_a_fresh_one_starts_over(tmp_path):
    fit(tmp_path / "run", "--trainer.max_epochs=2", "--trainer.max_steps=19")  # epoch 0 only
    fit(tmp_path / "run", "--trainer.max_epochs=2", f"--ckpt_path={tmp_path / 'run/last.ckpt'}")
    epochs = [int(r["epoch"]) for r in rows(tmp_path / "run/metrics.csv") if r["metric"] == "val/acc"]
    assert epochs == [0, 1]
    fit(tmp_path / "run", "--trainer.max_epochs=1", "--overwrite=true")
    assert [int(r["epoch"]) for r in rows(tmp_path / "run/metrics.csv") if r["metric"] == "val/acc"] == [0]


def test_predict_writes_probabilities_whose_accuracy_is_the_test_accuracy(tmp_path, capsys):
    fit(tmp_path / "run", "--trainer.max_epochs=2")
    best = tmp_path / "run/best.ckpt"
    tested = make_cli(["test", "-c", BASELINE, *QUIET, f"--checkpoint.dirpath={tmp_path / 'run'}", f"--ckpt_path={best}"])
    make_cli(["predict", "-c", BASELINE, *QUIET, f"--checkpoint.dirpath={tmp_path / 'run'}", f"--ckpt_path={best}"])
    path = tmp_path / "run/predictions.csv"
    assert f"predict done: 360 predictions (class and probabilities) written to {path}" in capsys.readouterr().out
    table = rows(path)
    probs = torch.tensor([[float(r[f"p_{c}"]) for c in range(10)] for r in table])
    labels = torch.tensor([int(r["label"]) for r in table])
    predicted = torch.tensor([int(r["predicted"]) for r in table])
    torch.testing.assert_close(probs.sum(1), torch.ones(len(table)), atol=1e-4, rtol=0)
    assert torch.equal(predicted, probs.argmax(1))
    assert torch.equal(labels, tested.datamodule.splits["test"][1])
    accuracy = (predicted == labels).float().mean().item()
    assert abs(accuracy - float(tested.trainer.callback_metrics["test/acc"])) < 1e-6
    test_rows = [r for r in rows(tmp_path / "run/metrics.csv") if r["stage"] == "test"]
    assert {r["metric"] for r in test_rows} == {"test/acc", "test/acc5"}


def test_predict_labels_a_folder_of_images_with_file_names_and_class_names(tmp_path):
    """Every file of ``--data.predict_dir`` gets a row: its path, no label, the predicted class name and a
    ``p_<class>`` column per class; the probabilities are the network's on the images decoded and
    normalized here, independently of the datamodule (PIL, the training images' mean and std)."""
    image_tree(tmp_path / "data", mode="L")
    loose = tmp_path / "new"
    loose.mkdir()
    originals = sorted((tmp_path / "data/test").rglob("*.png"))
    for i, f in enumerate(originals):
        shutil.copy(f, loose / f"img{i:02d}.png")
    data = ["--data=ImageFolderDataModule", f"--data.root={tmp_path / 'data'}", "--data.cache=false",
            "--data.val_dir=test", f"--data.predict_dir={loose}"]  # val_dir: the mean and std are of all of train
    cli = make_cli(["predict", "--model=Supervised", "--model.init_args.student={name: small_cnn, width: 4}",
                    *data, *QUIET, f"--checkpoint.dirpath={tmp_path / 'run'}"])
    table = rows(tmp_path / "run/predictions.csv")
    assert [r["sample"] for r in table] == [str(loose / f"img{i:02d}.png") for i in range(len(originals))]
    assert all(r["label"] == "" for r in table)
    train = np.stack([np.asarray(Image.open(f), dtype=np.float64) / 255 for f in
                      sorted((tmp_path / "data/train").rglob("*.png"))])
    x = np.stack([np.asarray(Image.open(loose / f"img{i:02d}.png"), dtype=np.float64) / 255
                  for i in range(len(originals))])
    x = torch.tensor((x - train.mean()) / train.std(ddof=1), dtype=torch.float32)[:, None]
    with torch.no_grad():
        expected = cli.model.student.eval()(x).softmax(1)
    got = torch.tensor([[float(r["p_cats"]), float(r["p_dogs"])] for r in table])
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=0)  # 6 significant digits, float32 statistics
    assert [r["predicted"] for r in table] == [["cats", "dogs"][int(i)] for i in expected.argmax(1)]


def test_predict_on_the_test_split_names_each_file_and_its_class(tmp_path):
    image_tree(tmp_path / "data")
    make_cli(["predict", "--model=Supervised", "--model.init_args.student={name: small_cnn, width: 4}",
              "--data=ImageFolderDataModule", f"--data.root={tmp_path / 'data'}", "--data.cache=false", *QUIET,
              f"--checkpoint.dirpath={tmp_path / 'run'}"])
    table = rows(tmp_path / "run/predictions.csv")
    files = sorted((tmp_path / "data/test").rglob("*.png"))
    assert [r["sample"] for r in table] == [str(f) for f in files]
    assert [r["label"] for r in table] == [f.parent.name for f in files]  # the class folder's name

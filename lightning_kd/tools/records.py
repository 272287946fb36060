"""Run records of the commands over configs (results, born_again): one fit + test of a config, kept as
``run.json`` beside its checkpoints, so the same command run again reuses every run whose resolved config
(its includes expanded: a changed ``_base`` block is a changed config), overrides and teacher run are unchanged, and an interrupted run resumes from its ``last.ckpt``.
"""
from __future__ import annotations

import datetime
import hashlib
import json
import os
import shutil
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Optional

import yaml

from lightning_kd import naming
from lightning_kd.checkpoints import load_checkpoint_file
from lightning_kd.tools.runner import ValAccHistory, device_name, fit_and_test, parse, resolve, resolved

LABELS = {"teacher": "teacher", "baseline": "student baseline", "kd": "KD", "fitnet": "FitNet", "at": "AT",
          "fsp": "FSP", "rkd": "RKD", "rco": "RCO", "dml": "DML", "iekd": "IE-KD", "iedml": "IE-DML",
          "dkd": "DKD", "dist": "DIST", "kdls": "KD + LS", "crd": "CRD", "reviewkd": "ReviewKD"}


@dataclass
class Run:
    """One fit + test: what ran (config and overrides) and what it measured."""

    key: str
    config: Path
    seed: int
    overrides: list[str]
    test_acc: float = float("nan")
    wall_s: float = float("nan")
    history: list[float] = field(default_factory=list)
    resolved_config: Optional[Path] = None
    best_ckpt: str = ""
    network: str = ""
    config_sha256: str = ""  # of the resolved config (includes expanded) when it ran: resolved_sha256
    teacher_finished: str = ""  # ``finished`` of the teacher run it distilled from ("" if none)
    finished: str = ""  # UTC time the run completed, ISO format
    device: str = ""


def network_name(cfg: dict) -> str:
    """The trained network of a resolved config, compactly: ``small_cnn(width=4)``; peer 0 for mutual learning."""
    return naming.network_name(cfg["model"].get("init_args") or {})


def student_spec(cfg: dict):
    """The trained network's spec of a resolved config (peer 0 for mutual learning)."""
    init_args = cfg["model"].get("init_args") or {}
    return init_args["peers"][0] if init_args.get("peers") else init_args.get("student")


def label(key: str) -> str:
    """The table's name for a row: ``baseline@<network>`` is the baseline trained on that network."""
    if key.startswith("baseline@"):
        return f"student baseline ({key.split('@', 1)[1]})"
    return LABELS.get(key, key)


def checkpoint_dir(run_dir: Path) -> Path:
    return run_dir / "checkpoints"


def resume_point(run_dir: Path, started: dict) -> tuple[Optional[Path], str]:
    """``last.ckpt`` of an unfinished run that was started with the same ``started`` settings
    (config content, overrides, teacher run), if it is readable; else ``(None, why not)``. (A finished run of the
    same settings whose record is unreadable resumes too: after its last epoch, so it is only tested again.)"""
    marker, last = run_dir / "started.json", checkpoint_dir(run_dir) / "last.ckpt"
    try:
        same = json.loads(marker.read_text()) == started
    except (OSError, ValueError):
        return None, ""
    if not same or not last.is_file():
        unfinished = not same and not record_path(run_dir).is_file()  # a finished one was said changed already
        return None, "its unfinished run had other settings: starting afresh" if unfinished else ""
    try:
        epoch = load_checkpoint_file(last, "last.ckpt")["epoch"]
    except (ValueError, KeyError) as err:  # e.g. cut off while being written: start again
        return None, f"its last.ckpt is unusable ({err}): starting afresh"
    return last, f"resuming after epoch {epoch}"


PREVIOUS = "previous"


def set_aside(run_dir: Path) -> Optional[Path]:
    """Before a run starts afresh in ``run_dir``: move a finished earlier run's checkpoints and record to
    ``run_dir/previous`` (replacing an older one there) rather than deleting them, so a rerun that fails or is
    cut off loses no good checkpoint; :func:`run_one` removes them once the new run is recorded. Checkpoints of
    an unfinished run are deleted, unless nothing is set aside yet. Returns the folder kept, if any."""
    aside, ckpts, record = run_dir / PREVIOUS, checkpoint_dir(run_dir), record_path(run_dir)
    finished = record.is_file()
    if not finished and (aside.exists() or not ckpts.is_dir()):
        shutil.rmtree(ckpts, ignore_errors=True)
        return aside if aside.exists() else None
    shutil.rmtree(aside, ignore_errors=True)
    aside.mkdir(parents=True)
    if ckpts.is_dir():
        ckpts.rename(aside / ckpts.name)
    if finished:
        record.rename(aside / record.name)
    return aside


def record_path(run_dir: Path) -> Path:
    """Where a finished run's record lies: beside its ``checkpoints`` folder."""
    return run_dir / "run.json"


def save_record(run: Run, path: Path) -> None:
    """Write ``run`` as JSON atomically (a killed command leaves the old file or the new, never half)."""
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(asdict(run), indent=1, default=str))
    os.replace(tmp, path)


def load_record(path: Path) -> Run:
    """The :class:`Run` of a record; ValueError names what is wrong with an unreadable one."""
    try:
        data = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ValueError(f"cannot read it as JSON ({err})") from err
    names = {f.name for f in fields(Run)}
    if not isinstance(data, dict) or set(data) != names:
        got = sorted(data) if isinstance(data, dict) else type(data).__name__
        raise ValueError(f"it holds {got}, not the fields {sorted(names)}")
    run = Run(**data)
    run.config = Path(run.config)
    run.resolved_config = None if run.resolved_config is None else Path(run.resolved_config)
    return run


def resolved_sha256(config: Path, *overrides: str) -> str:
    """Digest of the config as the CLI resolves it (every included file expanded, defaults applied, and the
    ``-c`` blocks among ``overrides``: a benchmark cell's method block), not of the file's own bytes: a run
    whose ``_base`` block changed is another run."""
    return config_digest(resolve(config, *overrides))


def config_digest(cfg: dict) -> str:
    """The digest :func:`resolved_sha256` gives, of an already resolved config."""
    return hashlib.sha256(json.dumps(cfg, sort_keys=True, default=str).encode()).hexdigest()


def flat_settings(cfg, prefix: str = "") -> dict:
    """A resolved config's settings by dotted key (``model.init_args.beta``)."""
    if not isinstance(cfg, dict):
        return {prefix: cfg}
    out = {}
    for key, value in cfg.items():
        out.update(flat_settings(value, f"{prefix}.{key}" if prefix else str(key)))
    return out


def changed_settings(recorded_config: Optional[Path], now: dict, most: int = 5) -> str:
    """What differs between a run's recorded resolved config and the one asked for now, as
    ``key: old -> new`` (the first ``most``), or "" when the recorded file cannot be read."""
    try:
        before = flat_settings(yaml.safe_load(Path(recorded_config).read_text()))
    except (OSError, TypeError, yaml.YAMLError):
        return ""
    after, missing = flat_settings(now), "(unset)"
    changed = [f"{key}: {before.get(key, missing)} -> {after.get(key, missing)}" for key in sorted({*before, *after})
               if before.get(key, missing) != after.get(key, missing)]
    return "; ".join(changed[:most]) + (f"; and {len(changed) - most} more" if len(changed) > most else "")


def reuse_check(path: Path, config_sha: str, overrides: list[str], teacher_finished: str,
                config_now: Optional[dict] = None) -> tuple[Optional[Run], str]:
    """The recorded run at ``path`` if it is the run asked for, else ``(None, why it has to run)``;
    ``config_now``, the resolved config asked for, lets the reason name the settings that changed."""
    if not path.is_file():
        return None, "no record yet"
    try:
        run = load_record(path)
    except ValueError as err:
        return None, f"its record {path} is unreadable: {err}"
    if run.overrides != overrides:  # first: the digest below covers the overrides too
        before, now = set(run.overrides), set(overrides)
        return None, (f"its overrides changed: now {sorted(now - before) or 'the same set, reordered'}, "
                      f"was {sorted(before - now)}")
    if run.config_sha256 != config_sha:
        changed = changed_settings(run.resolved_config, config_now) if config_now is not None else ""
        return None, "the config (or a file it includes) changed since it ran" + (f" ({changed})" if changed else "")
    if run.teacher_finished != teacher_finished:
        return None, "its teacher was trained again since it ran"
    if not Path(run.best_ckpt).is_file():
        return None, f"its checkpoint {run.best_ckpt} is gone"
    return run, ""


def run_one(key: str, config: Path, seed: int, overrides: list[str], run_dir: Path,
            teacher_finished: str = "", rerun: bool = False) -> Run:
    """Fit + test one config with ``overrides``; record its top-1, wall time and val/acc history.

    A record in ``run_dir`` of the same resolved config, overrides and teacher run
    (``teacher_finished``, "" for runs without a teacher) is returned instead, unless ``rerun``.
    """
    name = f"{label(key)} seed {seed}"
    ckpt_dir = checkpoint_dir(run_dir)
    overrides = [f"--seed_everything={seed}", f"--checkpoint.dirpath={ckpt_dir}", *overrides]
    cli = parse(config, *overrides)  # parsed once: the digest here, the fit below (if it has to run)
    config_now = resolved(cli)
    config_sha, record = config_digest(config_now), record_path(run_dir)
    recorded, why = (None, "--rerun") if rerun else reuse_check(record, config_sha, overrides, teacher_finished,
                                                                config_now)
    if recorded is not None:
        print(f"[results] {name}: reused {record} (test top-1 {100 * recorded.test_acc:.2f}%)", flush=True)
        return recorded
    started = {"config_sha256": config_sha, "overrides": overrides, "teacher_finished": teacher_finished}
    resume, how = (None, "") if rerun else resume_point(run_dir, started)
    print(f"[results] {name}: running ({why}{'; ' + how if how else ''})", flush=True)
    if resume is None:
        kept = set_aside(run_dir)  # a fresh run starts clean, so best.ckpt is this run's
        if kept:
            print(f"[results] {name}: the earlier run's checkpoints and record are kept in {kept} until this "
                  f"run is recorded", flush=True)
        run_dir.mkdir(parents=True, exist_ok=True)
        (run_dir / "started.json").write_text(json.dumps(started))
    else:
        record.unlink(missing_ok=True)  # no record while its run goes on
    history = ValAccHistory(progress=f"[results] {name}")
    test_acc, best = fit_and_test(config, *overrides, callbacks=[history], save_config=run_dir / "config.yaml",
                                  ckpt_path=resume, parsed=cli)
    run = Run(key, config, seed, overrides, test_acc, history.seconds(), history.history,
              run_dir / "config.yaml", best, network_name(yaml.safe_load((run_dir / "config.yaml").read_text())),
              config_sha,
              teacher_finished, datetime.datetime.now(datetime.timezone.utc).isoformat(), device_name())
    save_record(run, record)
    shutil.rmtree(run_dir / PREVIOUS, ignore_errors=True)
    print(f"[results] {name}: test top-1 {100 * test_acc:.2f}% in {run.wall_s:.0f} s", flush=True)
    return run

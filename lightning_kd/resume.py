"""What a resumed run may change: a resume continues the run it names, so its settings are compared with
the checkpoint's, applied where that is safe and refused with a message otherwise; never dropped.

Safe to change on a resume: the teacher file's location (the same teacher moved: its content is pinned by
:func:`check_teacher_files`), the speed options
(``compile``, ``channels_last``, ``check_finite_every_n_steps``) and the optimizer's settings (e.g. a
lower learning rate after a divergence: applied to the restored optimizer). Anything else (the
method, the networks, the loss weights, the LR schedule, a relative schedule's run length) is the run.

This module is the policy's one owner; the others only call it at their moment, and a resume's settings are
checked once: by the CLI for ``lightning-kd fit --ckpt_path`` (before LightningCLI replaces the model's
settings with the checkpoint's, it alone sees what the command line asked for; it keeps :data:`SAFE_CHANGES`),
else by the module's ``on_load_checkpoint`` (:func:`check_loaded_resume`, a fit resumed from Python, before
the weights load); :class:`~lightning_kd.callbacks.ResumeCheck` checks the restored schedules and applies the
optimizer settings once the trainer has them.
"""
from __future__ import annotations

import hashlib
import importlib
from pathlib import Path
from typing import Any, Optional

from pytorch_lightning.utilities import rank_zero_info

from lightning_kd.trust import already_imported

SPEED_OPTIONS = ("compile", "channels_last", "check_finite_every_n_steps", "log_every_step")
#: The settings a resumed run may change: applied, and said where they differ.
SAFE_CHANGES = (*SPEED_OPTIONS, "teacher_ckpt", "optimizer")
LINKED = ("num_classes", "input_shape")  # linked from the data by the CLI; checked against the data itself
# Scheduler state that is progress (restored as it was) or follows the optimizer's LR, not the schedule.
PROGRESS = ("last_epoch", "_step_count", "_last_lr", "base_lrs", "_get_lr_called_within_step", "_is_initial",
            "verbose")


def method_name(cls: type) -> str:
    return f"{cls.__module__}.{cls.__qualname__}"


def imported(class_path: str) -> Optional[type]:
    """The class a dotted path names (``lightning_kd.methods.KD``), or None if it does not import."""
    module, _, name = class_path.rpartition(".")
    try:
        return getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError, ValueError):
        return None


def plain(value: Any) -> Any:
    """Config values in one form: tuples as lists, recursively."""
    if isinstance(value, dict):
        return {k: plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [plain(v) for v in value]
    return value


def differences(saved: dict, current: dict, prefix: str = "") -> list[tuple[str, Any, Any]]:
    """``(key, saved value, current value)`` wherever two (nested) configs differ, over the keys both
    have (a checkpoint written without the CLI holds no optimizer or scheduler config, for instance)."""
    found = []
    for key in sorted(set(saved) & set(current)):
        a, b = plain(saved[key]), plain(current[key])
        if isinstance(a, dict) and isinstance(b, dict):
            found += differences(a, b, f"{prefix}{key}.")
        elif a != b:
            found.append((f"{prefix}{key}", a, b))
    return found


def file_digest(path: str | Path) -> Optional[str]:
    path = Path(path)
    return hashlib.sha256(path.read_bytes()).hexdigest() if path.is_file() else None


#: Where a checkpoint records the files its run read as teacher: role -> {"path", "sha256"}.
TEACHER_FILES = "lightning_kd_teacher_files"


def check_teacher_files(recorded: dict, current: dict, where: str) -> None:
    """A resumed or tested run reads the teacher its checkpoint was trained with: every file read as teacher
    now (``current``: role -> {"path", "sha256"}; ``teacher_ckpt``, ensemble members, RCO route anchors) must
    have the content the checkpoint recorded for that role. A moved file with the same content is followed."""
    for role in sorted(set(recorded) & set(current)):
        old, new = recorded[role], current[role]
        if old["sha256"] != new["sha256"]:
            moved = "" if old["path"] == new["path"] else f" (recorded at {old['path']!r})"
            raise ValueError(
                f"{where} was trained with the {role} of sha256 {old['sha256']}{moved}, but {new['path']!r} now holds "
                f"sha256 {new['sha256']}: another teacher (retrained or replaced in place?). A resumed or tested run "
                f"keeps its teacher: give the file it was trained with (a moved copy is followed), or start a new "
                f"run without ckpt_path.")


#: Where a checkpoint records the training batches whose gradients were still accumulating when it was written.
ACCUMULATED = "lightning_kd_accumulated_batches"


def check_accumulation(checkpoint: dict, accumulate_grad_batches: int, ckpt_path) -> None:
    """Refuse to resume a fit from a checkpoint written in the middle of a gradient accumulation: the accumulated
    gradients are in no checkpoint, so the resumed run's next step would use fewer batches than the run's."""
    pending = checkpoint.get(ACCUMULATED, 0)
    if pending:
        raise ValueError(
            f"ckpt_path {str(ckpt_path)!r} was written in the middle of a gradient accumulation ({pending} batch(es) "
            f"of accumulate_grad_batches={accumulate_grad_batches} waiting for the optimizer step; their gradients "
            f"are in no checkpoint), so a resume from it would not be exact: resume from a checkpoint written at an "
            f"optimizer step (an epoch's end, e.g. best.ckpt or an earlier last.ckpt), and in a new run set "
            f"val_check_interval to a multiple of accumulate_grad_batches.")


def saved_method(checkpoint: dict) -> Optional[str]:
    """The class path of the method that wrote a checkpoint (ours record it; the CLI's hparams too)."""
    return checkpoint.get("lightning_kd_method") or checkpoint.get("hyper_parameters", {}).get("_class_path")


def check_method(checkpoint: dict, method: type, where: str) -> None:
    """Refuse a checkpoint that another method wrote."""
    saved = saved_method(checkpoint)
    if saved and already_imported(saved) is not method:  # a path read from a file: never imported
        raise ValueError(f"{where} is a checkpoint of {saved}, but this run trains {method_name(method)}: "
                         f"resume or test a run with the config it was started with, or start a new run "
                         f"without ckpt_path.")


def check_resume(checkpoint: dict, method: type, hparams: dict, where: str) -> None:
    """Refuse to resume a checkpoint of another method, or with other settings than the ones it was
    written with; the safe changes pass (see the module docstring)."""
    check_method(checkpoint, method, where)
    saved_hparams = checkpoint.get("hyper_parameters", {})
    ignored = (*SAFE_CHANGES, *LINKED, "_class_path", "_instantiator")
    changed = [d for d in differences(saved_hparams, hparams) if d[0].split(".")[0] not in ignored]
    if changed:
        listed = "; ".join(f"{k}: {a!r} in the checkpoint, {b!r} now" for k, a, b in changed[:6])
        raise ValueError(f"{where} was written by a run with other settings than this one ({listed}). A resumed "
                         f"run keeps its settings: drop those overrides to resume, or start a new run "
                         f"(without ckpt_path) to change them.")


def check_loaded_resume(checkpoint: dict, module, ckpt_path) -> None:
    """A fit's resume as its module loads the checkpoint (before the weights): :func:`check_resume` of the
    module's settings, unless the CLI has checked the command line's against this checkpoint already
    (``module.resume_checked``, set by the CLI; the module's settings are then the checkpoint's, as LightningCLI
    loaded them, plus the safe changes)."""
    if getattr(module, "resume_checked", None) != str(ckpt_path):
        check_resume(checkpoint, type(module), dict(module.hparams), f"ckpt_path {str(ckpt_path)!r}")


def schedule_of(scheduler) -> dict:
    """An LR scheduler's settings: its state without what is progress (see :data:`PROGRESS`)."""
    return {k: plain(dict(v) if hasattr(v, "items") else v) for k, v in scheduler.state_dict().items()
            if k not in PROGRESS}


def check_schedules(restored: list[dict], configured: list[dict], ckpt_path: str) -> None:
    """Refuse a resume whose restored LR schedules (:func:`schedule_of`) differ from this run's."""
    for restored_one, configured_one in zip(restored, configured):
        if restored_one != configured_one:
            changed = {k: (restored_one.get(k), configured_one.get(k)) for k in restored_one
                       if restored_one.get(k) != configured_one.get(k)}
            raise ValueError(
                f"ckpt_path {ckpt_path!r} was trained with another LR schedule than this run's "
                f"({'; '.join(f'{k}: {a} in the checkpoint, {b} now' for k, (a, b) in changed.items())}; a "
                f"changed trainer.max_epochs moves the milestones of a relative schedule). A resumed run keeps "
                f"its schedule: resume with the run's settings, or start a new run without ckpt_path.")


def apply_optimizer_settings(optimizer) -> None:
    """This run's configured optimizer settings (e.g. a lower learning rate) on a restored optimizer, said."""
    for group in optimizer.param_groups:
        for key, value in optimizer.defaults.items():  # this run's configured settings
            if key == "lr":
                apply_learning_rate(group, value)
            elif key in group and group[key] != value and isinstance(value, (bool, int, float)):
                rank_zero_info(f"Resuming with {key}={value} from this run's optimizer settings "
                               f"(the checkpoint's run used {group[key]}).")
                group[key] = value


def apply_learning_rate(group: dict, lr: float) -> None:
    """Scale a restored param group's schedule to a new initial learning rate."""
    initial = group.get("initial_lr", group["lr"])
    if initial == lr:
        return
    rank_zero_info(f"Resuming with lr={lr} from this run's optimizer settings (the checkpoint's run used "
                   f"{initial}); the schedule continues from there.")
    group["lr"] = group["lr"] * lr / initial if initial else lr
    if "initial_lr" in group:
        group["initial_lr"] = lr

"""Reading offline wandb runs (``<save_dir>/wandb/offline-run-*``) as a dashboard would show them, from the
records of their ``run-*.wandb`` file (a LevelDB-style log of protobuf ``Record``s, what `wandb sync`
uploads). A run is read only once it is whole: ``run.finish()`` returns before wandb's service process has
written the file, so :func:`flushed` finishes the runs and stops that service (which writes everything out
before it exits), and every run read must hold its ``exit`` record."""
from __future__ import annotations

import json
import struct
from pathlib import Path

import wandb
from wandb.proto import wandb_internal_pb2

BLOCK, HEADER = 32768, 7  # the log's block size and record header (crc32, length, type)
FULL, LAST = 1, 4  # record types that end a payload


def payloads(data: bytes) -> list[bytes]:
    """The payloads of a LevelDB-style log after the file's 7-byte header (``:W&B`` + magic + version)."""
    assert data[:4] == b":W&B", "not a wandb run file"
    out, pos, pending = [], HEADER, b""
    while pos + HEADER <= len(data):
        if BLOCK - pos % BLOCK < HEADER:  # a block's tail too short for a header is padding
            pos += BLOCK - pos % BLOCK
            continue
        _, length, kind = struct.unpack("<IHB", data[pos:pos + HEADER])
        pos += HEADER
        if kind == 0 and length == 0:  # zero padding to the block's end
            pos += BLOCK - pos % BLOCK
            continue
        pending += data[pos:pos + length]
        pos += length
        if kind in (FULL, LAST):
            out.append(pending)
            pending = b""
    return out


def read_run(folder: Path) -> dict:
    """name, group, tags, summary ({key path: value}, the last update of each), table files of one run."""
    (path,) = Path(folder).glob("run-*.wandb")
    run = {"name": None, "group": None, "tags": [], "summary": {}, "finished": False,
           "tables": sorted(Path(folder, "files", "media", "table").glob("*.table.json"))}
    for payload in payloads(path.read_bytes()):
        record = wandb_internal_pb2.Record()
        record.ParseFromString(payload)
        kind = record.WhichOneof("record_type")
        if kind == "run":
            run.update(name=record.run.display_name, group=record.run.run_group, tags=list(record.run.tags))
        elif kind == "summary":
            for item in record.summary.update:
                key = "/".join(item.nested_key) if item.nested_key else item.key
                run["summary"][key] = json.loads(item.value_json)
        elif kind == "exit":
            run["finished"] = True
    assert run["finished"], f"{path} has no exit record: read a run after it finished"
    return run


def flushed() -> None:
    """Finish this process's run and stop wandb's service: every run's file is then whole on disk (a later
    run starts a new service)."""
    wandb.finish()
    wandb.teardown()


def read_runs(save_dir: Path) -> list[dict]:
    """Every offline run under ``save_dir/wandb``, once flushed."""
    flushed()
    return [read_run(folder) for folder in sorted(Path(save_dir, "wandb").glob("offline-run-*"))]

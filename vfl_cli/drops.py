"""Drop folders: where a party's outgoing files go, and where its incoming files arrive.

A party may name, once, a folder per peer into which its outbox files for that peer are
delivered (``vfl peers set-drop bureau /mnt/sftp/to-bureau``), and one folder from which files
addressed to it are picked up into its inbox (``vfl peers set-pickup /mnt/sftp/to-bank``). A
mounted SFTP, SMB or synced folder is just a folder. Both are stored in the workspace's
``vfl.json`` under ``drops`` and ``pickup``.

Nothing partial is ever visible under a final name: a file is written under a hidden temporary
name (``.<name>.<pid>.partial``) in the destination folder, fsynced, and then hard-linked into
place, which never replaces an existing file. Only then is the source removed. A file that fails
half-way stays where it was and is tried again on the next pass; one taken meanwhile by another
run (a second watch, a cron pass) is skipped. In the pickup folder, which others write to, a
link, pipe or device is never followed or read.
"""

from __future__ import annotations

import filecmp
import json
import os
import shutil
import stat
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from vfl_cli.artifacts.io import pretty_json, replace_atomic
from vfl_cli.errors import VflError
from vfl_cli.workspace import CONFIG, Workspace

#: A file in the pickup folder that does not parse yet is left alone this long: a sync tool may
#: still be writing it. After that it goes to the inbox, where it is checked (and refused) there.
SETTLE_S = 60.0


@dataclass(frozen=True)
class Moved:
    """One file delivered to a drop folder or picked up into the inbox."""

    file: str
    peer: str
    folder: str

    def to_dict(self) -> dict[str, str]:
        return dict(self.__dict__)


def _save_config(ws: Workspace, key: str, value: Any) -> None:
    # Re-read the file: another command may have changed other keys since ws was loaded.
    config = json.loads(ws.path(CONFIG).read_text())
    config[key] = value
    replace_atomic(ws.path(CONFIG), pretty_json(config))
    ws.config[key] = value


def _folder(folder: Path) -> Path:
    if not folder.is_dir():
        raise VflError(f"{folder} is not a folder; create it (or mount the share) first")
    return folder.resolve()


def set_drop(ws: Workspace, peer: str, folder: Path) -> Path:
    """Deliver every outgoing file for ``peer`` into ``folder`` from now on."""
    ws.peer(peer)  # a clear error for an unknown peer
    target = _folder(folder)
    if target in (ws.inbox.resolve(), ws.outbox.resolve()):
        raise VflError(f"{folder} is this party's own inbox or outbox; name the folder {peer} reads")
    _save_config(ws, "drops", dict(drops(ws), **{peer: str(target)}))
    return target


def set_pickup(ws: Workspace, folder: Path) -> Path:
    """Pick up files addressed to this party from ``folder`` into the inbox from now on."""
    target = _folder(folder)
    if target in (ws.inbox.resolve(), ws.outbox.resolve()):
        raise VflError(f"{folder} is this party's own inbox or outbox; name the folder peers write to")
    _save_config(ws, "pickup", str(target))
    return target


def drops(ws: Workspace) -> dict[str, str]:
    return dict(ws.config.get("drops") or {})


def pickup_folder(ws: Workspace) -> Path | None:
    value = ws.config.get("pickup")
    return Path(value) if value else None


def recipient_of(name: str, peers: list[str]) -> str | None:
    """The recipient named by an artifact file name ``...<sender>-to-<recipient>.zip``."""
    hits = [p for p in peers if name.endswith(f"-to-{p}.zip")]
    return max(hits, key=len) if hits else None


def outbox_files(ws: Workspace) -> list[tuple[Path, str | None]]:
    """Every file waiting in the outbox, with its recipient (None if no known peer)."""
    peers = sorted(p.stem for p in ws.path("peers").glob("*.json"))
    return [(f, recipient_of(f.name, peers)) for f in sorted(ws.outbox.glob("*.zip"))
            if not f.name.startswith(".")]


def copy_atomic(src: Path, folder: Path) -> bool:
    """Copy ``src`` into ``folder`` under its own name, never showing a partial file.

    Returns False if a file of that name is already there with other bytes (it is left alone).
    """
    target = folder / src.name
    if target.exists():
        return filecmp.cmp(src, target, shallow=False)
    tmp = folder / f".{src.name}.{os.getpid()}.partial"
    try:
        with open(src, "rb") as fin, open(tmp, "wb") as fout:
            shutil.copyfileobj(fin, fout, 1 << 20)  # streamed: artifacts can be large
            fout.flush()
            os.fsync(fout.fileno())
        try:
            os.link(tmp, target)
        except FileExistsError:
            return filecmp.cmp(src, target, shallow=False)
        except OSError:  # a share without hard links: rename, after checking nothing is there
            if target.exists():
                return filecmp.cmp(src, target, shallow=False)
            os.replace(tmp, target)
        return True
    finally:
        if tmp.exists():
            tmp.unlink()


def deliver(ws: Workspace) -> list[Moved]:
    """Move every outbox file whose recipient has a drop folder into that folder."""
    folders = drops(ws)
    moved = []
    for f, peer in outbox_files(ws):
        if peer is None or peer not in folders:
            continue
        folder = Path(folders[peer])
        if not folder.is_dir():
            raise VflError(f"the drop folder for {peer}, {folder}, is gone; mount it or set another")
        try:
            if not copy_atomic(f, folder):
                raise VflError(
                    f"{folder / f.name} already exists with other content; it was not overwritten. "
                    f"Check who wrote it before removing it"
                )
            f.unlink()
        except FileNotFoundError:
            continue  # delivered meanwhile by another run (a second watch, a cron pass)
        moved.append(Moved(f.name, peer, str(folder)))
    return moved


def pick_up(ws: Workspace, *, now: float | None = None) -> list[Moved]:
    """Move files addressed to this party from the pickup folder into the inbox."""
    folder = pickup_folder(ws)
    if folder is None:
        return []
    if not folder.is_dir():
        raise VflError(f"the pickup folder {folder} is gone; mount it or set another")
    now = time.time() if now is None else now
    moved = []
    for f in sorted(folder.glob(f"*-to-{ws.name}.zip")):
        if f.name.startswith("."):
            continue
        try:
            picked = _pick_one(ws, f, now)
        except FileNotFoundError:
            continue  # taken meanwhile by another run
        if picked:
            sender = f.name[: -len(f"-to-{ws.name}.zip")].rsplit(".", 1)[-1]
            moved.append(Moved(f.name, sender, str(folder)))
    return moved


def _pick_one(ws: Workspace, f: Path, now: float) -> bool:
    """Move one file into the inbox; False if it is left where it is for now."""
    from vfl_cli.artifacts.container import read_artifact

    if not stat.S_ISREG(os.lstat(f).st_mode):
        return False  # a link, pipe or device is never followed or read: left where it is
    if not (ws.path("archive", "received", f.name).exists() or (ws.inbox / f.name).exists()):
        try:
            # bounded by the workspace's max_file_size, and checked for form only: the inbox checks the rest
            read_artifact(f, max_bytes=ws.max_file_size, limit=ws.size_limit())
        except VflError:
            if now - f.stat().st_mtime < SETTLE_S:
                return False  # perhaps still being written by a sync tool
        if not copy_atomic(f, ws.inbox):
            return False  # another file of that name waits in the inbox: leave this one
    f.unlink()
    return True

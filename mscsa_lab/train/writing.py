"""Where a run writes, and only there: its output folder, resolved once, with every file written under
a temporary name and renamed into place (so a link planted at a file's name is replaced, never
followed), a finished run never replaced unless asked, the leftovers of a killed run cleaned, and a
full or read-only disk reported with the path and the space needed instead of a trace.
"""
from __future__ import annotations

import errno
import os
import re
import shutil
import time
from pathlib import Path
from typing import Any, Callable

from mscsa_lab.errors import UserError
from mscsa_lab.io.guarded import shown_name
from mscsa_lab.io.numbers import human_bytes

__all__ = ["RunFolderError", "prepare_run_folder", "clean_orphans", "write_failure", "write_text_file",
           "write_file_with", "torch_save", "remove_path", "tensor_bytes", "RUN_FILES"]

# What a run writes (removed by overwrite=True): the weights, metadata, history, resumable state, evaluation.
RUN_FILES = ("model.json", "model.safetensors", "history.csv", "last", ".last.old", "eval")
_TEMPORARY = re.compile(r"^\.(?:last\.tmp-(\d+)|[A-Za-z0-9_.]+\.tmp(?:-(\d+))?)$")


class RunFolderError(UserError, RuntimeError):
    """A run's output folder that cannot be written as asked; the message names the path and what to do."""


def remove_path(path: Path) -> None:
    """Remove a file, a link (not what it points to) or a folder."""
    if path.is_symlink() or path.is_file():
        path.unlink()
    elif path.is_dir():
        shutil.rmtree(path)


def _size(path: Path) -> int:
    if path.is_symlink() or not path.is_dir():
        try:
            return path.lstat().st_size
        except OSError:
            return 0
    return sum(_size(child) for child in path.iterdir())


def _error_number(error: BaseException) -> int | None:
    """The errno of an OSError, or the OS error code in the text of a library's error (safetensors
    reports 'Os { code: 28, ... }', others 'os error 28')."""
    if isinstance(error, OSError) and error.errno is not None:
        return error.errno
    found = re.search(r"(?:code: |os error |errno )(\d+)", str(error), re.IGNORECASE)
    return int(found.group(1)) if found else None


def write_failure(error: BaseException, path: Path, needed: int | None = None) -> RunFolderError:
    """The message for a failed write of ``path``: what went wrong (full disk, file size limit,
    read-only, permissions), the free space there and what the write needed."""
    number = _error_number(error)
    need = f"; this write needs about {human_bytes(needed)}" if needed else ""
    if number in (errno.ENOSPC, getattr(errno, "EDQUOT", -1)):
        try:
            free = human_bytes(shutil.disk_usage(_existing(path)).free)
        except OSError:
            free = "little"
        reason = f"the disk is full ({free} free there{need}): free some space, or write the run elsewhere (--out)"
    elif number == errno.EFBIG:
        reason = (f"the file is larger than this process may write (a file size limit such as `ulimit -f`{need}): "
                  f"raise the limit, or write the run elsewhere (--out)")
    elif number == errno.EROFS:
        reason = "the file system is read-only: write the run to a writable folder (--out)"
    elif number in (errno.EACCES, errno.EPERM):
        reason = "permission denied: write the run to a folder you may write to (--out)"
    else:
        text = str(error).strip()
        detail = getattr(error, "strerror", None) or (text.splitlines()[0][:200] if text else type(error).__name__)
        reason = f"{detail}: write the run elsewhere (--out)"
    return RunFolderError(f"cannot write {shown_name(path)}: {reason}")


def _existing(path: Path) -> Path:
    return next((p for p in [path, *path.parents] if p.exists()), Path(path.anchor or "."))


def write_file_with(folder: Path, name: str, write: Callable[[Path], Any], needed: int | None = None) -> Path:
    """``write(temporary path)`` then rename it to ``folder/name``: the file appears whole or not at
    all, and a link at ``name`` is replaced rather than written through. Errors become ``RunFolderError``."""
    final = folder / name
    temporary = folder / f".{name}.tmp-{os.getpid()}"
    try:
        if temporary.is_symlink() or temporary.exists():
            remove_path(temporary)
        write(temporary)
        os.replace(temporary, final)
    except Exception as error:  # noqa: BLE001 - OSError, and the libraries' own (SafetensorError...) with an errno
        _discard(temporary)
        if _error_number(error) is None and not isinstance(error, (OSError, RuntimeError)):
            raise
        if isinstance(error, RunFolderError):
            raise
        raise write_failure(error, final, needed) from None
    return final


def write_text_file(folder: Path, name: str, text: str) -> Path:
    """``text`` as ``folder/name`` (UTF-8), written aside and renamed; the temporary file is created
    afresh (``O_EXCL | O_NOFOLLOW``), never opened through a link."""
    data = text.encode("utf-8")

    def write(path: Path) -> None:
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_CLOEXEC", 0)
        descriptor = os.open(path, flags, 0o666)
        with os.fdopen(descriptor, "wb") as handle:
            handle.write(data)

    return write_file_with(folder, name, write, needed=len(data))


class _WholeWrites:
    """A file for ``torch.save`` whose every write either completes or raises the OS's error (kept in
    ``error``): PyTorch's writer turns a failed write into 'unexpected pos', losing why it failed."""

    def __init__(self, descriptor: int) -> None:
        self.descriptor = descriptor
        self.error: OSError | None = None

    def write(self, data) -> int:
        view = memoryview(data).cast("B")
        done = 0
        while done < len(view):
            try:
                done += os.write(self.descriptor, view[done:])
            except OSError as error:
                self.error = error
                raise
        return done

    def flush(self) -> None:
        pass


def torch_save(value: Any, path: Path) -> None:
    """``torch.save(value, path)`` that reports a full disk or a file size limit as the OSError it is."""
    import torch

    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_CLOEXEC", 0)
    descriptor = os.open(path, flags, 0o666)
    target = _WholeWrites(descriptor)
    try:
        torch.save(value, target)
    except Exception:
        if target.error is not None:
            raise target.error from None
        raise
    finally:
        os.close(descriptor)


def _discard(path: Path) -> None:
    try:
        if path.is_symlink() or path.exists():
            remove_path(path)
    except OSError:
        pass


def tensor_bytes(value: Any) -> int:
    """Bytes of every tensor in a nested structure (state dicts, optimizer state): what a save writes."""
    import torch

    if isinstance(value, torch.Tensor):
        return value.numel() * value.element_size()
    if isinstance(value, dict):
        return sum(tensor_bytes(v) for v in value.values())
    if isinstance(value, (list, tuple)):
        return sum(tensor_bytes(v) for v in value)
    return 0


def _alive(pid: int) -> bool:
    if pid == os.getpid():
        return False  # this process starts the run now: its own leftovers are from an earlier attempt
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def clean_orphans(folder: Path) -> list[str]:
    """Remove what an interrupted run left (``.last.tmp-PID`` of a process that is gone, half-written
    ``.NAME.tmp`` files, ``.last.old`` beside a complete ``last/``); returns one line per removal."""
    from mscsa_lab.train.state import LAST, STATE_FILE

    removed = []
    complete = (folder / LAST / STATE_FILE).is_file() and (folder / LAST / "model.safetensors").is_file()
    candidates = [p for p in folder.iterdir() if _TEMPORARY.match(p.name)]
    if complete and (folder / f".{LAST}.old").exists():
        candidates.append(folder / f".{LAST}.old")
    for path in candidates:
        match = _TEMPORARY.match(path.name)
        pid = next((int(g) for g in (match.groups() if match else ()) if g), None)
        if pid is not None and _alive(pid):
            continue  # another process may be writing it now
        size = _size(path)
        try:
            remove_path(path)
        except OSError:
            continue
        removed.append(f"{path.name} ({human_bytes(size)})")
    return removed


def _probe(folder: Path) -> None:
    """Write and remove a small file: a read-only or full folder is found before any work."""
    probe = folder / f".write-test-{os.getpid()}"
    try:
        descriptor = os.open(probe, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | getattr(os, "O_NOFOLLOW", 0), 0o600)
        try:
            os.write(descriptor, b"mscsa_lab")
        finally:
            os.close(descriptor)
        probe.unlink()
    except OSError as error:
        _discard(probe)
        raise write_failure(error, folder) from None


def _finished_when(folder: Path) -> str:
    try:
        return time.strftime("%Y-%m-%d %H:%M", time.localtime((folder / "model.json").lstat().st_mtime))
    except OSError:
        return "earlier"


def prepare_run_folder(out: str | os.PathLike, resume: bool = False, overwrite: bool = False,
                       notes: list[str] | None = None) -> Path:
    """The run's output folder, created and resolved (every file of the run is written inside this
    path), after these checks: a finished run (``model.json``) or an unfinished run's resumable state
    (``last/``) is continued only with ``resume`` and replaced only with ``overwrite``; leftovers of an
    interrupted run are removed (and noted); the folder is writable."""
    from mscsa_lab.train.state import find_last_state

    notes = notes if notes is not None else []
    given = Path(out).expanduser()
    try:
        given.mkdir(parents=True, exist_ok=True)
    except FileExistsError:
        raise RunFolderError(f"the output folder {shown_name(given)} is a file: give a folder (--out)") from None
    except OSError as error:
        raise write_failure(error, given) from None
    folder = given.resolve()
    if not folder.is_dir():
        raise RunFolderError(f"the output folder {shown_name(given)} is not a folder: give a folder (--out)")
    finished = (folder / "model.json").is_symlink() or (folder / "model.json").exists()
    state = find_last_state(folder)
    if (finished or state is not None) and not resume:
        what = (f"a finished run (its model.json is from {_finished_when(folder)})" if finished else
                f"the resumable state of an unfinished run ({state.name}/)")
        if not overwrite:
            raise RunFolderError(
                f"{shown_name(given)} holds {what}: continue it with --resume (resume=True), write the new run to "
                f"another folder (--out), or replace it with --overwrite (overwrite=True)")
        replaced = [name for name in RUN_FILES if (folder / name).is_symlink() or (folder / name).exists()]
        for name in replaced:
            try:
                remove_path(folder / name)
            except OSError as error:
                raise write_failure(error, folder / name) from None
        notes.append(f"overwrite: replaced {what} in {given} ({', '.join(replaced)})")
    removed = clean_orphans(folder)
    if removed:
        notes.append(f"removed what an interrupted run left in {given}: {', '.join(removed)}")
    _probe(folder)
    return folder

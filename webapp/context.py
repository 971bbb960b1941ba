"""What one running app holds, passed to every tab: its limits, its store of built models, its runs
folder, the folder of files it offers for download, and the last message of each session's tabs.

Nothing here is a module global: ``app.make_app(context)`` builds a page around one ``AppContext``, so
tests (and several apps in one process) each have their own.
"""
from __future__ import annotations

import os
import shutil
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mscsa_lab.workflows.limits import DEFAULT_LIMITS, ResourceLimits
from mscsa_lab.workflows.store import ModelStore
from webapp.runs import JobSlot

__all__ = ["AppContext", "DEFAULT_CACHE_BYTES", "DEFAULT_CACHE_IDLE_S", "OUTPUT_MAX_AGE_S"]

DEFAULT_CACHE_BYTES = 2 * 2**30
OUTPUT_MAX_AGE_S = 3600
DEFAULT_UPLOAD_CAP_BYTES = 2 * 2**30  # all uploads together (Gradio also removes those older than an hour)
UPLOAD_GRACE_S = 120  # an upload younger than this may still be in use by its request: never removed
IDLE_TRIM_S = 5.0  # an idle app collects garbage and hands freed heap memory back after this long
DEFAULT_CACHE_IDLE_S = 600.0  # ... and after this long without a request, the built models it kept as well


def _trim_memory() -> None:
    """Collect cycles and return free heap pages to the system (glibc keeps them otherwise), so an idle app's
    memory comes back near where it started after heavy use; the model store keeps what it is allowed."""
    import ctypes
    import gc

    gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):  # not glibc: nothing to hand back this way
        pass


@dataclass
class AppContext:
    """``limits``: what one request may ask for (the app's --max-* flags); ``store``: built models kept
    between requests (--cache-mb); ``runs_dir``: where the Train tab writes runs and the Saliency tab finds
    them (--runs-dir); ``outputs_dir``: downloadable files, removed after ``OUTPUT_MAX_AGE_S``; ``jobs``: the
    one slot a training run or an ablation study holds."""

    limits: ResourceLimits = DEFAULT_LIMITS.replace(raise_hint="the app's --{flag}")
    store: ModelStore = field(default_factory=lambda: ModelStore(DEFAULT_CACHE_BYTES))
    runs_dir: Path = field(default_factory=lambda: Path(os.environ.get("MSCSA_LAB_RUNS") or "runs").resolve())
    outputs_dir: Path = field(default_factory=lambda: Path(tempfile.gettempdir()) / "mscsa_lab_outputs")
    jobs: JobSlot = field(default_factory=JobSlot)
    uploads_dir: Path | None = None  # Gradio's upload folder (None: its default)
    upload_cap_bytes: int = DEFAULT_UPLOAD_CAP_BYTES
    cache_idle_s: float = DEFAULT_CACHE_IDLE_S  # 0: keep the built models however long the app sits idle
    _messages: dict[tuple[str, str], str] = field(default_factory=dict, repr=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)
    _active: int = field(default=0, repr=False)
    _idle_timer: threading.Timer | None = field(default=None, repr=False)
    _release_timer: threading.Timer | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        self.runs_dir = Path(self.runs_dir).expanduser().resolve()
        self.outputs_dir = Path(self.outputs_dir)

    def output_dir(self, prefix: str) -> Path:
        """A fresh folder for files a user downloads. Folders older than an hour are removed first, so a
        long-running app does not fill the disk (Gradio keeps its own copies of served files)."""
        self.outputs_dir.mkdir(parents=True, exist_ok=True)
        now = time.time()
        for old in self.outputs_dir.iterdir():
            try:
                if old.is_dir() and now - old.stat().st_mtime > OUTPUT_MAX_AGE_S:
                    shutil.rmtree(old, ignore_errors=True)
            except OSError:
                pass
        return Path(tempfile.mkdtemp(prefix=f"{prefix}_", dir=self.outputs_dir))

    def upload_folder(self) -> Path:
        """Where Gradio keeps this app's uploads."""
        import gradio.utils

        return Path(self.uploads_dir or gradio.utils.get_upload_folder())

    def sweep_uploads(self) -> int:
        """Keep all uploads together under ``upload_cap_bytes``: the oldest go first (never one younger than
        ``UPLOAD_GRACE_S``, which its request may still read). Returns the bytes removed."""
        folder = self.upload_folder()
        if not folder.is_dir():
            return 0
        files = []
        for path in folder.rglob("*"):
            try:
                if path.is_file() and not path.is_symlink():
                    stat = path.stat()
                    files.append((stat.st_mtime, stat.st_size, path))
            except OSError:
                continue
        total, removed, now = sum(size for _, size, _ in files), 0, time.time()
        for stamp, size, path in sorted(files):
            if total <= self.upload_cap_bytes or now - stamp < UPLOAD_GRACE_S:
                break
            try:
                path.unlink()
            except OSError:
                continue
            total -= size
            removed += size
        return removed

    def require_uploads(self, values: Any) -> None:
        """Say so when a request names an upload the server no longer has (Gradio removes its copies after an
        hour, and an image uploaded again with the same content keeps the first copy's age)."""
        from mscsa_lab.io.guarded import InputFileError, shown_name

        folder = str(self.upload_folder())
        pending = list(values) if isinstance(values, (tuple, list)) else [values]
        while pending:
            value = pending.pop()
            if isinstance(value, (tuple, list)):
                pending.extend(value)
            elif isinstance(value, dict):
                pending.extend(value.values())
            elif isinstance(value, (str, os.PathLike)) and str(value).startswith(folder + os.sep) \
                    and not os.path.exists(value):
                raise InputFileError(f"the uploaded file {shown_name(Path(value).name)} is no longer on the server "
                                     "(uploads are removed after an hour): upload it again")

    # ------------------------------------------------------------------ memory between requests
    def begin(self) -> None:
        """A request starts: no memory trimming while anything runs."""
        with self._lock:
            self._active += 1
            for timer in (self._idle_timer, self._release_timer):
                if timer is not None:
                    timer.cancel()
            self._idle_timer = self._release_timer = None

    def end(self) -> None:
        """A request ended: once nothing has run for ``IDLE_TRIM_S``, give freed memory back to the system;
        after ``cache_idle_s`` without a request, the models the store kept too (an idle app on a shared
        machine comes back near its starting memory; the next request builds again, in seconds)."""
        with self._lock:
            self._active = max(0, self._active - 1)
            if self._active == 0:
                self._idle_timer = threading.Timer(IDLE_TRIM_S, _trim_memory)
                self._idle_timer.daemon = True
                self._idle_timer.start()
                if self.cache_idle_s > 0:
                    self._release_timer = threading.Timer(self.cache_idle_s, self._release_store)
                    self._release_timer.daemon = True
                    self._release_timer.start()

    def _release_store(self) -> None:
        with self._lock:
            if self._active:  # a request began meanwhile (its begin() cancels this timer; this is the race)
                return
        self.store.cache.clear()
        _trim_memory()

    # ------------------------------------------------------------------ the tabs' last messages
    def remember(self, session: str, tab: str, message: str) -> None:
        """The message a tab's status line shows after its action failed (read by ``recall``)."""
        with self._lock:
            if len(self._messages) > 10_000:  # sessions come and go: keep the newest
                for key in list(self._messages)[:5_000]:
                    del self._messages[key]
            self._messages[(session, tab)] = message

    def recall(self, session: str, tab: str) -> str:
        with self._lock:
            return self._messages.pop((session, tab), "")

"""Finding a training folder's images without letting the folder decide how long that takes.

A data folder is walked once, without trusting it: a symbolic link is followed only when it points
inside the data folder, a folder already walked (a link back to a parent, ``ln -s . DATA/a/loop``)
is not walked again, named pipes, devices and hidden files are left alone, and the walk ends with a
clear message after ``max_files`` entries or ``max_seconds``. The stop flag is checked every few
hundred entries, so Stop, Ctrl-C or a cancelled page ends a scan of millions of files at once.

Images found this way are read later through ``mscsa_lab.io.images.load_image`` with the data
folder as ``root``: a link swapped in after the scan still cannot lead outside it.
"""
from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from pathlib import Path

from timm.data.readers.img_extensions import get_img_extensions

from mscsa_lab.io.guarded import shown_name
from mscsa_lab.stopping import Cancelled, StopFlag, should_stop
from mscsa_lab.train.config import TrainingInputError

__all__ = ["FolderScan", "MAX_SCAN_FILES", "MAX_SCAN_SECONDS", "IMAGE_SUFFIXES"]

MAX_SCAN_FILES = 5_000_000  # files and folders looked at; ImageNet-1k's training set is 1.3 million
MAX_SCAN_SECONDS = 600.0
CHECK_EVERY = 256  # entries between two looks at the clock and the stop flag
# What timm's folder reader takes (.png, .jpg, .jpeg): the same images, in the same order, as before.
IMAGE_SUFFIXES = frozenset(s.lower() for s in get_img_extensions(as_set=True))


@dataclass
class FolderScan:
    """One bounded walk under ``root`` (the data folder as given; resolved here). ``notes`` gathers
    what was left out (links out of the folder, loops, unreadable folders) for the run's notes."""

    root: str | os.PathLike
    max_files: int = MAX_SCAN_FILES
    max_seconds: float = MAX_SCAN_SECONDS
    stop: StopFlag = None
    seen: int = 0
    started: float = field(default_factory=time.monotonic)
    outside: list[str] = field(default_factory=list)
    repeated: list[str] = field(default_factory=list)
    unreadable: list[str] = field(default_factory=list)
    _visited: set[tuple[int, int]] = field(default_factory=set, repr=False)

    def __post_init__(self) -> None:
        self.given = Path(self.root)
        self.root = Path(self.root).resolve()

    # ------------------------------------------------------------------ limits
    def tick(self) -> None:
        """Count one entry; refuse past the caps; look at the clock and the stop flag now and then."""
        self.seen += 1
        if self.seen > self.max_files:
            raise TrainingInputError(
                f"the data folder {shown_name(self.given)} holds more than {self.max_files:,} files and folders (the "
                f"scan stopped there): point the run at a smaller folder, or raise the cap (TrainConfig.scan_max_files, "
                f"--scan-max-files)")
        if self.seen % CHECK_EVERY == 0:
            self.check()

    def check(self) -> None:
        if should_stop(self.stop):
            raise Cancelled(f"stopped while scanning the data folder {shown_name(self.given)} ({self.seen:,} entries "
                            f"looked at): nothing was trained")
        elapsed = time.monotonic() - self.started
        if elapsed > self.max_seconds:
            raise TrainingInputError(
                f"scanning the data folder {shown_name(self.given)} took more than {self.max_seconds:g} s "
                f"({self.seen:,} files and folders so far): is it on a slow network disk, or far larger than meant? "
                f"Copy the images to a local folder, or raise the time cap (TrainConfig.scan_max_s, --scan-max-s)")

    # ------------------------------------------------------------------ walking
    def enter(self, folder: str | Path) -> bool:
        """Mark ``folder`` as walked; False when it was walked already (a loop or a second link to it)."""
        try:
            info = os.stat(folder)
        except OSError:
            self.unreadable.append(str(folder))
            return False
        key = (info.st_dev, info.st_ino)
        if key in self._visited:
            self.repeated.append(str(folder))
            return False
        self._visited.add(key)
        return True

    def entries(self, folder: str | Path) -> list[tuple[str, bool]]:
        """(path, is a folder) of ``folder``'s visible entries that stay inside the data folder, in the
        order the file system lists them (``files`` sorts). Links are followed only to targets inside it;
        anything but regular files and folders is left out."""
        found = []
        try:
            with os.scandir(folder) as listing:
                for entry in listing:
                    self.tick()
                    if entry.name.startswith("."):
                        continue
                    kind = self._kind(entry)
                    if kind is not None:
                        found.append((entry.path, kind == "folder"))
        except OSError as error:
            self.unreadable.append(f"{folder} ({error.strerror or error})")
        return found

    def _kind(self, entry: os.DirEntry) -> str | None:
        try:
            if entry.is_symlink():
                target = Path(os.path.realpath(entry.path))
                if target != self.root and not target.is_relative_to(self.root):
                    self.outside.append(str(entry.path))
                    return None
            if entry.is_dir():
                return "folder"
            if entry.is_file():
                return "file"
        except OSError:  # a dangling link, a loop of links, a permission problem: not an image
            return None
        return None

    def files(self, folder: str | Path, suffixes: frozenset[str] = IMAGE_SUFFIXES) -> list[str]:
        """Paths (strings: a million ``Path`` objects cost seconds) of the image files under ``folder``, at
        every level, in no particular order (callers sort)."""
        found: list[str] = []
        pending = [str(folder)] if self.enter(folder) else []
        while pending:
            current = pending.pop()
            for path, is_folder in self.entries(current):
                if is_folder:
                    if self.enter(path):
                        pending.append(path)
                elif os.path.splitext(path)[1].lower() in suffixes:
                    found.append(path)
        self.check()
        return found

    def _relative(self, item: str) -> str:
        """A path as the data folder's users know it (inside the folder), else as it is."""
        for base in (self.given, self.root):
            try:
                return str(Path(item).relative_to(base))
            except ValueError:
                continue
        return item

    def notes(self) -> list[str]:
        """What the walk left out, for the run's notes (a few names each, never a wall)."""
        notes = []
        for items, what in ((self.outside, "symbolic link(s) pointing outside the data folder (links are followed "
                                           "only inside it)"),
                            (self.repeated, "folder(s) reached a second time through a link (a link loop?), walked "
                                            "once"),
                            (self.unreadable, "folder(s) that could not be read")):
            if items:
                shown = ", ".join(shown_name(self._relative(item), 80) for item in items[:3])
                more = f" and {len(items) - 3} more" if len(items) > 3 else ""
                notes.append(f"skipped {len(items)} {what}: {shown}{more}")
        return notes

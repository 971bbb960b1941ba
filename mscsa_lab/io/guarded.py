"""One careful way to read a file that a user or a folder hands us.

Every file the project reads from outside (an upload, a profile, a run's ``model.json``, a
checkpoint, a training image) can be hostile or just wrong: a FIFO that blocks ``open`` forever,
``/dev/zero`` that never ends, a directory, a symlink loop, a symlink out of the folder it is
listed in, a 288 MB JSON file, JSON nested ten thousand levels deep. The readers here refuse all of
those before reading, with a ``UserError`` that names the file (at most ``MAX_NAME_CHARS``
characters of it) and says what to do:

* the path is resolved (symlinks followed, loops refused) and, when ``root`` is given, must stay
  inside ``root``;
* only regular files are opened, and the file is opened non-blocking and checked again on the
  open descriptor (``fstat``), so a FIFO or device swapped in after the check is still refused;
* the size is capped before reading, and the read itself stops at the cap (``/proc`` files and
  files that grow while read report a size that is not their length);
* JSON and TOML are parsed with nesting refused rather than overflowing the stack, then checked
  against a schema (``mscsa_lab.io.schema``) whose message names the field.

Callers pass their own error class (``ProfileError``, ``CheckpointError``, ``ImageError``...) so that
what they raised before keeps being raised.
"""
from __future__ import annotations

import errno
import json
import os
import stat
import tomllib
from pathlib import Path
from typing import Any, BinaryIO

from mscsa_lab.errors import UserError
from mscsa_lab.io.numbers import human_bytes
from mscsa_lab.io.schema import Field, check

__all__ = ["InputFileError", "MAX_NAME_CHARS", "shown_name", "resolve_inside", "checked_file", "read_bytes",
           "read_stream", "read_json", "read_toml", "parse_json", "parse_toml"]

MAX_NAME_CHARS = 200  # a name longer than this is cut when a message repeats it


class InputFileError(UserError, ValueError):
    """A file that cannot be read as asked: missing, not a regular file, outside its folder, too large,
    malformed. The default error class of this module; callers usually pass their own."""


def shown_name(value: Any, limit: int = MAX_NAME_CHARS) -> str:
    """``value`` quoted for a message, cut to ``limit`` characters (a 20 MB name is never echoed whole)."""
    text = os.fsdecode(value) if isinstance(value, (bytes, os.PathLike)) else str(value)
    if len(text) > limit:
        text = f"{text[: limit - 3]}... ({len(text)} characters)"
    return repr(text)


def _kind_of(mode: int) -> str:
    for test, kind in ((stat.S_ISDIR, "a folder"), (stat.S_ISFIFO, "a named pipe (FIFO)"),
                       (stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device"),
                       (stat.S_ISSOCK, "a socket"), (stat.S_ISLNK, "a symbolic link")):
        if test(mode):
            return kind
    return "not a regular file"


def resolve_inside(path: str | os.PathLike, root: str | os.PathLike | None = None, what: str = "file",
                   error: type[Exception] = InputFileError) -> Path:
    """``path`` with every symlink resolved; ``error`` when it does not exist, is a symlink loop, or
    (with ``root``) resolves outside ``root``."""
    try:
        candidate = Path(path)
    except TypeError:
        raise error(f"{what} must be a path, got {type(path).__name__}") from None
    name = shown_name(candidate)
    try:
        resolved = candidate.resolve(strict=True)
    except FileNotFoundError:
        raise error(f"{what} {name} does not exist") from None
    except RuntimeError:  # Python < 3.13 reports a symlink loop this way
        raise error(f"{what} {name} is a symbolic link loop: it points back at itself") from None
    except OSError as problem:
        if problem.errno == errno.ELOOP:
            raise error(f"{what} {name} is a symbolic link loop: it points back at itself") from None
        if problem.errno in (errno.ENAMETOOLONG, errno.EINVAL):
            raise error(f"{what} {name} is not a usable path ({problem.strerror})") from None
        raise error(f"{what} {name} cannot be reached: {problem.strerror or problem}") from None
    except ValueError:  # an embedded NUL character
        raise error(f"{what} {name} is not a usable path (it contains a NUL character)") from None
    if root is not None:
        base = Path(root).resolve()
        if resolved != base and not resolved.is_relative_to(base):
            raise error(f"{what} {name} points outside {shown_name(base)} (to {shown_name(resolved)}): "
                        "only files inside that folder are read")
    return resolved


def _open_regular(path: str | os.PathLike, max_bytes: int, root: str | os.PathLike | None, what: str,
                  error: type[Exception]) -> tuple[int, Path, int]:
    """(open descriptor, resolved path, size) of a regular file within the size cap."""
    resolved = resolve_inside(path, root, what, error)
    name = shown_name(path)
    try:
        mode = os.stat(resolved).st_mode
    except OSError as problem:
        raise error(f"{what} {name} cannot be read: {problem.strerror or problem}") from None
    if not stat.S_ISREG(mode):  # refused before open: opening a FIFO or a device can block or act
        raise error(f"{what} {name} is {_kind_of(mode)}, not a regular file: give the file itself")
    flags = os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_NOCTTY", 0) \
        | getattr(os, "O_CLOEXEC", 0) | getattr(os, "O_BINARY", 0)
    try:
        descriptor = os.open(resolved, flags)
    except PermissionError:
        raise error(f"{what} {name} cannot be read: permission denied") from None
    except OSError as problem:
        raise error(f"{what} {name} cannot be opened: {problem.strerror or problem}") from None
    try:
        info = os.fstat(descriptor)  # the file actually opened, not the one checked a moment ago
        if not stat.S_ISREG(info.st_mode):
            raise error(f"{what} {name} is {_kind_of(info.st_mode)}, not a regular file: give the file itself")
        if info.st_size > max_bytes:
            raise error(f"{what} {name} is {human_bytes(info.st_size)}: the limit is {human_bytes(max_bytes)}")
        if hasattr(os, "set_blocking"):
            os.set_blocking(descriptor, True)
    except BaseException:
        os.close(descriptor)
        raise
    return descriptor, resolved, info.st_size


def checked_file(path: str | os.PathLike, max_bytes: int, root: str | os.PathLike | None = None, what: str = "file",
                 error: type[Exception] = InputFileError, allow_empty: bool = False) -> Path:
    """The resolved path of a regular file within ``max_bytes`` (and inside ``root``), for readers
    that need a path rather than bytes (safetensors maps the file itself)."""
    descriptor, resolved, size = _open_regular(path, max_bytes, root, what, error)
    os.close(descriptor)
    if size == 0 and not allow_empty:
        raise error(f"{what} {shown_name(path)} is empty (0 bytes): is it the right file, or was it cut short?")
    return resolved


def read_bytes(path: str | os.PathLike, max_bytes: int, root: str | os.PathLike | None = None, what: str = "file",
               error: type[Exception] = InputFileError, allow_empty: bool = False) -> bytes:
    """The content of a regular file of at most ``max_bytes`` (checked before reading and while reading)."""
    descriptor, _, _ = _open_regular(path, max_bytes, root, what, error)
    with os.fdopen(descriptor, "rb") as handle:
        data = handle.read(max_bytes + 1)
    if len(data) > max_bytes:
        raise error(f"{what} {shown_name(path)} is larger than the limit of {human_bytes(max_bytes)}")
    if not data and not allow_empty:
        raise error(f"{what} {shown_name(path)} is empty (0 bytes): is it the right file, or was it cut short?")
    return data


def read_stream(stream: BinaryIO, max_bytes: int, what: str = "file", error: type[Exception] = InputFileError) -> bytes:
    """At most ``max_bytes`` from an open binary stream (an upload), refusing anything longer."""
    data = stream.read(max_bytes + 1)
    if not isinstance(data, (bytes, bytearray)):
        raise error(f"{what} must be read in binary mode, got {type(data).__name__}")
    if len(data) > max_bytes:
        raise error(f"{what} is larger than the limit of {human_bytes(max_bytes)}")
    return bytes(data)


def _reject_constant(name: str) -> float:
    raise ValueError(f"{name} is not a number JSON allows")


def parse_json(data: bytes | str, where: str = "JSON", schema: Field | None = None,
               error: type[Exception] = InputFileError) -> Any:
    """Parsed JSON (checked against ``schema`` when given); ``NaN``/``Infinity`` and nesting deeper than
    Python's stack are refused with ``error`` rather than crashing."""
    try:
        value = json.loads(data, parse_constant=_reject_constant)
    except UnicodeDecodeError:
        raise error(f"{where} is not text (UTF-8): is it the right file?") from None
    except RecursionError:
        raise error(f"{where} is nested too deeply to be a file this project wrote") from None
    except ValueError as problem:  # JSONDecodeError, NaN, and integers too long to convert
        detail = str(problem)
        raise error(f"{where} is not valid JSON: {detail[:200]}") from None
    return check(value, schema, where, error) if schema is not None else value


def parse_toml(data: bytes | str, where: str = "TOML", schema: Field | None = None,
               error: type[Exception] = InputFileError) -> dict[str, Any]:
    """Parsed TOML (checked against ``schema`` when given); deep nesting is refused with ``error``."""
    try:
        text = data.decode("utf-8") if isinstance(data, bytes) else data
        value = tomllib.loads(text)
    except UnicodeDecodeError:
        raise error(f"{where} is not valid TOML: it is not UTF-8 text") from None
    except RecursionError:
        raise error(f"{where} is nested too deeply: no file this project reads nests that far") from None
    except (tomllib.TOMLDecodeError, ValueError) as problem:
        raise error(f"{where} is not valid TOML: {str(problem)[:200]}") from None
    return check(value, schema, where, error) if schema is not None else value


def read_json(path: str | os.PathLike, max_bytes: int, schema: Field | None = None,
              root: str | os.PathLike | None = None, what: str = "JSON file",
              error: type[Exception] = InputFileError) -> Any:
    """A JSON file through ``read_bytes`` then ``parse_json``; messages start with ``what`` and the name."""
    data = read_bytes(path, max_bytes, root, what, error)
    return parse_json(data, f"{what} {shown_name(path)}", schema, error)


def read_toml(path: str | os.PathLike, max_bytes: int, schema: Field | None = None,
              root: str | os.PathLike | None = None, what: str = "TOML file",
              error: type[Exception] = InputFileError) -> dict[str, Any]:
    """A TOML file through ``read_bytes`` then ``parse_toml``; messages start with ``what`` and the name."""
    data = read_bytes(path, max_bytes, root, what, error)
    return parse_toml(data, f"{what} {shown_name(path)}", schema, error)

"""The guarded reader (``mscsa_lab.io.guarded``), its schema checker and the profiles folder read
through them: every bad file gets a ``UserError`` naming it, nothing blocks, nothing is read whole
before its size is known, and a bad profile never stops ``import mscsa_lab``."""
import os
import shutil
import subprocess
import sys
import threading
import warnings
from pathlib import Path

import pytest

from mscsa_lab.errors import UserError
from mscsa_lab.io.guarded import InputFileError, read_bytes, read_json, read_toml, shown_name
from mscsa_lab.io.schema import check, integer, mapping, number, sequence, table, text
from mscsa_lab.presets import (ProfileError, ProfileUnavailable, ProfileWarning, list_profiles, load_profile,
                               load_profile_file, skipped_profiles)

ROOT = Path(__file__).resolve().parent.parent
GOOD_PROFILE = 'name = "{name}"\nbackbone = "resnet18"\n[mscsa]\nsqueeze_ratio = "1/2"\nnum_heads = 2\nkey_dim = 8\n'


def finishes(call, seconds: float = 10.0):
    """``call()``'s outcome (its value or the exception it raised), run in a daemon thread so that a
    call that blocks (a FIFO opened for reading) fails the test instead of hanging the suite."""
    outcome: dict = {}

    def target():
        try:
            outcome["value"] = call()
        except BaseException as error:  # noqa: BLE001 - handed to the test
            outcome["error"] = error

    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    thread.join(seconds)
    assert not thread.is_alive(), f"the call blocked for more than {seconds} s"
    return outcome.get("error", outcome.get("value"))


@pytest.fixture
def fifo(tmp_path):
    path = tmp_path / "pipe.toml"
    os.mkfifo(path)
    return path


# ---------------------------------------------------------------------- the reader
def test_fifo_device_folder_and_loop_are_refused_without_blocking(tmp_path, fifo):
    (tmp_path / "loop.json").symlink_to("loop.json")
    cases = {fifo: "is a named pipe (FIFO), not a regular file", Path("/dev/zero"): "is a character device",
             tmp_path: "is a folder, not a regular file", tmp_path / "loop.json": "is a symbolic link loop",
             tmp_path / "nothing.json": "does not exist"}
    for path, message in cases.items():
        error = finishes(lambda: read_bytes(path, 1024))
        assert isinstance(error, InputFileError) and message in str(error), (path, error)
        assert shown_name(path) in str(error)


def test_symlinks_must_stay_inside_the_root(tmp_path):
    inside = tmp_path / "folder"
    inside.mkdir()
    (tmp_path / "secret.json").write_text('{"a": 1}')
    (inside / "link.json").symlink_to(tmp_path / "secret.json")
    (inside / "own.json").write_text('{"b": 2}')
    (inside / "alias.json").symlink_to("own.json")
    with pytest.raises(InputFileError, match=r"points outside '.*folder' \(to '.*secret.json'\): only files inside"):
        read_json(inside / "link.json", 1024, root=inside)
    assert read_json(inside / "alias.json", 1024, root=inside) == {"b": 2}  # a link inside the root is fine
    assert read_json(inside / "link.json", 1024) == {"a": 1}  # and no root, no restriction


def test_size_is_capped_before_reading(tmp_path):
    huge = tmp_path / "model.json"
    with open(huge, "wb") as handle:  # 288 MiB, sparse: costs no disk and would cost 288 MiB to read
        handle.truncate(288 * 2**20)
    with pytest.raises(InputFileError, match=r"'.*model.json' is 288 MiB: the limit is 8.00 MiB"):
        read_json(huge, 8 * 2**20)
    (tmp_path / "empty").touch()
    with pytest.raises(InputFileError, match=r"'.*empty' is empty \(0 bytes\)"):
        read_bytes(tmp_path / "empty", 10)


def test_long_names_are_cut_in_messages(tmp_path):
    name = "x" * 20_000_000  # a 20 MB name
    message = str(finishes(lambda: read_bytes(name, 10)))
    assert "(20000000 characters)" in message and len(message) < 400
    assert len(shown_name("y" * 500)) <= 230


def test_json_and_toml_problems_are_user_errors(tmp_path):
    cases = {
        "deep.json": ("[" * 100_000 + "]" * 100_000, "nested too deeply"),
        "nan.json": ('{"a": NaN}', "not valid JSON: NaN is not a number JSON allows"),
        "broken.json": ('{"a": ', "not valid JSON: Expecting value"),
        "latin.json": (b'{"a": "\xff"}', "not text|not valid JSON"),
        "digits.json": ("1" * 5000, "not valid JSON"),
    }
    for name, (content, message) in cases.items():
        path = tmp_path / name
        path.write_bytes(content.encode() if isinstance(content, str) else content)
        with pytest.raises(InputFileError, match=message):
            read_json(path, 10**7)
    deep = tmp_path / "deep.toml"
    deep.write_text("a = " + "[" * 50_000 + "]" * 50_000)
    with pytest.raises(InputFileError, match="nested too deeply"):
        read_toml(deep, 10**7)


def test_schema_messages_name_the_field():
    schema = table({"classes": sequence(text(), required=True), "metrics": mapping(number()),
                    "input_size": sequence(integer(32, 4096), length=(2, 2))}, closed=True)
    cases = [
        ({"classes": 5}, r"'classes' must be a list of strings, got a whole number: 5"),
        ({"classes": ["a", 3]}, r"'classes\[1\]' must be a string, got a whole number: 3"),
        ({"classes": [], "metrics": [1]}, r"'metrics' must be a table of numbers, got a list: \[1\]"),
        ({"classes": [], "metrics": {"top1": "high"}}, r"'metrics.top1' must be a number, got a string: 'high'"),
        ({"classes": [], "input_size": [8000, 8000]}, r"'input_size\[0\]'=8000 is out of range: choose 32..4096"),
        ({"classes": [], "input_size": [64]}, r"'input_size' must have exactly 2 entries, got 1"),
        ({}, r"'classes' is missing: it is required"),
        ({"classes": [], "extra": 1}, r"unknown key\(s\) 'extra' at the top level; known: classes, input_size"),
        ([1], r"the file's content must be a table, got a list"),
    ]
    for data, message in cases:
        with pytest.raises(UserError, match=r"^run file 'x': " + message):
            check(data, schema, where="run file 'x'")
    assert check({"classes": ["a"], "metrics": {"top1": 1}}, schema) == {"classes": ["a"], "metrics": {"top1": 1}}


# ---------------------------------------------------------------------- profiles
BAD_PROFILES = {
    "paper5.toml": ('name = "p5"\nbackbone = "resnet18"\npaper = 5\n',
                    r"'paper' must be a \[paper\] table of numbers .*got a whole number: 5"),
    "types.toml": ('name = "types"\nbackbone = 18\n', r"'backbone' must be a string, got a whole number: 18"),
    "squeeze.toml": ('name = "squeeze"\nbackbone = "resnet18"\n[mscsa]\nsqueeze_ratio = 4\n',
                     r"squeeze_ratio=4 is out of range for a profile: .*choose a value in \(0, 1\]"),
    "depth.toml": ('name = "depth"\nbackbone = "resnet18"\n[mscsa]\ndepth = [1]\n',
                   r"'mscsa.depth' must be a whole number, got a list"),
    "heads.toml": ('name = "heads"\nbackbone = "resnet18"\n[mscsa]\nnum_heads = 0\n', r"num_heads=0 is out of range"),
    "unknown.toml": ('name = "unknown"\nbackbone = "resnet18"\nspeed = 3\n', r"unknown key\(s\) 'speed'"),
    "notoml.toml": ("name = = 1\n", r"is not valid TOML"),
    "binary.toml": (b"name = \xff\xfe", r"not valid TOML: it is not UTF-8 text"),
    "deep.toml": ("x = " + "[" * 20_000 + "]" * 20_000, r"nested too deeply"),
}


def test_bad_profile_files_get_profile_errors(tmp_path, fifo):
    for name, (content, message) in BAD_PROFILES.items():
        path = tmp_path / name
        path.write_bytes(content.encode() if isinstance(content, str) else content)
        with pytest.raises(ProfileError, match=message):
            load_profile_file(path)
    folder = tmp_path / "folder.toml"
    folder.mkdir()
    for path, message in ((folder, "is a folder"), (Path("/dev/zero"), "is a character device"),
                          (fifo, "is a named pipe")):
        error = finishes(lambda: load_profile_file(path))
        assert isinstance(error, ProfileError) and message in str(error), error


def test_a_bad_profile_is_skipped_with_a_warning_and_listed(tmp_path, fifo):
    (tmp_path / "mine.toml").write_text(GOOD_PROFILE.format(name="mine"))
    for name, (content, _) in BAD_PROFILES.items():
        (tmp_path / name).write_bytes(content.encode() if isinstance(content, str) else content)
    (tmp_path / "zero.toml").symlink_to("/dev/zero")
    with pytest.warns(ProfileWarning) as caught:
        profiles = finishes(lambda: list_profiles(tmp_path))
    assert [p.name for p in profiles] == ["mine"]
    skipped = {item.path.name: item for item in skipped_profiles(tmp_path)}
    assert set(skipped) == set(BAD_PROFILES) | {"pipe.toml", "zero.toml"}
    assert "points outside" in skipped["zero.toml"].reason and "named pipe" in skipped["pipe.toml"].reason
    assert skipped["paper5.toml"].name == "p5" and len(caught) == len(skipped)
    with pytest.raises(ProfileUnavailable, match=r"profile 'p5' is unavailable: .*'paper' must be a \[paper\] table"):
        load_profile("p5", tmp_path)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # unchanged files are not re-read: no second round of warnings
        assert [p.name for p in list_profiles(tmp_path)] == ["mine"]


def test_two_profiles_with_one_name_resolve_by_one_rule(tmp_path):
    (tmp_path / "aaa.toml").write_text(GOOD_PROFILE.format(name="twin").replace("num_heads = 2", "num_heads = 4"))
    (tmp_path / "twin.toml").write_text(GOOD_PROFILE.format(name="twin"))
    (tmp_path / "zzz.toml").write_text(GOOD_PROFILE.format(name="twin"))
    with pytest.warns(ProfileWarning, match=r"'aaa.toml' is skipped: its name 'twin' is already used by twin.toml"):
        profiles = list_profiles(tmp_path)
    assert [p.path.name for p in profiles] == ["twin.toml"]  # the file named after the profile, not the first
    assert load_profile("twin", tmp_path).config.num_heads == 2
    (tmp_path / "twin.toml").unlink()
    with pytest.warns(ProfileWarning, match=r"'zzz.toml' is skipped: its name 'twin' is already used by aaa.toml"):
        assert load_profile("twin", tmp_path).path.name == "aaa.toml"  # else the first in name order


def test_priority_of_names_over_backbones(tmp_path):
    """A profile named "resnet18" wins over another whose backbone is resnet18, whatever the order."""
    (tmp_path / "a_other.toml").write_text(GOOD_PROFILE.format(name="a_other"))
    (tmp_path / "resnet18.toml").write_text(GOOD_PROFILE.format(name="resnet18"))
    assert load_profile("resnet18", tmp_path).name == "resnet18"
    with pytest.raises(ProfileError, match=r"unknown profile 'x+\.\.\. \(5000 characters\)'"):
        load_profile("x" * 5000, tmp_path)


@pytest.mark.slow  # a fresh interpreter imports torch and timm: 5-20 s
def test_import_survives_a_bad_profiles_folder(tmp_path):
    """``import mscsa_lab`` from a checkout whose profiles/ holds bad files: the package loads, the
    good profiles are there, the bad ones are named in warnings on stderr."""
    shutil.copytree(ROOT / "mscsa_lab", tmp_path / "mscsa_lab", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copytree(ROOT / "profiles", tmp_path / "profiles")
    (tmp_path / "profiles" / "paper5.toml").write_text(BAD_PROFILES["paper5.toml"][0])
    (tmp_path / "profiles" / "twin.toml").write_text(GOOD_PROFILE.format(name="resnet18"))
    os.mkfifo(tmp_path / "profiles" / "pipe.toml")
    script = ("import mscsa_lab, mscsa_lab.presets as p; print(mscsa_lab.__file__); "
              "print(len(p.list_profiles()), sorted(s.path.name for s in p.skipped_profiles()))")
    done = subprocess.run([sys.executable, "-c", script], cwd=tmp_path, capture_output=True, text=True, timeout=120,
                          env={**os.environ, "PYTHONPATH": str(tmp_path), "HF_HUB_OFFLINE": "1"})
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.splitlines()[0].startswith(str(tmp_path))
    assert done.stdout.splitlines()[1] == "13 ['paper5.toml', 'pipe.toml', 'twin.toml']"
    assert "ProfileWarning" in done.stderr and "'paper' must be a [paper] table" in done.stderr
    assert "is already used by resnet18.toml" in done.stderr and "Traceback" not in done.stderr

"""Run timm's own ``tests/test_models.py`` (from the pinned timm's PyPI source distribution) over the
``*_mscsa`` models.

The test file is never copied into this repository: it is downloaded with ``pip download --no-binary
:all: --no-deps timm==<version pinned in requirements.txt>`` into a cache folder outside the tree
(``$MSCSA_TIMM_SUITE_CACHE``, default ``~/.cache/mscsa-lab/timm-suite``), and only its ``tests/``
folder is unpacked (timm itself is the installed one). ``tests/timm_suite/plugin.py`` narrows
``timm.list_models`` to the ``*_mscsa`` names and deselects timm's checks of its own models.

    python3 scripts/run_timm_model_tests.py                 # the whole file, as CI runs it
    python3 scripts/run_timm_model_tests.py -k torchscript  # extra arguments go to pytest

Exit status: pytest's. Tests that need downloaded weights skip offline (``HF_HUB_OFFLINE=1``), as in timm.
"""
from __future__ import annotations

import importlib.util
import os
import re
import subprocess
import sys
import tarfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PLUGIN = ROOT / "tests" / "timm_suite" / "plugin.py"
DEFAULT_CACHE = Path.home() / ".cache" / "mscsa-lab" / "timm-suite"


def pinned_timm_version(requirements: Path = ROOT / "requirements.txt") -> str:
    """The exact timm version requirements.txt pins (``timm==1.0.31`` -> ``1.0.31``)."""
    for line in requirements.read_text().splitlines():
        match = re.fullmatch(r"\s*timm\s*==\s*([\w.+-]+)\s*(?:#.*)?", line)
        if match:
            return match.group(1)
    raise SystemExit(f"{requirements} pins no timm version (expected a line 'timm==X.Y.Z')")


def timm_tests_folder(version: str, cache: Path) -> Path:
    """``<cache>/timm-<version>/tests``, downloading and unpacking the source distribution once."""
    target = cache / f"timm-{version}"
    tests = target / "tests"
    if (tests / "test_models.py").is_file():
        return tests
    cache.mkdir(parents=True, exist_ok=True)
    archive = cache / f"timm-{version}.tar.gz"
    if not archive.is_file():
        subprocess.run([sys.executable, "-m", "pip", "download", "--quiet", "--no-binary", ":all:", "--no-deps",
                        f"timm=={version}", "--dest", str(cache)], check=True)
    prefix = f"timm-{version}/tests/"
    with tarfile.open(archive) as sdist:
        members = [m for m in sdist.getmembers() if m.name.startswith(prefix) and m.isfile()]
        if not any(m.name == prefix + "test_models.py" for m in members):
            raise SystemExit(f"{archive} has no {prefix}test_models.py")
        sdist.extractall(cache, members=members, filter="data")
    return tests


def load_plugin():
    spec = importlib.util.spec_from_file_location("mscsa_timm_suite_plugin", PLUGIN)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def main(argv: list[str] | None = None) -> int:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    cache = Path(os.environ.get("MSCSA_TIMM_SUITE_CACHE", DEFAULT_CACHE)).expanduser()
    tests = timm_tests_folder(pinned_timm_version(), cache)
    sys.path.insert(0, str(ROOT))  # mscsa_lab from this checkout, whatever the working folder

    import pytest

    # importlib mode: timm's tests/ package does not shadow ours, and `import timm` finds the installed timm.
    # Our pytest.ini (markers, warning filters) and rootdir; timm's pyproject.toml is not unpacked.
    args = [str(tests / "test_models.py"), "-c", str(ROOT / "pytest.ini"), "--rootdir", str(ROOT),
            "--import-mode=importlib", "-p", "no:cacheprovider", *(sys.argv[1:] if argv is None else argv)]
    return int(pytest.main(args, plugins=[load_plugin()]))


if __name__ == "__main__":
    sys.exit(main())

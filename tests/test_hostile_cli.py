"""The command line meets the hostile corpus (``tests/hostile_cli.py``): every case ends with its message on
stderr and exit 2, never a trace, within seconds; the cases that would allocate many GB if anything were
built before it was costed run in a child process capped at 3 GiB of address space beyond Python's own."""
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest

from hostile_cli import cli_cases

ROOT = Path(__file__).resolve().parent.parent
CASES = cli_cases(Path(os.environ.get("TMPDIR", "/tmp")) / f"mscsa_hostile_cli_{os.getpid()}")
CAP_SCRIPT = """
import resource, sys
soft = 6 * 2**30  # torch, timm and the app's code take about 3 GiB of address space; 3 more for the request
resource.setrlimit(resource.RLIMIT_AS, (soft, soft))
from mscsa_lab.cli import main
sys.exit(main(sys.argv[1:]))
"""


def judge(case, code: int, err: str, seconds: float) -> None:
    assert code == case.code, f"{case.name}: exit {code}, stderr {err[-1500:]!r}"
    assert re.search(case.expect, err, re.DOTALL), f"{case.name}: expected /{case.expect}/, got {err[-1500:]!r}"
    assert "Traceback" not in err, f"{case.name}: a trace reached the terminal"
    assert len(err) < 6000 and seconds < 120, f"{case.name}: {len(err)} characters in {seconds:.0f} s"


@pytest.mark.parametrize("case", [c for c in CASES if not c.heavy], ids=lambda c: c.name)
def test_the_command_line_answers_every_case_with_its_message(case, capsys):
    from mscsa_lab.cli import main

    started = time.perf_counter()
    try:
        code = main(list(case.argv))
    except SystemExit as exit_:  # argparse's own errors
        code = exit_.code
    shown = capsys.readouterr()
    judge(case, code, shown.out + shown.err, time.perf_counter() - started)


@pytest.mark.slow
@pytest.mark.integration
@pytest.mark.parametrize("case", [c for c in CASES if c.heavy], ids=lambda c: c.name)
def test_heavy_cases_are_refused_before_anything_is_allocated(case):
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    started = time.perf_counter()
    done = subprocess.run([sys.executable, "-c", CAP_SCRIPT, *case.argv], capture_output=True, text=True,
                          timeout=300, cwd=ROOT, env=env)
    judge(case, done.returncode, done.stdout + done.stderr, time.perf_counter() - started)

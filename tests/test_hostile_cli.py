"""The command line meets the hostile corpus (``tests/hostile_cli.py``): every case ends with its message on
stderr and exit 2, never a trace, within seconds; the cases that would allocate many GB if anything were
built before it was costed run in one child process capped at 3 GiB of address space beyond Python's own."""
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import run_command
from hostile_cli import cli_cases

ROOT = Path(__file__).resolve().parent.parent
CASES = cli_cases(Path(os.environ.get("TMPDIR", "/tmp")) / f"mscsa_hostile_cli_{os.getpid()}")
CAP_SCRIPT = """
import contextlib, io, json, resource, sys, time
soft = 6 * 2**30  # torch, timm and the app's code take about 3 GiB of address space; 3 more for the request
resource.setrlimit(resource.RLIMIT_AS, (soft, soft))
from mscsa_lab.cli import main
answers = []
for argv in json.loads(sys.argv[1]):  # one capped process answers every heavy case, each as a command would
    out, started = io.StringIO(), time.perf_counter()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(out):
        try:
            code = main(argv)
        except SystemExit as exit_:
            code = exit_.code
        except BaseException:  # a trace is what the test must see, not a dead child
            import traceback
            traceback.print_exc(file=out)
            code = -1
    answers.append({"code": code, "output": out.getvalue(), "seconds": time.perf_counter() - started})
print(json.dumps(answers))
"""


def judge(case, code: int, err: str, seconds: float) -> None:
    assert code == case.code, f"{case.name}: exit {code}, stderr {err[-1500:]!r}"
    assert re.search(case.expect, err, re.DOTALL), f"{case.name}: expected /{case.expect}/, got {err[-1500:]!r}"
    assert "Traceback" not in err, f"{case.name}: a trace reached the terminal"
    assert len(err) < 6000 and seconds < 120, f"{case.name}: {len(err)} characters in {seconds:.0f} s"


@pytest.mark.parametrize("case", [c for c in CASES if not c.heavy], ids=lambda c: c.name)
def test_the_command_line_answers_every_case_with_its_message(case):
    started = time.perf_counter()
    shown = run_command(*case.argv)
    judge(case, shown.returncode, shown.stdout + shown.stderr, time.perf_counter() - started)


HEAVY = [c for c in CASES if c.heavy]


@pytest.fixture(scope="module")
def heavy_answers() -> dict[str, dict]:
    """Every heavy case run in one child process capped at 6 GiB of address space (one interpreter start, not
    one per case): name -> exit code, what the terminal showed and seconds."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    done = subprocess.run([sys.executable, "-c", CAP_SCRIPT, json.dumps([list(c.argv) for c in HEAVY])],
                          capture_output=True, text=True, timeout=600, cwd=ROOT, env=env)
    assert done.returncode == 0, done.stderr[-3000:]
    return {case.name: answer for case, answer in zip(HEAVY, json.loads(done.stdout.splitlines()[-1]))}


@pytest.mark.slow
@pytest.mark.integration
@pytest.mark.parametrize("case", HEAVY, ids=lambda c: c.name)
def test_heavy_cases_are_refused_before_anything_is_allocated(case, heavy_answers):
    answer = heavy_answers[case.name]
    judge(case, answer["code"], answer["output"], answer["seconds"])

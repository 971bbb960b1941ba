"""Shared test setup: offline hubs, deterministic seeds, small helpers."""
import atexit
import contextlib
import io
import os
import shutil
import subprocess
import tempfile

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # nothing can be downloaded here; fail fast
# Each test process keeps its apps' uploads in its own folder: Gradio names an upload by its content, so apps in two
# processes (pytest-xdist) shared the same files, and one app closing removed the copy another was about to read.
os.environ["GRADIO_TEMP_DIR"] = tempfile.mkdtemp(prefix=f"mscsa-tests-uploads-{os.getpid()}-")
atexit.register(shutil.rmtree, os.environ["GRADIO_TEMP_DIR"], ignore_errors=True)
# Under pytest-xdist (CI: two processes on two cores) each process and what it starts computes on one thread:
# two processes of two spinning OpenMP threads each made CPU-bound tests 3-5x slower than alone.
PARALLEL_WORKER = bool(os.environ.get("PYTEST_XDIST_WORKER"))
if PARALLEL_WORKER:
    for variable in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
        os.environ[variable] = "1"

import pytest  # noqa: E402
import torch  # noqa: E402

import mscsa_lab  # noqa: E402,F401 - registers the timm models

if PARALLEL_WORKER:
    torch.set_num_threads(1)


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
    yield


def randomize_batchnorm(module: torch.nn.Module) -> None:
    """Give every BN non-trivial running stats and affine parameters, so that folding them
    into convs is actually exercised (fresh BNs are the identity in eval mode)."""
    generator = torch.Generator().manual_seed(1)
    for m in module.modules():
        if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
            with torch.no_grad():
                m.running_mean.copy_(torch.randn(m.num_features, generator=generator) * 0.1)
                m.running_var.copy_(torch.rand(m.num_features, generator=generator) * 0.5 + 0.75)
                m.weight.copy_(torch.rand(m.num_features, generator=generator) * 0.5 + 0.75)
                m.bias.copy_(torch.randn(m.num_features, generator=generator) * 0.1)


# The models the everyday loop (-m "not slow") checks a per-model contract on: a CNN, a ViT and TopFormer (MSCSA in
# place of SASE). The other ten run in CI's whole suite, and in timm's own tests/test_models.py.
QUICK_MODELS = ("resnet18", "pvt_v2_b0", "topformer_tiny")


def everyday(values, name=lambda value: getattr(value, "name", value)):
    """``values`` as pytest parameters, those not among ``QUICK_MODELS`` (by profile or ``*_mscsa`` name)
    marked slow; ids are the names."""
    quick = {*QUICK_MODELS, *(f"{n}_mscsa" for n in QUICK_MODELS)}
    return [pytest.param(value, id=str(name(value)), marks=() if str(name(value)) in quick else pytest.mark.slow)
            for value in values]


# The files that take longest in CI's two processes (about half a minute or more each, measured with
# --durations=0), longest first. They are run first: pytest-xdist hands out whole files in this order (see
# pytest_configure), and a long file handed out last kept one process busy for minutes after the other had finished.
LONGEST_FILES = ("test_timm_contract.py", "test_browser.py", "test_app.py", "test_distill.py", "test_browser_truth.py",
                 "test_soak.py", "test_server_restart.py", "test_layout.py", "test_train.py", "test_train_guards.py",
                 "test_hostile_inputs.py", "test_profiler.py", "test_ablation.py", "test_paper_tables.py",
                 "test_model_export.py", "test_models.py", "test_browser_distill.py", "test_limits.py",
                 "test_concurrency.py", "test_workflows.py", "test_coat.py", "test_explain_command.py",
                 "test_known_costs.py", "test_explain_batch.py", "test_diagram.py")


def pytest_configure(config):
    """pytest-xdist reorders files by their number of tests unless told not to (``--loadscope-reorder`` is on by
    default): the soak, the server restart and the browser walks, one long test each, were then handed out last.
    Keep the order ``pytest_collection_modifyitems`` gives."""
    if hasattr(config.option, "loadscopereorder"):
        config.option.loadscopereorder = False


def pytest_collection_modifyitems(config, items):
    """Browser and integration tests (servers, subprocesses) are slow too: the everyday loop leaves them out.
    The longest files go first (a stable sort: each file's own order is kept)."""
    for item in items:
        if item.get_closest_marker("browser") or item.get_closest_marker("integration"):
            item.add_marker(pytest.mark.slow)
    rank = {name: index for index, name in enumerate(LONGEST_FILES)}
    items.sort(key=lambda item: rank.get(item.path.name, len(rank)))


def run_command(*argv: str) -> subprocess.CompletedProcess:
    """``mscsa-lab *argv`` run in this process (``mscsa_lab.cli.main``): exit code, stdout and stderr as a user sees
    them, without the 8 s of imports a fresh interpreter pays again (this process has them). The console command
    itself is checked in a real process in test_layout.py; signals, memory caps and torchrun keep real processes."""
    from mscsa_lab.cli import main

    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            code = main(list(argv))
        except SystemExit as exit_:  # argparse's own errors
            code = exit_.code if isinstance(exit_.code, int) else 0 if exit_.code is None else 1
    return subprocess.CompletedProcess(["mscsa-lab", *argv], code, out.getvalue(), err.getvalue())


def free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture
def run_app_main(monkeypatch):
    """``app.main(argv)`` with the launch replaced: returns the keyword arguments launch got."""
    import app as mscsa_app

    seen: dict = {}

    class FakeBlocks:
        def queue(self, **kwargs):
            return self

        def launch(self, **kwargs):
            seen.update(kwargs)

    monkeypatch.setattr(mscsa_app, "make_app", lambda context=None: seen.update(context=context) or FakeBlocks())

    def run(argv):
        seen.clear()
        mscsa_app.main(argv)
        return seen

    return run


@pytest.fixture(scope="module")
def app_context(request, tmp_path_factory):
    """The context of the module's app: its own runs folder, cache and limits (a module's ``APP_LIMITS``, a
    ``ResourceLimits``, if it sets one)."""
    from webapp.context import AppContext

    limits = getattr(request.module, "APP_LIMITS", None)
    return AppContext(runs_dir=tmp_path_factory.mktemp("runs"), **({"limits": limits} if limits else {}))


@pytest.fixture(scope="module")
def app_url(app_context):
    """The whole app launched on a free localhost port for the module's tests (runs go to a temp folder)."""
    import app as mscsa_app

    demo = mscsa_app.make_app(app_context)
    demo.queue().launch(server_name="127.0.0.1", server_port=free_port(), prevent_thread_lock=True, quiet=True,
                        **mscsa_app.LAUNCH_OPTIONS)
    try:
        yield demo.local_url
    finally:
        demo.close()


CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]


@pytest.fixture(scope="module")
def browser_page(app_url):
    """The app in Debian's Chromium driven by Playwright (never a downloaded browser), 1400 px wide."""
    from pathlib import Path

    from playwright.sync_api import expect, sync_playwright

    assert Path(CHROMIUM).exists(), "Debian's chromium is required: apt-get install chromium"
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        context = browser.new_context(viewport={"width": 1400, "height": 1000}, accept_downloads=True)
        page = context.new_page()
        page.set_default_timeout(120_000)
        expect.set_options(timeout=120_000)  # a busy 2-core machine renders slowly; actions still must finish
        page.goto(app_url)
        expect(page.get_by_text("MSCSA Lab").first).to_be_visible()
        yield page
        browser.close()

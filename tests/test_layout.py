"""The package's shape: no import cycle, every module importable on its own, the installed package
finds its bundled files, the console command, and no request or benchmark changing shared state."""
import ast
import subprocess
import sys
import threading
import zipfile
from pathlib import Path

import pytest
import torch

import mscsa_lab
from mscsa_lab.bench.fps import measure_fps
from mscsa_lab.bench.settings import BenchmarkSettings

from conftest import run_command

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "mscsa_lab"


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _top_level_imports(path: Path) -> set[str]:
    """Package modules imported at module level (imports inside functions run later, not at import)."""
    found = set()
    for node in ast.parse(path.read_text()).body:
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("mscsa_lab"):
            found.add(node.module)
            found.update(f"{node.module}.{alias.name}" for alias in node.names)
        elif isinstance(node, ast.Import):
            found.update(a.name for a in node.names if a.name.startswith("mscsa_lab"))
    return found


def test_the_package_has_no_import_cycle():
    modules = {_module_name(p): p for p in PACKAGE.rglob("*.py")}
    # A module importing its own package (``from mscsa_lab.models import coat`` inside models/) is
    # served by the package being initialised; every other edge must form no loop.
    graph = {name: {m for m in _top_level_imports(path)
                    if m in modules and m != name and not name.startswith(m + ".")}
             for name, path in modules.items()}
    cycles = []
    state: dict[str, int] = {}

    def visit(node: str, path: list[str]) -> None:
        state[node] = 1
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                cycles.append(path[path.index(nxt):] + [nxt] if nxt in path else [node, nxt])
            elif nxt not in state:
                visit(nxt, path + [nxt])
        state[node] = 2

    for name in sorted(modules):
        if name not in state:
            visit(name, [name])
    assert not cycles, f"import cycles: {cycles}"


@pytest.mark.slow
@pytest.mark.integration
def test_every_module_imports_on_its_own_in_a_fresh_process():
    modules = sorted(_module_name(p) for p in PACKAGE.rglob("*.py") if p.name != "__main__.py")
    # Each module first with none of the package loaded (an import cycle breaks only when the cycle is entered
    # at a particular module), then all of them once more in reverse order.
    script = (
        "import importlib, sys\n"
        "names = sys.argv[1:]\n"
        "for first in names + [None]:\n"
        "    for name in [first] if first else names[::-1]:\n"
        "        importlib.import_module(name)\n"
        "    for loaded in [m for m in sys.modules if m.startswith('mscsa_lab')]:\n"
        "        del sys.modules[loaded]\n"
        "print('ok', len(names))\n"
    )
    result = subprocess.run([sys.executable, "-c", script, *modules], capture_output=True, text=True, timeout=900,
                            cwd=ROOT)
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.strip() == f"ok {len(modules)}"
    assert "mscsa_lab.registry" in modules and "mscsa_lab.bench.settings" in modules


@pytest.mark.slow
@pytest.mark.integration
def test_console_command_equals_python_dash_m():
    """The console command and ``python -m mscsa_lab`` are the same program (their help, in two processes: it
    needs no torch), and the console command run from another folder finds the profiles and lists what
    ``cli.main`` lists (compared in this process: a second fresh ``profiles`` only repeated 8 s of imports)."""
    command = Path(sys.executable).parent / "mscsa-lab"
    command = str(command) if command.exists() else "mscsa-lab"
    via_module = subprocess.run([sys.executable, "-m", "mscsa_lab", "--help"], capture_output=True, text=True,
                                timeout=120, cwd=ROOT)
    via_command = subprocess.run([command, "--help"], capture_output=True, text=True, timeout=120, cwd="/")
    assert via_module.returncode == 0 and via_command.returncode == 0, via_command.stderr[-2000:]
    assert via_module.stdout == via_command.stdout and "profiles" in via_command.stdout
    listed = subprocess.run([command, "profiles"], capture_output=True, text=True, timeout=120, cwd="/")
    assert listed.returncode == 0, listed.stderr[-2000:]
    assert listed.stdout == run_command("profiles").stdout
    assert "pvt_v2_b1" in listed.stdout and "PVTv2-B1" in listed.stdout


@pytest.mark.slow
@pytest.mark.integration
def test_a_built_wheel_carries_profiles_and_assets_and_finds_them(tmp_path):
    built = subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation", "-w",
                            str(tmp_path / "wheel"), str(ROOT)], capture_output=True, text=True, timeout=300)
    assert built.returncode == 0, built.stderr[-2000:]
    wheel = next((tmp_path / "wheel").glob("*.whl"))
    with zipfile.ZipFile(wheel) as archive:
        names = set(archive.namelist())
        archive.extractall(tmp_path / "site")
    assert "mscsa_lab/_profiles/pvt_v2_b1.toml" in names and "mscsa_lab/_assets/demo_model.safetensors" in names
    # Run from outside the checkout with only the unpacked wheel on the path.
    script = ("import mscsa_lab.paths as p, mscsa_lab.presets as presets, mscsa_lab.io.checkpoints as c;"
              "print(p.PROFILES_DIR); print(len(presets.list_profiles())); print(c.demo_metadata()['classes'][0])")
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120,
                            cwd=tmp_path, env={"PYTHONPATH": str(tmp_path / "site"), "HF_HUB_OFFLINE": "1",
                                               "PATH": "/usr/bin:/bin"})
    assert result.returncode == 0, result.stderr[-2000:]
    folder, count, first_class = result.stdout.split()
    assert folder == str(tmp_path / "site" / "mscsa_lab" / "_profiles") and int(count) == 13 and first_class == "circle"


def test_no_source_file_is_over_450_lines():
    sources = [p for p in [*PACKAGE.rglob("*.py"), *(ROOT / "webapp").rglob("*.py"), ROOT / "app.py",
                           *(ROOT / "tests").glob("*.py"), *(ROOT / "benchmarks").glob("*.py"),
                           *(ROOT / "scripts").glob("*.py")]]
    long = {str(p.relative_to(ROOT)): n for p in sources if (n := len(p.read_text().splitlines())) > 450}
    assert not long, f"split these by concern: {long}"


def test_the_app_has_one_module_per_tab_and_no_module_globals_for_state():
    import app

    tabs = [module.__name__ for _, module in app.TABS]
    assert tabs == [f"webapp.tabs.{name}" for name in ("build", "profile", "benchmark", "saliency", "train",
                                                       "compare")]
    for path in (ROOT / "webapp").rglob("*.py"):  # limits, cache and runs folder live in the AppContext
        tree = ast.parse(path.read_text())
        assert not [n for n in ast.walk(tree) if isinstance(n, ast.Global)], f"{path.name} sets a module global"


def test_benchmarks_restore_process_settings_and_leave_the_model_alone():
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.BatchNorm2d(4)).train()
    threads = torch.get_num_threads()
    tf32 = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    settings = BenchmarkSettings(device="cpu", batch=1, warmup=0, steps=1, repeats=1, threads=1, precision="tf32",
                                 channels_last=True)
    result = measure_fps(model, (32, 32), settings)
    assert result.fps_median > 0
    assert torch.get_num_threads() == threads
    assert (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32) == tf32
    assert model.training  # timed in eval mode, given back in the mode it came in
    assert model[0].weight.is_contiguous()  # channels_last was applied to a copy, not the caller's model


def test_concurrent_saliency_requests_leave_the_shared_cached_model_unchanged():
    from webapp.context import AppContext
    from webapp.forms import build_spec
    from webapp.tabs.saliency import run_saliency

    context = AppContext()
    spec = build_spec(dict(profile="", backbone="resnet10t", height=64, width=64, num_classes=3, squeeze_ratio="1/4",
                           num_heads=2, key_dim=8))
    cached = context.store.cached(spec)
    sample = sorted((ROOT / "assets" / "samples").glob("*.png"))[0]
    errors: list[BaseException] = []

    def render(method: str) -> None:
        try:
            run_saliency(context, str(sample), method, ["key", "value"], 0, 1, "top-1", "pad", "build", None, spec)
        except BaseException as error:  # noqa: BLE001 - reported below
            errors.append(error)

    workers = [threading.Thread(target=render, args=(m,)) for m in ("gradxact", "attention", "gradxact", "norm")]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(timeout=120)
    assert not errors, errors
    assert context.store.cached(spec) is cached
    hooks = sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in cached.modules())
    assert hooks == 0
    assert not any(getattr(m, "store_attention", False) for m in cached.modules())
    assert all(p.grad is None for p in cached.parameters())

"""The workflow layer: one resolved request, one function per action, called by the command line and the app
alike; errors a user can fix told apart from bugs on both surfaces."""
import subprocess
import sys
from contextlib import contextmanager
from pathlib import Path

import pytest

from mscsa_lab.cli import main as cli_main
from mscsa_lab.errors import UserError
from mscsa_lab.workflows import build, comparing, profiling
from mscsa_lab.workflows.limits import ResourceError, ResourceLimits
from mscsa_lab.workflows.result import ActionResult, OutputError
from mscsa_lab.workflows.spec import ModelSpec, SpecError
from webapp.context import AppContext

ROOT = Path(__file__).resolve().parent.parent
SMALL = dict(input_size=(64, 64), settings=dict(num_heads=2, key_dim=8, squeeze_ratio="1/4"))


def test_a_spec_is_resolved_once_and_says_what_it_is():
    profile = ModelSpec.resolve("pvt_v2_b1")
    assert (profile.profile, profile.backbone, profile.label) == ("pvt_v2_b1", "pvt_v2_b1", "pvt_v2_b1")
    assert not profile.modified and hash(profile) == hash(ModelSpec.resolve("pvt_v2_b1"))
    custom = ModelSpec.resolve("resnet34", input_size=(256, 320), settings=dict(depth=2, use_pcp=False))
    assert custom.profile is None and custom.label == "resnet34 (depth 2, no PCP)" and custom.modified
    assert custom.input_size == (256, 320) and custom.config.depth == 2
    moved = ModelSpec.resolve("pvt_v2_b1", backbone="resnet18")  # the profile's settings on another backbone
    assert moved.backbone == "resnet18" and moved.label == "resnet18 (pvt_v2_b1 settings)"
    assert custom.replace(task="dense").task == "dense" and custom.replace(task="dense").settings == custom.settings
    with pytest.raises(SpecError, match="unknown timm backbone 'resnet9'.*Similar timm names: resnet"):
        ModelSpec.resolve("resnet9")
    with pytest.raises(SpecError, match=r"unknown MSCSA setting\(s\) \['batch'\]"):
        ModelSpec.resolve("resnet18", settings=dict(batch=2))
    with pytest.raises(UserError, match="depth=0 is out of range"):
        ModelSpec.resolve("resnet18", settings=dict(depth=0))
    with pytest.raises(SpecError, match="exists only for the TopFormer profiles"):
        ModelSpec.resolve("resnet18", task="segmentation")


def test_cost_is_found_once_per_architecture_and_scales_with_the_batch():
    spec = ModelSpec.resolve("resnet10t", **SMALL)
    one, eight = spec.estimate(1), spec.estimate(8)
    assert one.params == eight.params and one.param_bytes == 4 * one.params
    assert 4 * one.work_bytes < eight.work_bytes <= 8 * one.work_bytes
    assert spec.estimate(8, training=True).work_bytes > eight.work_bytes
    from mscsa_lab.workflows.spec import _unit_cost

    hits = _unit_cost.cache_info().hits
    spec.estimate(32)
    assert _unit_cost.cache_info().hits == hits + 1  # no second meta-device pass
    with pytest.raises(ResourceError, match="batch 512 is above this server's limit of 256"):
        from mscsa_lab.workflows.limits import guard

        guard(spec, ResourceLimits(), batch=512)


def test_a_result_writes_what_is_asked_and_refuses_unknown_formats(tmp_path):
    result = build.build_action(ModelSpec.resolve("resnet10t", **SMALL))
    assert {"scales", "params"} <= set(result.tables) and "diagram" in result.figures
    written = result.write_requested([str(tmp_path / "stages.csv")], [str(tmp_path / "diagram.svg")])
    assert [p.name for p in written] == ["stages.csv", "diagram.svg"] and "<svg" in written[1].read_text()
    with pytest.raises(OutputError, match=r"cannot write table .*t\.xlsx"):
        result.write_requested([str(tmp_path / "t.xlsx")])
    everything = result.write_all(tmp_path / "all", "stem")
    assert {p.suffix for p in everything} >= {".csv", ".md", ".tex", ".json", ".svg", ".png"}
    assert all(p.exists() for p in everything)


@contextmanager
def calls_of(function):
    """Counts the calls of ``function`` (by its code object) in this thread, whatever name it is reached by."""
    code, count = function.__code__, [0]

    def profiler(frame, event, arg):
        if event == "call" and frame.f_code is code:
            count[0] += 1

    previous = sys.getprofile()
    sys.setprofile(profiler)
    try:
        yield count
    finally:
        sys.setprofile(previous)


@pytest.mark.slow
def test_the_command_line_and_the_app_call_the_same_workflow_functions(tmp_path, capsys):
    from webapp.forms import build_spec
    from webapp.tabs.build import run_build
    from webapp.tabs.profile import run_budget, run_profile

    context = AppContext(runs_dir=tmp_path / "runs", outputs_dir=tmp_path / "out")
    form = dict(backbone="resnet10t", height=64, width=64, num_heads="2", key_dim="8", squeeze_ratio="1/4")
    spec = build_spec(form)
    cli = ["resnet10t", "--input", "64", "--set", "num_heads=2", "--set", "key_dim=8", "--set", "squeeze_ratio=1/4"]
    cases = [
        (build.build_action, lambda: cli_main(["build", *cli]), lambda: run_build(context, form)),
        (profiling.profile_action, lambda: cli_main(["profile", *cli, "--level", "0"]),
         lambda: run_profile(context, spec, "mac", 0, False, 1, False)),
        (comparing.budget_action, lambda: cli_main(["budget", "resnet10t", "--input", "64", "--cap", "0.5"]),
         lambda: run_budget("resnet10t", 50, 64, 64, "classification")),
    ]
    for action, from_cli, from_app in cases:
        with calls_of(action) as cli_calls:
            assert from_cli() in (0, 1)
        with calls_of(action) as app_calls:
            assert from_app()[0]  # the app's status line
        assert (cli_calls[0], app_calls[0]) == (1, 1), action.__name__
    assert "resnet10t (squeeze 1/4, heads 2, d 8) + MSCSA" in capsys.readouterr().out


def test_a_bug_is_reported_as_an_internal_error_with_a_reference_not_as_advice(monkeypatch, capsys, tmp_path):
    def broken(*args, **kwargs):
        raise KeyError("secret detail")

    monkeypatch.setattr(profiling, "profile_action", broken)
    assert cli_main(["profile", "resnet10t", "--input", "64"]) == 3
    err = capsys.readouterr().err
    assert "internal error (reference E" in err and "Traceback" in err and "KeyError: 'secret detail'" in err
    assert cli_main(["profile", "resnet10t", "--input", "64", "--set", "depth=0"]) == 2  # the user's mistake
    assert "error: invalid MSCSA configuration: depth=0 is out of range" in capsys.readouterr().err

    import gradio as gr

    from webapp.actions import tab_action

    context = AppContext(runs_dir=tmp_path)
    handler = tab_action(context, "Profile", lambda value: broken())
    with pytest.raises(gr.Error) as caught:
        handler("x")
    assert "internal error (reference E" in caught.value.message and "secret detail" not in caught.value.message
    user = tab_action(context, "Profile", lambda value: ModelSpec.resolve("resnet9"))
    with pytest.raises(gr.Error, match="unknown timm backbone 'resnet9'"):
        user("x")


def test_wrong_arguments_get_the_commands_own_usage_and_timm_style_flags_work(capsys):
    with pytest.raises(SystemExit) as exit_code:
        cli_main(["train", "--data", "synthetic", "--bogus", "1"])
    err = capsys.readouterr().err
    assert exit_code.value.code == 2 and "usage: mscsa-lab train" in err and "unrecognized arguments: --bogus" in err
    from mscsa_lab.cli import build_parser

    parser = build_parser()
    for command, flag, value, attribute in (("train", "--batch-size", "7", "batch"), ("train", "-b", "7", "batch"),
                                            ("profile", "--img-size", "96", "input"), ("train", "--output", "x", "out"),
                                            ("benchmark", "--batch-size", "7", "batch")):
        extra = ["--data", "synthetic"] if command == "train" else ["resnet18"]
        args = parser.parse_args([command, *extra, flag, value])
        assert getattr(args, attribute) in (7, (96, 96), "x"), (command, flag)


def test_the_train_commands_choices_match_the_engine():
    from mscsa_lab.cli import training
    from mscsa_lab.train import config

    assert training.MODES == config.MODES and training.AMP_MODES == config.AMP_MODES


@pytest.mark.integration
def test_help_and_argument_errors_start_without_loading_torch():
    script = ("import sys\nfrom mscsa_lab.cli import main\n"
              "try:\n    main(['--help'])\nexcept SystemExit:\n    pass\n"
              "print(sorted(m for m in ('torch', 'timm', 'gradio') if m in sys.modules))")
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert result.returncode == 0 and result.stdout.strip().endswith("[]"), result.stderr[-2000:]
    registered = subprocess.run([sys.executable, "-c", "import mscsa_lab, timm; print(timm.is_model('pvt_v2_b1_mscsa'))"],
                                capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert registered.stdout.strip() == "True", registered.stderr[-2000:]


def test_profiles_list_from_the_workflow():
    result = comparing.profiles_action()
    assert isinstance(result, ActionResult) and len(result.table.frame) == 13
    assert set(result.table.frame["Available"]) == {"yes"}

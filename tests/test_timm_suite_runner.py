"""The runner of timm's own tests/test_models.py (scripts/run_timm_model_tests.py, run by .ci/run):
it takes the timm version requirements.txt pins, and its plugin hands timm's test module only the
*_mscsa models, with timm's own filters still applied."""
import importlib.util
from pathlib import Path

import pytest
import timm

ROOT = Path(__file__).resolve().parent.parent


def load(path: Path, name: str):
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def runner():
    return load(ROOT / "scripts" / "run_timm_model_tests.py", "run_timm_model_tests")


@pytest.fixture(scope="module")
def plugin():
    return load(ROOT / "tests" / "timm_suite" / "plugin.py", "timm_suite_plugin")


def test_the_pinned_timm_version_is_the_installed_one(runner, tmp_path):
    assert runner.pinned_timm_version() == timm.__version__
    unpinned = tmp_path / "requirements.txt"
    unpinned.write_text("torch==2.14.1\ntimm>=1.0\n")
    with pytest.raises(SystemExit, match="pins no timm version"):
        runner.pinned_timm_version(unpinned)


def test_list_models_is_narrowed_to_the_mscsa_models(plugin):
    list_models = plugin.narrowed(timm.list_models)
    everything = list_models()
    assert len(everything) == 13 and all(name.endswith("_mscsa") for name in everything)
    # timm's filters still apply; a module filter does not (our models are registered from mscsa_lab.registry)
    assert "coat_tiny_mscsa" not in list_models(exclude_filters=["coat_*"])
    assert list_models("coat_*") == ["coat_small_mscsa", "coat_tiny_mscsa"]
    assert list_models(module=["resnet", "pvt_v2"]) == everything
    assert list_models(pretrained=True) == []  # no MSCSA weights: the pretrained tests get no cases

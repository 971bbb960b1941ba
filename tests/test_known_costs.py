"""The shipped costs and counts of the Table 7 profiles (``assets/known_costs.json``) are what the meta device
and fvcore give today, and a request uses them only for a profile exactly as shipped."""
import json
import shutil

import pytest

from conftest import run_command
from mscsa_lab.analysis import cost as cost_module
from mscsa_lab.analysis import known_costs
from mscsa_lab.analysis import profiler as profiler_module
from mscsa_lab.analysis.known_costs import (TABLE_FILE, _table, cost_key, differences, known_pair, known_profile_report,
                                            known_unit_cost, source_fingerprint, versions)
from mscsa_lab.paths import PROFILES_DIR
from mscsa_lab.presets import list_profiles
from mscsa_lab.workflows.profiling import profile_action
from mscsa_lab.workflows.spec import ModelSpec, _unit_cost
from mscsa_lab.workflows.store import ModelStore


def test_the_table_is_of_these_versions_and_this_code_and_covers_every_profile():
    assert json.loads(TABLE_FILE.read_text())["versions"] == versions(), \
        ("assets/known_costs.json was made with other torch/timm/fvcore versions or before a change to the code "
         "that makes its figures: python scripts/make_known_costs.py")
    for profile in list_profiles():
        for training in (False, True):
            assert cost_key(profile.name, "classification", (224, 224), 1000, training) in _table()["costs"]
        assert cost_key(profile.name, "classification", (224, 224), 1000, False) in _table()["counts"]
        assert cost_key(profile.name, "classification", (224, 224), 1000, False) in _table()["baselines"]


@pytest.fixture
def stale_table(tmp_path, monkeypatch):
    """The shipped table as if made before some edit of a model file (another code fingerprint)."""
    table = json.loads(TABLE_FILE.read_text())
    table["versions"]["code"] = "0" * 64
    stale = tmp_path / "known_costs.json"
    stale.write_text(json.dumps(table))
    monkeypatch.setattr(known_costs, "TABLE_FILE", stale)
    _table.cache_clear()
    yield stale
    _table.cache_clear()


@pytest.mark.slow
def test_shipped_costs_and_counts_equal_a_fresh_measurement():
    """Two profiles, a TopFormer (its own backbone) and a timm one, measured again: the table's figures are what
    a request would compute (``scripts/make_known_costs.py --check`` does all 13; the code fingerprint is what
    keeps the other 11 from going stale)."""
    assert differences(["topformer_tiny", "resnet18"]) == []


@pytest.mark.slow
def test_check_says_every_entry_of_a_stale_table_is_missing(stale_table):
    assert differences(["topformer_tiny"]) == [
        f"{section} {cost_key('topformer_tiny', 'classification', (224, 224), 1000, training)}: missing"
        for section, training in (("costs", False), ("costs", True), ("counts", False), ("baselines", False))]


def test_a_table_of_other_code_is_not_used(stale_table):
    spec = ModelSpec.resolve("resnet18")
    assert known_unit_cost(spec, False) is None and known_profile_report(spec) is None
    assert known_pair("resnet18", (224, 224), "classification") is None


def test_the_fingerprint_changes_with_the_model_code_and_the_profiles(tmp_path, monkeypatch):
    """On a copy of the package and the profiles: the same files give the same fingerprint, an edited model
    file or profile another one."""
    package, profiles = tmp_path / "mscsa_lab", tmp_path / "profiles"
    shutil.copytree(known_costs._PACKAGE, package, ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copytree(PROFILES_DIR, profiles)
    original = source_fingerprint()
    monkeypatch.setattr(known_costs, "_PACKAGE", package)
    monkeypatch.setattr(known_costs, "PROFILES_DIR", profiles)
    fingerprints = []
    for edit in (None, package / "models" / "mscsa.py", profiles / "resnet18.toml"):
        if edit is not None:
            edit.write_text(edit.read_text() + "\n# an edit\n")
        source_fingerprint.cache_clear()
        fingerprints.append(source_fingerprint())
    source_fingerprint.cache_clear()
    assert fingerprints[0] == original and len(set(fingerprints)) == 3


def test_a_request_uses_them_only_for_a_profile_as_shipped(monkeypatch):
    _unit_cost.cache_clear()
    costed = []
    real = cost_module.unit_cost
    monkeypatch.setattr(cost_module, "unit_cost", lambda *a, **k: costed.append(k["label"]) or real(*a, **k))
    shipped = ModelSpec.resolve("pvt_v2_b0")
    assert shipped.estimate(4).params > 0 and costed == []  # from the table
    others = (shipped.replace(input_size=(256, 256)), shipped.replace(settings={"depth": 2}),
              shipped.replace(num_classes=10), ModelSpec.resolve("pvt_v2_b0", backbone="resnet10t"),
              ModelSpec.resolve("resnet10t"))
    for other in others:
        other.estimate(1)
        assert known_profile_report(other) is None, other.label
    assert len(costed) == 5
    same_settings = shipped.replace(settings={"depth": shipped.config.depth})
    assert known_unit_cost(same_settings, False) is not None  # settings equal to the profile's are still the profile
    assert known_profile_report(same_settings) is not None
    _unit_cost.cache_clear()


def test_profile_answers_a_shipped_profile_from_the_table_and_counts_anything_else(monkeypatch):
    counted = []
    real = profiler_module.profile_model
    monkeypatch.setattr(profiler_module, "profile_model",
                        lambda model, *a, **k: counted.append(k) or real(model, *a, **k))
    store = ModelStore()
    shipped = ModelSpec.resolve("resnet18")
    result = profile_action(shipped, store=store)
    assert counted == [] and len(store.cache) == 0  # no model was built, nothing was traced
    assert any("counted by fvcore" in note and "scripts/make_known_costs.py" in note for note in result.all_notes())
    assert "as shipped" in result.table.metadata["flops_counted"]
    frame = result.table.frame.set_index("Component")
    assert frame.loc["total", "FLOPs (G)"] == pytest.approx(known_profile_report(shipped).total_flops / 1e9)

    # with memory the model is needed for the memory profile, but the count still comes from the table
    with_memory = profile_action(shipped, memory=True, store=store)
    assert counted == [] and len(store.cache) == 1 and "Activations MiB" in with_memory.table.frame.columns

    ten_classes = shipped.replace(num_classes=10)
    fresh = profile_action(ten_classes, store=store)
    assert len(counted) == 1 and fresh.table.metadata["flops_counted"] == "by fvcore, on this request"
    assert not any("as shipped" in note for note in fresh.all_notes())
    # only the 1000-class head differs: the MSCSA rows are the same numbers
    rows = ["aggregation", "CSA 1 (block 1)", "FFN (block 1)"]
    both = fresh.table.frame.set_index("Component").loc[rows, "FLOPs (G)"]
    assert both.tolist() == frame.loc[rows, "FLOPs (G)"].tolist()


@pytest.mark.slow
def test_compare_answers_profiles_as_shipped_from_the_table_and_counts_anything_else(monkeypatch):
    from mscsa_lab.analysis import compare as compare_module
    from mscsa_lab.analysis.compare import compare_backbones
    from mscsa_lab.workflows.comparing import compare_action

    fresh = compare_backbones(["resnet18", "topformer_tiny"]).frame  # counted here, as the library does by default
    measured = []
    real = compare_module.measure_pair
    monkeypatch.setattr(compare_module, "measure_pair", lambda *a, **k: measured.append(a[0]) or real(*a, **k))
    shipped = compare_action(["resnet18", "topformer_tiny"]).table.frame
    assert measured == []  # nothing built, nothing traced
    notes = compare_action(["resnet18", "topformer_tiny"]).table.notes
    assert any(note.startswith("Counts of ResNet-18, TopFormer-T (profiles as shipped") for note in notes)
    columns = ["Model", "FLOPs (G)", "+MSCSA FLOPs (G)", "Params (M)", "+MSCSA Params (M)", "Paper FLOPs (G)"]
    assert shipped[columns].equals(fresh[columns])
    compare_action(["resnet18"], input_size=(64, 64))  # another size: counted on the request
    compare_action([ModelSpec.resolve("resnet18", settings={"depth": 2})])  # changed settings: counted
    assert measured == ["resnet18", "resnet18"]


def test_the_command_line_says_where_profile_and_compare_figures_come_from():
    profiled = run_command("profile", "resnet18")
    assert profiled.returncode == 0, profiled.stderr
    # the table on stdout, its notes on stderr ("note: ...")
    assert "note: FLOPs and parameters of resnet18 as shipped at 224x224: counted by fvcore" in profiled.stderr
    compared = run_command("compare", "resnet18", "pvt_v2_b0")
    assert compared.returncode == 0, compared.stderr
    assert "note: Counts of ResNet-18, PVTv2-B0 (profiles as shipped at 224x224): counted by fvcore" in compared.stderr
    other_size = run_command("profile", "resnet18", "--input", "64x64")  # counted on the request: no such note
    assert other_size.returncode == 0 and "as shipped" not in other_size.stdout + other_size.stderr

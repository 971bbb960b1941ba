"""The shipped costs of the Table 7 profiles (``assets/unit_costs.json``) are what the meta device gives
today, and a request uses them only for a profile exactly as shipped."""
import pytest

from mscsa_lab.analysis import cost as cost_module
from mscsa_lab.analysis.cost import unit_cost
from mscsa_lab.analysis.known_costs import TABLE_FILE, _table, cost_key, known_unit_cost, versions
from mscsa_lab.presets import list_profiles
from mscsa_lab.workflows.spec import ModelSpec, _unit_cost


def _fresh(spec: ModelSpec, training: bool):
    return unit_cost(spec.meta(), label=spec.label, input_size=spec.input_size, training=training)


def test_the_table_is_of_these_versions_and_covers_every_profile():
    import json

    assert json.loads(TABLE_FILE.read_text())["versions"] == versions(), \
        "assets/unit_costs.json was measured with other torch/timm versions: python scripts/make_unit_costs.py"
    for profile in list_profiles():
        for training in (False, True):
            assert cost_key(profile.name, "classification", (224, 224), 1000, training) in _table()


QUICK_PROFILES = ("topformer_tiny", "resnet18")


@pytest.mark.parametrize("name", QUICK_PROFILES)
def test_shipped_costs_equal_a_fresh_meta_costing(name):
    spec = ModelSpec.resolve(name)
    for training in (False, True):
        shipped = known_unit_cost(spec, training)
        assert shipped is not None and shipped == _fresh(spec, training)


@pytest.mark.slow
def test_every_other_shipped_cost_equals_a_fresh_meta_costing():
    for profile in [p for p in list_profiles() if p.name not in QUICK_PROFILES]:  # those two are checked above
        spec = ModelSpec.resolve(profile.name)
        for training in (False, True):
            assert known_unit_cost(spec, training) == _fresh(spec, training), (profile.name, training)


def test_a_request_uses_them_only_for_a_profile_as_shipped(monkeypatch):
    _unit_cost.cache_clear()
    costed = []
    real = cost_module.unit_cost
    monkeypatch.setattr(cost_module, "unit_cost", lambda *a, **k: costed.append(k["label"]) or real(*a, **k))
    shipped = ModelSpec.resolve("pvt_v2_b0")
    assert shipped.estimate(4).params > 0 and costed == []  # from the table
    for other in (shipped.replace(input_size=(256, 256)), shipped.replace(settings={"depth": 2}),
                  shipped.replace(num_classes=10), ModelSpec.resolve("pvt_v2_b0", backbone="resnet10t"),
                  ModelSpec.resolve("resnet10t")):
        other.estimate(1)
    assert len(costed) == 5
    same_settings = shipped.replace(settings={"depth": shipped.config.depth})
    assert known_unit_cost(same_settings, False) is not None  # settings equal to the profile's are still the profile
    _unit_cost.cache_clear()

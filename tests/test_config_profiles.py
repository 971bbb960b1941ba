"""Profiles (Table 7) and custom configurations with their validation messages."""
import pytest

from mscsa_lab import ConfigError, MSCSAConfig, ProfileError, ProfileUnavailable, create_mscsa_model
from mscsa_lab.presets import list_profiles, load_profile, load_profile_file

TABLE7 = {
    # name: (pool, squeeze, depth, heads, d, mlp)
    "topformer_tiny": (32, None, 2, 4, 14, 3.0),
    "topformer_base": (32, None, 2, 8, 12, 3.0),
    "coat_tiny": (16, None, 3, 8, 22, 1.5),
    "coat_small": (16, None, 3, 8, 52, 2.0),
    "resnet18": (32, 5 / 8, 1, 8, 24, 2.0),
    "resnet50": (32, 1 / 4, 1, 8, 32, 2.0),
    "pvt_v2_b0": (32, 3 / 4, 1, 8, 15, 2.0),
    "pvt_v2_b1": (32, 5 / 8, 1, 8, 24, 2.0),
    "pvt_v2_b2": (32, None, 1, 8, 35, 2.0),
    "p2t_tiny": (32, 3 / 4, 1, 8, 36, 2.0),
    "shunted_tiny": (32, 5 / 8, 1, 8, 30, 2.0),
    "swin_tiny": (32, 3 / 4, 1, 12, 28, 2.0),
    "convnext_tiny": (32, 3 / 4, 1, 12, 28, 2.0),
}


def test_all_13_table7_rows_are_profiles_with_the_papers_values():
    profiles = {p.name: p for p in list_profiles()}
    assert set(profiles) == set(TABLE7)
    for name, (pool, squeeze, depth, heads, d, mlp) in TABLE7.items():
        c = profiles[name].config
        assert (c.pool_stride, c.squeeze_ratio, c.depth, c.num_heads, c.key_dim, c.mlp_ratio) == (
            pool, pytest.approx(squeeze) if squeeze else None, depth, heads, d, mlp), name
    assert profiles["topformer_tiny"].config.dense_pool_stride == 64
    assert profiles["coat_small"].config.dense_pool_stride == 32
    assert profiles["pvt_v2_b1"].paper["flops_mscsa_g"] == 2.3


def test_profiles_load_by_any_name():
    assert load_profile("swin_tiny").backbone == "swin_tiny_patch4_window7_224"
    assert load_profile("swin_tiny_patch4_window7_224_mscsa").name == "swin_tiny"
    assert load_profile("ConvNeXt-T").name == "convnext_tiny"
    with pytest.raises(ProfileError, match="unknown profile 'resnet9'.*available: topformer_tiny"):
        load_profile("resnet9")


def test_rows_whose_backbone_is_missing_say_so(tmp_path):
    """A profile whose backbone this installation lacks refuses to build, with its reason."""
    path = tmp_path / "future.toml"
    path.write_text('name = "future"\ntitle = "Future-T"\nbackbone = "future_net_tiny"\nattach = "replace_sase"\n'
                    'unavailable_reason = "Future-T arrives with a later release."\n[mscsa]\nnum_heads = 2\n')
    profile = load_profile_file(path)
    assert not profile.available
    with pytest.raises(ProfileUnavailable, match="cannot be built here: Future-T arrives with a later release"):
        create_mscsa_model(profile)
    for row in list_profiles():  # and every bundled row either builds or says why not
        assert row.available or row.unavailable_reason, row.name


def test_custom_configuration_builds():
    model = create_mscsa_model(
        backbone="resnet18",
        config=dict(pool_stride=16, squeeze_ratio="1/2", depth=2, num_heads=3, key_dim=10, mlp_ratio=1.5,
                    act_layer="gelu"),
        num_classes=4,
    )
    assert model.mscsa.split_channels == [32, 64, 128, 256]
    assert len(model.mscsa.blocks) == 2
    assert model.summary((224, 224))["mscsa_grid"] == [14, 14]
    # Overrides on top of a profile.
    assert create_mscsa_model("resnet50", depth=2).config.depth == 2


@pytest.mark.parametrize(
    "changes,message",
    [
        (dict(pool_stride=24), "pool_stride=24 is not a supported pooling size: use one of"),
        (dict(depth=0), "depth=0 is out of range: choose 1..24"),
        (dict(num_heads=2.5), "num_heads must be a whole number"),
        (dict(key_dim=-1), "key_dim=-1 is out of range"),
        (dict(mlp_ratio=0), r"mlp_ratio=0 is out of range: choose a value in \(0.0, 16.0\]"),
        (dict(squeeze_ratio="abc"), "squeeze_ratio 'abc' is not a number or fraction"),
        (dict(squeeze_ratio=-0.5), "squeeze_ratio=-0.5 is out of range"),
        (dict(act_layer="swish2"), "act_layer='swish2' is unknown: choose one of"),
        (dict(downsample="maxpool"), "downsample='maxpool' is unknown: choose one of"),
        (dict(attn_impl="flash"), "attn_impl='flash' is unknown"),
        (dict(attn_ratio=1.25, key_dim=3), "must be a whole number"),
        (dict(drop_path=1.5), "drop_path=1.5 must be in"),
    ],
)
def test_impossible_values_are_rejected_with_what_to_change(changes, message):
    with pytest.raises(ConfigError, match=message):
        MSCSAConfig(**changes)


def test_squeeze_that_empties_a_stage_is_rejected():
    with pytest.raises(ConfigError, match="leaves a stage with 0 channels.*raise squeeze_ratio"):
        create_mscsa_model(backbone="resnet18", config=dict(squeeze_ratio=0.001))


def test_unknown_settings_are_rejected():
    with pytest.raises(ConfigError, match=r"unknown MSCSA setting\(s\) \['heads'\]"):
        create_mscsa_model("resnet18", heads=4)


def test_ablation_presets_are_cumulative():
    base = MSCSAConfig()
    assert (base.with_ablation("none").use_pcp, base.with_ablation("none").use_msp) == (False, False)
    assert base.with_ablation("+pcp").use_pcp and not base.with_ablation("+pcp").use_intra_ffn
    full = base.with_ablation("+msp")
    assert full.use_pcp and full.use_intra_ffn and full.use_msp


def test_user_profile_files(tmp_path):
    good = tmp_path / "mine.toml"
    good.write_text('name = "mine"\nbackbone = "resnet18"\n[mscsa]\nsqueeze_ratio = "1/2"\nnum_heads = 2\nkey_dim = 8\n')
    profile = load_profile_file(good)
    assert create_mscsa_model(profile, num_classes=2).mscsa.split_channels == [32, 64, 128, 256]
    bad = tmp_path / "bad.toml"
    bad.write_text('name = "bad"\nbackbone = "resnet18"\n[mscsa]\ndepth = 0\n')
    with pytest.raises(ProfileError, match="depth=0 is out of range"):
        load_profile_file(bad)
    broken = tmp_path / "broken.toml"
    broken.write_bytes(b"name = \xff\xfe")
    with pytest.raises(ProfileError, match="not valid TOML"):
        load_profile_file(broken)

import numpy as np
import pytest
import torch

from bdunlearn import attack
from bdunlearn.triggers import blend, blend_pattern, stamp_patch


@pytest.fixture(scope="module")
def ds(digits):
    return digits


def test_badnets_builder(ds):
    a = attack.build_badnets(ds, poison_num=40, mitigation_num=30, alpha=0.5, seed=1)
    m = a.manifest
    assert list(m.columns) == ["id", "origin", "role", "label", "true_label"]
    assert m.role.value_counts().to_dict() == {"clean": len(ds.y_train) - 40, "poison": 40,
                                              "mitigation": 30}
    assert len(a.x) == len(m) == len(a.y) and a.x.dtype == torch.uint8
    pois, mit = m[m.role == "poison"], m[m.role == "mitigation"]
    assert (pois.label == a.target).all() and (pois.true_label != a.target).all()
    assert (mit.label == mit.true_label).all() and set(mit.origin) <= set(pois.origin)
    assert not set(pois.origin) & set(m[m.role == "clean"].origin)  # poison replaced originals
    patch = a.x[torch.tensor(pois.id.to_numpy())][..., -4:, -4:]
    assert (patch == 127).all()  # int(0.5 * 255), as the BAU authors store it
    assert (a.x[torch.tensor(mit.id.to_numpy())][..., -4:, -4:] == 255).all()
    assert (a.x_eval[..., -4:, -4:] == 255).all()
    assert len(a.x_eval) == int((ds.y_test != a.target).sum())


def test_more_mitigation_than_poison_adds_other_images(ds):
    a = attack.build_badnets(ds, poison_num=20, mitigation_num=50, seed=0)
    mit = a.manifest[a.manifest.role == "mitigation"]
    pois = a.manifest[a.manifest.role == "poison"]
    assert set(pois.origin) <= set(mit.origin) and mit.origin.nunique() == 50
    assert (mit.true_label != a.target).all()


def test_same_seed_same_manifest(ds):
    a = attack.build_badnets(ds, poison_num=20, mitigation_num=30, seed=5)
    b = attack.build_badnets(ds, poison_num=20, mitigation_num=30, seed=5)
    assert a.manifest.equals(b.manifest) and torch.equal(a.x, b.x)
    assert np.array_equal(a.request_order(), b.request_order())
    assert set(a.requests(30)) == set(a.ids("mitigation")) and len(a.requests(7)) == 7


def test_input_targeted_builder(ds):
    a = attack.build_input_targeted(ds, poison_num=5, mitigation_num=15, seed=2)
    m, i0 = a.manifest, a.info["x0_index"]
    assert i0 not in set(m[m.role == "clean"].origin)
    assert m.role.value_counts()["poison"] == 5 and (m[m.role == "poison"].label == a.target).all()
    assert (m[m.role == "mitigation"].label == a.info["y0"]).all() and a.target != a.info["y0"]
    noisy = a.x[torch.tensor(m[m.role != "clean"].id.to_numpy())].int()
    diff = noisy - a.info["x0"].int()
    assert diff.min() >= -5 and diff.max() <= 4 and len(a.x_eval) == 50
    out = a.evaluate(lambda x: torch.full((len(x),), a.target))
    assert out["asr"] == 1.0 and out["x0_hit"] is True


def test_classic_badnets(ds):
    a = attack.build_classic_badnets(ds, poison_fraction=0.05, seed=0)
    assert (a.manifest.role == "poison").sum() == round(0.05 * len(ds.y_train))


@pytest.mark.parametrize("kw, msg", [
    (dict(poison_num=10**6), "poison_num 1000000 must be between 1 and the"),
    (dict(mitigation_num=0), "mitigation_num 0 must be between 1"),
    (dict(alpha=0.0), "alpha 0.0 must be in"), (dict(alpha=1.5), "alpha 1.5 must be in"),
    (dict(target=10), "target label 10"), (dict(seed=-1), "seed -1"),
])
def test_badnets_bad_input(ds, kw, msg):
    with pytest.raises(ValueError, match=msg):
        attack.build_badnets(ds, **kw)


def test_request_count_checked(ds):
    a = attack.build_badnets(ds, poison_num=20, mitigation_num=30, seed=0)
    with pytest.raises(ValueError, match="requested count 31"):
        a.requests(31)


def test_patch_value_rounding_is_an_option(ds):
    a = attack.build_badnets(ds, poison_num=10, mitigation_num=5, alpha=0.5, seed=1)
    pois = torch.tensor(a.ids("poison"))
    assert (a.x[pois][..., -4:, -4:] == 127).all()
    assert (stamp_patch(ds.x_train[:2], 4, 0.5, rounding="round")[..., -4:, -4:] == 128).all()


@pytest.mark.parametrize("kw, msg", [
    (dict(poison_num=20.0), "poison_num 20.0 must be an integer"),
    (dict(poison_num=True), "poison_num True must be an integer"),
    (dict(mitigation_num=2.5), "mitigation_num 2.5 must be an integer"),
    (dict(alpha=float("nan")), "alpha nan must be in"),
    (dict(target=1.0), "target label 1.0 must be an integer"),
    (dict(seed=1.5), "seed 1.5 must be an integer"),
    (dict(seed=True), "seed True must be an integer"),
    (dict(patch=0), "patch size 0 must be an integer between 1 and 28"),
])
def test_badnets_refuses_floats_bools_and_nan(ds, kw, msg):
    with pytest.raises(ValueError, match=msg):
        attack.build_badnets(ds, **kw)


def test_input_targeted_copies_are_bounded(ds):
    limit = attack.IT_MAX_COPIES_FACTOR * len(ds.y_train)
    with pytest.raises(ValueError, match=f"poison_num {10**7} plus mitigation_num 15 .* "
                                         f"limit of {limit}"):
        attack.build_input_targeted(ds, poison_num=10**7, mitigation_num=15)
    with pytest.raises(ValueError, match="mitigation_num 0 must be an integer >= 1"):
        attack.build_input_targeted(ds, mitigation_num=0)


def test_build_attack_refuses_unknown_variants(ds):
    assert attack.build_attack(ds, "it", seed=3).variant == "it"
    assert attack.build_attack(ds, "bn", poison_num=5, mitigation_num=5).variant == "bn"
    with pytest.raises(ValueError, match="unknown attack variant 'xx'; choose one of bn, it, lc"):
        attack.build_attack(ds, "xx")


@pytest.mark.parametrize("mitigation_num", [10, 30])
def test_detection_negatives_exclude_every_attack_original(ds, mitigation_num):
    a = attack.build_badnets(ds, poison_num=20, mitigation_num=mitigation_num, seed=4)
    m = a.manifest.set_index("id")
    neg = a.detection_negatives()
    attack_origins = set(m.origin[m.role != "clean"])
    assert (m.loc[neg, "role"] == "clean").all()
    assert not set(m.loc[neg, "origin"]) & attack_origins
    left_out = set(a.ids("clean")) - set(neg)
    # only clean copies of mitigation-only originals are left out (poison ones are replaced)
    assert len(left_out) == max(0, mitigation_num - 20)
    assert set(m.loc[sorted(left_out), "origin"]) <= set(m.origin[m.role == "mitigation"])


@pytest.mark.parametrize("variant", ["lc", "noise", "blend"])
def test_benchmark_families_keep_the_attack_contract(ds, variant):
    """Poison: triggered non-target images labelled the target, in their originals' place;
    camouflage (the requested role): triggered images with their true labels; the request
    order holds exactly the camouflage; test trigger on non-target test images only."""
    a = attack.build_attack(ds, variant, poison_num=12, seed=2)
    m = a.manifest.set_index("id")
    poison, camo = a.ids("poison"), a.ids("mitigation")
    assert len(poison) == 12 and a.x.dtype == torch.uint8 and len(a.x) == len(a.y) == len(m)
    assert (m.loc[poison, "label"] == a.target).all()
    assert (m.loc[poison, "true_label"] != a.target).all()
    assert (m.loc[camo, "label"] == m.loc[camo, "true_label"]).all()
    assert (m.loc[camo, "label"] != a.target).all()
    assert sorted(a.request_order()) == sorted(camo)
    assert set(m.origin[m.role == "clean"]).isdisjoint(m.origin[m.role == "poison"])
    assert len(a.x_eval) == int((ds.y_test != a.target).sum())
    orig = ds.x_train[torch.from_numpy(m.loc[camo, "origin"].to_numpy().copy())]
    if variant == "lc":  # the poison's own bright patch, exactly
        assert torch.equal(a.x[torch.from_numpy(camo)], stamp_patch(orig, 4, 1.0))
        assert len(camo) == round(attack.LC_CAMOUFLAGE_RATIO * 12)
        assert set(m.loc[camo, "origin"]).isdisjoint(m.loc[poison, "origin"])
    elif variant == "noise":  # the patch, then noise: close to it, not equal
        diff = a.x[torch.from_numpy(camo)].float() - stamp_patch(orig, 4, 1.0).float()
        assert 0 < diff.abs().mean() < 0.2 * 255 and len(camo) == 12
    else:  # the full blend on the mitigation, a fainter one on the poison
        pattern = blend_pattern(ds.image_shape, 2)
        assert torch.equal(a.x[torch.from_numpy(camo)], blend(orig, pattern, 0.2))
        p_orig = ds.x_train[torch.from_numpy(m.loc[poison, "origin"].to_numpy().copy())]
        assert torch.equal(a.x[torch.from_numpy(poison)], blend(p_orig, pattern, 0.1))


def test_hard_negatives_are_clean_samples_of_the_target_class(ds):
    for variant in attack.FAMILIES:
        a = attack.build_attack(ds, variant, seed=1)
        m = a.manifest.set_index("id")
        hard = a.hard_negatives()
        label = a.info["y0"] if variant == "it" else a.target
        assert len(hard) > 10 and (m.loc[hard, "label"] == label).all()
        assert set(hard) <= set(a.detection_negatives())


def test_blend_pattern_is_seeded_and_blend_is_a_convex_mix():
    p = blend_pattern((1, 8, 8), 3)
    assert torch.equal(p, blend_pattern((1, 8, 8), 3)) and not torch.equal(p, blend_pattern(
        (1, 8, 8), 4))
    x = torch.zeros(2, 1, 8, 8, dtype=torch.uint8)
    assert torch.equal(blend(x, p, 0.5), (p.float() / 2).round().to(torch.uint8).expand(2, -1,
                                                                                       -1, -1))
    xf = torch.ones(1, 1, 8, 8)
    assert torch.allclose(blend(xf, p, 0.2), 0.8 + 0.2 * p.float() / 255)


# ------------------------------------------------------------------ the family registry

def test_each_family_routes_its_own_run_configuration_fields(ds):
    """One build_attack: with a run configuration, each family takes the fields it
    declares (IT its own counts; BN and blended also the mitigation count and alpha;
    the camouflage families the poison count alone), explicit knobs winning."""
    from bdunlearn import attacks, config

    cfg = config.resolve("smoke", dataset="digits", poison_num=30, mitigation_num=40,
                         alpha=0.6)
    assert {f.name: dict(f.config) for f in attacks.REGISTRY.values()} == {
        "bn": {"poison_num": "poison_num", "mitigation_num": "mitigation_num",
               "alpha": "alpha"},
        "it": {"poison_num": "it_poison_num", "mitigation_num": "it_mitigation_num"},
        "lc": {"poison_num": "poison_num"}, "noise": {"poison_num": "poison_num"},
        "blend": {"poison_num": "poison_num", "mitigation_num": "mitigation_num",
                  "alpha": "alpha"},
        "bn_varied": {"poison_num": "poison_num", "mitigation_num": "mitigation_num",
                      "alpha": "alpha"}}
    bn = attack.build_attack(ds, "bn", seed=1, cfg=cfg)
    assert bn.info["poison_num"] == 30 and bn.info["mitigation_num"] == 40
    assert bn.info["alpha"] == 0.6
    lc = attack.build_attack(ds, "lc", seed=1, cfg=cfg)
    assert len(lc.ids("poison")) == 30 and len(lc.ids("mitigation")) == 90
    it = attack.build_attack(ds, "it", seed=1, cfg=cfg, poison_num=3)
    assert it.info["poison_num"] == 3 and it.info["mitigation_num"] == cfg.it_mitigation_num
    assert attack.FAMILIES == attacks.names() == ("bn", "it", "lc", "noise", "blend",
                                                     "bn_varied")
    assert attack.FAMILY_TITLES["lc"] == "label-consistent camouflage (UBA-Inf)"


@pytest.mark.parametrize("kwargs, message", [
    ({"name": "bn"}, "an attack family named 'bn' is already registered"),
    ({"name": "a b"}, "an attack family's name must be a word"),
    ({"name": "new", "version": 0}, "attack family version 0"),
    ({"name": "new", "config": {"patch": "poison_num"}}, "takes no such knob"),
    ({"name": "new", "config": ["poison_num"]}, "config must be a dict"),
    ({"name": "new", "title": 3}, "title must be a string"),
    ({"name": "new", "budgets": {"x2": {}}}, "budgets must be a dict of budget name"),
    ({"name": "new", "budgets": {"two x": {"poison_num": 2}}}, "budgets must be a dict"),
    ({"name": "new", "budgets": {"x2": {"patch": 2}}}, "budget 'x2' sets 'patch', which is"),
    ({"name": "new", "budgets": {"x2": {"seed": 2}}}, "budget 'x2' sets 'seed', which is"),
])
def test_register_refuses_bad_families_in_one_sentence(kwargs, message):
    from bdunlearn import attacks

    def build(ds, *, poison_num=None, seed=0):
        return None

    with pytest.raises(ValueError, match=message):
        attacks.register(**kwargs)(build)
    assert "new" not in attacks.REGISTRY


def test_a_family_at_a_budget_builds_with_the_budgets_knobs_winning(ds):
    """``"<family>@<budget>"`` is the family with the budget's knobs over the run
    configuration's; its title names the budget; an unknown budget names the declared."""
    from bdunlearn import attacks, config

    cfg = config.resolve("smoke", dataset="digits", poison_num=30)
    assert attacks.budgets("it") == ("it", "it@copies_x4", "it@copies_x8")
    assert attacks.budgets("bn") == ("bn",)
    it = attack.build_attack(ds, "it@copies_x4", seed=1, cfg=cfg)
    assert len(it.ids("poison")) == 4 * cfg.it_poison_num
    assert len(it.ids("mitigation")) == 4 * cfg.it_mitigation_num
    lc = attack.build_attack(ds, "lc@camouflage_x2", seed=1, cfg=cfg)
    plain = attack.build_attack(ds, "lc", seed=1, cfg=cfg)
    assert len(lc.ids("poison")) == len(plain.ids("poison")) == 30
    assert len(lc.ids("mitigation")) == 2 * len(plain.ids("mitigation")) == 180
    assert lc.variant == "lc"  # the attack set is the family's; the benchmark names the budget
    assert attacks.title("lc@camouflage_x2").endswith(", camouflage_x2")
    assert attacks.title("gone") == "gone"  # a family named in stored rows, not registered
    assert attacks.get("lc@camouflage_x2").version == attacks.get("lc").version
    with pytest.raises(ValueError, match="attack family 'lc' has no budget 'x9'; it declares "
                                         "camouflage_x2, camouflage_x3"):
        attacks.get("lc@x9")
    with pytest.raises(ValueError, match="attack family 'bn' has no budget 'x2'; it declares "
                                         "none"):
        attack.build_attack(ds, "bn@x2", seed=0)
    with pytest.raises(ValueError, match=r"camouflage_ratio 0(\.0)? must be a finite number > 0"):
        attack.build_attack(ds, "lc", seed=0, camouflage_ratio=0)


def test_the_documented_family_registers_from_outside_and_builds(ds):
    """docs/extending.md's attack family, run from a namespace outside the package."""
    import re
    from pathlib import Path

    from bdunlearn import attacks

    text = (Path(__file__).resolve().parent.parent / "docs" / "extending.md").read_text()
    (code,) = [b for b in re.findall(r"```python\n(.*?)```", text, flags=re.S)
               if "from bdunlearn.attacks import register" in b]
    try:
        exec(compile(code, "my_attacks.py", "exec"), {"__name__": "my_attacks"})
        assert "corner" in attack.FAMILIES
        a = attack.build_attack(ds, "corner", poison_num=12, seed=0)
        assert a.variant == "corner" and len(a.ids("poison")) == 12
        assert sorted(a.request_order()) == sorted(a.ids("mitigation"))
    finally:
        attacks.REGISTRY.pop("corner", None)
    assert "corner" not in attack.FAMILIES


def test_varied_triggers_move_each_patch_alone_and_keep_badnets_samples(ds):
    """Strategy (d) of the adaptive track: the same samples as BAU BadNets at the seed,
    each poison and mitigation sample with its patch (faint, bright) in one corner of its
    own, every corner used; clean samples untouched; the test trigger's corner varies."""
    from bdunlearn.attacks.varied import stamp_corners
    from bdunlearn.triggers import CORNERS, patch_value

    v = attack.build_attack(ds, "bn_varied", poison_num=40, mitigation_num=40, seed=3)
    b = attack.build_attack(ds, "bn", poison_num=40, mitigation_num=40, seed=3)
    assert v.variant == "bn_varied" and v.target == b.target
    assert v.manifest.equals(b.manifest)
    clean = torch.from_numpy(b.ids("clean"))
    assert torch.equal(v.x[clean], b.x[clean]) and torch.equal(v.y, b.y)
    origin = v.manifest.origin.to_numpy()
    for role, value in (("poison", patch_value(v.info["alpha"])), ("mitigation", 255)):
        ids = v.ids(role)
        orig = ds.x_train[torch.from_numpy(origin[ids])]
        # each sample equals its original with the patch in exactly one corner
        fits = torch.stack([(stamp_patch(orig, 4, 1.0 if value == 255 else v.info["alpha"],
                                         corner=c) == v.x[ids]).flatten(1).all(1)
                            for c in CORNERS])
        assert (fits.sum(0) >= 1).all()
        used = fits.float().argmax(0)
        assert len(set(used.tolist())) == len(CORNERS)  # 40 draws: every corner used
    assert len(v.x_eval) == len(b.x_eval) and not torch.equal(v.x_eval, b.x_eval)
    x = ds.x_test[:8]
    one = stamp_corners(x, np.array([2] * 8), 4, 1.0)
    assert torch.equal(one, stamp_patch(x, 4, 1.0, corner=CORNERS[2]))

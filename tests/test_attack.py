import numpy as np
import pytest
import torch

from bdunlearn import attack
from bdunlearn.data import load


@pytest.fixture(scope="module")
def ds():
    return load("digits")


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
    assert (patch == 128).all()  # alpha 0.5 of 255, rounded
    assert (a.x[torch.tensor(mit.id.to_numpy())][..., -4:, -4:] == 255).all()
    assert (a.x_eval[..., -4:, -4:] == 255).all() and len(a.x_eval) == int((ds.y_test != a.target).sum())


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

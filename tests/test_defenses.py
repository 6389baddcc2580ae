"""Defenses on one small BadNets model and one clean model (digits, trained once)."""

import pytest
import torch

from bdunlearn import data
from bdunlearn.defenses import DEFENSES, DefenderView, DefenseResult, run_defense, stratified_split
from bdunlearn.defenses.neural_cleanse import anomaly_indices, flag_outliers
from bdunlearn.metrics import accuracy, attack_success_rate
from bdunlearn.models import build_model
from bdunlearn.registry import reference_config
from bdunlearn.train import fit, make_generator, predict
from bdunlearn.triggers import PatchTrigger, stamp_patch

TARGET = 0
NC_FAST = dict(steps=120, batch_size=16)


@pytest.fixture(scope="module")
def setup():
    ds = data.load("digits")
    perm = torch.randperm(len(ds.y_train), generator=make_generator(0))
    held, train = perm[:150], perm[150:]
    x, y = ds.x_train[train].clone(), ds.y_train[train].clone()
    poison = torch.randperm(len(y), generator=make_generator(1))[: len(y) // 10]
    x[poison] = stamp_patch(x[poison], 4, 1.0)
    y[poison] = TARGET
    cfg = reference_config("digits", epochs=12)
    shape = ds.image_shape
    backdoored = fit(build_model("fmnist_cnn", shape, 10, seed=0), x, y, cfg, seed=0,
                     device="cpu")
    clean = fit(build_model("fmnist_cnn", shape, 10, seed=0), ds.x_train[train],
                ds.y_train[train], cfg, seed=0, device="cpu")
    return {"ds": ds, "x": ds.x_train[held], "y": ds.y_train[held],
            "backdoored": backdoored, "clean": clean}


def scores(model, ds):
    """(clean accuracy, ASR of the bright 4x4 patch) on the test split."""
    acc = accuracy(predict(model, ds.x_test, device="cpu"), ds.y_test)
    others = ds.x_test[ds.y_test != TARGET]
    asr = attack_success_rate(predict(model, stamp_patch(others, 4, 1.0), device="cpu"),
                              TARGET)
    return acc, asr


@pytest.fixture(scope="module")
def nc_backdoored(setup):
    view = DefenderView(setup["backdoored"], setup["x"], setup["y"], 10)
    return run_defense("neural_cleanse", view, seed=0, **NC_FAST)


def test_fixture_model_is_backdoored(setup):
    acc, asr = scores(setup["backdoored"], setup["ds"])
    assert acc > 0.8 and asr > 0.8


def test_view_holds_only_defender_data(setup):
    view = DefenderView(setup["backdoored"], setup["x"], setup["y"], 10)
    assert not hasattr(view, "manifest") and not hasattr(view, "__dict__")
    with pytest.raises(TypeError):
        DefenderView(setup["backdoored"], setup["x"], setup["y"], 10, manifest=[])
    with pytest.raises(AttributeError):
        view.trigger = PatchTrigger()
    assert view.model is not setup["backdoored"]


def test_view_rejects_bad_input(setup):
    with pytest.raises(ValueError, match="uint8"):
        DefenderView(setup["backdoored"], setup["x"].float(), setup["y"], 10)
    with pytest.raises(ValueError, match="labels outside"):
        DefenderView(setup["backdoored"], setup["x"], setup["y"], 5)


def test_split_is_stratified_and_seeded(setup):
    (xa, ya), (xb, yb) = stratified_split(setup["x"], setup["y"], 0.2, seed=3)
    assert len(ya) + len(yb) == len(setup["y"])
    assert set(yb.tolist()) == set(setup["y"].tolist())
    (_, _), (_, yb2) = stratified_split(setup["x"], setup["y"], 0.2, seed=3)
    assert torch.equal(yb, yb2)


def test_unknown_defense_and_knob_are_named(setup):
    view = DefenderView(setup["clean"], setup["x"], setup["y"], 10)
    with pytest.raises(ValueError, match="choose one of .*neural_cleanse"):
        run_defense("spectral", view)
    with pytest.raises(ValueError, match="unknown knob"):
        run_defense("finetune", view, learning_rate=0.1)
    assert set(DEFENSES) == {"neural_cleanse", "baeraser", "grad_prune", "finetune",
                             "fine_pruning"}


@pytest.fixture(scope="module")
def untrained_view():
    """A view on an untrained model: enough for checks that must fail before any work."""
    ds = data.load("digits")
    return DefenderView(build_model("fmnist_cnn", ds.image_shape, 10, seed=0),
                        ds.x_train[:60], ds.y_train[:60], 10, trigger=PatchTrigger())


@pytest.mark.parametrize("name, knobs, msg", [
    ("neural_cleanse", dict(steps=0), "steps 0 must be an integer >= 1"),
    ("neural_cleanse", dict(steps=100.0), "steps 100.0 must be an integer"),
    ("neural_cleanse", dict(lr=float("nan")), "lr nan must be a finite number > 0"),
    ("neural_cleanse", dict(threshold=1.5), r"threshold 1.5 must be in \(0, 1\]"),
    ("neural_cleanse", dict(batched="yes"), "batched 'yes' must be True or False"),
    ("baeraser", dict(target=10), "target 10 must be an integer between 0 and 9"),
    ("baeraser", dict(target=True), "target True must be an integer"),
    ("baeraser", dict(gen_lr=float("inf")), "gen_lr inf must be a finite number > 0"),
    ("baeraser", dict(batch_size=-8), "batch_size -8 must be an integer >= 1"),
    ("baeraser", dict(positions="corner"), "unknown positions 'corner'; choose one of"),
    ("grad_prune", dict(samples_per_class=1), "samples_per_class 1 must be an integer >= 2"),
    ("grad_prune", dict(max_drop=float("nan")), "max_drop nan must be in"),
    ("grad_prune", dict(patience=2.5), "patience 2.5 must be an integer"),
    ("finetune", dict(epochs=-1), "epochs -1 must be an integer >= 0"),
    ("finetune", dict(lr=0.0), "lr 0.0 must be a finite number > 0"),
    ("finetune", dict(val_fraction=float("nan")), "val_fraction nan must be in"),
    ("fine_pruning", dict(max_ratio=1.0), r"max_ratio 1.0 must be in \(0, 1\)"),
    ("fine_pruning", dict(epochs=3.0), "epochs 3.0 must be an integer"),
])
def test_bad_knobs_fail_before_any_work(untrained_view, name, knobs, msg):
    with pytest.raises(ValueError, match=msg):
        run_defense(name, untrained_view, **knobs)


@pytest.mark.parametrize("name", ["neural_cleanse", "finetune"])
def test_defenses_refuse_a_float_seed(untrained_view, name):
    with pytest.raises(ValueError, match="seed 0.5 must be an integer >= 0"):
        run_defense(name, untrained_view, seed=0.5)


def test_anomaly_index_flags_small_outlier():
    norms = [100.0, 104.0, 96.0, 101.0, 99.0, 20.0, 98.0, 103.0, 97.0, 250.0]
    idx = anomaly_indices(norms)
    assert idx[5] > 2 and idx[9] > 2
    assert flag_outliers(norms) == [5]  # the large outlier is not a backdoor sign


def test_neural_cleanse_flags_target(nc_backdoored):
    assert nc_backdoored.target == TARGET
    assert nc_backdoored.flagged[0] == TARGET
    assert nc_backdoored.info["trigger"] is not None
    assert nc_backdoored.seconds > 0 and nc_backdoored.model is None


def test_neural_cleanse_on_clean_model_is_less_anomalous(setup, nc_backdoored):
    # With this short a run a naturally small class of the clean digits model can cross
    # index 2, so the test checks that the backdoor target stays unflagged and that the
    # clean model's lowest mask is far less anomalous than the backdoored one's.
    view = DefenderView(setup["clean"], setup["x"], setup["y"], 10)
    result = run_defense("neural_cleanse", view, seed=0, **NC_FAST)
    assert TARGET not in result.flagged
    clean_norms = result.info["norms"]
    assert min(clean_norms) > 1.5 * min(nc_backdoored.info["norms"])


def test_grad_prune_respects_bound_and_lowers_asr(setup):
    before = {k: v.clone() for k, v in setup["backdoored"].state_dict().items()}
    view = DefenderView(setup["backdoored"], setup["x"], setup["y"], 10,
                        trigger=PatchTrigger(4, 1.0))
    result = run_defense("grad_prune", view, seed=0, samples_per_class=15,
                         finetune_epochs=5)
    info = result.info
    bound = (1 - info["max_drop"]) * info["val_acc_before"]
    assert info["val_acc_pruned"] > bound
    assert all(h["val_acc"] > bound for h in info["history"][:len(info["pruned"])])
    _, asr_before = scores(setup["backdoored"], setup["ds"])
    _, asr_after = scores(result.model, setup["ds"])
    assert asr_after < asr_before - 0.3
    after = setup["backdoored"].state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)  # caller's model intact


def test_baeraser_with_reversed_target_returns_model(setup, nc_backdoored):
    view = DefenderView(setup["backdoored"], setup["x"], setup["y"], 10)
    result = run_defense("baeraser", view, seed=0, target=nc_backdoored.target,
                         gen_epochs=1, unlearn_epochs=1)
    assert isinstance(result, DefenseResult) and result.target == TARGET
    assert result.seconds > 0 and result.model is not None
    assert result.info["val_acc_before"] - result.info["val_acc_after"] <= 0.03


@pytest.mark.parametrize("name,knobs", [("finetune", {"epochs": 2}),
                                        ("fine_pruning", {"epochs": 2})])
def test_baselines_return_results(setup, name, knobs):
    view = DefenderView(setup["backdoored"], setup["x"], setup["y"], 10)
    result = run_defense(name, view, seed=0, **knobs)
    assert isinstance(result, DefenseResult) and result.seconds > 0
    acc, _ = scores(result.model, setup["ds"])
    assert acc > 0.7


FAST_KNOBS = {"neural_cleanse": dict(NC_FAST, mitigate=True, unlearn_epochs=1),
              "baeraser": dict(target=TARGET, gen_epochs=1, unlearn_epochs=1),
              "grad_prune": dict(samples_per_class=15, finetune_epochs=1),
              "finetune": dict(epochs=1), "fine_pruning": dict(epochs=1)}


@pytest.mark.parametrize("name", sorted(DEFENSES))
def test_cached_defense_is_loaded_not_rerun(setup, tmp_path, monkeypatch, name):
    from bdunlearn import defenses
    from bdunlearn import experiment as ex

    trigger = PatchTrigger(4, 1.0) if name == "grad_prune" else None
    call = lambda seed: ex.defend(setup["backdoored"], name, setup["x"], setup["y"], 10,  # noqa: E731
                                  seed=seed, device="cpu", trigger=trigger,
                                  cache_dir=tmp_path, **FAST_KNOBS[name])
    first = call(0)
    assert len(list((tmp_path / "defenses").glob("*.pt"))) == 1
    assert not list((tmp_path / "defenses").glob(".tmp-*"))
    monkeypatch.setattr(defenses, "_timed", None)  # a second run must not compute
    again = call(0)
    assert again.info["from_cache"] and again.seconds == first.seconds
    assert again.steps == first.steps > 0  # its counted work travels with it
    assert (again.flagged, again.target) == (first.flagged, first.target)
    for p, q in zip(first.model.state_dict().values(), again.model.state_dict().values()):
        assert torch.equal(p, q)
    with pytest.raises(TypeError):  # another seed is another result: computed, not loaded
        call(1)


def test_steps_count_every_optimiser_step_of_the_defense(setup):
    view = DefenderView(setup["backdoored"], setup["x"], setup["y"], 10)
    assert run_defense("neural_cleanse", view, seed=0, steps=7, batch_size=16).steps == 7
    # fine-tuning: ceil(135 training images / 64) batches per epoch, two epochs
    tuned = run_defense("finetune", view, seed=0, epochs=2, patience=5)
    assert tuned.steps == 2 * -(-135 // 64)


def test_a_cached_result_missing_a_field_is_recomputed_with_a_warning(setup, tmp_path):
    from bdunlearn import cache
    from bdunlearn import experiment as ex

    call = lambda: ex.defend(setup["backdoored"], "finetune", setup["x"], setup["y"], 10,  # noqa: E731
                             seed=0, device="cpu", cache_dir=tmp_path, epochs=1)
    first = call()
    (path,) = (tmp_path / "defenses").glob("*.pt")
    tensors, meta = cache.load(path)
    del meta["steps"]  # an entry of an older format, or a planted one: well hashed, wrong
    cache.save(path, tensors, meta)
    with pytest.warns(RuntimeWarning, match=f"cache entry {path.stem} does not load"):
        again = call()
    assert not again.info.get("from_cache") and again.steps == first.steps
    assert "steps" in cache.load(path)[1]  # rewritten whole


def test_a_view_takes_numpy_integer_classes(setup):
    import numpy as np

    view = DefenderView(setup["backdoored"], setup["x"], setup["y"], np.int64(10))
    assert view.num_classes == 10 and type(view.num_classes) is int

"""The run configuration: every profile resolves to concrete values; bad fields fail early."""

import math
from dataclasses import fields
from pathlib import Path

import pytest

from bdunlearn import config, registry


@pytest.mark.parametrize("profile", sorted(config.PROFILES))
@pytest.mark.parametrize("dataset", registry.DATASETS)
def test_every_profile_resolves_to_concrete_values(profile, dataset):
    cfg = config.resolve(profile, dataset=dataset)
    for f in fields(cfg):
        value = getattr(cfg, f.name)
        if f.name != "data_root":  # None there means the readers' search order
            assert value is not None, f.name
        if f.name != "profile":
            assert value not in (config.PAPER, config.ALL), f.name
    assert cfg.profile == profile and cfg.dataset == dataset
    assert cfg.device in ("cpu", "cuda") and cfg.precision in config.PRECISIONS
    assert all(isinstance(s, int) for s in cfg.shards + cfg.seeds + cfg.defense_samples)


def test_paper_profile_takes_the_registry_values_per_dataset():
    for name in config.profile_datasets("paper"):
        spec, cfg = registry.spec(name), config.resolve("paper", dataset=name)
        assert (cfg.epochs, cfg.poison_num, cfg.mitigation_num, cfg.alpha) == (
            config.DETECTION_EPOCHS, spec.poison_num, spec.mitigation_num, spec.alpha)
        # default keeps the attack scripts' own default (20 on Fashion-MNIST) for time
        assert config.resolve("default", dataset=name).epochs == spec.train.epochs
        assert cfg.train_subset == spec.train_size and cfg.defender_size == spec.train_size // 20
    cfg = config.resolve("paper")
    assert cfg.shards == (1, 5, 10, 20) and cfg.seeds == (0, 1, 2, 3, 4)
    assert (config.resolve("paper", dataset="cifar10").mitigation_num,
            config.resolve("paper", dataset="gtsrb").poison_num) == (100, 1000)
    assert config.resolve("paper", dataset="fmnist", alpha=0.3).alpha == 0.3


def test_smoke_and_default_keep_their_values():
    smoke, default = config.resolve("smoke"), config.resolve("default")
    assert (smoke.train_subset, smoke.test_subset, smoke.epochs, smoke.alpha) == (
        4000, 1000, 8, 0.7)
    assert (smoke.poison_num, smoke.mitigation_num, smoke.shards, smoke.seeds) == (
        150, 300, (1, 3), (0,))
    # default is the paper's Fashion-MNIST setting, evaluated on half the test split
    assert (default.train_subset, default.test_subset, default.epochs, default.alpha) == (
        60000, 5000, 20, 0.5)
    assert (default.poison_num, default.mitigation_num, default.shards, default.seeds) == (
        200, 300, (1, 5, 10), (0, 1, 2, 3, 4))
    assert (default.input_scaling, default.defender_size) == ("unit", 3000)
    assert (default.request_steps, default.nc_steps, default.defense_samples) == (
        (100, 300), 1000, (10, 50, 100))
    assert (default.defense_steps, default.amnesiac) == ((300,), False)


def test_request_counts_are_cumulative_and_capped_at_the_attack():
    from bdunlearn import experiment as ex

    assert ex.schedule(300, (100, 300)) == [0, 100, 300]
    assert ex.schedule(15, (100, 300)) == [0, 15]  # the input-targeted attack's 15 samples
    assert ex.schedule(300, 3) == [0, 100, 200, 300]
    with pytest.raises(ValueError, match="increasing"):
        config.resolve("smoke", request_steps=[300, 100])
    with pytest.raises(ValueError, match="request_steps"):
        config.resolve("smoke", request_steps=[0, 100])


def test_defender_pool_lies_outside_training_and_evaluation_images(digits):
    from bdunlearn import experiment as ex
    from bdunlearn.defender import defender_pool
    cfg = config.resolve("smoke", dataset="digits", train_subset="all", test_subset="half")
    full = digits
    ds = ex.dataset(cfg)
    x, y = defender_pool(cfg, 100)
    assert len(y) == 100 and len(ds.y_test) == len(full.y_test) // 2
    flat = {tuple(v.flatten().tolist()) for v in x}
    assert not flat & {tuple(v.flatten().tolist()) for v in ds.x_test}
    assert not flat & {tuple(v.flatten().tolist()) for v in ds.x_train}
    with pytest.raises(ValueError, match="no clean image for the defender"):
        defender_pool(config.resolve("smoke", dataset="digits", train_subset="all",
                                     test_subset="all"), 10)


def test_profile_comes_from_the_environment(monkeypatch):
    monkeypatch.setenv("BDUNLEARN_PROFILE", "smoke")
    assert config.resolve().profile == "smoke"
    assert config.resolve("paper").shards == (1, 5, 10, 20)
    monkeypatch.delenv("BDUNLEARN_PROFILE")
    assert config.resolve().profile == "default"
    with pytest.raises(ValueError, match="unknown profile 'huge'"):
        config.resolve("huge")


def test_overrides_none_keeps_the_profile_and_scalars_become_lists():
    cfg = config.resolve("smoke", epochs=None, shards=5, seeds=3, defense_samples=[20])
    assert cfg.epochs == 8 and cfg.shards == (5,) and cfg.seeds == (3,)
    assert cfg.defense_samples == (20,)
    assert config.resolve("smoke", train_subset="all").train_subset == 60000


@pytest.mark.parametrize("overrides, message", [
    (dict(epoch=1), "unknown parameter 'epoch'; choose from"),
    (dict(epochs=2.5), "epochs 2.5 must be an integer"),
    (dict(epochs=True), "epochs True must be an integer"),
    (dict(epochs=0), "epochs 0 must be an integer >= 1"),
    (dict(alpha=math.nan), "alpha nan must be"),
    (dict(alpha=math.inf), "alpha inf must be"),
    (dict(alpha=1.5), r"alpha 1.5 must be .*\(0, 1\]"),
    (dict(shards=[]), r"shards \[\] is empty"),
    (dict(shards=[0]), r"shards \[0\] must hold integers >= 1"),
    (dict(shards=[1, 5000]), "at most the 4000 training images"),
    (dict(shards=[2.0]), r"offending value 2.0"),
    (dict(seeds=[]), r"seeds \[\] is empty"),
    (dict(seeds=-1), "seeds -1 must hold integers >= 0"),
    (dict(dataset="svhn"), "unknown dataset 'svhn'"),
    (dict(device="tpu9"), "unknown device 'tpu9'"),
    (dict(device=0), "device 0 must be"),
    (dict(precision="fp16"), "unknown precision 'fp16'; choose one of auto, fp32, bf16"),
    (dict(variant="xx"), "unknown variant 'xx'"),
    (dict(poison_num=10**7), "poison_num 10000000 must be an integer between 1 and 4000"),
    (dict(train_subset="most"), "train_subset 'most' must be a positive integer, 'all' or 'half'"),
    (dict(train_subset=-5), "train_subset -5 must be an integer >= 1"),
    (dict(amnesiac=1), "amnesiac 1 must be True or False"),
    (dict(target_fpr=1.0), r"target_fpr 1.0 must be .*\(0, 1\)"),
    (dict(results_dir=3), "results_dir 3 must be a folder path"),
])
def test_bad_fields_fail_with_one_sentence(overrides, message):
    with pytest.raises(ValueError, match=message):
        config.resolve("smoke", **overrides)


def test_output_folders_follow_the_profile(monkeypatch, tmp_path):
    monkeypatch.delenv("BDUNLEARN_RESULTS", raising=False)
    monkeypatch.delenv("BDUNLEARN_FIGURES", raising=False)
    root = config.repository_root()
    assert Path(config.resolve("smoke").results_dir) == root / "results" / "smoke"
    assert Path(config.resolve("default").figures_dir) == root / "figures" / "default"
    assert Path(config.resolve("paper", dataset="mnist").results_dir) == (
        root / "results" / "paper" / "mnist")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("BDUNLEARN_RESULTS", "rel/out")
    assert config.resolve("smoke").results_dir == str(tmp_path / "rel" / "out")
    assert config.resolve("smoke", results_dir="/x/y").results_dir == "/x/y"


def test_seeds_and_shards_accept_ranges_and_numpy_values():
    import numpy as np

    assert config.resolve("smoke", seeds="0-3,7").seeds == (0, 1, 2, 3, 7)
    assert config.resolve("smoke", seeds=np.array([2, 4])).seeds == (2, 4)
    assert config.resolve("smoke", shards=np.array([1, 3])).shards == (1, 3)
    assert config.resolve("smoke", seeds=np.int64(5)).seeds == (5,)
    # more seeds measure the same thing: the claims stay asserted
    assert config.resolve("default", seeds="0-9").at_profile_scale


def test_precision_is_resolved_once_here():
    from bdunlearn.train import resolve_precision

    cfg = config.resolve("smoke")
    assert cfg.precision in ("fp32", "bf16") and cfg.precision == resolve_precision("auto", "cpu")
    assert config.resolve("smoke", precision="fp32").precision == "fp32"
    assert cfg.train_config().precision == cfg.precision

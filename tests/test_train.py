
import pytest
import torch

from bdunlearn import data, profiles
from bdunlearn.data import load
from bdunlearn.models import build_model
from bdunlearn.train import (TrainConfig, augment_batch, fit, make_generator, predict,
                             predict_proba, reference_config, resolve_device)

@pytest.fixture(scope="module")
def digits():
    return load("digits")

def _train(ds, seed, epochs=10):
    model = build_model("fmnist_cnn", ds.image_shape, 10, seed=0)
    cfg = reference_config("digits", epochs=epochs)
    return fit(model, ds.x_train, ds.y_train, cfg, seed=seed, device="cpu")

def test_training_learns_and_is_deterministic(digits):
    a, b, c = _train(digits, 1), _train(digits, 1), _train(digits, 2)
    for p, q in zip(a.state_dict().values(), b.state_dict().values()):
        assert torch.equal(p, q)
    assert any(not torch.equal(p, q) for p, q in zip(a.parameters(), c.parameters()))
    acc = (predict(a, digits.x_test, device="cpu") == digits.y_test).float().mean()
    assert acc > 0.8

def test_predict_proba_rows_are_distributions(digits):
    model = build_model("fmnist_cnn", digits.image_shape, 10, seed=0)
    probs = predict_proba(model, digits.x_test[:7], device="cpu")
    assert probs.shape == (7, 10) and torch.allclose(probs.sum(1), torch.ones(7))

def test_augmentation_is_seeded_and_keeps_shape():
    x = torch.rand(8, 3, 32, 32)
    a = augment_batch(x, make_generator(0), crop=True, flip=True)
    b = augment_batch(x, make_generator(0), crop=True, flip=True)
    assert a.shape == x.shape and torch.equal(a, b) and not torch.equal(a, x)
    assert torch.equal(augment_batch(x, make_generator(0), False, False), x)

def test_reference_settings():
    assert reference_config("fmnist").momentum == 0.9
    cifar = reference_config("cifar10", epochs=3)
    assert cifar.epochs == 3 and cifar.lr_step == 10 and cifar.flip
    with pytest.raises(ValueError, match="unknown dataset 'svhn'"):
        reference_config("svhn")
    with pytest.raises(ValueError, match="epochs must be >= 0"):
        TrainConfig(epochs=-1)

def test_device_resolution():
    assert resolve_device("cpu").type == "cpu"
    assert resolve_device("auto").type in ("cpu", "cuda")
    with pytest.raises(ValueError, match="unknown device 'tpu9'"):
        resolve_device("tpu9")
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="no CUDA GPU"):
            resolve_device("cuda")

def test_profiles(monkeypatch):
    monkeypatch.setenv("BDUNLEARN_PROFILE", "smoke")
    assert profiles.get_profile()["name"] == "smoke"
    assert profiles.get_profile("paper")["shards"] == (1, 5, 10, 20)
    monkeypatch.delenv("BDUNLEARN_PROFILE")
    assert profiles.get_profile()["name"] == "default"
    with pytest.raises(ValueError, match="unknown profile 'huge'"):
        profiles.get_profile("huge")


@pytest.mark.skipif(not (data.DEBIAN_ROOT / "fashion-mnist").is_dir(),
                    reason="dataset-fashion-mnist is not installed")
def test_fmnist_cnn_two_epochs_on_the_full_training_set_reaches_85_percent():
    ds = load("fmnist")
    model = build_model("fmnist_cnn", ds.image_shape, 10, seed=0)
    fit(model, ds.x_train, ds.y_train, reference_config("fmnist", epochs=2), seed=0,
        device="cpu", progress=False)
    acc = (predict(model, ds.x_test, device="cpu") == ds.y_test).float().mean().item()
    assert acc >= 0.85, acc

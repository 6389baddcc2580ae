import pytest
import torch

from bdunlearn.models import ARCHITECTURES, DEFAULT_ARCH, build_model, default_arch

SHAPES = {"mnist": (1, 28, 28), "fmnist": (1, 28, 28), "gtsrb": (3, 32, 32),
          "cifar10": (3, 32, 32), "digits": (1, 28, 28)}
CLASSES = {"mnist": 10, "fmnist": 10, "gtsrb": 43, "cifar10": 10, "digits": 10}


@pytest.mark.parametrize("dataset", sorted(SHAPES))
def test_default_model_output_shape(dataset):
    model = build_model(default_arch(dataset), SHAPES[dataset], CLASSES[dataset], seed=0).eval()
    out = model(torch.rand(3, *SHAPES[dataset]))
    assert out.shape == (3, CLASSES[dataset]) and out.dtype == torch.float32


def test_preact_resnet18_on_cifar_shape():
    model = build_model("preact_resnet18", (3, 32, 32), 10, seed=0).eval()
    assert model(torch.rand(2, 3, 32, 32)).shape == (2, 10)


def test_normalisation_lives_inside_the_model():
    model = build_model("fmnist_cnn", (1, 28, 28), 10, mean=(0.3,), std=(0.2,), seed=0)
    x = torch.rand(2, 1, 28, 28)
    assert torch.allclose(model(x), model.net((x - 0.3) / 0.2))


def test_seeded_init_is_reproducible_and_leaves_global_rng_alone():
    state = torch.get_rng_state()
    a = build_model("lenet5", (1, 28, 28), 10, seed=5)
    assert torch.equal(state, torch.get_rng_state())
    b = build_model("lenet5", (1, 28, 28), 10, seed=5)
    assert all(torch.equal(p, q) for p, q in zip(a.parameters(), b.parameters()))


def test_every_dataset_has_a_reference_model():
    assert set(DEFAULT_ARCH.values()) <= set(ARCHITECTURES)


def test_bad_model_names():
    with pytest.raises(ValueError, match="unknown model 'resnet50'"):
        build_model("resnet50", (3, 32, 32), 10)
    with pytest.raises(ValueError, match="unknown dataset 'svhn'"):
        default_arch("svhn")

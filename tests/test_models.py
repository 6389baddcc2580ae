import pytest
import torch

from bdunlearn.models import ARCHITECTURES, build_model
from bdunlearn.registry import SPECS, spec

SHAPES = {"mnist": (1, 28, 28), "fmnist": (1, 28, 28), "gtsrb": (3, 32, 32),
          "cifar10": (3, 32, 32), "digits": (1, 28, 28)}
CLASSES = {"mnist": 10, "fmnist": 10, "gtsrb": 43, "cifar10": 10, "digits": 10}


@pytest.mark.parametrize("dataset", sorted(SHAPES))
def test_default_model_output_shape(dataset):
    model = build_model(spec(dataset).arch, SHAPES[dataset], CLASSES[dataset], seed=0).eval()
    out = model(torch.rand(3, *SHAPES[dataset]))
    assert out.shape == (3, CLASSES[dataset]) and out.dtype == torch.float32


def test_preact_resnet18_on_cifar_shape():
    model = build_model("preact_resnet18", (3, 32, 32), 10, seed=0).eval()
    assert model(torch.rand(2, 3, 32, 32)).shape == (2, 10)


def test_normalisation_lives_inside_the_model():
    model = build_model("fmnist_cnn", (1, 28, 28), 10, seed=0, input_scaling="signed")
    x = torch.rand(2, 1, 28, 28)
    assert torch.allclose(model(x), model.net((x - 0.5) / 0.5))


@pytest.mark.parametrize("arch", ["lenet5", "fmnist_cnn"])
def test_mnist_family_models_take_unit_inputs_unchanged_by_default(arch):
    """The BAU authors feed ToTensor() images in [0, 1] with no normalisation."""
    model = build_model(arch, (1, 28, 28), 10, seed=0)
    x = torch.rand(2, 1, 28, 28)
    assert torch.equal(model(x), model.net(x))


def test_cifar_reference_model_uses_the_authors_imagenet_statistics():
    model = build_model("vgg11_bn", (3, 32, 32), 10, seed=0).eval()
    mean = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
    std = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
    x = torch.rand(2, 3, 32, 32)
    assert torch.allclose(model(x), model.net((x - mean) / std))
    with pytest.raises(ValueError, match="input_scaling 'imagenet' needs 3-channel"):
        build_model("fmnist_cnn", (1, 28, 28), 10, input_scaling="imagenet")


def test_same_seed_same_weights_whatever_the_scaling():
    a = build_model("fmnist_cnn", (1, 28, 28), 10, seed=3)
    b = build_model("fmnist_cnn", (1, 28, 28), 10, seed=3, input_scaling="signed")
    assert all(torch.equal(p, q) for p, q in zip(a.net.parameters(), b.net.parameters()))


def test_seeded_init_is_reproducible_and_leaves_global_rng_alone():
    state = torch.get_rng_state()
    a = build_model("lenet5", (1, 28, 28), 10, seed=5)
    assert torch.equal(state, torch.get_rng_state())
    b = build_model("lenet5", (1, 28, 28), 10, seed=5)
    assert all(torch.equal(p, q) for p, q in zip(a.parameters(), b.parameters()))


def test_every_dataset_has_a_reference_model():
    assert {s.arch for s in SPECS.values()} <= set(ARCHITECTURES)


def test_bad_model_names():
    with pytest.raises(ValueError, match="unknown model 'resnet50'"):
        build_model("resnet50", (3, 32, 32), 10)
    with pytest.raises(ValueError, match="unknown dataset 'svhn'"):
        spec("svhn")

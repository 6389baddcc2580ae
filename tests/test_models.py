import copy

import pytest
import torch

from bdunlearn.models import ARCHITECTURES, build_model
from bdunlearn.registry import REGISTERED, spec

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


def _reference_order(seq: torch.nn.Sequential) -> torch.nn.Sequential:
    """``seq`` with every max-pooling put back after the ReLU it precedes, the reference
    networks' order."""
    mods = list(seq)
    for i in range(len(mods) - 1):
        if isinstance(mods[i], torch.nn.MaxPool2d) and isinstance(mods[i + 1], torch.nn.ReLU):
            mods[i], mods[i + 1] = mods[i + 1], mods[i]
    return torch.nn.Sequential(*mods)


@pytest.mark.parametrize("arch,shape", [("lenet5", (1, 28, 28)), ("fmnist_cnn", (1, 28, 28)),
                                        ("gtsrb_cnn", (3, 32, 32)), ("vgg11_bn", (3, 32, 32))])
@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_pooling_before_relu_is_bit_for_bit_the_reference_order(arch, shape, precision):
    """The models pool before the ReLU; the reference networks pool after it. Same outputs,
    same gradients, same parameter names (so the same checkpoints), in both precisions."""
    from bdunlearn.train import autocast

    ours = build_model(arch, shape, 10, seed=0)
    ref = copy.deepcopy(ours)
    ref.net[0] = _reference_order(ref.net[0])
    assert [type(m) for m in ref.net[0]] != [type(m) for m in ours.net[0]]
    assert list(ref.state_dict()) == list(ours.state_dict())
    x = torch.rand(8, *shape) - 0.3  # some pooling windows wholly negative
    y = torch.randint(0, 10, (8,))
    grads = []
    for m in (ours, ref):
        m.train()
        with torch.random.fork_rng(), autocast(precision, torch.device("cpu")):
            torch.manual_seed(0)  # the same dropout mask for both
            out = m(x)
        torch.nn.functional.cross_entropy(out.float(), y).backward()
        grads.append((out, [p.grad for p in m.parameters()]))
    (out_a, g_a), (out_b, g_b) = grads
    assert torch.equal(out_a, out_b)
    assert all(torch.equal(a, b) for a, b in zip(g_a, g_b))


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
    assert {s.arch for s in REGISTERED.values()} <= set(ARCHITECTURES)


def test_bad_model_names():
    with pytest.raises(ValueError, match="unknown model 'resnet50'"):
        build_model("resnet50", (3, 32, 32), 10)
    with pytest.raises(ValueError, match="unknown dataset 'svhn'"):
        spec("svhn")

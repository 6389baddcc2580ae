"""Fine-pruning (Liu, Dolan-Gavitt and Garg, RAID 2018): prune the last convolution
layer's channels that clean inputs activate least, then fine-tune on the clean set.

Channels are ranked by their mean activation (after ReLU) on the clean training part
and pruned one at a time, dormant first, by a persistent mask on weight and bias. Pruning
stops before clean validation accuracy falls by more than ``max_drop`` (absolute) or
once ``max_ratio`` of the layer's channels are pruned; the pruned model is then
fine-tuned (SGD momentum 0.9, weight decay 5e-4, early stopping on validation loss).
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn.utils import prune

from bdunlearn.checks import integer, number
from bdunlearn.defenses import DefenderView, DefenseResult, register
from bdunlearn.defenses.finetune import evaluate, finetune_model
from bdunlearn.train import to_unit


@torch.no_grad()
def mean_activation(model: nn.Module, conv: nn.Conv2d, x: torch.Tensor,
                    batch_size: int = 500) -> torch.Tensor:
    """Mean of ``relu(conv output)`` per channel over the images ``x``."""
    total = torch.zeros(conv.out_channels, device=x.device)

    def record(_module, _inputs, out):
        total.add_(out.relu().mean((2, 3)).sum(0))

    handle = conv.register_forward_hook(record)
    try:
        model.eval()
        for xb in x.split(batch_size):
            model(to_unit(xb))
    finally:
        handle.remove()
    return total / len(x)


@register("fine_pruning")
def fine_pruning(view: DefenderView, *, seed: int = 0, max_drop: float = 0.05,
                 max_ratio: float = 0.9, epochs: int = 10, lr: float = 1e-3,
                 val_fraction: float = 0.1) -> DefenseResult:
    """Prune dormant channels of the last conv layer, then fine-tune.

    Knobs: ``max_drop``: largest allowed absolute drop of clean validation accuracy
    while pruning; ``max_ratio``: largest share of the layer's channels to prune;
    ``epochs``: most fine-tuning epochs; ``lr``: fine-tuning SGD learning rate;
    ``val_fraction``: share of the clean set held out for the stopping rules.

    ``info``: ``pruned`` channels, ``val_acc_before``, ``val_acc_pruned`` and the
    fine-tuning summary.
    """
    integer("seed", seed, low=0)
    number("max_drop", max_drop, 0, 1, low_open=True, high_open=True)
    number("max_ratio", max_ratio, 0, 1, low_open=True, high_open=True)
    number("val_fraction", val_fraction, 0, 1, low_open=True, high_open=True)
    integer("epochs", epochs, low=0)
    number("lr", lr, 0, low_open=True)
    (x, y), (xv, yv) = view.split(val_fraction, seed)
    model = view.fresh_model()
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
    if not convs:
        raise ValueError("fine-pruning needs a model with convolution layers")
    conv = convs[-1]
    order = mean_activation(model, conv, x).argsort().tolist()
    prune.custom_from_mask(conv, "weight", torch.ones_like(conv.weight))
    if conv.bias is not None:
        prune.custom_from_mask(conv, "bias", torch.ones_like(conv.bias))
    acc0 = evaluate(model, xv, yv)[1]
    pruned = []
    for ch in order[: int(max_ratio * conv.out_channels)]:
        conv.weight_mask[ch] = 0
        if conv.bias is not None:
            conv.bias_mask[ch] = 0
        if acc0 - evaluate(model, xv, yv)[1] > max_drop:
            conv.weight_mask[ch] = 1
            if conv.bias is not None:
                conv.bias_mask[ch] = 1
            break
        pruned.append(ch)
    acc_pruned = evaluate(model, xv, yv)[1]
    model, tuned = finetune_model(model, x, y, x_val=xv, y_val=yv, epochs=epochs, lr=lr,
                                  seed=seed)
    prune.remove(conv, "weight")
    if conv.bias is not None:
        prune.remove(conv, "bias")
    info = {"pruned": pruned, "val_acc_before": acc0, "val_acc_pruned": acc_pruned,
            "finetune": tuned}
    return DefenseResult(model=model, info=info)

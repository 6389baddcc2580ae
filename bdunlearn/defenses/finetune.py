"""Fine-tuning on the defender's clean set: a baseline defense, and the loop the other
defenses reuse for their final repair step."""

from __future__ import annotations

import copy

import torch
import torch.nn.functional as F
from torch import nn

from bdunlearn.checks import integer, number
from bdunlearn.defenses import DefenderView, DefenseResult, register
from bdunlearn.train import make_generator, to_unit


@torch.no_grad()
def evaluate(model: nn.Module, x: torch.Tensor, y: torch.Tensor,
             batch_size: int = 1000) -> tuple[float, float]:
    """Mean cross-entropy and accuracy of ``model`` on uint8 or [0, 1] images ``x``."""
    if len(y) == 0:
        raise ValueError("evaluation needs at least one sample")
    model.eval()
    loss, correct = 0.0, 0
    for xb, yb in zip(x.split(batch_size), y.split(batch_size)):
        out = model(to_unit(xb))
        loss += float(F.cross_entropy(out, yb, reduction="sum"))
        correct += int((out.argmax(1) == yb).sum())
    return loss / len(y), correct / len(y)


def finetune_model(model: nn.Module, x: torch.Tensor, y: torch.Tensor, *, seed: int,
                   x_val: torch.Tensor | None = None, y_val: torch.Tensor | None = None,
                   epochs: int = 5, lr: float = 1e-3, momentum: float = 0.9,
                   weight_decay: float = 5e-4, batch_size: int = 64,
                   patience: int = 10) -> tuple[nn.Module, dict]:
    """SGD fine-tuning of ``model`` in place on images ``x`` (uint8) and labels ``y``.

    With a validation set the state with the lowest validation loss is kept and training
    stops after ``patience`` epochs without improvement (early stopping). ``x`` and ``y``
    must already be on the model's device. Returns the model and ``{"epochs",
    "val_loss", "val_acc"}`` of the kept state.
    """
    integer("seed", seed, low=0)
    integer("epochs", epochs, low=0)
    number("lr", lr, 0, low_open=True)
    number("momentum", momentum, 0, 1)
    number("weight_decay", weight_decay, 0)
    integer("batch_size", batch_size, low=1)
    integer("patience", patience, low=1)
    validate = x_val is not None and len(x_val) > 0
    best = evaluate(model, x_val, y_val) if validate else (float("nan"), float("nan"))
    best_state, best_epoch, waited = copy.deepcopy(model.state_dict()), 0, 0
    opt = torch.optim.SGD(model.parameters(), lr=lr, momentum=momentum,
                          weight_decay=weight_decay)
    gen = make_generator(seed)
    for epoch in range(1, epochs + 1):
        model.train()
        for idx in torch.randperm(len(y), generator=gen).to(y.device).split(batch_size):
            loss = F.cross_entropy(model(to_unit(x[idx])), y[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        if not validate:
            best_epoch = epoch
            continue
        current = evaluate(model, x_val, y_val)
        if current[0] < best[0]:
            best, best_epoch, waited = current, epoch, 0
            best_state = copy.deepcopy(model.state_dict())
        else:
            waited += 1
            if waited >= patience:
                break
    if validate:
        model.load_state_dict(best_state)
    model.eval()
    return model, {"epochs": best_epoch, "val_loss": best[0], "val_acc": best[1]}


@register("finetune")
def finetune(view: DefenderView, *, seed: int = 0, epochs: int = 5, lr: float = 1e-3,
             val_fraction: float = 0.1, patience: int = 10) -> DefenseResult:
    """Fine-tune the model on the clean set (SGD momentum 0.9, weight decay 5e-4).

    ``epochs``: at most this many passes; ``lr``: SGD learning rate; ``val_fraction``:
    share of the clean set held out for early stopping on validation loss;
    ``patience``: epochs without improvement before stopping.
    """
    number("val_fraction", val_fraction, 0, 1, low_open=True, high_open=True)
    (x, y), (xv, yv) = view.split(val_fraction, seed)
    model, info = finetune_model(view.fresh_model(), x, y, x_val=xv, y_val=yv, epochs=epochs,
                                 lr=lr, patience=patience, seed=seed)
    return DefenseResult(model=model, info=info)

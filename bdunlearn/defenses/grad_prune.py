"""Grad-Prune (Dunnett et al., DSN-W 2024): prune the convolution filters whose weights
the unlearning loss pulls hardest, then fine-tune.

Unlearning loss over a small defense set: ``L_U = sum CE(f(trigger(x)), y_true)``. Each
round scores every convolution filter by the mean ``|dL_U/dw|`` over its weights (the
gradient accumulated over the defense set's training part) and prunes the single
highest-scoring filter that is still alive, by a persistent mask on its weight and bias
(``torch.nn.utils.prune``, so fine-tuning keeps it zero). The state with the lowest
validation ``L_U`` is kept as long as clean validation accuracy has dropped by less
than ``max_drop`` (relative); pruning stops when the next filter would break that bound
or after ``patience`` rounds without improvement. The kept model is fine-tuned on clean
plus triggered-with-true-label copies (SGD lr 1e-3, momentum 0.9, weight decay 5e-4,
early stopping on validation loss with patience 10).

The paper assumes the trigger is known (``view.trigger``). Without it the trigger
Neural Cleanse reverses for its flagged label is used, which is what a real defender
has; when nothing is flagged the model is returned unchanged.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils import prune

from bdunlearn.checks import integer, number
from bdunlearn.defenses import DefenderView, DefenseResult, register, run_shared, stratified_split
from bdunlearn.defenses.finetune import evaluate, finetune_model
from bdunlearn.train import make_generator, to_unit


def per_class(x: torch.Tensor, y: torch.Tensor, n: int, seed: int):
    """At most ``n`` random samples of every class (all of a class that has fewer)."""
    integer("samples_per_class", n, low=2)
    gen = make_generator(seed)
    keep = []
    for c in torch.unique(y).tolist():
        idx = torch.nonzero(y.cpu() == c).flatten()
        keep.append(idx[torch.randperm(len(idx), generator=gen)[:n]])
    keep = torch.cat(keep).sort().values.to(x.device)
    return x[keep], y[keep]


def filter_scores(model: nn.Module, convs, x: torch.Tensor, y: torch.Tensor,
                  batch_size: int = 256) -> list[torch.Tensor]:
    """Mean ``|dL_U/dw|`` per output filter of every conv in ``convs`` (pruned ones: -inf)."""
    model.eval()
    model.zero_grad(set_to_none=True)
    for xb, yb in zip(x.split(batch_size), y.split(batch_size)):
        F.cross_entropy(model(to_unit(xb)), yb, reduction="sum").backward()
    scores = []
    for conv in convs:
        s = conv.weight_orig.grad.abs().flatten(1).mean(1)
        s[conv.weight_mask.flatten(1)[:, 0] == 0] = -float("inf")
        scores.append(s)
    model.zero_grad(set_to_none=True)
    return scores


def _set_filter(conv: nn.Conv2d, f: int, value: float) -> None:
    conv.weight_mask[f] = value
    if conv.bias is not None:
        conv.bias_mask[f] = value


@register("grad_prune")
def grad_prune(view: DefenderView, *, seed: int = 0, samples_per_class: int = 100,
               val_fraction: float = 0.1, max_drop: float = 0.1, patience: int = 10,
               finetune_epochs: int = 20, lr: float = 1e-3,
               scan_steps: int = 2000) -> DefenseResult:
    """Gradient-based filter pruning plus fine-tuning against a (known or reversed) trigger.

    Knobs: ``samples_per_class``: defense-set size per class (paper: 10, 50, 100);
    ``val_fraction``: its validation share (paper: 0.1); ``max_drop``: largest allowed
    relative drop of clean validation accuracy while pruning (paper: 0.1); ``patience``:
    pruning rounds without a lower validation ``L_U`` before stopping, and epochs without
    a lower validation loss before fine-tuning stops (paper: 10); ``finetune_epochs``:
    most fine-tuning epochs; ``lr``: fine-tuning SGD learning rate; ``scan_steps``:
    Neural Cleanse steps when the trigger has to be reversed.

    ``info``: ``trigger_source`` ("given" or "neural_cleanse"), ``pruned`` as
    ``(conv index, filter)`` pairs, ``rounds``, ``history`` (per round: filter, clean
    validation accuracy, validation ``L_U``), ``val_acc_before``, ``val_acc_pruned``,
    ``val_acc_after`` (after fine-tuning), ``val_loss_before`` and ``val_loss_pruned``.
    """
    integer("seed", seed, low=0)
    integer("samples_per_class", samples_per_class, low=2)
    number("max_drop", max_drop, 0, 1, low_open=True, high_open=True)
    number("val_fraction", val_fraction, 0, 1, low_open=True, high_open=True)
    integer("patience", patience, low=1)
    integer("finetune_epochs", finetune_epochs, low=0)
    integer("scan_steps", scan_steps, low=1)
    number("lr", lr, 0, low_open=True)
    trigger, info, target = view.trigger, {"trigger_source": "given"}, None
    if trigger is None:
        scan = run_shared("neural_cleanse", view, seed=seed, steps=scan_steps)
        info.update(trigger_source="neural_cleanse", scan_flagged=scan.flagged)
        if scan.target is None:
            info["note"] = "Neural Cleanse flagged no label: model returned unchanged"
            return DefenseResult(model=view.fresh_model(), flagged=[], info=info)
        trigger, target = scan.info["trigger"], scan.target
    x, y = per_class(view.x_clean, view.y_clean, samples_per_class, seed)
    (x, y), (xv, yv) = stratified_split(x, y, val_fraction, seed)
    xt, xvt = trigger(x), trigger(xv)

    model = view.fresh_model()
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
    if not convs:
        raise ValueError("Grad-Prune needs a model with convolution layers")
    _add_masks(convs)
    acc0 = evaluate(model, xv, yv)[1]
    loss0 = evaluate(model, xvt, yv)[0]
    best_loss, best_pruned, history = prune_filters(
        model, convs, (xt, y), (xv, yv), xvt, acc0=acc0, loss0=loss0, max_drop=max_drop,
        patience=patience)
    acc_pruned = evaluate(model, xv, yv)[1]
    model, tuned = finetune_model(
        model, torch.cat([x, xt]), torch.cat([y, y]), x_val=torch.cat([xv, xvt]),
        y_val=torch.cat([yv, yv]), epochs=finetune_epochs, lr=lr, patience=patience,
        seed=seed)
    _remove_masks(convs)
    info.update(pruned=best_pruned, rounds=len(history), history=history,
                val_acc_before=acc0, val_acc_pruned=acc_pruned,
                val_acc_after=evaluate(model, xv, yv)[1], val_loss_before=loss0,
                val_loss_pruned=best_loss, finetune=tuned, max_drop=max_drop)
    return DefenseResult(model=model, flagged=info.get("scan_flagged"), target=target,
                         info=info)


def _add_masks(convs) -> None:
    """A persistent all-ones pruning mask on every conv's weight and bias."""
    for conv in convs:
        prune.custom_from_mask(conv, "weight", torch.ones_like(conv.weight))
        if conv.bias is not None:
            prune.custom_from_mask(conv, "bias", torch.ones_like(conv.bias))


def _remove_masks(convs) -> None:
    """Make the masks permanent: pruned filters stay zero in plain parameters."""
    for conv in convs:
        prune.remove(conv, "weight")
        if conv.bias is not None:
            prune.remove(conv, "bias")


def prune_filters(model, convs, train, val, xv_triggered, *, acc0, loss0, max_drop,
                  patience) -> tuple[float, list, list]:
    """The pruning rounds: each prunes the filter with the highest :func:`filter_scores`
    on the triggered training images ``train``; stops when the next filter would lower
    clean accuracy on ``val`` by ``max_drop * acc0`` or more (that filter is restored),
    after ``patience`` rounds without a lower validation ``L_U`` (on ``xv_triggered``
    with ``val``'s labels), or with one filter left. Leaves ``model`` in the kept state
    (the lowest validation ``L_U``); returns that loss, its pruned ``(conv, filter)``
    pairs and every round's ``history``."""
    (xt, y), (xv, yv) = train, val
    best_loss, best_pruned, pruned, history, waited = loss0, [], [], [], 0
    alive = sum(conv.out_channels for conv in convs)
    while len(pruned) < alive - 1 and waited < patience:
        scores = filter_scores(model, convs, xt, y)
        layer = max(range(len(convs)), key=lambda i: float(scores[i].max()))
        f = int(scores[layer].argmax())
        _set_filter(convs[layer], f, 0.0)
        acc, loss = evaluate(model, xv, yv)[1], evaluate(model, xv_triggered, yv)[0]
        history.append({"layer": layer, "filter": f, "val_acc": acc, "val_loss": loss})
        if acc0 - acc >= max_drop * acc0:
            _set_filter(convs[layer], f, 1.0)
            break
        pruned.append((layer, f))
        if loss < best_loss:
            best_loss, best_pruned, waited = loss, list(pruned), 0
        else:
            waited += 1
    for layer, f in pruned:  # back to the kept state: the weights never changed
        _set_filter(convs[layer], f, 1.0)
    for layer, f in best_pruned:
        _set_filter(convs[layer], f, 0.0)
    return best_loss, best_pruned, history

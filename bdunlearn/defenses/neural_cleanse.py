"""Neural Cleanse (Wang et al., S&P 2019): reverse-engineer a minimal trigger for every
label, flag labels whose trigger is abnormally small, optionally unlearn the trigger.

For label ``k`` a mask ``m_k`` (1, H, W) and a pattern ``p_k`` (C, H, W) in [0, 1]
pixel space (parametrised as ``tanh(w) / 2 + 0.5``) are optimised so that
``(1 - m_k) * x + m_k * p_k`` is classified as ``k``, with loss
``CE(f(x'), k) + cost_k * |m_k|_1`` and Adam (lr 0.1, betas (0.5, 0.9)). ``cost_k``
follows the original adaptive schedule: it starts at 0; once the attack success on the
epoch reaches the threshold (0.99) for ``patience`` epochs it is set to ``init_cost``;
afterwards it is multiplied by 1.5 after ``patience`` successful epochs and divided by
``1.5 ** 1.5`` after ``patience`` failing ones. The smallest mask reaching the
threshold is kept; a label stops once the cost went both up and down and its best mask
norm did not improve for ``early_stop_patience`` epochs. An epoch is one shuffled pass
over the clean set.

All labels are optimised in one batched run by default: each clean mini-batch is
stamped with all K triggers and sent through the model as one batch of K * B images,
with a per-label cost vector (per-label Adam state makes this exactly K independent
problems). ``batched=False`` optimises one label after another, for speed comparisons.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from bdunlearn.checks import flag, integer, number
from bdunlearn.defenses import DefenderView, DefenseResult, register
from bdunlearn.defenses.finetune import finetune_model
from bdunlearn.train import _channels_last, derive_seed, make_generator, to_unit
from bdunlearn.triggers import MaskTrigger

COST_UP = 1.5
COST_DOWN = 1.5 ** 1.5


class _Schedule:
    """The original adaptive cost and early-stop bookkeeping for one label."""

    def __init__(self, init_cost, patience, early_stop_patience, threshold):
        self.init_cost, self.patience = init_cost, patience
        self.early_stop_patience, self.threshold = early_stop_patience, threshold
        self.cost = 0.0
        self.set_counter = self.up_counter = self.down_counter = self.stop_counter = 0
        self.up_flag = self.down_flag = False
        self.best_norm = self.stop_best = math.inf

    def update(self, success: float, norm: float) -> tuple[bool, bool]:
        """Record one epoch; return ``(new best mask, finished)``."""
        improved = success >= self.threshold and norm < self.best_norm
        if improved:
            self.best_norm = norm
        if self.best_norm < math.inf:
            self.stop_counter = self.stop_counter + 1 if self.best_norm >= self.stop_best else 0
        self.stop_best = min(self.stop_best, self.best_norm)
        if self.up_flag and self.down_flag and self.stop_counter >= self.early_stop_patience:
            return improved, True
        if self.cost == 0 and success >= self.threshold:
            self.set_counter += 1
            if self.set_counter >= self.patience:
                self.cost, self.set_counter = self.init_cost, 0
                self.up_counter = self.down_counter = 0
                self.up_flag = self.down_flag = False
            return improved, False
        self.set_counter = 0
        if success >= self.threshold:
            self.up_counter, self.down_counter = self.up_counter + 1, 0
        else:
            self.up_counter, self.down_counter = 0, self.down_counter + 1
        if self.up_counter >= self.patience:
            self.up_counter, self.cost, self.up_flag = 0, self.cost * COST_UP, True
        elif self.down_counter >= self.patience:
            self.down_counter, self.cost, self.down_flag = 0, self.cost / COST_DOWN, True
        return improved, False


def reverse_triggers(model, x, labels, *, seed, steps, batch_size, lr, init_cost,
                     patience, early_stop_patience, threshold, channels_last=False):
    """Optimise masks and patterns for ``labels`` together; ``x`` uint8 on the model's device.

    ``steps`` bounds the number of optimisation steps of this run; ``channels_last``
    sends the stamped batches in that memory layout (the model must be in it). Returns masks
    ``(K, 1, H, W)``, patterns ``(K, C, H, W)``, best mask L1 norms, final attack success
    per label and the number of epochs run.
    """
    dev = x.device
    k, (c, h, w) = len(labels), x.shape[1:]
    gen = make_generator(seed, dev)
    eps = 1e-6
    init_m = torch.rand(k, 1, h, w, generator=gen, device=dev)
    init_p = torch.rand(k, c, h, w, generator=gen, device=dev)
    mask_w = [torch.atanh((m - 0.5) * (2 - eps)).requires_grad_() for m in init_m]
    pattern_w = [torch.atanh((p - 0.5) * (2 - eps)).requires_grad_() for p in init_p]
    opt = torch.optim.Adam(mask_w + pattern_w, lr=lr, betas=(0.5, 0.9))
    schedules = [_Schedule(init_cost, patience, early_stop_patience, threshold)
                 for _ in labels]
    best_masks = torch.tanh(torch.stack(mask_w).detach()) / (2 - eps) + 0.5
    best_patterns = torch.tanh(torch.stack(pattern_w).detach()) / (2 - eps) + 0.5
    active = list(range(k))
    success = [0.0] * k
    targets = torch.tensor(labels, device=dev)
    order_gen = make_generator(derive_seed(seed, "order"))
    done_steps, epochs = 0, 0
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    while active and done_steps < steps:
        epochs += 1
        # what changes only between epochs is built once per epoch, so the steps queue
        # on the device without waiting for the host (costs move at the epoch's end)
        act = torch.tensor(active, device=dev)
        costs = torch.tensor([schedules[i].cost for i in active], device=dev)
        labels_act = targets[act][:, None]
        hits = torch.zeros(len(active), device=dev)
        seen = 0
        for idx in torch.randperm(len(x), generator=order_gen).to(dev).split(batch_size):
            if done_steps >= steps:
                break
            xb = to_unit(x[idx])
            mask = torch.tanh(torch.stack([mask_w[i] for i in active])) / (2 - eps) + 0.5
            pattern = torch.tanh(torch.stack([pattern_w[i] for i in active])) / (2 - eps) + 0.5
            stamped = (1 - mask[:, None]) * xb[None] + (mask * pattern)[:, None]
            batch = stamped.flatten(0, 1).contiguous(memory_format=fmt)
            logits = model(batch).view(len(active), len(idx), -1)
            tgt = labels_act.expand(-1, len(idx))
            ce = F.cross_entropy(logits.flatten(0, 1), tgt.flatten(), reduction="none")
            loss = (ce.view(len(active), -1).mean(1) + costs * mask.sum((1, 2, 3))).sum()
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            hits += (logits.argmax(2) == tgt).float().sum(1).detach()
            seen += len(idx)
            done_steps += 1
        with torch.no_grad():
            rates = (hits / max(seen, 1)).tolist()
            mask = torch.tanh(torch.stack([mask_w[i] for i in active])) / (2 - eps) + 0.5
            pattern = torch.tanh(torch.stack([pattern_w[i] for i in active])) / (2 - eps) + 0.5
            norms = mask.sum((1, 2, 3)).tolist()
        finished = []
        for j, i in enumerate(active):
            success[i] = rates[j]
            improved, stop = schedules[i].update(rates[j], norms[j])
            if improved:
                best_masks[i], best_patterns[i] = mask[j], pattern[j]
            if stop:
                finished.append(i)
        active = [i for i in active if i not in finished]
    final_m = torch.tanh(torch.stack(mask_w).detach()) / (2 - eps) + 0.5
    final_p = torch.tanh(torch.stack(pattern_w).detach()) / (2 - eps) + 0.5
    for i, s in enumerate(schedules):
        if s.best_norm == math.inf:  # never reached the threshold: keep the last mask
            best_masks[i], best_patterns[i] = final_m[i], final_p[i]
    # tanh(w) / (2 - eps) + 0.5 overshoots [0, 1] by up to eps / 4: clamp what is returned
    best_masks, best_patterns = best_masks.clamp_(0, 1), best_patterns.clamp_(0, 1)
    norms = best_masks.sum((1, 2, 3)).tolist()
    return best_masks.cpu(), best_patterns.cpu(), norms, success, epochs


def _median(t: torch.Tensor) -> torch.Tensor:
    """The median, averaging the two middle values for an even count."""
    s = t.sort().values
    return s[(len(s) - 1) // 2: len(s) // 2 + 1].mean()


def anomaly_indices(norms) -> list[float]:
    """``|norm - median| / (1.4826 * MAD)`` for every label (MAD: median absolute deviation)."""
    t = torch.tensor(norms, dtype=torch.float64)
    if t.numel() < 2:
        raise ValueError(f"anomaly indices need at least two mask norms, got {t.numel()}")
    dev = (t - _median(t)).abs()
    mad = _median(dev) * 1.4826
    if mad == 0:
        return [0.0 if d == 0 else math.inf for d in dev.tolist()]
    return (dev / mad).tolist()


def flag_outliers(norms, threshold: float = 2.0) -> list[int]:
    """Labels whose anomaly index exceeds ``threshold`` and whose norm is below the median,
    most anomalous first."""
    idx = anomaly_indices(norms)
    t = torch.tensor(norms, dtype=torch.float64)
    med = float(_median(t))
    flagged = [k for k, a in enumerate(idx) if a > threshold and norms[k] < med]
    return sorted(flagged, key=lambda k: -idx[k])


def unlearn_trigger(view: DefenderView, model, trigger, *, seed, fraction=0.2, epochs=5,
                    lr=0.01, val_fraction=0.1):
    """Neural Cleanse's mitigation: fine-tune on the clean set where ``fraction`` of the
    samples carry ``trigger`` with their true labels; early stopping on validation loss."""
    number("unlearning fraction", fraction, 0, 1, low_open=True, high_open=True)
    (x, y), (xv, yv) = view.split(val_fraction, seed)
    gen = make_generator(derive_seed(seed, "unlearn"))
    pick = torch.randperm(len(y), generator=gen)[: round(fraction * len(y))].to(x.device)
    x = x.clone()
    x[pick] = trigger(x[pick])
    xv = torch.cat([xv, trigger(xv)])
    yv = torch.cat([yv, yv])
    return finetune_model(model, x, y, x_val=xv, y_val=yv, epochs=epochs, lr=lr, seed=seed)


@register("neural_cleanse")
def neural_cleanse(view: DefenderView, *, seed: int = 0, steps: int = 2000,
                   batch_size: int = 32, lr: float = 0.1, init_cost: float = 1e-3,
                   patience: int = 5, early_stop_patience: int = 25,
                   threshold: float = 0.99, batched: bool = True, mitigate: bool = False,
                   unlearn_epochs: int = 5, unlearn_lr: float = 0.01) -> DefenseResult:
    """Detect (and with ``mitigate=True`` unlearn) a backdoor by trigger reverse engineering.

    Knobs: ``steps``: optimisation steps per label (mini-batches; one shared budget for
    the batched run); ``batch_size``: clean images per step (the batched run sends
    ``K * batch_size`` images through the model); ``lr``: Adam learning rate (0.1, betas
    (0.5, 0.9) as in the original); ``init_cost``: the L1 cost once a label first
    succeeds; ``patience``: epochs before the cost moves; ``early_stop_patience``: epochs
    without a smaller mask before a label stops (the original uses 5 * patience);
    ``threshold``: attack success a mask must reach; ``batched``: optimise all labels in
    one run; ``mitigate``: unlearn the flagged label's trigger by fine-tuning on the clean
    set with 20% of samples stamped and correctly labelled (``unlearn_epochs``,
    ``unlearn_lr``).

    ``info`` holds ``norms`` and ``anomaly_index`` per label, ``success`` per label,
    ``masks``/``patterns`` of all labels, ``epochs`` run, and ``trigger``: the target's
    reversed trigger as a :class:`~bdunlearn.triggers.MaskTrigger` (``None`` when nothing
    is flagged).
    """
    integer("seed", seed, low=0)
    for name, value in (("steps", steps), ("batch_size", batch_size), ("patience", patience),
                        ("early_stop_patience", early_stop_patience),
                        ("unlearn_epochs", unlearn_epochs)):
        integer(name, value, low=1)
    number("threshold", threshold, 0, 1, low_open=True)
    for name, value in (("lr", lr), ("init_cost", init_cost), ("unlearn_lr", unlearn_lr)):
        number(name, value, 0, low_open=True)
    flag("batched", batched)
    flag("mitigate", mitigate)
    model = view.fresh_model().eval()
    for p in model.parameters():
        p.requires_grad_(False)
    channels_last = _channels_last(model, view.device)
    if channels_last:  # measured ~25% faster for the small conv models on the CPU
        model.to(memory_format=torch.channels_last)
    settings = dict(steps=steps, batch_size=batch_size, lr=lr, init_cost=init_cost,
                    patience=patience, early_stop_patience=early_stop_patience,
                    threshold=threshold, channels_last=channels_last)
    labels = list(range(view.num_classes))
    if batched:
        masks, patterns, norms, success, epochs = reverse_triggers(
            model, view.x_clean, labels, seed=seed, **settings)
    else:
        parts = [reverse_triggers(model, view.x_clean, [k], seed=derive_seed(seed, k),
                                  **settings) for k in labels]
        masks = torch.cat([p[0] for p in parts])
        patterns = torch.cat([p[1] for p in parts])
        norms = [p[2][0] for p in parts]
        success = [p[3][0] for p in parts]
        epochs = max(p[4] for p in parts)
    flagged = flag_outliers(norms)
    target = flagged[0] if flagged else None
    trigger = MaskTrigger(masks[target], patterns[target]) if flagged else None
    info = {"norms": norms, "anomaly_index": anomaly_indices(norms), "success": success,
            "masks": masks, "patterns": patterns, "epochs": epochs, "trigger": trigger}
    mitigated = None
    if channels_last:
        model.to(memory_format=torch.contiguous_format)
    if mitigate:
        for p in model.parameters():
            p.requires_grad_(True)
        if trigger is None:
            mitigated, info["note"] = model, "nothing flagged: model returned unchanged"
        else:
            mitigated, info["unlearn"] = unlearn_trigger(
                view, model, trigger, seed=seed, epochs=unlearn_epochs, lr=unlearn_lr)
    return DefenseResult(model=mitigated, flagged=flagged, target=target, info=info)

"""Train several models of one architecture together (the constituent models of SISA).

:func:`fit_stacked` stacks the parameters of ``S`` models along a new leading dimension
(:func:`torch.func.stack_module_state` style), runs all ``S`` forward passes in one
``torch.vmap``-ed :func:`torch.func.functional_call` (convolutions become grouped ones),
takes all gradients with one ordinary ``torch.autograd.grad`` (measured faster than
``vmap(grad(...))``), and applies a functional SGD whose arithmetic is that of
:class:`torch.optim.SGD` (weight decay added to the gradient, momentum buffer started
at the first gradient, no dampening, no Nesterov). Each model sees exactly what
:func:`bdunlearn.train.fit` would give it alone with its own seed:

- the same batches: ``torch.randperm`` from ``make_generator(seed)`` every epoch, split
  into ``cfg.batch_size`` chunks;
- the same augmentation draws: crop and flip are applied to each model's own batch with
  its own ``derive_seed(seed, "augment")`` generator, so augmented configurations are
  stacked too;
- the same learning-rate schedule (halved every ``cfg.lr_step`` epochs).

Shards of different sizes are handled by padding: within an epoch every model takes
``ceil(n_i / batch_size)`` steps; a model whose last batch is short gets zero-weight
padding rows (its loss stays the mean over its real samples), and a model that has
finished its epoch while a larger shard still runs *idles*: its parameters and momentum
buffers are left untouched by ``torch.where``, so neither momentum nor weight decay moves
it. The result equals sequential training within floating-point tolerance (the
grouped/batched kernels sum in another order), not bit for bit.

Not stacked (use :func:`fit_many`, which falls back to one :func:`~bdunlearn.train.fit`
after another): models with batch norm (per-model running statistics and batch
statistics over padded rows would differ) or dropout (``fit`` draws each model's masks
from its own seeded stream, which one vmapped draw cannot reproduce), and ``fit``'s
``watch``/``on_update`` recording (Amnesiac unlearning).

:func:`fit_many` picks stacked training on CUDA and one model after another on the CPU,
where the stacked run was measured slower (0.55-0.6x the speed of sequential ``fit`` for
5 lenet5/fmnist_cnn models on a 2-core Xeon, one thread); ``python -m bdunlearn.bench``
measures it on a GPU (``--stacked`` on the CPU too).
"""

from __future__ import annotations

import copy
import operator
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from .train import (
    TrainConfig,
    augment_batch,
    autocast,
    derive_seed,
    epoch_orders,
    fit,
    make_generator,
    resolve_device,
    resolve_precision,
    to_unit,
)

__all__ = ["fit_stacked", "fit_many", "stackable", "why_not_stackable"]

_STATEFUL = (nn.modules.batchnorm._BatchNorm, nn.modules.dropout._DropoutNd)


def why_not_stackable(models: Sequence[nn.Module]) -> str | None:
    """``None`` when ``models`` can be trained by :func:`fit_stacked`, else the reason."""
    if len(models) == 0:
        return "there are no models"
    for m in models[0].modules():
        if isinstance(m, _STATEFUL):
            return (f"the architecture has {type(m).__name__} layers (batch statistics or "
                    "dropout masks cannot be matched per model)")
    ref = [(k, tuple(v.shape), v.dtype) for k, v in models[0].state_dict().items()]
    kinds = [type(m) for m in models[0].modules()]
    for i, model in enumerate(models[1:], 1):
        if [type(m) for m in model.modules()] != kinds or ref != [
                (k, tuple(v.shape), v.dtype) for k, v in model.state_dict().items()]:
            return f"model {i} does not have the architecture of model 0"
    frozen = [n for n, p in models[0].named_parameters() if not p.requires_grad]
    for i, model in enumerate(models[1:], 1):
        if [n for n, p in model.named_parameters() if not p.requires_grad] != frozen:
            return f"model {i} freezes other parameters than model 0"
    return None


def stackable(models: Sequence[nn.Module]) -> bool:
    """Whether :func:`fit_stacked` accepts ``models`` (same architecture, no BN/dropout)."""
    return why_not_stackable(models) is None


def _check_images(xs, ys) -> None:
    """One uint8 image batch (N, C, H, W) and one label per image for every model, all of
    one image shape."""
    shape = None
    for i, (x, y) in enumerate(zip(xs, ys)):
        if not isinstance(x, torch.Tensor) or x.dtype != torch.uint8 or x.dim() != 4:
            raise ValueError(f"xs[{i}] must be a uint8 tensor of images (N, C, H, W)")
        if not isinstance(y, torch.Tensor) or y.dim() != 1 or len(y) != len(x):
            raise ValueError(f"ys[{i}] must be a 1-D label tensor with one label per image "
                             f"of xs[{i}] ({len(x)})")
        if shape is None:
            shape = tuple(x.shape[1:])
        elif tuple(x.shape[1:]) != shape:
            raise ValueError(f"xs[{i}] has images of shape {tuple(x.shape[1:])}, "
                             f"xs[0] of shape {shape}; all models must see the same shape")


def _check_inputs(models, xs, ys, seeds, epochs, epoch_offset):
    models, xs, ys, seeds = list(models), list(xs), list(ys), list(seeds)
    if not models:
        raise ValueError("models is empty; give at least one model to train")
    if not (len(models) == len(xs) == len(ys) == len(seeds)):
        raise ValueError(f"got {len(models)} models, {len(xs)} image sets, {len(ys)} label "
                         f"sets and {len(seeds)} seeds; give one of each per model")
    _check_images(xs, ys)
    for i, s in enumerate(seeds):
        try:
            seeds[i] = operator.index(s)
        except TypeError:
            raise ValueError(f"seeds[{i}] = {s!r} must be an integer") from None
    if epochs is not None and (not isinstance(epochs, int) or epochs < 0):
        raise ValueError(f"epochs {epochs!r} must be a non-negative integer or None")
    if not isinstance(epoch_offset, int) or epoch_offset < 0:
        raise ValueError(f"epoch_offset {epoch_offset!r} must be a non-negative integer")
    return models, xs, ys, seeds


def fit_stacked(models: Sequence[nn.Module], xs: Sequence[torch.Tensor],
                ys: Sequence[torch.Tensor], cfg: TrainConfig, *, seeds: Sequence[int],
                device="auto", epochs: int | None = None, epoch_offset: int = 0,
                progress: bool = False, desc: str = "train stacked") -> list[nn.Module]:
    """Train ``models[i]`` on ``xs[i], ys[i]`` with ``seeds[i]``, all in one vmapped run.

    Equivalent to ``[fit(m, x, y, cfg, seed=s, device=device, epochs=epochs,
    epoch_offset=epoch_offset) for ...]`` within floating-point tolerance; models are
    trained in place, moved to ``device`` and returned (in eval mode). Raises
    ``ValueError`` for models it cannot stack (see :func:`why_not_stackable`); use
    :func:`fit_many` to fall back to sequential training automatically.
    """
    models, xs, ys, seeds = _check_inputs(models, xs, ys, seeds, epochs, epoch_offset)
    reason = why_not_stackable(models)
    if reason is not None:
        raise ValueError(f"these models cannot be trained stacked: {reason}; "
                         "use fit_many, which trains them one after another")
    dev = resolve_device(device)
    epochs = cfg.epochs if epochs is None else epochs
    for m in models:
        m.to(dev)
    live = [i for i, y in enumerate(ys) if len(y) > 0]
    if epochs == 0 or not live:
        return models  # as fit: nothing to train, model only moved
    group = [models[i] for i in live]
    sizes = [len(ys[i]) for i in live]
    S, B = len(group), cfg.batch_size
    xcat, ycat, offsets = _concat_shards([xs[i] for i in live], [ys[i] for i in live], dev)
    pad_row = len(ycat) - 1

    precision = resolve_precision(cfg.precision, dev)
    orders = [epoch_orders(len(ys[i]), make_generator(seeds[i]), cfg.shuffle) for i in live]
    aug_gens = ([make_generator(derive_seed(seeds[i], "augment"), dev) for i in live]
                if cfg.crop or cfg.flip else None)

    params, buffers, named = _stacked_state(group)
    plist = list(params.values())
    bufs = [torch.zeros_like(p) for p in plist] if cfg.momentum else None
    losses_of = _vmapped_loss(group[0], precision, dev)

    T = max(-(-n // B) for n in sizes)
    bar = tqdm(total=epochs * T, desc=desc, disable=not progress, leave=False)
    for epoch in range(epoch_offset, epoch_offset + epochs):
        lr = cfg.lr * (0.5 ** (epoch // cfg.lr_step) if cfg.lr_step else 1.0)
        plan = _EpochPlan(orders, offsets, T, B, pad_row, dev)
        for t in range(T):
            w = plan.width[t]
            rows = plan.idx[t, :, :w]
            xb = to_unit(xcat[rows.reshape(-1)]).view(S, w, *xcat.shape[1:])
            if aug_gens is not None:
                xb = _augment_stacked(xb, plan.counts[t], aug_gens, cfg)
            loss = losses_of(params, buffers, xb, ycat[rows], plan.weight[t, :, :w],
                             plan.denom[t]).sum()
            grads = list(torch.autograd.grad(loss, plist))
            mask = None if plan.all_active[t] else plan.active[t]
            _sgd_step(plist, grads, bufs, mask, lr, cfg.momentum, cfg.weight_decay)
            bar.update()
    bar.close()

    with torch.no_grad():
        for s in range(len(group)):
            for n, p in params.items():
                named[s][n].copy_(p[s])
    for m in group:
        m.eval()
    return models


def _concat_shards(xs, ys, dev):
    """All shards in one device tensor, plus one zero image (label 0) that padding rows
    point to; returns the images, the labels and each shard's first row."""
    xcat = torch.cat([x.to(dev) for x in xs]
                     + [torch.zeros((1, *xs[0].shape[1:]), dtype=torch.uint8, device=dev)])
    ycat = torch.cat([y.to(dev).long() for y in ys]
                     + [torch.zeros(1, dtype=torch.long, device=dev)])
    offsets = torch.tensor([0] + [len(y) for y in ys]).cumsum(0)[:-1].tolist()
    return xcat, ycat, offsets


def _stacked_state(group):
    """The models' trainable parameters stacked along a new first dimension (leaves that
    require grad), their buffers and frozen parameters stacked likewise, and each model's
    own named parameters (to copy the result back into)."""
    names = [n for n, p in group[0].named_parameters() if p.requires_grad]
    named = [dict(m.named_parameters()) for m in group]
    params = {n: torch.stack([d[n].detach() for d in named]).requires_grad_() for n in names}
    buffers = {n: torch.stack([dict(m.named_buffers())[n].detach() for m in group])
               for n, _ in group[0].named_buffers()}
    buffers.update({n: torch.stack([d[n].detach() for d in named])
                    for n, p in group[0].named_parameters() if not p.requires_grad})
    return params, buffers, named


def _vmapped_loss(model, precision, dev):
    """``losses(params, buffers, xb, yb, wb, denom)``: every model's weighted mean loss on
    its own batch, in one vmapped forward pass of ``model``'s architecture (measured
    faster with an ordinary autograd backward than ``vmap(grad(...))``)."""
    base = copy.deepcopy(model).to("meta").train()

    def loss_one(p, b, xb, yb, wb, denom):
        with autocast(precision, dev):
            out = torch.func.functional_call(base, (p, b), (xb,))
        return (F.cross_entropy(out.float(), yb, reduction="none") * wb).sum() / denom

    return torch.vmap(loss_one)


class _EpochPlan:
    """One epoch's index plan, built on the host and moved to ``dev``: ``idx`` (T, S, B)
    rows into the concatenated images (padding rows point to the zero image), ``counts``
    (T, S) real rows per step and model, ``width`` the widest batch of each step,
    ``weight`` (T, S, B) 1 for real rows, ``denom`` (T, S) the divisor of each mean loss,
    ``active`` (T, S) whether a model still trains at a step and ``all_active`` (T)."""

    def __init__(self, orders, offsets, T, B, pad_row, dev):
        S = len(orders)
        idx = torch.full((T, S, B), pad_row, dtype=torch.long)
        counts = torch.zeros((T, S), dtype=torch.long)
        for s, (order, off) in enumerate(zip(orders, offsets)):
            for t, chunk in enumerate(next(order).split(B)):
                idx[t, s, : len(chunk)] = chunk + off
                counts[t, s] = len(chunk)
        self.counts = counts
        self.width = counts.max(1).values.tolist()
        active = (counts > 0)
        weight = (torch.arange(B)[None, None, :] < counts[:, :, None]).float()
        denom = counts.clamp(min=1).float()
        self.idx, self.weight, self.denom = (idx.to(dev, non_blocking=True),
                                             weight.to(dev, non_blocking=True),
                                             denom.to(dev, non_blocking=True))
        self.active = active.to(dev, non_blocking=True)
        self.all_active = active.all(1).tolist()


def _augment_stacked(xb, counts, aug_gens, cfg):
    """Crop/flip each model's real rows of ``xb`` (S, w, ...) with its own generator, as
    :func:`~bdunlearn.train.fit` would; padding rows are left as they are."""
    w = xb.shape[1]
    parts = []
    for s in range(len(xb)):
        c = int(counts[s])
        if c:
            xb_s = augment_batch(xb[s, :c], aug_gens[s], cfg.crop, cfg.flip)
            if c < w:
                xb_s = torch.cat([xb_s, xb[s, c:]])
            parts.append(xb_s)
        else:
            parts.append(xb[s])
    return torch.stack(parts)


def _sgd_step(params, grads, bufs, mask, lr, momentum, weight_decay):
    """``torch.optim.SGD.step`` (no dampening, no Nesterov) on stacked tensors, in place.

    ``mask`` (bool, one per model) keeps idle models exactly where they are: their
    parameters and momentum buffers are not touched. The all-active step uses the same
    ``torch._foreach_*`` arithmetic as the optimiser's multi-tensor path.
    """
    with torch.no_grad():
        if mask is None:
            if weight_decay:
                grads = torch._foreach_add(grads, params, alpha=weight_decay)
            if bufs is not None:
                torch._foreach_mul_(bufs, momentum)
                torch._foreach_add_(bufs, grads)
                grads = bufs
            torch._foreach_add_(params, grads, alpha=-lr)
            return
        for i, (p, g) in enumerate(zip(params, grads)):
            keep = mask.view(-1, *([1] * (p.dim() - 1)))
            if weight_decay:
                g = g.add(p, alpha=weight_decay)
            if bufs is not None:
                bufs[i].copy_(torch.where(keep, bufs[i].mul(momentum).add_(g), bufs[i]))
                g = bufs[i]
            p.copy_(torch.where(keep, p.add(g, alpha=-lr), p))


def fit_many(models: Sequence[nn.Module], xs: Sequence[torch.Tensor],
             ys: Sequence[torch.Tensor], cfg: TrainConfig, *, seeds: Sequence[int],
             device="auto", epochs: int | None = None, epoch_offset: int = 0,
             stacked="auto", progress: bool = False, desc: str = "train") -> list[nn.Module]:
    """Train ``models[i]`` on ``xs[i], ys[i]`` with ``seeds[i]``; return the models.

    ``stacked="auto"`` trains them together with :func:`fit_stacked` on a CUDA device
    when :func:`stackable` (same architecture, no batch norm or dropout) and there are at
    least two, and one after another with :func:`bdunlearn.train.fit` otherwise (on the
    CPU the sequential engine is the faster one). ``stacked=True`` insists on stacking
    (``ValueError`` when impossible); ``stacked=False`` always trains sequentially. Both
    paths give the same weights within floating-point tolerance.
    """
    if stacked not in ("auto", True, False):
        raise ValueError(f"stacked={stacked!r} must be 'auto', True or False")
    models, xs, ys, seeds = _check_inputs(models, xs, ys, seeds, epochs, epoch_offset)
    dev = resolve_device(device)
    use = stacked
    if stacked == "auto":
        use = dev.type == "cuda" and len(models) > 1 and stackable(models)
    if use:
        return fit_stacked(models, xs, ys, cfg, seeds=seeds, device=dev, epochs=epochs,
                           epoch_offset=epoch_offset, progress=progress, desc=desc)
    for i, (m, x, y, s) in enumerate(zip(models, xs, ys, seeds)):
        fit(m, x, y, cfg, seed=s, device=dev, epochs=epochs, epoch_offset=epoch_offset,
            progress=progress, desc=f"{desc} {i}")
    return models

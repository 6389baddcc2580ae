"""BAERASER (Liu et al., INFOCOM 2022): recover the trigger distribution with an
entropy-maximising generator, then erase it by gradient-ascent unlearning.

1. Trigger recovery (MESA-style). Noise ``z ~ U[0, 1]^64`` is fed in four 16-d chunks
   through a 3-hidden-layer MLP with batch norm and LeakyReLU: the first chunk is the
   input, each further chunk is concatenated to the input of the next layer; a sigmoid
   output gives a trigger of ``trigger_size`` x ``trigger_size`` pixels, stamped at a
   random position of each clean image. A MINE statistics network ``T(z, g)`` gives the
   Donsker-Varadhan bound ``I = mean T(z, G(z)) - log mean exp T(z, G(z'))`` (``z'``
   shuffled), which ``T`` maximises; the generator minimises
   ``-mean(min(p_t(x + G(z)), beta)) - alpha * I`` (alpha 0.1, beta 0.5; Adam lr 2e-4,
   betas (0.5, 0.999); 10 epochs of batches of 128), so it covers many triggers that
   reach the target ``t`` instead of collapsing on one.
2. Unlearning. With the generator fixed, the model minimises
   ``lambda_c * CE(f(x), y) - min(CE(f(x + G(z)), t), ascent_clip)
   + eta * sum |theta - theta_0|`` (lambda_c 100, eta 1e-6; SGD lr 1e-4, momentum 0.9;
   at most 10 epochs). The gradient-ascent term is clipped at ``ascent_clip`` nats:
   past it the recovered trigger no longer reaches the target and further ascent only
   damages the model (a choice of this implementation; the paper leaves the term
   unbounded). Stopping rule, on defender data only: after every epoch the success of
   the recovered triggers on a held-out clean split (non-target images predicted ``t``)
   and the clean accuracy there are measured; training stops once the success is below
   ``stop_success``, and an epoch that lowered clean accuracy by more than ``max_drop``
   is undone before stopping.

The target comes from a scan: ``target=None`` runs Neural Cleanse (batched) and uses its
most anomalous flagged label; when nothing is flagged the model is returned unchanged.
"""

from __future__ import annotations

import copy

import torch
import torch.nn.functional as F
from torch import nn

from bdunlearn.checks import choice, integer, number
from bdunlearn.defenses import DefenderView, DefenseResult, register, run_shared
from bdunlearn.defenses.finetune import evaluate
from bdunlearn.train import derive_seed, make_generator, to_unit

NOISE_DIM, CHUNK, HIDDEN = 64, 16, 256


class TriggerGenerator(nn.Module):
    """``z (N, 64) -> trigger (N, C, s, s)`` in [0, 1], one 16-d chunk per layer."""

    def __init__(self, channels: int, size: int):
        super().__init__()
        self.shape = (channels, size, size)
        self.hidden = nn.ModuleList(
            nn.Sequential(nn.Linear(CHUNK + (HIDDEN if i else 0), HIDDEN),
                          nn.BatchNorm1d(HIDDEN), nn.LeakyReLU(0.2)) for i in range(3))
        self.out = nn.Linear(HIDDEN + CHUNK, channels * size * size)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        chunks = z.split(CHUNK, dim=1)
        h = self.hidden[0](chunks[0])
        for layer, chunk in zip(self.hidden[1:], chunks[1:3]):
            h = layer(torch.cat([h, chunk], 1))
        return torch.sigmoid(self.out(torch.cat([h, chunks[3]], 1))).view(-1, *self.shape)


class Mine(nn.Module):
    """Statistics network ``T(z, g)`` of MINE (Belghazi et al., 2018)."""

    def __init__(self, trigger_numel: int):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(NOISE_DIM + trigger_numel, HIDDEN), nn.ELU(),
                                 nn.Linear(HIDDEN, HIDDEN), nn.ELU(), nn.Linear(HIDDEN, 1))

    def lower_bound(self, z: torch.Tensor, g: torch.Tensor, perm: torch.Tensor) -> torch.Tensor:
        """Donsker-Varadhan estimate of ``I(z; g)``; ``perm`` shuffles the marginal."""
        joint = self.net(torch.cat([z, g.flatten(1)], 1)).mean()
        marginal = self.net(torch.cat([z, g[perm].flatten(1)], 1)).squeeze(1)
        return joint - (torch.logsumexp(marginal, 0) - torch.log(torch.tensor(len(z))))


def stamp_random(x: torch.Tensor, trigger: torch.Tensor, gen: torch.Generator,
                 positions: torch.Tensor | None = None) -> torch.Tensor:
    """Paste ``trigger[i]`` (C, s, s) at a random position of float image ``x[i]``.

    Top-left corners are uniform over the image, or uniform over the rows of
    ``positions`` (P, 2) when given.
    """
    n, _, h, w = x.shape
    s = trigger.shape[-1]
    if positions is None:
        top = torch.randint(0, h - s + 1, (n, 1), generator=gen, device=x.device)
        left = torch.randint(0, w - s + 1, (n, 1), generator=gen, device=x.device)
    else:
        pick = positions[torch.randint(0, len(positions), (n,), generator=gen,
                                       device=x.device)]
        top, left = pick[:, :1], pick[:, 1:]
    rows = torch.arange(h, device=x.device)[None] - top  # (n, h): row inside the trigger
    cols = torch.arange(w, device=x.device)[None] - left
    inside = ((rows >= 0) & (rows < s))[:, :, None] & ((cols >= 0) & (cols < s))[:, None, :]
    canvas = trigger[torch.arange(n, device=x.device)[:, None, None, None],
                     torch.arange(trigger.shape[1], device=x.device)[None, :, None, None],
                     rows.clamp(0, s - 1)[:, None, :, None],
                     cols.clamp(0, s - 1)[:, None, None, :]]
    return torch.where(inside[:, None], canvas, x)


@torch.no_grad()
def scan_positions(model, g_net, x, y, target, gen, *, images: int = 64,
                   keep: float = 0.5) -> tuple[torch.Tensor, float]:
    """Top-left corners (P, 2) where the recovered triggers work: a grid (stride half the
    trigger side) is tried on up to ``images`` non-target images, and the positions with
    at least ``keep`` times the best success are kept. Returns them and the best success."""
    x = to_unit(x[y != target][:images])
    n, _, h, w = x.shape
    s = g_net.shape[-1]
    stride = max(1, s // 2)
    grid = torch.tensor([(r, c) for r in range(0, h - s + 1, stride)
                         for c in range(0, w - s + 1, stride)], device=x.device)
    model.eval()
    rates = []
    for r, c in grid.tolist():
        trig = g_net(torch.rand(n, NOISE_DIM, generator=gen, device=x.device))
        xb = x.clone()
        xb[..., r:r + s, c:c + s] = trig
        rates.append(float((model(xb).argmax(1) == target).float().mean()))
    rates = torch.tensor(rates, device=x.device)
    best = float(rates.max())
    return grid[rates >= keep * best] if best > 0 else grid, best


def train_generator(model, x, target, *, size, seed, epochs, batch_size, alpha, beta, lr,
                    positions=None):
    """Fit a :class:`TriggerGenerator` to make ``model`` predict ``target`` on uint8 ``x``,
    stamping at random positions (uniform, or drawn from ``positions``)."""
    dev = x.device
    gen = make_generator(seed, dev)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(derive_seed(seed, "generator"))
        g_net = TriggerGenerator(x.shape[1], size).to(dev)
        mine = Mine(x.shape[1] * size * size).to(dev)
    opt_g = torch.optim.Adam(g_net.parameters(), lr=lr, betas=(0.5, 0.999))
    opt_t = torch.optim.Adam(mine.parameters(), lr=lr, betas=(0.5, 0.999))
    order = make_generator(derive_seed(seed, "order"))
    for p in model.parameters():
        p.requires_grad_(False)
    model.eval()
    g_net.train()
    for _ in range(epochs):
        for idx in torch.randperm(len(x), generator=order).to(dev).split(batch_size):
            if len(idx) < 2:  # batch norm needs two samples
                continue
            z = torch.rand(len(idx), NOISE_DIM, generator=gen, device=dev)
            perm = torch.randperm(len(idx), generator=gen, device=dev)
            g = g_net(z)
            mi_loss = -mine.lower_bound(z, g.detach(), perm)
            opt_t.zero_grad(set_to_none=True)
            mi_loss.backward()
            opt_t.step()
            stamped = stamp_random(to_unit(x[idx]), g, gen, positions)
            p_t = F.softmax(model(stamped), 1)[:, target]
            loss = -p_t.clamp(max=beta).mean() - alpha * mine.lower_bound(z, g, perm)
            opt_g.zero_grad(set_to_none=True)
            loss.backward()
            opt_g.step()
    for p in model.parameters():
        p.requires_grad_(True)
    return g_net.eval()


@torch.no_grad()
def recovered_success(model, g_net, x, y, target, gen, positions=None) -> float:
    """Share of non-target images ``x`` that the recovered triggers send to ``target``."""
    x = x[y != target]
    if len(x) == 0:
        raise ValueError(f"the held-out clean split has no image outside label {target}")
    model.eval()
    z = torch.rand(len(x), NOISE_DIM, generator=gen, device=x.device)
    pred = model(stamp_random(to_unit(x), g_net(z), gen, positions)).argmax(1)
    return float((pred == target).float().mean())


@register("baeraser")
def baeraser(view: DefenderView, *, seed: int = 0, target: int | None = None,
             trigger_size: int | None = None, gen_epochs: int = 10, batch_size: int = 128,
             alpha: float = 0.1, beta: float = 0.5, gen_lr: float = 2e-4,
             unlearn_epochs: int = 10, lr: float = 1e-4, lambda_c: float = 100.0,
             eta: float = 1e-6, ascent_clip: float = 5.0, stop_success: float = 0.05,
             max_drop: float = 0.03, val_fraction: float = 0.2, positions: str = "scan",
             scan_steps: int = 2000) -> DefenseResult:
    """Recover the trigger with a generator and unlearn it by gradient ascent.

    Knobs: ``target``: label to erase (``None``: scan with Neural Cleanse, ``scan_steps``
    steps); ``trigger_size``: side of the generated trigger (default 4 pixels per 28 of
    image side); ``gen_epochs``, ``batch_size``, ``alpha``, ``beta``, ``gen_lr``:
    generator training (paper: 10, 128, 0.1, 0.5, 2e-4); ``unlearn_epochs``, ``lr``,
    ``lambda_c``, ``eta``: unlearning (paper: at most 10, 1e-4, 100, 1e-6);
    ``ascent_clip``: cap on the ascent term in nats; ``stop_success``: recovered-trigger
    success on the held-out split below which unlearning stops; ``max_drop``: largest
    allowed drop of held-out clean accuracy (absolute); ``val_fraction``: share of the
    clean set held out for the stopping rule; ``positions``: where unlearning stamps the
    recovered triggers, ``"random"`` (uniform, as in the paper) or ``"scan"`` (uniform
    over the positions where they work, see :func:`scan_positions`).

    ``info``: ``scan_flagged``, ``success_before``/``success_after`` (recovered-trigger
    success on the held-out split), ``val_acc_before``/``val_acc_after``, ``epochs``, the
    fitted generator's weights as a state dict (``generator``, tensors only, so the result
    can be cached) and ``history`` per epoch.
    """
    size = _check_knobs(view, seed=seed, target=target, trigger_size=trigger_size,
                        gen_epochs=gen_epochs, batch_size=batch_size, alpha=alpha, beta=beta,
                        gen_lr=gen_lr, unlearn_epochs=unlearn_epochs, lr=lr,
                        lambda_c=lambda_c, eta=eta, ascent_clip=ascent_clip,
                        stop_success=stop_success, max_drop=max_drop, positions=positions,
                        scan_steps=scan_steps)
    info: dict = {"trigger_size": size}
    flagged = None
    if target is None:
        scan = run_shared("neural_cleanse", view, seed=seed, steps=scan_steps)
        flagged = info["scan_flagged"] = scan.flagged
        if scan.target is None:
            info["note"] = "Neural Cleanse flagged no label: model returned unchanged"
            return DefenseResult(model=view.fresh_model(), flagged=flagged, info=info)
        target = scan.target
    (x, y), (xv, yv) = view.split(val_fraction, seed)
    model = view.fresh_model()
    settings = dict(size=size, seed=seed, epochs=gen_epochs, batch_size=batch_size,
                    alpha=alpha, beta=beta, lr=gen_lr)
    g_net = train_generator(model, x, target, **settings)
    where = None
    if positions == "scan":
        where, info["scan_best_success"] = scan_positions(
            model, g_net, x, y, target, make_generator(derive_seed(seed, "scan"), x.device))
        info["positions"] = where.cpu()
        g_net = train_generator(model, x, target, positions=where, **settings)
    eval_seed = derive_seed(seed, "eval")

    def measure(m):
        gen = make_generator(eval_seed, xv.device)  # same draws every time
        success = recovered_success(m, g_net, xv, yv, target, gen, where)
        return success, evaluate(m, xv, yv)[1]

    stats, note = unlearn_triggers(
        model, g_net, x, y, target, measure, positions=where, seed=seed,
        epochs=unlearn_epochs, batch_size=batch_size, lr=lr, lambda_c=lambda_c, eta=eta,
        ascent_clip=ascent_clip, stop_success=stop_success, max_drop=max_drop)
    if note is not None:
        info["note"] = note
    info.update(stats, generator={k: v.detach().cpu() for k, v in g_net.state_dict().items()})
    return DefenseResult(model=model, flagged=flagged, target=target, info=info)


def _check_knobs(view: DefenderView, *, seed, target, trigger_size, gen_epochs, batch_size,
                 alpha, beta, gen_lr, unlearn_epochs, lr, lambda_c, eta, ascent_clip,
                 stop_success, max_drop, positions, scan_steps) -> int:
    """Check :func:`baeraser`'s knobs (one sentence each) before any work; returns the
    side of the generated trigger."""
    integer("seed", seed, low=0)
    side = min(view.x_clean.shape[-2:])
    size = max(1, round(4 * side / 28)) if trigger_size is None else trigger_size
    integer("trigger_size", size, 1, int(side))
    for name, value in (("gen_epochs", gen_epochs), ("batch_size", batch_size),
                        ("unlearn_epochs", unlearn_epochs), ("scan_steps", scan_steps)):
        integer(name, value, low=1)
    number("beta", beta, 0, 1, low_open=True)
    for name, value in (("alpha", alpha), ("eta", eta)):
        number(name, value, 0)
    for name, value in (("gen_lr", gen_lr), ("lr", lr), ("lambda_c", lambda_c),
                        ("ascent_clip", ascent_clip)):
        number(name, value, 0, low_open=True)
    number("stop_success", stop_success, 0, 1)
    number("max_drop", max_drop, 0, 1, low_open=True, high_open=True)
    choice("positions", positions, ("scan", "random"))
    if target is not None:
        integer("target", target, 0, view.num_classes - 1)
    return size


def unlearn_triggers(model, g_net, x, y, target, measure, *, positions, seed, epochs,
                     batch_size, lr, lambda_c, eta, ascent_clip, stop_success,
                     max_drop) -> tuple[dict, str | None]:
    """Step 2: unlearn the recovered triggers from ``model`` in place, by epochs, until
    ``measure(model)`` (recovered-trigger success, clean accuracy on the held-out split)
    reports a success below ``stop_success`` or ``epochs`` have run; an epoch that lowers
    clean accuracy by more than ``max_drop`` is undone and ends training. Returns the
    ``info`` entries (success and accuracy before and after, ``epochs``, ``history``) and
    a note when an epoch was undone."""
    success0, acc0 = measure(model)
    theta0 = [p.detach().clone() for p in model.parameters()]
    opt = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9)
    gen = make_generator(derive_seed(seed, "unlearn"), x.device)
    order = make_generator(derive_seed(seed, "unlearn-order"))
    history, success, acc, done, note = [], success0, acc0, 0, None
    while done < epochs and success >= stop_success:
        state = copy.deepcopy(model.state_dict())
        model.train()
        for idx in torch.randperm(len(x), generator=order).to(x.device).split(batch_size):
            xb = to_unit(x[idx])
            with torch.no_grad():
                g = g_net(torch.rand(len(idx), NOISE_DIM, generator=gen, device=x.device))
            xt = stamp_random(xb, g, gen, positions)
            tgt = torch.full_like(y[idx], target)
            ascent = F.cross_entropy(model(xt), tgt, reduction="none").clamp(max=ascent_clip)
            drift = sum((p - p0).abs().sum() for p, p0 in zip(model.parameters(), theta0))
            loss = lambda_c * F.cross_entropy(model(xb), y[idx]) - ascent.mean() + eta * drift
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        done += 1
        new_success, new_acc = measure(model)
        history.append({"epoch": done, "success": new_success, "val_acc": new_acc})
        if acc0 - new_acc > max_drop:
            model.load_state_dict(state)
            note = f"epoch {done} lowered clean accuracy too far and was undone"
            break
        success, acc = new_success, new_acc
    model.eval()
    return dict(success_before=success0, success_after=success, val_acc_before=acc0,
                val_acc_after=acc, epochs=done, history=history), note

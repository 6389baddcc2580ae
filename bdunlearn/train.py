"""The training engine: uint8 tensors on the device, whole-batch augmentation, seeded runs.

Randomness comes only from ``torch.Generator`` objects built from integer seeds passed
down by the caller (:func:`derive_seed` turns several parts into one seed), never from
the global RNG, so the same seed on the same device gives the same weights.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
from dataclasses import asdict, dataclass, replace

import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from . import checks


def resolve_device(device: str | torch.device = "auto") -> torch.device:
    """``"auto"`` is CUDA when present, else CPU; anything else must be a valid device.

    A CUDA device comes with the package's numerics set (:func:`cuda_numerics`), so every
    caller that resolves one computes with TF32 off and cuDNN deterministic."""
    if isinstance(device, torch.device):
        dev = device
    elif device == "auto":
        dev = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    else:
        try:
            dev = torch.device(device)
        except (RuntimeError, TypeError) as exc:
            raise ValueError(f"unknown device {device!r}; use 'auto', 'cpu' or 'cuda'") from exc
        if dev.type not in ("cpu", "cuda"):
            raise ValueError(f"device {device!r} is not supported; use 'auto', 'cpu' or 'cuda'")
        if dev.type == "cuda" and not torch.cuda.is_available():
            raise ValueError(f"device {device!r} asked for, but this machine has no CUDA GPU")
    if dev.type == "cuda":
        cuda_numerics()
    return dev


def cuda_numerics() -> str:
    """Make CUDA compute what the CPU computes, and say how (for provenance and keys).

    fp32 stays fp32: TF32 is off for matrix products and cuDNN convolutions (PyTorch's
    default runs every fp32 convolution in TF32, a 10-bit mantissa); bf16 runs are
    unaffected, since autocast already picks their kernels. cuDNN is deterministic and
    does not benchmark algorithms, so the same seed gives the same weights run after run
    on one GPU (cuDNN's deterministic algorithms can be slower; repeatability is worth
    more here than a speed-up nobody has measured). Setting the flags touches no GPU;
    they are process-wide and set again whenever a CUDA device is resolved."""
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    torch.backends.cudnn.deterministic = True
    torch.backends.cudnn.benchmark = False
    return numerics_label()


def numerics_label() -> str:
    """The CUDA numerics flags in force, e.g. ``"TF32 off, cuDNN deterministic"``."""
    tf32 = torch.backends.cuda.matmul.allow_tf32 or torch.backends.cudnn.allow_tf32
    det = torch.backends.cudnn.deterministic and not torch.backends.cudnn.benchmark
    return (f"TF32 {'on' if tf32 else 'off'}, cuDNN "
            f"{'deterministic' if det else 'nondeterministic'}")


def device_key(device) -> str:
    """What a cached result computed on ``device`` depends on, for cache keys: ``"cpu"``
    on the CPU (the keys of every CPU entry stay as they were), and on CUDA the GPU's
    name with the numerics flags, e.g. ``"cuda: NVIDIA H100 80GB HBM3 (TF32 off, cuDNN
    deterministic)"`` (another GPU or other flags compute other bits)."""
    dev = resolve_device(device)
    if dev.type != "cuda":
        return dev.type
    index = dev.index if dev.index is not None else torch.cuda.current_device()
    return f"cuda: {torch.cuda.get_device_name(index)} ({numerics_label()})"


def synchronize(device) -> None:
    """Wait for the work queued on ``device`` (CUDA runs asynchronously), so a timing read
    after it counts the work; nothing on the CPU."""
    dev = resolve_device(device)
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)


def derive_seed(*parts) -> int:
    """A 63-bit seed from any sequence of printable parts (stable across runs)."""
    text = "\x1f".join(str(p) for p in parts)
    return int.from_bytes(hashlib.sha256(text.encode()).digest()[:8], "little") >> 1


def make_generator(seed: int, device: torch.device | str = "cpu") -> torch.Generator:
    gen = torch.Generator(device=device)
    gen.manual_seed(int(seed))
    return gen


PRECISIONS = ("auto", "fp32", "bf16")
SHUFFLES = ("every_epoch", "once")


def cpu_info(text: str | None = None) -> tuple[str, frozenset[str]]:
    """The CPU's model name and feature flags from ``/proc/cpuinfo`` (or the text given);
    ``("", frozenset())`` where there is none."""
    if text is None:
        try:
            with open("/proc/cpuinfo") as f:
                text = f.read()
        except OSError:
            text = ""
    name, flags = "", set()
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key.strip() == "model name" and not name:
            name = value.strip()
        elif key.strip() in ("flags", "Features"):
            flags.update(value.split())
    return name, frozenset(flags)


# ATen's CPU kernel levels (``torch.backends.cpu.get_cpu_capability()``) by vector width;
# a name not listed (VSX, Z VECTOR, SVE256) is another architecture's, ranked with none.
ATEN_LEVELS = {"DEFAULT": 0, "NO AVX": 0, "AVX2": 1, "AVX512": 2}


def aten_capability() -> str:
    """The CPU kernels ATen runs in this process, e.g. ``"AVX512"``, ``"AVX2"``: the widest
    this CPU offers unless ``ATEN_CPU_CAPABILITY`` limited them before torch loaded."""
    return torch.backends.cpu.get_cpu_capability().upper()


@functools.cache
def cpu_has_native_bf16() -> bool:
    """Whether training computes bf16 natively here: the CPU has the ``avx512_bf16`` or
    ``amx_bf16`` flag in ``/proc/cpuinfo`` and ATen's kernels are not limited below
    AVX-512 (:func:`aten_capability`). So ``ATEN_CPU_CAPABILITY=avx2``, which
    ``tools/avx2_engine.py --avx2`` sets (with oneDNN's and MKL's limits) to emulate an
    AVX2-only CPU on a wider one, gives ``False`` there, as that CPU would."""
    if not cpu_info()[1] & {"avx512_bf16", "amx_bf16"}:
        return False
    return ATEN_LEVELS.get(aten_capability(), 0) >= ATEN_LEVELS["AVX512"]


def resolve_precision(precision: str, device="auto") -> str:
    """The concrete training precision, ``"fp32"`` or ``"bf16"``, for ``device``.

    ``"auto"`` is ``"bf16"`` where the device computes it natively and faster than fp32
    (a CPU with AVX512-BF16 or AMX whose kernels are not limited below AVX-512, see
    :func:`cpu_has_native_bf16`; a CUDA device with native bf16) and ``"fp32"``
    elsewhere; ``"fp32"`` and ``"bf16"`` are returned as given (bf16 on a CPU without
    native support is emulated, but allowed: 12x slower than fp32 for the paper's
    Fashion-MNIST model on a 2-core AVX2-only EPYC, 2026-12-05).
    """
    checks.choice("precision", precision, PRECISIONS)
    if precision != "auto":
        return precision
    dev = resolve_device(device)
    if dev.type == "cuda":
        with torch.cuda.device(dev):
            native = torch.cuda.is_bf16_supported(including_emulation=False)
    else:
        native = dev.type == "cpu" and cpu_has_native_bf16()
    return "bf16" if native else "fp32"


@dataclass(frozen=True)
class TrainConfig:
    """SGD settings of one training run; every field is checked on construction.

    ``lr_step`` halves the learning rate every that many epochs (``None``: constant).
    ``crop``/``flip`` augment each batch. ``precision`` is the training step's forward
    pass: ``"fp32"``, ``"bf16"`` (autocast; weights, optimiser and evaluation stay fp32)
    or ``"auto"`` (see :func:`resolve_precision`); :meth:`resolved` fixes it for a device,
    and checkpoint keys must use the resolved copy. ``shuffle`` is the sample order:
    ``"every_epoch"`` draws a new permutation each epoch, ``"once"`` draws one and keeps
    it for every epoch (the BAU authors' shards).
    """

    epochs: int = 20
    lr: float = 0.01
    batch_size: int = 100
    momentum: float = 0.0
    weight_decay: float = 0.0
    lr_step: int | None = None
    crop: bool = False
    flip: bool = False
    precision: str = "auto"
    shuffle: str = "every_epoch"

    def __post_init__(self):
        clean = dict(
            epochs=checks.integer("epochs", self.epochs, low=1),
            lr=checks.number("lr", self.lr, 0, low_open=True),
            batch_size=checks.integer("batch_size", self.batch_size, low=1),
            momentum=checks.number("momentum", self.momentum, 0, 1, high_open=True),
            weight_decay=checks.number("weight_decay", self.weight_decay, 0),
            lr_step=None if self.lr_step is None else checks.integer("lr_step", self.lr_step,
                                                                       low=1),
            crop=checks.flag("crop", self.crop),
            flip=checks.flag("flip", self.flip),
            precision=checks.choice("precision", self.precision, PRECISIONS),
            shuffle=checks.choice("shuffle", self.shuffle, SHUFFLES))
        for name, value in clean.items():  # plain Python types, so keys hash the same
            object.__setattr__(self, name, value)

    def resolved(self, device="auto") -> TrainConfig:
        """A copy whose ``precision`` is the concrete one for ``device`` (never "auto")."""
        return replace(self, precision=resolve_precision(self.precision, device))

    def as_dict(self) -> dict:
        return asdict(self)


def to_unit(x: torch.Tensor) -> torch.Tensor:
    """uint8 images to float32 in [0, 1] (float input passes through)."""
    return x.float().div_(255) if x.dtype == torch.uint8 else x.float()


def augment_batch(x: torch.Tensor, gen: torch.Generator, crop: bool, flip: bool,
                  pad: int = 4) -> torch.Tensor:
    """Random crop after zero padding and random horizontal flip, for a whole batch."""
    n, _, h, w = x.shape
    if crop:
        padded = F.pad(x, (pad, pad, pad, pad))
        dy = torch.randint(0, 2 * pad + 1, (n,), generator=gen, device=x.device)
        dx = torch.randint(0, 2 * pad + 1, (n,), generator=gen, device=x.device)
        rows = (dy[:, None] + torch.arange(h, device=x.device))[:, None, :, None]
        cols = (dx[:, None] + torch.arange(w, device=x.device))[:, None, None, :]
        batch = torch.arange(n, device=x.device)[:, None, None, None]
        chans = torch.arange(x.shape[1], device=x.device)[None, :, None, None]
        x = padded[batch, chans, rows, cols]
    if flip:
        mask = torch.rand(n, generator=gen, device=x.device) < 0.5
        x = torch.where(mask[:, None, None, None], x.flip(3), x)
    return x


def epoch_orders(n: int, gen: torch.Generator, shuffle: str = "every_epoch"):
    """The sample order of each epoch, endlessly: a ``randperm(n)`` from ``gen`` (always
    drawn on the CPU), drawn anew every epoch (``"every_epoch"``) or drawn once and kept
    (``"once"``). Every trainer draws its order here, so they all see the same batches."""
    perm = torch.randperm(n, generator=gen)
    while True:
        yield perm
        if shuffle == "every_epoch":
            perm = torch.randperm(n, generator=gen)


def autocast(precision: str, dev: torch.device):
    """The context for a training step's forward pass: bf16 autocast on ``dev`` for
    ``precision="bf16"``, nothing for ``"fp32"`` (use :func:`resolve_precision` first)."""
    return torch.autocast(dev.type, dtype=torch.bfloat16, enabled=precision == "bf16")


def _channels_last(model: nn.Module, dev: torch.device) -> bool:
    """Train in channels-last layout on the CPU for convolutional models without batch norm.

    Measured on a 2-core Xeon (AVX-512, oneDNN), one thread, batch 100: fmnist_cnn +35%,
    lenet5 +20%, gtsrb_cnn +20% samples/s; vgg11_bn and preact_resnet18 (batch norm)
    within noise (-5% to +5%), so they keep the default layout. Off on CUDA.
    """
    if dev.type != "cpu":
        return False
    mods = list(model.modules())
    return (any(isinstance(m, nn.Conv2d) for m in mods)
            and not any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in mods))


def _has_dropout(model: nn.Module) -> bool:
    return any(isinstance(m, nn.modules.dropout._DropoutNd) for m in model.modules())


def fit(model: nn.Module, x: torch.Tensor, y: torch.Tensor, cfg: TrainConfig, *,  # noqa: C901
        seed: int, device="auto", epochs: int | None = None, epoch_offset: int = 0,
        progress: bool = False, desc: str = "train", watch: torch.Tensor | None = None,
        on_update=None) -> nn.Module:
    """Train ``model`` in place on uint8 images ``x`` and labels ``y``; return it.

    ``epochs`` overrides ``cfg.epochs`` (SISA slices train a share of them) and
    ``epoch_offset`` places them in the learning-rate schedule. ``watch`` is a bool mask
    over the samples: for every step whose batch holds a watched sample,
    ``on_update(batch_indices, deltas)`` receives the batch's sample indices (a CPU
    tensor, so the callback can look them up without waiting for the GPU) and the
    parameter change of that step (on the device; Amnesiac unlearning records these).

    Randomness: the batch order comes from ``make_generator(seed)``, augmentation from
    ``derive_seed(seed, "augment")`` and dropout masks from ``derive_seed(seed,
    "dropout")`` (the global RNG is forked and restored around training), so the same
    seed on the same device, precision and torch thread count gives the same weights (the
    CPU kernels sum in an order that depends on the thread count). The sample order
    follows ``cfg.shuffle`` (:func:`epoch_orders`). The forward pass runs in
    ``cfg.precision`` resolved for the device (bf16 autocast or fp32); the loss, the
    gradients' accumulation into fp32 weights and the optimiser stay fp32. On the CPU
    convolutional models are trained in channels-last memory layout and handed back in
    the default layout.
    """
    dev = resolve_device(device)
    epochs = cfg.epochs if epochs is None else epochs
    if len(y) == 0 or epochs == 0:
        return model.to(dev)
    if watch is not None and on_update is None:
        raise ValueError("watch was given without on_update; pass the callback that "
                         "receives the recorded updates")
    if watch is not None and (watch.dim() != 1 or len(watch) != len(y)):
        raise ValueError(f"watch must be a mask with one entry per sample ({len(y)}), "
                         f"got shape {tuple(watch.shape)}")
    precision = resolve_precision(cfg.precision, dev)
    model.to(dev).train()
    channels_last = _channels_last(model, dev)
    if channels_last:
        model.to(memory_format=torch.channels_last)
    xd, yd = x.to(dev, non_blocking=True), y.to(dev, non_blocking=True)
    watched = watch.cpu().bool() if watch is not None else None  # host-side: no syncs
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.SGD(params, lr=cfg.lr, momentum=cfg.momentum,
                          weight_decay=cfg.weight_decay)
    orders = epoch_orders(len(yd), make_generator(seed), cfg.shuffle)
    aug_gen = make_generator(derive_seed(seed, "augment"), dev)
    augment = cfg.crop or cfg.flip
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    bar = tqdm(total=epochs * -(-len(yd) // cfg.batch_size), desc=desc,
               disable=not progress, leave=False)
    rng = _DropoutRng(seed, dev) if _has_dropout(model) else contextlib.nullcontext()
    try:
        with rng:
            for epoch in range(epoch_offset, epoch_offset + epochs):
                lr = cfg.lr * (0.5 ** (epoch // cfg.lr_step) if cfg.lr_step else 1.0)
                for group in opt.param_groups:
                    group["lr"] = lr
                host = next(orders)
                batches = host.to(dev, non_blocking=True).split(cfg.batch_size)
                host = host.split(cfg.batch_size)
                for step, idx in enumerate(batches):
                    xb = to_unit(xd[idx])
                    if augment:
                        xb = augment_batch(xb, aug_gen, cfg.crop, cfg.flip)
                    if channels_last:
                        xb = xb.contiguous(memory_format=fmt)
                    record = watched is not None and bool(watched[host[step]].any())
                    before = [p.detach().clone() for p in params] if record else None
                    with autocast(precision, dev):
                        out = model(xb)
                    loss = F.cross_entropy(out.float(), yd[idx])
                    opt.zero_grad(set_to_none=True)
                    loss.backward()
                    opt.step()
                    if record:
                        on_update(host[step], [(p.detach() - b).contiguous()
                                        for p, b in zip(params, before)])
                    bar.update()
    finally:
        bar.close()
        if channels_last:
            model.to(memory_format=torch.contiguous_format)
    model.eval()
    return model


class _DropoutRng:
    """Fork the global RNG of ``dev`` (and the CPU) and seed it from ``seed``: dropout
    masks then depend on the training seed only, and the caller's RNG is untouched."""

    def __init__(self, seed: int, dev: torch.device):
        self.seed, self.dev = derive_seed(seed, "dropout"), dev

    def __enter__(self):
        devices = [self.dev.index if self.dev.index is not None
                   else torch.cuda.current_device()] if self.dev.type == "cuda" else []
        self._fork = torch.random.fork_rng(devices=devices)
        self._fork.__enter__()
        torch.default_generator.manual_seed(self.seed)
        if self.dev.type == "cuda":
            with torch.cuda.device(devices[0]):
                torch.cuda.manual_seed(self.seed)
        return self

    def __exit__(self, *exc):
        return self._fork.__exit__(*exc)


def _run_inference(model: nn.Module, x: torch.Tensor, device, batch_size, step) -> None:
    """``step(model(batch))`` for ``x`` in [0, 1] batches, in eval mode and inference mode,
    laid out as the model computes fastest: on the CPU batches of 256, channels-last for
    the models that train in that layout (fmnist_cnn: 19,400 against 5,700 images/s at
    batch 2000 in the default layout, softmax equal to within 3e-8; measured 2026-12-04,
    2-core AMD EPYC); 2000 on a GPU. The model is moved outside inference mode (its
    parameters stay trainable) and its parameters are back in the default layout after.
    ``device="auto"`` is the device the model is on (a model trained on the CPU is
    evaluated there, so a CPU run never touches CUDA); a model without parameters goes
    by :func:`resolve_device`."""
    if batch_size is not None:
        batch_size = checks.integer("inference batch size", batch_size, low=1)
    if isinstance(device, str) and device == "auto":
        device = next((t.device for t in (*model.parameters(), *model.buffers())), "auto")
    dev = resolve_device(device)
    last = _channels_last(model, dev)
    with torch.no_grad():
        model.to(dev, memory_format=torch.channels_last) if last else model.to(dev)
    model.eval()
    try:
        for xb in x.split(batch_size or (256 if dev.type == "cpu" else 2000)):
            with torch.inference_mode():
                xb = to_unit(xb.to(dev))
                step(model(xb.contiguous(memory_format=torch.channels_last) if last else xb))
    finally:
        if last:
            with torch.no_grad():
                model.to(memory_format=torch.contiguous_format)


def predict_logits(model: nn.Module, x: torch.Tensor, *, device="auto",
                   batch_size: int | None = None) -> torch.Tensor:
    """Logits ``(N, K)`` on the CPU for uint8 or [0, 1] float images."""
    out: list[torch.Tensor] = []
    _run_inference(model, x, device, batch_size, lambda z: out.append(z.float().cpu()))
    return torch.cat(out) if out else torch.empty(0)


def predict_proba(model: nn.Module, x: torch.Tensor, *, device="auto",
                  batch_size: int | None = None) -> torch.Tensor:
    """Softmax outputs ``(N, K)`` on the CPU for uint8 or [0, 1] float images."""
    out: list[torch.Tensor] = []
    _run_inference(model, x, device, batch_size,
                   lambda z: out.append(F.softmax(z, dim=1).cpu()))
    return torch.cat(out) if out else torch.empty(0)


def predict(model: nn.Module, x: torch.Tensor, **kw) -> torch.Tensor:
    return predict_proba(model, x, **kw).argmax(1)


def features(model: nn.Module, x: torch.Tensor, *, device="auto",
             batch_size: int | None = None) -> torch.Tensor:
    """Penultimate-layer activations ``(N, D)`` on the CPU: the input of the model's last
    ``nn.Linear`` layer (what a feature-space detector compares)."""
    last = [m for m in model.modules() if isinstance(m, nn.Linear)]
    if not last:
        raise ValueError(f"{type(model).__name__} has no linear layer to take features before")
    grabbed: list[torch.Tensor] = []
    hook = last[-1].register_forward_pre_hook(
        lambda _m, args: grabbed.append(args[0].flatten(1).float().cpu()))
    try:
        _run_inference(model, x, device, batch_size, lambda z: None)
    finally:
        hook.remove()
    return torch.cat(grabbed) if grabbed else torch.empty(0)

"""Seconds per training iteration of the OFFICIAL WILSON code (fcdl94/WILSON), imported from a local checkout.

    git clone https://github.com/fcdl94/WILSON /path/to/WILSON
    python -m benchmarks.official_step --official /path/to/WILSON --size 512 --batch 2 --step 1 --json

Nothing is fetched at run time: the official code is imported from ``--official`` (``sys.path`` insert), and this
module only drives it. One iteration is the loop body of the official ``train.Trainer.train`` itself, called once
with a loader that yields the same random batch ``warmup + iters`` times and records a timestamp as each batch is
requested, so the official order is kept by construction: with ``torch.cuda.amp.autocast()``, the old model's
forward (no grad), ``zero_grad``, the new model's forward, the eval-mode then train-mode pseudolabeler (localizer)
passes, ℓ_CLS (nGWP + focal), ℓ_LOC, ℓ_ENC, and from ``cur_epoch >= pseudo_ep`` on the softmax / PAMR / pseudo
ground truth, ℓ_SEG and ℓ_SSS; then ``GradScaler`` backward, optimizer step, scheduler step, scaler update and the
loop's ``.item()`` calls. A step-1 iteration runs at ``cur_epoch = pseudo_ep`` (5), so every term is active, as in
``benchmarks.step``; step 0 is the BCE iteration on upsampled logits.

Settings are the official ones: the options are parsed by the checkout's own ``argparser.get_argparser()`` and
``modify_command_options`` from the flags of its ``run.sh`` (step 0: ``--step 0 --bce --lr 0.01 --epochs 30``;
step 1: ``--step 1 --weakly --alpha 0.5 --lr 0.001 --loss_de 1 --lr_policy warmup --affinity --epochs 40``; both
``--dataset voc --task 15-5 --batch_size B --val_interval 2``) plus ``--crop_size S --no_pretrained --norm_act N``;
``max_iters`` and ``start_decay`` are set as ``run.py`` sets them. The model is the official ResNet-101 DeepLab-v3
(``segmentation_module.make_model``, output stride 16), random init (no pretrained download). The Trainer wraps its
model and localizer in ``DistributedDataParallel``; here that is a one-process group (gloo on CPU, nccl on CUDA).
On a CPU the official ``torch.cuda.amp`` autocast and ``GradScaler`` disable themselves: the official code runs
fp32 there.

As in ``benchmarks.step`` (``benchmarks.common.realistic_init_``), the old model's BatchNorm statistics are set from
one train-mode forward of other random images (a random-init eval-mode network with (0, 1) statistics has
exploding features), the new model loads the old model's weights (as the official ``load_step_ckpt`` does from the
step-0 checkpoint) and the pseudolabeler's last convolution is primed so that ℓ_SSS's pseudo ground truth is not
empty. The batch is the one ``benchmarks.common.make_batch`` draws (same generator calls), with the official
conventions: training masks have no 255 (the official transform maps it to 0), image labels cover classes 1..C-1.

In-place ABN: ``--abn auto`` uses the ``inplace_abn`` package when it is installed, else a pure-PyTorch stand-in
(``BatchNorm2d`` + the official activation: leaky ReLU 0.01, or identity where the official blocks set it) and says
so in the output. The stand-in is numerically the official ``--norm_act abn`` (plain BN + activation), so its peak
memory is that of ``abn``, not of the in-place kernel (which recomputes the BN output in backward).

Output: one JSON line (``--json``): median/min/max seconds per iteration, all times, peak RSS (``ru_maxrss``),
torch version, threads, CPU model and flags (avx2 / avx512f / avx512_bf16 / amx_bf16 / amx_tile from
``/proc/cpuinfo``), the official commit when the checkout is a git tree, and the official options used.

This module imports only the standard library and torch before the official code (no ``wilson_ray``): the official
tree's top-level packages (``models``, ``modules``, ``utils``, ``tasks``, ``train``) must not meet other modules of
those names.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as _dt
import gc
import importlib
import importlib.util
import json
import os
import platform
import resource
import statistics
import sys
import tempfile
import time
import types
import warnings
from pathlib import Path

from benchmarks.op_profile import OpProfile

OFFICIAL_URL = "https://github.com/fcdl94/WILSON"
# What this harness was written against: the index copy of fcdl94/WILSON, train.py / argparser.py / run.py /
# run.sh at this commit (the other files it imports at c3a2b899a71445f5673c77f897afdf0c0fc816e5).
OFFICIAL_COMMIT = "8c6c59598d7633815d2fc4ea4d94e8879cc60dd3"
# The files of the checkout that the import chain of train.Trainer needs (checked before anything is imported).
REQUIRED_FILES = (
    "train.py",
    "argparser.py",
    "segmentation_module.py",
    "tasks.py",
    "models/__init__.py",
    "models/resnet.py",
    "modules/__init__.py",
    "modules/residual.py",
    "utils/__init__.py",
    "utils/wss_loss.py",
    "wss/modules.py",
    "wss/single_stage.py",
)
TASK = "15-5"  # benchmarks.common.TASK
CPU_FLAGS = ("avx2", "avx512f", "avx512_bf16", "amx_bf16", "amx_tile")
STANDIN_NOTE = (
    "inplace_abn is not installed: the official norm layers run on a pure-PyTorch stand-in (BatchNorm2d + the "
    "official activation, leaky_relu 0.01 / identity); numerically the official --norm_act abn, with abn's memory "
    "(not the in-place kernel's)"
)


class OfficialCodeError(Exception):
    """The official checkout is missing, incomplete or does not import (one-line message)."""


def how_to_get() -> str:
    return (
        f"get it with: git clone {OFFICIAL_URL} <path> (this harness was written against commit "
        f"{OFFICIAL_COMMIT[:12]}: git -C <path> checkout {OFFICIAL_COMMIT})"
    )


def check_official(path: str | os.PathLike | None) -> Path:
    """The checkout's root, or :class:`OfficialCodeError` naming the path, the file expected and how to get it."""
    if not path:
        raise OfficialCodeError(f"--official is required: the path of a checkout of fcdl94/WILSON; {how_to_get()}")
    root = Path(path).expanduser()
    if not root.is_dir():
        raise OfficialCodeError(
            f"--official {path}: no such directory; expected a checkout of fcdl94/WILSON with train.py in it; "
            f"{how_to_get()}"
        )
    for rel in REQUIRED_FILES:
        if not (root / rel).is_file():
            raise OfficialCodeError(
                f"--official {path}: {rel} not found; expected a checkout of fcdl94/WILSON with {rel} in it; "
                f"{how_to_get()}"
            )
    return root.resolve()


def git_commit(root: Path) -> str | None:
    """The checked-out commit of ``root`` read from ``.git`` (no git binary needed); None if not a git tree."""
    git = root / ".git"
    try:
        if git.is_file():  # a worktree / submodule: "gitdir: <path>"
            git = (root / git.read_text().split(":", 1)[1].strip()).resolve()
        head = (git / "HEAD").read_text().strip()
        if not head.startswith("ref:"):
            return head
        ref = head.split(":", 1)[1].strip()
        if (git / ref).is_file():
            return (git / ref).read_text().strip()
        packed = git / "packed-refs"
        if packed.is_file():
            for line in packed.read_text().splitlines():
                if line.endswith(" " + ref):
                    return line.split()[0]
    except (OSError, IndexError):
        pass
    return None


# ---------------------------------------------------------------------------------------------------------------
# Machine


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def cpu_flags(cpuinfo: str | None = None) -> list[str]:
    """Which of :data:`CPU_FLAGS` the CPU has (``cpuinfo``: the text of /proc/cpuinfo, read when None)."""
    if cpuinfo is None:
        try:
            with open("/proc/cpuinfo", encoding="utf-8") as f:
                cpuinfo = f.read()
        except OSError:
            return []
    for line in cpuinfo.splitlines():
        if line.startswith("flags"):
            have = set(line.split(":", 1)[1].split())
            return [w for w in CPU_FLAGS if w in have]
    return []


def load_average() -> list[float]:
    try:
        return [round(v, 2) for v in os.getloadavg()]
    except OSError:
        return []


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


# ---------------------------------------------------------------------------------------------------------------
# The in-place ABN stand-in (written from the interface the official code uses: norm_act(num_features,
# activation=..., activation_param=..., [group=...]); .activation / .activation_param read at forward time, since
# the official residual blocks set bn.activation = "identity" after construction)


def _activate(x, activation: str, param: float):
    from torch.nn import functional as F

    if activation == "leaky_relu":
        return F.leaky_relu(x, negative_slope=param, inplace=True)
    if activation == "elu":
        return F.elu(x, alpha=param, inplace=True)
    if activation == "relu":
        return F.relu(x, inplace=True)
    if activation == "identity":
        return x
    raise RuntimeError(f"unknown activation {activation!r}")


def standin_modules() -> dict[str, types.ModuleType]:
    """``{"inplace_abn": ..., "inplace_abn.functions": ...}``: pure-PyTorch ABN / InPlaceABN / InPlaceABNSync
    (BatchNorm2d + activation) and the functional ``inplace_abn`` / ``inplace_abn_sync``."""
    from torch import nn
    from torch.nn import functional as F

    class ABN(nn.BatchNorm2d):
        """Stand-in for inplace_abn.ABN: BatchNorm2d followed by the activation (not in place of the BN input)."""

        def __init__(
            self,
            num_features,
            eps=1e-5,
            momentum=0.1,
            affine=True,
            track_running_stats=True,
            activation="leaky_relu",
            activation_param=0.01,
            **_ignored,
        ):
            super().__init__(num_features, eps, momentum, affine, track_running_stats)
            self.activation = activation
            self.activation_param = activation_param

        def forward(self, x):
            return _activate(super().forward(x), self.activation, self.activation_param)

    class InPlaceABN(ABN):
        pass

    class InPlaceABNSync(ABN):
        """One process: the same as InPlaceABN (``group`` accepted and ignored)."""

        def __init__(self, num_features, *args, group=None, **kwargs):
            super().__init__(num_features, *args, **kwargs)
            self.group = group

    def inplace_abn(
        x,
        weight,
        bias,
        running_mean,
        running_var,
        training=True,
        momentum=0.1,
        eps=1e-5,
        activation="leaky_relu",
        activation_param=0.01,
    ):
        x = F.batch_norm(x, running_mean, running_var, weight, bias, training, momentum, eps)
        return _activate(x, activation, activation_param)

    def inplace_abn_sync(*args, group=None, **kwargs):
        return inplace_abn(*args, **kwargs)

    pkg = types.ModuleType("inplace_abn")
    pkg.__doc__ = "wilson-ray benchmarks.official_step stand-in for inplace_abn (pure PyTorch)"
    functions = types.ModuleType("inplace_abn.functions")
    functions.inplace_abn, functions.inplace_abn_sync = inplace_abn, inplace_abn_sync
    functions.__all__ = ["inplace_abn", "inplace_abn_sync"]
    pkg.ABN, pkg.InPlaceABN, pkg.InPlaceABNSync = ABN, InPlaceABN, InPlaceABNSync
    pkg.functions = functions
    pkg.STANDIN = True
    return {"inplace_abn": pkg, "inplace_abn.functions": functions}


def resolve_abn(choice: str) -> str:
    """``real`` or ``standin`` for ``--abn auto|real|standin``."""
    have = importlib.util.find_spec("inplace_abn") is not None
    if choice == "auto":
        return "real" if have else "standin"
    if choice == "real" and not have:
        raise OfficialCodeError("--abn real: the inplace_abn package is not installed (pip install inplace-abn)")
    return choice


def import_official(root: Path, abn: str) -> dict[str, types.ModuleType]:
    """Import the official ``train``, ``argparser``, ``tasks`` from ``root`` (first on ``sys.path``), with the
    stand-in registered as ``inplace_abn`` when ``abn == "standin"``. Errors become :class:`OfficialCodeError`."""
    if abn == "standin":
        sys.modules.update(standin_modules())
    sys.path.insert(0, str(root))
    importlib.invalidate_caches()
    mods = {}
    try:
        for name in ("tasks", "argparser", "train"):
            mods[name] = importlib.import_module(name)
    except Exception as e:  # the checkout does not import: say which module and why, in one line
        raise OfficialCodeError(
            f"--official {root}: importing the official {name}.py failed: {type(e).__name__}: {e}; "
            f"expected a complete checkout of fcdl94/WILSON; {how_to_get()}"
        ) from e
    for name, mod in mods.items():
        where = Path(getattr(mod, "__file__", "") or "").resolve()
        if root not in where.parents:
            raise OfficialCodeError(f"--official {root}: module {name} was imported from {where}, not the checkout")
    return mods


# ---------------------------------------------------------------------------------------------------------------
# Options, data, init


def official_argv(step: int, size: int, batch: int, norm_act: str) -> list[str]:
    """The official command line of one step (run.sh's flags; no pretrained weights, crop ``size``)."""
    argv = ["--dataset", "voc", "--task", TASK, "--batch_size", str(batch), "--val_interval", "2"]
    if step == 0:
        argv += ["--step", "0", "--bce", "--lr", "0.01", "--epochs", "30"]
    else:
        argv += ["--step", str(step), "--weakly", "--alpha", "0.5", "--lr", "0.001", "--loss_de", "1"]
        argv += ["--lr_policy", "warmup", "--affinity", "--epochs", "40"]
    argv += ["--crop_size", str(size), "--no_pretrained", "--norm_act", norm_act]
    return argv


def make_batch(step: int, batch: int, size: int, num_classes: int, num_old: int, seed: int = 0):
    """``benchmarks.common.make_batch``'s draws (same generator calls, so the same images and image labels), in the
    official conventions: masks (long) without 255 (mapped to 0 as the official training transform does), image
    labels (B x C-1) for classes 1..C-1, only new classes set at step >= 1."""
    import torch

    g = torch.Generator().manual_seed(seed)
    images = torch.randn(batch, 3, size, size, generator=g)
    c = num_classes
    masks = torch.randint(0, c if step == 0 else 1, (batch, size, size), generator=g)
    if step == 0:
        void = torch.rand(batch, size, size, generator=g) < 0.05
        masks = masks.masked_fill(void, 0)
    labels = torch.zeros(batch, c - 1)
    if step == 0:
        for b in range(batch):
            present = masks[b].unique()
            labels[b, present[present > 0] - 1] = 1.0
    else:
        new_cols = torch.arange(num_old - 1, c - 1)
        for b in range(batch):
            pick = new_cols[torch.randperm(len(new_cols), generator=g)[: min(2, len(new_cols))]]
            labels[b, pick] = 1.0
    return images, masks.long(), labels


def _norm_layers(model) -> list:
    import torch

    return [
        m
        for m in model.modules()
        if isinstance(getattr(m, "running_mean", None), torch.Tensor) and hasattr(m, "momentum")
    ]


def calibrate_norms_(model, images) -> None:
    """Running statistics of every norm layer = those of ``images`` (one train-mode forward, momentum 1), as a
    trained model has; the official forward signature (``interpolate=False``)."""
    import torch

    norms = _norm_layers(model)
    momenta = [m.momentum for m in norms]
    was_training = model.training
    for m in norms:
        m.running_mean.zero_()
        m.running_var.fill_(1.0)
        m.momentum = 1.0
    model.train()
    with torch.no_grad():
        model(images, interpolate=False)
    for m, mom in zip(norms, momenta):
        m.momentum = mom
    model.train(was_training)


def prime_localizer_(last_conv, num_old: int, seed: int = 7, scale: float = 0.3, bias: float = 5.0) -> None:
    """``benchmarks.common.prime_localizer_`` on the official pseudolabeler's last 1x1 convolution."""
    import torch

    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        last_conv.weight.copy_(torch.randn(last_conv.weight.shape, generator=g) * scale)
        last_conv.bias.zero_()
        last_conv.bias[0] = bias
        last_conv.bias[num_old:] = bias


def _unwrap(m):
    return getattr(m, "module", m)


class StubLogger:
    """The official Trainer's logger interface (info, debug, add_scalar, commit, ...) as no-ops."""

    def __getattr__(self, name):
        return lambda *args, **kwargs: None


class TimedLoader:
    """What ``Trainer.train`` reads of its loader: ``len``, ``sampler.set_epoch`` and iteration over
    ``(images, labels, l1h)``. It yields the same batch ``n`` times and records ``perf_counter`` /
    ``process_time`` each time a batch is requested and once more when the loop asks past the end, so
    ``marks[k + 1] - marks[k]`` is the official loop body of iteration ``k``."""

    class _Sampler:
        def set_epoch(self, epoch):
            pass

    def __init__(self, batch, n: int, sync=None, on_mark=None):
        self.batch, self.n, self.sync, self.on_mark = batch, n, sync, on_mark
        self.sampler = self._Sampler()
        self.marks: list[float] = []
        self.cpu_marks: list[float] = []

    def __len__(self):
        return self.n

    def _mark(self):
        if self.sync is not None:
            self.sync()
        if self.on_mark is not None:  # before the timestamp: a profiler's start/stop is not timed
            self.on_mark(len(self.marks))
        self.marks.append(time.perf_counter())
        self.cpu_marks.append(time.process_time())

    def __iter__(self):
        for _ in range(self.n):
            self._mark()
            yield self.batch
        self._mark()

    def iteration_times(self) -> list[float]:
        return [b - a for a, b in zip(self.marks, self.marks[1:])]

    def cpu_times(self) -> list[float]:
        return [b - a for a, b in zip(self.cpu_marks, self.cpu_marks[1:])]


def summarise(times: list[float]) -> dict:
    """``benchmarks.common.summarise``: the same fields."""
    return {
        "median_s": statistics.median(times),
        "min_s": min(times),
        "max_s": max(times),
        "mean_s": statistics.fmean(times),
        "times_s": [round(t, 4) for t in times],
    }


# ---------------------------------------------------------------------------------------------------------------


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m benchmarks.official_step", description=__doc__.split("\n\n")[0])
    p.add_argument(
        "--official", default=None, help="path of a checkout of fcdl94/WILSON (git clone " + OFFICIAL_URL + ")"
    )
    p.add_argument("--size", type=int, default=512, help="square crop size in pixels")
    p.add_argument("--batch", type=int, default=2)
    p.add_argument("--step", type=int, default=1, choices=[0, 1], help="0: step-0 BCE iteration; 1: WILSON step 1")
    p.add_argument("--warmup", type=int, default=2, help="untimed iterations first")
    p.add_argument("--iters", type=int, default=5, help="timed iterations")
    p.add_argument("--threads", type=int, default=2, help="torch.set_num_threads (0: leave torch's default)")
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    p.add_argument(
        "--norm-act",
        dest="norm_act",
        default="iabn",
        choices=["iabn", "iabn_sync", "abn"],
        help="the official --norm_act (its default iabn_sync is iabn in one process)",
    )
    p.add_argument(
        "--abn",
        default="auto",
        choices=["auto", "real", "standin"],
        help="the inplace_abn package, or the pure-PyTorch stand-in (auto: the package when installed)",
    )
    p.add_argument(
        "--op-profile",
        dest="op_profile",
        default=None,
        help="write the timed iterations' self CPU time per operator to this JSON (benchmarks.op_profile)",
    )
    p.add_argument("--json", action="store_true", help="print one JSON object")
    a = p.parse_args(argv)
    if a.iters < 1 or a.warmup < 0:
        p.error("--iters must be >= 1 and --warmup >= 0")
    return a


CPU_DDP_NOTE = (
    "CPU: the official Trainer.distribute's device_ids=[device_id] / output_device are dropped (DDP rejects them "
    "for a CPU module); DistributedDataParallel otherwise as official, one process (gloo)"
)


def cpu_ddp(module, device_ids=None, output_device=None, **kwargs):
    """``DistributedDataParallel`` for a CPU module, called with the official arguments (``device_ids`` /
    ``output_device`` dropped)."""
    from torch.nn.parallel import DistributedDataParallel

    return DistributedDataParallel(module, **kwargs)


def _init_process_group(device) -> str:
    import torch.distributed as dist

    backend = "nccl" if device.type == "cuda" else "gloo"
    fd, store = tempfile.mkstemp(prefix="wr-official-pg-")
    os.close(fd)
    os.unlink(store)  # FileStore wants a path that does not exist yet
    dist.init_process_group(backend, init_method=f"file://{store}", rank=0, world_size=1)
    return backend


def run(a: argparse.Namespace) -> dict:
    root = check_official(a.official)
    abn = resolve_abn(a.abn)
    if abn == "standin":
        print(f"official_step: {STANDIN_NOTE}", file=sys.stderr)
    os.environ.setdefault("TQDM_DISABLE", "1")  # the official loop's progress bar (tqdm >= 4.66 reads it)

    import torch

    if a.threads:
        torch.set_num_threads(a.threads)
    if a.device == "cuda" and not torch.cuda.is_available():
        raise OfficialCodeError("--device cuda: no CUDA device")
    # torch.cuda.amp is deprecated (FutureWarning) and disables itself on a CPU (UserWarning): both expected here
    warnings.filterwarnings("ignore", category=FutureWarning)
    warnings.filterwarnings("ignore", message=".*CUDA is not available.*")
    warnings.filterwarnings("ignore", message=".*torch.cuda.amp.GradScaler is enabled.*")
    # the official loop formats its loss (a tensor with grad) for the progress bar: expected, not ours to fix
    warnings.filterwarnings("ignore", message="Converting a tensor with requires_grad=True to a scalar")

    t0 = time.perf_counter()
    mods = import_official(root, abn)
    official_argparser, official_train, official_tasks = mods["argparser"], mods["train"], mods["tasks"]
    opts = official_argparser.get_argparser().parse_args(official_argv(a.step, a.size, a.batch, a.norm_act))
    opts = official_argparser.modify_command_options(opts)

    if a.device == "cuda":
        torch.cuda.set_device(0)
        device, opts.device_id = torch.device("cuda", 0), 0
    else:
        device, opts.device_id = torch.device("cpu"), None  # not a GPU index (and dropped below: cpu_ddp)
    opts.local_rank = 0
    backend = _init_process_group(device)
    n = a.warmup + a.iters
    # run.py: max_iters = epochs x len(train_loader); warmup policy: start_decay = pseudo_ep x len(train_loader)
    opts.max_iters = opts.epochs * n
    if opts.lr_policy == "warmup":
        opts.start_decay = opts.pseudo_ep * n

    notes = [STANDIN_NOTE] if abn == "standin" else []
    if device.type == "cpu":
        # Trainer.distribute passes device_ids=[opts.device_id], output_device=opts.device_id (a GPU index);
        # DDP rejects any device_ids for a CPU module, so on a CPU they are dropped (the wrapping is otherwise the
        # official one: DistributedDataParallel(..., find_unused_parameters=False)).
        official_train.DistributedDataParallel = cpu_ddp
        notes.append(CPU_DDP_NOTE)
    torch.manual_seed(opts.random_seed)  # run.py seeds before building the Trainer
    trainer = official_train.Trainer(StubLogger(), device=device, opts=opts)

    classes = official_tasks.get_per_task_classes(opts.dataset, opts.task, opts.step)
    num_classes = sum(classes)
    num_old = num_classes - classes[-1] if a.step > 0 else 0
    images, masks, l1h = make_batch(a.step, a.batch, a.size, num_classes, num_old)
    other = torch.randn(images.shape, generator=torch.Generator().manual_seed(12345)).to(device)
    model = _unwrap(trainer.model)
    if trainer.model_old is not None:
        calibrate_norms_(trainer.model_old, other)
        trainer.model_old.eval()
        model.load_state_dict(trainer.model_old.state_dict(), strict=False)  # as load_step_ckpt (non-strict)
    else:
        calibrate_norms_(model, other)
    if trainer.pseudolabeler is not None:
        prime_localizer_(_unwrap(trainer.pseudolabeler)[-1], num_old)
    del other
    batch = (images.to(device), masks.to(device), l1h.to(device))
    build_rss = peak_rss_mb()
    build_s = time.perf_counter() - t0

    sync = torch.cuda.synchronize if device.type == "cuda" else None
    ops = OpProfile(a.op_profile)  # the timed iterations: marks a.warmup .. n

    def on_mark(k: int) -> None:
        if k == a.warmup:
            ops.start()
        elif k == n:
            ops.stop(a.iters)

    loader = TimedLoader(batch, n, sync, on_mark=on_mark)
    epoch = opts.pseudo_ep if a.step > 0 else 0
    gc.collect()
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    start_load = load_average()
    epoch_loss = trainer.train(cur_epoch=epoch, train_loader=loader)
    all_times, all_cpu = loader.iteration_times(), loader.cpu_times()
    times, cpu = all_times[a.warmup :], all_cpu[a.warmup :]
    stats = summarise(times)
    out = {
        "benchmark": "official_step",
        "official": str(root),
        "official_commit": git_commit(root),
        "written_against_commit": OFFICIAL_COMMIT,
        "backbone": opts.backbone,
        "output_stride": opts.output_stride,
        "size": a.size,
        "batch": a.batch,
        "step": a.step,
        "task": opts.task,
        "cur_epoch": epoch,
        "norm_act": opts.norm_act,
        "abn": abn,
        "abn_version": None if abn == "standin" else getattr(sys.modules.get("inplace_abn"), "__version__", None),
        "amp": "fp16" if trainer.scaler.is_enabled() else "none",
        "ddp": f"DistributedDataParallel, 1 process ({backend})",
        "official_argv": official_argv(a.step, a.size, a.batch, a.norm_act),
        "official_opts": {
            k: getattr(opts, k, None)
            for k in (
                "lr",
                "lr_head",
                "lr_pseudo",
                "lr_policy",
                "weight_decay",
                "loss_de",
                "l_seg",
                "alpha",
                "affinity",
                "pseudo_ep",
                "cam",
                "icarl_bkg",
                "bce",
                "weakly",
                "crop_size",
                "pooling",
                "batch_size",
            )
        },
        "threads": torch.get_num_threads(),
        "device": str(device),
        "iters": a.iters,
        "warmup": a.warmup,
        **stats,
        "images_per_s": a.batch / stats["median_s"],
        "cpu_s_median": statistics.median(cpu),
        "warmup_times_s": [round(t, 3) for t in all_times[: a.warmup]],
        "peak_rss_mb": round(peak_rss_mb(), 1),
        "build_peak_rss_mb": round(build_rss, 1),
        "build_s": round(build_s, 2),
        "epoch_loss": [float(v) for v in epoch_loss] if epoch_loss is not None else None,
        "notes": notes,
        "cpu_model": cpu_model(),
        "cpu_flags": cpu_flags(),
        "logical_cpus": os.cpu_count(),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "date": _dt.date.today().isoformat(),
        "time": _dt.datetime.now().strftime("%H:%M:%S"),
        "loadavg_start": start_load,
        "loadavg_end": load_average(),
    }
    if device.type == "cuda":
        out["cuda_max_memory_allocated_mb"] = round(torch.cuda.max_memory_allocated(device) / 2**20, 1)
        out["gpu"] = torch.cuda.get_device_name(device)
    import torch.distributed as dist

    dist.destroy_process_group()
    return out


def _human(r: dict) -> str:
    return "\n".join(
        [
            f"OFFICIAL {r['backbone']} {r['batch']}x{r['size']}^2 step {r['step']} norm_act={r['norm_act']} "
            f"abn={r['abn']} amp={r['amp']} threads={r['threads']}",
            f"  median {r['median_s']:.3f} s  (min {r['min_s']:.3f}, max {r['max_s']:.3f}, n={r['iters']})  "
            f"{r['images_per_s']:.2f} img/s  peak RSS {r['peak_rss_mb']:.0f} MB  cpu {r['cpu_s_median']:.2f} s/iter",
            f"  load {r['loadavg_start']} -> {r['loadavg_end']}  {r['cpu_model']} {r['cpu_flags']}  torch {r['torch']}",
            *(f"  note: {n}" for n in r["notes"]),
        ]
    )


def main(argv=None) -> int:
    a = parse_args(argv)
    try:
        r = run(a)
    except OfficialCodeError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(json.dumps(r) if a.json else _human(r))
    return 0


if __name__ == "__main__":
    with contextlib.suppress(BrokenPipeError):
        sys.exit(main())

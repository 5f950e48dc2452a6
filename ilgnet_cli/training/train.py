"""`ilgnet train`: fine-tune ILGNet on a partition, resumably, on CPU, one GPU or many (torchrun).

Recipes:

* ``paper``: the authors' Caffe solver of the partition's protocol (shared/ilgnet/solver:
  AVA1 base lr 1e-4, step 115,000, 475,000 iterations; AVA2 base lr 1e-5, step 13,325,
  533,000 iterations; both SGD with Caffe's momentum update, momentum 0.9, weight decay 2e-4,
  gamma 0.96, batch 48), per-layer multipliers from the prototxt (trunk 1/2, the new FC
  layers 10/20 for weights/biases; biases never decay), random 227 crop + mirror of the
  256x256 image, the protocol's mean image, fp32 (Caffe had no mixed precision).
* ``fast``: AdamW with fan-in-scaled learning rates: a layer's weights get
  ``lr * min(1, 128 / fan_in)``, so the FC layers on 200k and 376k inputs take
  proportionally small steps; base lr 1e-4, decoupled weight decay 0.05 on weights only (the
  same for every layer, whatever its lr), 3% linear warm-up then cosine decay to 0, label
  smoothing 0.1, batch 64, bf16 autocast on CUDA.

Validation never touches the test list: it is held out of train.txt (seeded, stratified) and
written to ``RUN_DIR/val.txt``, or read from ``val_list``. ``RUN_DIR/config.json`` records
everything that defines the run (the resolved solver included); ``resume`` refuses a run whose
configuration differs. A checkpoint set (``RUN_DIR/checkpoints/last/``: model.safetensors +
state.pt with optimizer, step, RNG states) is written atomically every ``checkpoint_every``
iterations and at the end; the best model by validation accuracy is ``RUN_DIR/best.safetensors``.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import json
import math
import os
import shutil
import time
import warnings
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch.utils.data import DataLoader, DistributedSampler

from ilgnet_cli._version import __version__
from ilgnet_cli.ava.records import available, read_label_list, write_label_list
from ilgnet_cli.ava.source import AvaImages
from ilgnet_cli.errors import DataError, UsageError
from ilgnet_cli.model.ilgnet import HEAD_LAYERS, ILGNet
from ilgnet_cli.model.provenance import UNKNOWN, Provenance, ids_digest
from ilgnet_cli.model.store import save_weights
from ilgnet_cli.model.transform import Crops, DecodeMode, Transform
from ilgnet_cli.predict.predictor import Predictor
from ilgnet_cli.runtime.distributed import Dist, init_distributed
from ilgnet_cli.runtime.fsutil import atomic_write_text
from ilgnet_cli.runtime.paths import AVA_SIZE_HINT, offline
from ilgnet_cli.runtime.text import strict_json

if TYPE_CHECKING:
    from ilgnet_cli.ava.prepare import PreparedImages
    from ilgnet_cli.model.transform import Mean


@dataclass(frozen=True)
class Solver:
    """One of the authors' solver.prototxt files (shared/ilgnet/solver/AVA{1,2}_solver.prototxt)."""

    base_lr: float
    stepsize: int
    max_iter: int
    test_interval: int
    test_iter: int
    lr_policy: str = "step"
    gamma: float = 0.96
    momentum: float = 0.9
    weight_decay: float = 2e-4
    batch: int = 48  # train.prototxt's data layer


SOLVERS = {
    "ava1": Solver(base_lr=1e-4, stepsize=115_000, max_iter=475_000, test_interval=4_750, test_iter=400),
    "ava2": Solver(base_lr=1e-5, stepsize=13_325, max_iter=533_000, test_interval=533, test_iter=533),
}


@dataclass(frozen=True)
class Recipe:
    name: str
    optimizer: str  # "caffe-sgd" or "adamw"
    base_lr: float
    momentum: float
    weight_decay: float
    schedule: str  # "step" or "cosine"
    step_size: int = 115_000
    gamma: float = 0.96
    warmup: float = 0.0  # fraction of iterations
    batch_size: int = 48
    label_smoothing: float = 0.0
    head_lr_mult: float = 10.0
    bias_lr_mult: float = 2.0
    fan_in_ref: int | None = None  # scale weight lrs by min(1, fan_in_ref / fan_in)
    max_iter: int | None = None  # default length of a run (None: one epoch)
    test_interval: int = 1000  # default validate-and-checkpoint interval
    bf16: bool = False  # bf16 autocast by default on CUDA


def paper_recipe(protocol: str) -> Recipe:
    """The authors' training of ``protocol`` (ava1 or ava2), as their solver and prototxt set it."""
    s = SOLVERS[protocol]
    return Recipe(name="paper", optimizer="caffe-sgd", base_lr=s.base_lr, momentum=s.momentum,
                  weight_decay=s.weight_decay, schedule=s.lr_policy, step_size=s.stepsize, gamma=s.gamma,
                  batch_size=s.batch, max_iter=s.max_iter, test_interval=s.test_interval)


RECIPES = {
    "paper": paper_recipe("ava1"),
    # Plain Adam(W) at one lr makes temp1/temp2 (200k and 376k inputs) explode: every weight
    # moves by ~lr, so their outputs move by lr * 1e6 (measured: loss 1.3 -> 600 in 30 steps).
    # So a layer's lr is base * min(1, 128 / fan_in): one Adam step moves each layer's output
    # by about the same small amount, whatever its width; the heads need no extra multiplier.
    "fast": Recipe(name="fast", optimizer="adamw", base_lr=1e-4, momentum=0.9, weight_decay=0.05, schedule="cosine",
                   warmup=0.03, batch_size=64, label_smoothing=0.1, head_lr_mult=1.0, bias_lr_mult=1.0,
                   fan_in_ref=128, bf16=True),
}


def resolve_recipe(name: str, protocol: str, *, lr: float | None = None) -> Recipe:
    """The recipe ``name`` for a partition of ``protocol`` (the paper recipe takes that protocol's solver)."""
    if name not in RECIPES:
        raise UsageError(f"unknown recipe {name!r} (choose {', '.join(RECIPES)})")
    recipe = paper_recipe(protocol) if name == "paper" else RECIPES[name]
    return recipe if lr is None else replace(recipe, base_lr=lr)


class CaffeSGD(torch.optim.Optimizer):
    """Caffe's SGD: ``v = momentum*v + lr*(g + wd*w); w -= v`` (lr inside the momentum)."""

    def __init__(self, params, lr: float, momentum: float, weight_decay: float) -> None:
        super().__init__(params, {"lr": lr, "momentum": momentum, "weight_decay": weight_decay})

    @torch.no_grad()
    def step(self, closure=None):  # noqa: D102 - torch API
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is None:
                    continue
                g = p.grad.add(p, alpha=group["weight_decay"]) if group["weight_decay"] else p.grad
                buf = self.state[p].get("momentum_buffer")
                if buf is None:
                    buf = self.state[p]["momentum_buffer"] = torch.zeros_like(p)
                buf.mul_(group["momentum"]).add_(g, alpha=group["lr"])
                p.sub_(buf)


def param_groups(model: ILGNet, recipe: Recipe) -> list[dict]:
    """Groups with Caffe's multipliers (trunk/head x weight/bias), and fan-in scaling if asked."""
    groups: dict[tuple, dict] = {}
    for name, module in model.parameterised_layers():
        head = name in HEAD_LAYERS
        fan_in = module.weight[0].numel()
        for is_bias, p in ((False, module.weight), (True, module.bias)):
            scale = 1.0
            if recipe.fan_in_ref and not is_bias:
                scale = min(1.0, recipe.fan_in_ref / fan_in)
            mult = (recipe.head_lr_mult if head else 1.0) * (recipe.bias_lr_mult if is_bias else 1.0) * scale
            g = groups.setdefault((head, is_bias, scale), {
                "params": [], "name": f"{'head' if head else 'trunk'}-{'bias' if is_bias else 'weight'}",
                "lr_mult": mult, "decay_mult": 0.0 if is_bias else 1.0,
            })
            g["params"].append(p)
    out = list(groups.values())
    for g in out:
        g["weight_decay"] = recipe.weight_decay * g["decay_mult"]
        if recipe.optimizer == "adamw":
            # AdamW decays by lr * weight_decay with the group's lr: undo the lr multiplier so that
            # every layer decays by base_lr * weight_decay (else temp1/temp2 would barely decay).
            g["weight_decay"] /= g["lr_mult"]
    return out


def lr_at(recipe: Recipe, step: int, total: int) -> float:
    if recipe.schedule == "step":
        return recipe.base_lr * recipe.gamma ** (step // recipe.step_size)
    warm = max(int(total * recipe.warmup), 2) if recipe.warmup else 0
    if step < warm:
        return recipe.base_lr * (step + 1) / warm
    progress = (step - warm) / max(1, total - warm)
    return recipe.base_lr * 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))


def make_optimizer(model: ILGNet, recipe: Recipe) -> torch.optim.Optimizer:
    groups = param_groups(model, recipe)
    if recipe.optimizer == "caffe-sgd":
        return CaffeSGD(groups, lr=recipe.base_lr, momentum=recipe.momentum, weight_decay=recipe.weight_decay)
    return torch.optim.AdamW(groups, lr=recipe.base_lr, weight_decay=recipe.weight_decay, betas=(0.9, 0.999))


# --------------------------------------------------------------------------- distributed


class _EpochSampler(DistributedSampler):
    """DistributedSampler that can start mid-epoch (resume) and hands out (index, epoch) pairs."""

    start = 0

    def __iter__(self):
        indices = list(super().__iter__())[self.start:]
        return iter((i, self.epoch) for i in indices)

    def __len__(self) -> int:
        return super().__len__() - self.start


class TrainingImages(torch.utils.data.Dataset):
    """The one training Dataset: (index, epoch) -> (random crop of the 256x256 image, label).

    The crop and mirror come from a generator seeded by (seed, epoch, index): the same run gives
    the same crops whatever the number of workers (needed for exact resume and DDP parity)."""

    def __init__(self, source: AvaImages, transform: Transform, seed: int) -> None:
        self.source, self.transform, self.seed = source, transform.with_(crops=Crops.RANDOM), seed

    def __len__(self) -> int:
        return len(self.source)

    def __getitem__(self, item: tuple[int, int]) -> tuple[torch.Tensor, int]:
        index, epoch = item
        rgb = self.source.resized(index, self.transform)
        rng = np.random.default_rng((self.seed, epoch, index))
        return torch.from_numpy(self.transform.blobs(rgb, rng)), self.source.label(index)


# --------------------------------------------------------------------------- config and state


@dataclass
class TrainConfig:
    partition: Path
    out: Path | None = None  # None: a new folder under $ILGNET_DATA/runs (the latest one with resume)
    images: Path | None = None
    prepared: Path | None = None
    init: str = "bvlc-googlenet"
    recipe: str = "paper"
    iters: int | None = None  # None: the recipe's (paper: the solver's max_iter), else epochs
    epochs: float | None = None
    batch_size: int | None = None
    lr: float | None = None
    dropout: float = 0.7
    device: str = "auto"
    amp: bool | None = None  # None: the recipe's default (paper: fp32; fast: bf16 on CUDA)
    workers: int = 4
    seed: int = 0
    checkpoint_every: int | None = None  # None: the recipe's test interval
    val_list: Path | None = None
    val_size: int = 2000  # held out of train.txt, at most a tenth of it; 0: no validation
    mean: str | None = None  # None: the protocol's mean image (ava1 or ava2)
    draft: bool = False  # JPEG draft decoding; the authors decoded in full
    deterministic: bool = False
    resume: bool = False
    offline: bool = False  # never download the ImageNet trunk


# What defines a run's result: a resumed run must match these exactly.
DEFINING = ("partition_kind", "protocol", "train_list_sha256", "train_ids_sha256", "val", "decode", "init", "recipe",
            "iters",
            "batch_size", "dropout", "seed", "mean", "precision")


@dataclass
class RunSetup:
    """Everything train() resolved before the first step."""

    run_dir: Path
    recipe: Recipe
    total: int
    global_batch: int
    every: int
    amp: bool
    mean: Mean
    train_items: list[tuple[int, int]]
    val_items: list[tuple[int, int]]
    cache: PreparedImages | None
    images: Path
    config: dict
    transform: Transform
    provenance: Provenance = UNKNOWN  # set once the initial weights are known
    ids: np.ndarray | None = None  # every AVA id the weights will have seen


def _sha256_items(items: list[tuple[int, int]]) -> str:
    return hashlib.sha256("".join(f"{i}.jpg {label}\n" for i, label in items).encode()).hexdigest()


def _new_run_dir(cfg: TrainConfig, dd: Dist) -> Path:
    """The run folder: --out, else the latest run of this partition (resume) or a new one."""
    from ilgnet_cli.runtime.paths import runs_dir

    if cfg.out is not None:
        return Path(cfg.out)
    prefix = f"{cfg.partition.name}-"
    if cfg.resume:
        runs = sorted(p for p in runs_dir().glob(f"{prefix}*") if _checkpoint_dir(p) is not None)
        if not runs:
            raise DataError(f"nothing to resume: no run of {cfg.partition.name} with a checkpoint in {runs_dir()}")
        return runs[-1]
    name = [prefix + _dt.datetime.now().strftime("%Y%m%d-%H%M%S")]
    if dd.world > 1:  # every rank must write into the folder rank 0 chose
        dist.broadcast_object_list(name, src=0)
    return runs_dir() / name[0]


def _split_validation(cfg: TrainConfig, run_dir: Path, items: list[tuple[int, int]]
                      ) -> tuple[list[tuple[int, int]], list[tuple[int, int]], dict]:
    """(train, val, how): val from val_list, from a resumed run's val.txt, or held out of train.txt."""
    from ilgnet_cli.ava.partition import holdout

    saved = run_dir / "val.txt"
    how: dict[str, str | int]
    if cfg.val_list is not None:
        val = read_label_list(cfg.val_list)
        how = {"source": "list", "file": str(cfg.val_list)}
    elif cfg.resume and saved.exists():
        val = read_label_list(saved)
        how = {"source": "held out of train.txt", "size": cfg.val_size}
    else:
        size = min(cfg.val_size, len(items) // 10)
        _, val = holdout(items, size, cfg.seed)
        how = {"source": "held out of train.txt", "size": cfg.val_size}
    val_ids = {i for i, _ in val}
    train_items = [it for it in items if it[0] not in val_ids]
    return train_items, val, {**how, "n": len(val), "sha256": _sha256_items(val)}


def _check_resume_config(run_dir: Path, config: dict) -> None:
    try:
        old = json.loads((run_dir / "config.json").read_text())
    except (OSError, ValueError, RecursionError):
        old = None
    if not isinstance(old, dict):
        raise DataError(f"cannot resume {run_dir}: its config.json is missing or unreadable")
    diffs = [f"{k}: {_short(old.get(k))} -> {_short(config.get(k))}" for k in DEFINING if old.get(k) != config.get(k)]
    if diffs:
        raise UsageError(f"cannot resume {run_dir}: it was started with other settings ({'; '.join(diffs[:4])}"
                         f"{' ...' if len(diffs) > 4 else ''}); use the same settings or a new run folder")


def _short(value: object) -> str:
    if isinstance(value, dict):
        old = value
        value = ", ".join(f"{k}={v}" for k, v in old.items() if k != "sha256")
    text = str(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _setup(cfg: TrainConfig, dd: Dist, cuda: bool) -> RunSetup:
    from ilgnet_cli.ava.partition import PROTOCOL, read_kind
    from ilgnet_cli.ava.prepare import decode_mode
    from ilgnet_cli.model.store import resolve_mean

    kind = read_kind(cfg.partition)
    protocol = PROTOCOL.get(kind or "", "ava1")
    recipe = resolve_recipe(cfg.recipe, protocol, lr=cfg.lr)
    global_batch = cfg.batch_size or recipe.batch_size
    if global_batch % dd.world:
        raise UsageError(f"batch size {global_batch} is not divisible by the {dd.world} processes")
    amp = cuda and (recipe.bf16 if cfg.amp is None else cfg.amp)
    mean = resolve_mean(cfg.mean or protocol)
    decode = decode_mode(cfg.draft)

    cache = None
    if cfg.prepared is not None:
        from ilgnet_cli.ava.prepare import PreparedImages

        cache = PreparedImages(cfg.prepared)
        if cache.decode != decode:
            raise UsageError(f"{cfg.prepared} was prepared with {cache.decode} decoding but this run uses {decode}")
    images = Path(cfg.images or cfg.partition)
    train_list = cfg.partition / "train.txt"
    if not train_list.exists():
        raise DataError(f"no train.txt in {cfg.partition}")
    listed = read_label_list(train_list)
    run_dir = _new_run_dir(cfg, dd)
    items, val_items, val_how = _split_validation(cfg, run_dir, available(listed, images, cache))
    val_items = available(val_items, images, cache)
    if len(items) < global_batch:
        hint = ("; run 'ilgnet prepare' again" if cache else
                f"; get them with 'ilgnet download ava' ({AVA_SIZE_HINT}) or give --images DIR")
        raise DataError(f"only {len(items)} training images found in {cache.folder if cache else images} "
                        f"({len(listed)} listed; batch {global_batch}){hint}")
    steps_per_epoch = len(items) // global_batch
    total = cfg.iters or (recipe.max_iter if cfg.epochs is None and recipe.max_iter else
                          max(1, int(math.ceil((cfg.epochs or 1.0) * steps_per_epoch))))
    config = {
        "ilgnet_version": __version__, "torch_version": torch.__version__,
        "partition": str(cfg.partition), "partition_kind": kind, "protocol": protocol,
        "train_list_sha256": _sha256_items(listed), "train_images": len(items), "val": val_how,
        # the images actually present and trained on: a resume after more arrived would train on others
        "train_ids_sha256": ids_digest(i for i, _ in items),
        "images": str(cfg.images) if cfg.images else None, "prepared": str(cfg.prepared) if cfg.prepared else None,
        "decode": decode, "init": cfg.init, "recipe": asdict(recipe),
        "solver": {"base_lr": recipe.base_lr, "lr_policy": recipe.schedule, "stepsize": recipe.step_size,
                   "gamma": recipe.gamma, "momentum": recipe.momentum, "weight_decay": recipe.weight_decay,
                   "max_iter": recipe.max_iter, "batch": global_batch},
        "iters": total, "batch_size": global_batch, "dropout": cfg.dropout, "seed": cfg.seed,
        "mean": mean.describe(), "mean_sha256": mean.digest, "precision": "bf16-autocast" if amp else "fp32",
        "world": dd.world, "workers": cfg.workers, "deterministic": cfg.deterministic,
    }
    if cfg.resume:
        _check_resume_config(run_dir, config)
    every = cfg.checkpoint_every or min(recipe.test_interval, total)
    transform = Transform(mean, decode=DecodeMode.DRAFT if cfg.draft else DecodeMode.EXACT)
    return RunSetup(run_dir=run_dir, recipe=recipe, total=total, global_batch=global_batch, every=every, amp=amp,
                    mean=mean, train_items=items, val_items=val_items, cache=cache, images=images, config=config,
                    transform=transform)


def _save_checkpoint(run_dir: Path, model: ILGNet, optimizer: torch.optim.Optimizer, step: int, state: dict,
                     mean, provenance: Provenance | None = None, extra: dict | None = None) -> Path:
    """Write checkpoints/last atomically: a new folder, then renames (old kept until done)."""
    ckpt_root = run_dir / "checkpoints"
    new, last, old = ckpt_root / f".tmp-{step}", ckpt_root / "last", ckpt_root / "last.old"
    shutil.rmtree(new, ignore_errors=True)
    new.mkdir(parents=True)
    save_weights(new / "model.safetensors", model.state_dict(), mean, metadata={"step": str(step)},
                 provenance=provenance, extra=extra)
    full = {"step": step, "optimizer": optimizer.state_dict(), "torch_rng": torch.get_rng_state(), **state}
    if torch.cuda.is_available():
        full["cuda_rng"] = torch.cuda.get_rng_state_all()
    torch.save(full, new / "state.pt")
    if last.exists():
        shutil.rmtree(old, ignore_errors=True)
        os.replace(last, old)
    os.replace(new, last)
    shutil.rmtree(old, ignore_errors=True)
    return last


def _checkpoint_dir(run_dir: Path) -> Path | None:
    ckpt_root = run_dir / "checkpoints"
    for name in ("last", "last.old"):  # last.old survives a crash between the two renames
        if (ckpt_root / name / "state.pt").exists() and (ckpt_root / name / "model.safetensors").exists():
            return ckpt_root / name
    return None


TRUNK_MISSING = ("ImageNet GoogLeNet (bvlc-googlenet, 51 MB) is not installed{why}: fetch it with 'ilgnet weights "
                 "fetch bvlc-googlenet', import a copy with 'ilgnet weights import bvlc_googlenet.caffemodel', "
                 "or train from scratch with --init random")


def _init_model(cfg: TrainConfig, model: ILGNet) -> tuple[str, Provenance | None, np.ndarray | None]:
    """Initial weights -> (what, their provenance (None: random), the AVA ids they saw)."""
    from ilgnet_cli.model import store

    gen = torch.Generator().manual_seed(cfg.seed)
    model.reset_parameters(gen)
    if cfg.init == "random":
        return "random (Caffe fillers)", None, None
    name = cfg.init
    if store.installed(name) is None and not (Path(name).exists() and "/" in name or name.endswith(".safetensors")):
        if name != "bvlc-googlenet":
            raise store.WeightsError(f"initial weights {name!r}: not installed and not a file")
        if cfg.offline or offline():
            raise store.WeightsError(TRUNK_MISSING.format(why=" and downloads are off"))
        try:
            store.fetch(name, retries=2)
        except store.WeightsError as exc:
            raise store.WeightsError(TRUNK_MISSING.format(why=f" and could not be fetched ({exc})")) from None
    _, path = store.resolve(name)
    state, meta = store.read_weights(path)
    store.check_state(state, full=meta.get("architecture") == store.ARCH_FULL)
    missing, unexpected = model.load_state_dict(state, strict=False)
    assert not unexpected
    rec = store.installed(name) if store.NAME_RE.fullmatch(name) else None
    prov = Provenance.loads(meta.get("provenance"))
    if not prov.known and rec is not None:
        prov = rec.trained_on
    from ilgnet_cli.model.provenance import IDS_TENSOR

    ids = store._read_extra(path, IDS_TENSOR)
    return f"{name} ({len(state)} tensors; {len(missing)} fresh)", prov, ids


def _resume(run_dir: Path, model: ILGNet, optimizer: torch.optim.Optimizer, cuda: bool) -> tuple[int, float, str]:
    """Load the last checkpoint set into ``model`` and ``optimizer`` -> (step, best, where)."""
    from ilgnet_cli.model.store import read_weights

    ckpt = _checkpoint_dir(run_dir)
    if ckpt is None:
        raise DataError(f"nothing to resume: no checkpoint in {run_dir / 'checkpoints'}")
    state, _ = read_weights(ckpt / "model.safetensors")
    try:
        model.load_state_dict(state)
        # Only tensors and plain containers: a state.pt that needs anything else is refused, never run.
        with warnings.catch_warnings():  # a foreign pickle protocol is one refusal line, not a torch warning too
            warnings.simplefilter("ignore", UserWarning)
            saved = torch.load(ckpt / "state.pt", map_location="cpu", weights_only=True)
        optimizer.load_state_dict(saved["optimizer"])
        torch.set_rng_state(saved["torch_rng"])
        if cuda and "cuda_rng" in saved:
            torch.cuda.set_rng_state_all(saved["cuda_rng"])
        return int(saved["step"]), float(saved.get("best", -1.0)), str(ckpt)
    except Exception as exc:  # noqa: BLE001 - unpickling, missing keys, wrong shapes: all one answer
        raise DataError(f"cannot resume from {ckpt}: its checkpoint is damaged or not ilgnet's "
                        f"({type(exc).__name__}); start a new run folder") from None


def _loader(ds: TrainingImages, sampler: _EpochSampler, batch: int, cfg: TrainConfig, cuda: bool) -> DataLoader:
    return DataLoader(ds, batch_size=batch, sampler=sampler, num_workers=cfg.workers,
                      pin_memory=cuda, persistent_workers=cfg.workers > 0, drop_last=True,
                      prefetch_factor=4 if cfg.workers > 0 else None)


def validate(model: torch.nn.Module, source: AvaImages, transform: Transform, device: torch.device, batch: int,
             workers: int, amp: bool) -> float:
    """Accuracy on ``source`` (rank 0 alone: no gathering), in the run's precision."""
    predictor = Predictor(model, transform, device=device, batch_size=batch, workers=workers, autocast=amp)
    correct = total = 0
    for pred in predictor.predict(source):
        total += 1
        if pred.score is not None:
            correct += int((pred.score > 0.5) == bool(source.label(pred.index)))
    return correct / max(1, total)


def _step_of(line: str) -> float:
    """The step of a metrics.jsonl line; a line that is not one of ours is dropped (inf)."""
    try:
        record = json.loads(line)
        step = record.get("step", 0) if isinstance(record, dict) else None
    except (ValueError, RecursionError):
        return float("inf")
    return step if isinstance(step, int) else float("inf")


class _RunLog:
    """metrics.jsonl (and TensorBoard when installed), written by rank 0 only."""

    def __init__(self, run_dir: Path, step: int, resume: bool) -> None:
        self.path = run_dir / "metrics.jsonl"
        if resume and self.path.exists():  # a resumed run drops what came after its checkpoint
            keep = [ln for ln in self.path.read_text(errors="replace").splitlines() if _step_of(ln) <= step]
            atomic_write_text(self.path, "".join(ln + "\n" for ln in keep))
        self.writer = None
        try:
            from torch.utils.tensorboard import SummaryWriter

            self.writer = SummaryWriter(str(run_dir / "tb"))
        except Exception:  # noqa: BLE001 - tensorboard is optional
            self.writer = None

    def write(self, record: dict) -> None:
        with self.path.open("a") as fh:
            fh.write(strict_json(record) + "\n")
        if self.writer is not None:
            for key in ("loss", "lr", "val_accuracy"):
                if key in record:
                    self.writer.add_scalar(f"{'val' if key.startswith('val') else 'train'}/{key}", record[key],
                                           record["step"])

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()


def _validate_and_checkpoint(run: RunSetup, model: ILGNet, optimizer: torch.optim.Optimizer, step: int, best: float,
                             val_ds: AvaImages | None, device: torch.device, per_rank: int, cfg: TrainConfig,
                             log: _RunLog) -> float:
    """Rank 0: validate, keep best.safetensors, write the checkpoint set -> the new best accuracy."""
    if val_ds is None:
        # No validation images: the latest model is the best we know.
        save_weights(run.run_dir / "best.safetensors", model.state_dict(), run.mean, metadata={"step": str(step)},
                     provenance=run.provenance, extra=_ids_extra(run))
    else:
        val_acc = validate(model, val_ds, run.transform, device, per_rank, cfg.workers, run.amp)
        log.write({"step": step, "val_accuracy": val_acc, "val_n": len(val_ds)})
        if val_acc > best:
            best = val_acc
            save_weights(run.run_dir / "best.safetensors", model.state_dict(), run.mean,
                         metadata={"step": str(step), "val_accuracy": f"{val_acc:.6f}"},
                         provenance=run.provenance, extra=_ids_extra(run))
    _save_checkpoint(run.run_dir, model, optimizer, step, {"best": best, "seed": cfg.seed}, run.mean,
                     run.provenance, _ids_extra(run))
    return best


def _ids_extra(run: RunSetup) -> dict[str, np.ndarray]:
    from ilgnet_cli.model.provenance import IDS_TENSOR

    return {} if run.ids is None else {IDS_TENSOR: run.ids}


def train(cfg: TrainConfig, progress: Callable[[dict], None] | None = None) -> dict:
    """Run (or resume) training; returns a summary. Works alone or under torchrun."""
    from ilgnet_cli.runtime.device import exact_fp32, pick_device

    dd = init_distributed(pick_device(cfg.device))
    device = dd.device
    cuda = device.type == "cuda"
    exact_fp32(device)  # the paper recipe is Caffe's fp32; --amp is the mixed precision, asked for
    if cfg.deterministic:
        torch.use_deterministic_algorithms(True)
    run = _setup(cfg, dd, cuda)
    recipe, total, per_rank = run.recipe, run.total, run.global_batch // dd.world
    train_ds = TrainingImages(AvaImages(run.train_items, run.images, run.cache), run.transform, cfg.seed)
    val_ds = AvaImages(run.val_items, run.images, run.cache) if run.val_items else None
    steps_per_epoch = len(train_ds) // run.global_batch

    torch.manual_seed(cfg.seed + dd.rank)
    model = ILGNet(dropout=cfg.dropout)
    init_note, init_prov, init_ids = _init_model(cfg, model)
    own = np.asarray([i for i, _ in run.train_items], dtype=np.int64)
    ids = np.unique(np.concatenate([own, np.asarray(init_ids, dtype=np.int64).reshape(-1)]) if init_ids is not None
                    else own)
    run.provenance = Provenance(
        dataset="partition", summary=f"partition {cfg.partition.name}: {len(own):,} AVA training images",
        ids_sha256=ids_digest(ids.tolist()), ids_count=int(len(ids)), ids_ref="tensor",
        partition=run.config.get("partition_kind") or cfg.partition.name, mean=run.mean.digest,
        bases=(init_prov,) if init_prov is not None else ())
    run.ids = ids
    model = model.to(device).to(memory_format=torch.channels_last)
    optimizer = make_optimizer(model, recipe)
    step, best, history_note = 0, -1.0, ""
    if cfg.resume:
        step, best, where = _resume(run.run_dir, model, optimizer, cuda)
        history_note, init_note = f"resumed at step {step}", f"checkpoint {where}"
    ddp_model: torch.nn.Module = model
    if dd.world > 1:
        ddp_model = torch.nn.parallel.DistributedDataParallel(model, device_ids=[device.index] if cuda else None)

    log = None
    if dd.main:
        run.run_dir.mkdir(parents=True, exist_ok=True)
        write_label_list(run.run_dir / "val.txt", run.val_items)
        atomic_write_text(run.run_dir / "config.json", json.dumps(run.config, indent=2) + "\n")
        log = _RunLog(run.run_dir, step, cfg.resume)
        if progress:
            progress({"event": "start", "run_dir": str(run.run_dir), "total": total, "step": step,
                      "val_n": len(run.val_items), "train_n": len(train_ds)})

    sampler = _EpochSampler(train_ds, num_replicas=dd.world, rank=dd.rank, shuffle=True,
                            seed=cfg.seed, drop_last=True)
    ddp_model.train()
    t0, seen, last_log = time.monotonic(), 0, time.monotonic()
    data_wait = 0.0
    while step < total:
        epoch, offset = divmod(step, steps_per_epoch)
        sampler.set_epoch(epoch)
        sampler.start = offset * per_rank
        t_data = time.monotonic()
        for x, y in _loader(train_ds, sampler, per_rank, cfg, cuda):
            data_wait += time.monotonic() - t_data
            lr = lr_at(recipe, step, total)
            for g in optimizer.param_groups:
                g["lr"] = lr * g["lr_mult"]
            x = x.to(device, non_blocking=cuda).contiguous(memory_format=torch.channels_last)
            y = y.to(device, non_blocking=cuda)
            # Dropout masks depend on (seed, step, rank) only, not on how much of the global
            # RNG stream data loaders or validation used: a resumed run replays them exactly.
            torch.manual_seed(cfg.seed * 1_000_003 + step * 7_919 + dd.rank)
            with torch.autocast("cuda", dtype=torch.bfloat16, enabled=run.amp):
                logits = ddp_model(x)
            loss = F.cross_entropy(logits.float(), y, label_smoothing=recipe.label_smoothing)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            step += 1
            seen += run.global_batch
            loss_value = loss.detach()
            if dd.world > 1:
                dist.all_reduce(loss_value)
                loss_value /= dd.world
            elapsed = time.monotonic() - t0
            record = {"step": step, "epoch": epoch, "loss": float(loss_value), "lr": lr,
                      "images_per_s": seen / max(elapsed, 1e-9), "data_wait_share": data_wait / max(elapsed, 1e-9)}
            if log is not None:
                log.write(record)
                if progress and (time.monotonic() - last_log > 0.5 or step == total):
                    progress({**record, "total": total})
                    last_log = time.monotonic()
            if step % run.every == 0 or step == total:
                if log is not None:
                    best = _validate_and_checkpoint(run, model, optimizer, step, best, val_ds, device, per_rank, cfg,
                                                    log)
                if dd.world > 1:
                    dist.barrier()
            if step >= total:
                break
            t_data = time.monotonic()
    if log is not None:
        log.close()
    summary = {"steps": step, "total": total, "best_val_accuracy": best if best >= 0 else None,
               "val_n": len(run.val_items), "run_dir": str(run.run_dir), "world": dd.world, "init": init_note,
               "note": history_note, "images_per_s": seen / max(time.monotonic() - t0, 1e-9)}
    dd.end()
    return summary

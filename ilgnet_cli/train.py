"""`ilgnet train`: fine-tune ILGNet on a partition, resumably, on CPU, one GPU or many (torchrun).

Recipes:

* ``paper``: the authors' Caffe solver (shared/ilgnet/solver): SGD with Caffe's momentum
  update (the learning rate is applied before momentum, as Caffe does), base lr 1e-4,
  momentum 0.9, weight decay 2e-4, per-layer multipliers from the prototxt (trunk 1/2, the
  new FC layers 10/20 for weights/biases; biases never decay), step policy gamma 0.96 every
  115,000 iterations, batch 48, random 227 crop + mirror of the 256x256 image.
* ``fast``: AdamW with fan-in-scaled learning rates: a layer's weights get
  ``lr * min(1, 128 / fan_in)``, so the FC layers on 200k and 376k inputs take
  proportionally small steps; base lr 1e-4, weight decay 0.05 on weights
  only, 3% linear warm-up then cosine decay to 0, label smoothing 0.1, batch 64, bf16 autocast
  on CUDA (see README for why).

A checkpoint set (``RUN_DIR/checkpoints/last/``: model.safetensors + state.pt with optimizer,
step, RNG states) is written atomically every ``--checkpoint-every`` iterations and at the
end; ``--resume`` continues the exact schedule and data order. The best model by validation
accuracy is kept as ``RUN_DIR/best.safetensors``.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch.utils.data import DataLoader, DistributedSampler

from ilgnet_cli.ava import PartitionDataset, available
from ilgnet_cli.distributed import init_distributed
from ilgnet_cli.model import HEAD_LAYERS, ILGNet, score_from_logits
from ilgnet_cli.store import save_weights


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


RECIPES = {
    "paper": Recipe("paper", "caffe-sgd", 1e-4, 0.9, 2e-4, "step", 115_000, 0.96, 0.0, 48, 0.0),
    # Plain Adam(W) at one lr makes temp1/temp2 (200k and 376k inputs) explode: every weight
    # moves by ~lr, so their outputs move by lr * 1e6 (measured: loss 1.3 -> 600 in 30 steps).
    # So a layer's lr is base * min(1, 128 / fan_in): one Adam step moves each layer's output
    # by about the same small amount, whatever its width; the heads need no extra multiplier.
    "fast": Recipe("fast", "adamw", 1e-4, 0.9, 0.05, "cosine", warmup=0.03, batch_size=64, label_smoothing=0.1,
                   head_lr_mult=1.0, bias_lr_mult=1.0, fan_in_ref=128),
}


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
    """DistributedSampler that can start mid-epoch (resume) and tells the dataset its epoch."""

    start = 0

    def __iter__(self):
        indices = list(super().__iter__())[self.start:]
        return iter((i, self.epoch) for i in indices)

    def __len__(self) -> int:
        return super().__len__() - self.start


class _EpochDataset(torch.utils.data.Dataset):
    def __init__(self, base: PartitionDataset) -> None:
        self.base = base

    def __len__(self) -> int:
        return len(self.base)

    def __getitem__(self, item: tuple[int, int]):
        index, epoch = item
        self.base.epoch = epoch  # per item: persistent workers never see a stale epoch
        return self.base[index]


# --------------------------------------------------------------------------- config and state


@dataclass
class TrainConfig:
    partition: Path
    out: Path
    images: Path | None = None
    prepared: Path | None = None
    init: str = "bvlc-googlenet"
    recipe: str = "paper"
    iters: int | None = None
    epochs: float | None = None
    batch_size: int | None = None
    lr: float | None = None
    dropout: float = 0.7
    device: str = "auto"
    amp: bool | None = None  # default: on for CUDA
    workers: int = 4
    seed: int = 0
    checkpoint_every: int = 1000
    val_list: Path | None = None
    val_max: int | None = 2000
    mean: str = "ava1"
    deterministic: bool = False
    resume: bool = False
    extra: dict = field(default_factory=dict)


def _save_checkpoint(run_dir: Path, model: ILGNet, optimizer: torch.optim.Optimizer, step: int, state: dict,
                     mean_bgr: tuple[float, float, float]) -> Path:
    """Write checkpoints/last atomically: a new folder, then renames (old kept until done)."""
    ckpt_root = run_dir / "checkpoints"
    new, last, old = ckpt_root / f".tmp-{step}", ckpt_root / "last", ckpt_root / "last.old"
    shutil.rmtree(new, ignore_errors=True)
    new.mkdir(parents=True)
    save_weights(new / "model.safetensors", model.state_dict(), mean_bgr, metadata={"step": str(step)})
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


def _init_model(cfg: TrainConfig, model: ILGNet) -> str:
    from ilgnet_cli import store

    gen = torch.Generator().manual_seed(cfg.seed)
    model.reset_parameters(gen)
    if cfg.init == "random":
        return "random (Caffe fillers)"
    name = cfg.init
    if store.installed(name) is None and not Path(name).exists():
        if name == "bvlc-googlenet":
            store.fetch(name)
        else:
            raise store.WeightsError(f"--init {name!r}: not installed and not a file")
    _, path = store.resolve(name)
    state, meta = store.read_weights(path)
    store.check_state(state, full=meta.get("architecture") == store.ARCH_FULL)
    missing, unexpected = model.load_state_dict(state, strict=False)
    assert not unexpected
    return f"{name} ({len(state)} tensors; {len(missing)} fresh)"


def _loader(ds: PartitionDataset, sampler: _EpochSampler, batch: int, cfg: TrainConfig, cuda: bool) -> DataLoader:
    return DataLoader(_EpochDataset(ds), batch_size=batch, sampler=sampler, num_workers=cfg.workers,
                      pin_memory=cuda, persistent_workers=cfg.workers > 0, drop_last=True,
                      prefetch_factor=4 if cfg.workers > 0 else None)


@torch.no_grad()
def validate(model: torch.nn.Module, ds: PartitionDataset, device: torch.device, batch: int, workers: int,
             amp: bool) -> float:
    was_training = model.training
    model.eval()
    loader = DataLoader(ds, batch_size=batch, num_workers=workers)
    correct = total = 0
    for x, y in loader:
        x = x.to(device).contiguous(memory_format=torch.channels_last)
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=amp):
            p = score_from_logits(model(x))
        correct += int(((p > 0.5).long().cpu() == y).sum())
        total += len(y)
    model.train(was_training)
    return correct / max(1, total)


def train(cfg: TrainConfig, progress: Callable[[dict], None] | None = None) -> dict:
    """Run (or resume) training; returns a summary. Works alone or under torchrun."""
    from ilgnet_cli.scoring import pick_device
    from ilgnet_cli.store import resolve_mean

    dd = init_distributed(pick_device(cfg.device))
    device = dd.device
    cuda = device.type == "cuda"
    amp = cuda if cfg.amp is None else (cfg.amp and cuda)
    if cfg.deterministic:
        torch.use_deterministic_algorithms(True)
    recipe = RECIPES[cfg.recipe]
    if cfg.lr is not None:
        recipe = Recipe(**{**asdict(recipe), "base_lr": cfg.lr})
    global_batch = cfg.batch_size or recipe.batch_size
    if global_batch % dd.world:
        raise ValueError(f"batch size {global_batch} is not divisible by the {dd.world} processes")
    per_rank = global_batch // dd.world
    mean_bgr = resolve_mean(cfg.mean)

    cache = None
    if cfg.prepared is not None:
        from ilgnet_cli.prepare import PreparedImages

        cache = PreparedImages(cfg.prepared)
    images = cfg.images or cfg.partition
    train_ds = PartitionDataset(cfg.partition / "train.txt", images, mean_bgr, train=True, seed=cfg.seed, cache=cache)
    train_ds.items = available(train_ds.items, images, cache)
    if len(train_ds) < global_batch:
        raise ValueError(f"only {len(train_ds)} training images found (batch {global_batch})")
    val_path = cfg.val_list or cfg.partition / "test.txt"
    val_ds = None
    if val_path.exists():
        val_ds = PartitionDataset(val_path, images, mean_bgr, cache=cache)
        val_ds.items = available(val_ds.items, images, cache)
        if cfg.val_max and len(val_ds.items) > cfg.val_max:
            pick = np.random.default_rng(0).choice(len(val_ds.items), cfg.val_max, replace=False)
            val_ds.items = [val_ds.items[i] for i in sorted(pick)]

    steps_per_epoch = len(train_ds) // global_batch
    total = cfg.iters or max(1, int(math.ceil((cfg.epochs or 1.0) * steps_per_epoch)))

    torch.manual_seed(cfg.seed + dd.rank)
    model = ILGNet(dropout=cfg.dropout)
    init_note = _init_model(cfg, model)
    model = model.to(device).to(memory_format=torch.channels_last)
    optimizer = make_optimizer(model, recipe)
    run_dir = cfg.out
    step, best, history_note = 0, -1.0, ""
    if cfg.resume:
        from ilgnet_cli.store import read_weights

        ckpt = _checkpoint_dir(run_dir)
        if ckpt is None:
            raise ValueError(f"--resume: no checkpoint in {run_dir / 'checkpoints'}")
        state, _ = read_weights(ckpt / "model.safetensors")
        model.load_state_dict(state)
        saved = torch.load(ckpt / "state.pt", map_location="cpu", weights_only=True)
        optimizer.load_state_dict(saved["optimizer"])
        step, best = int(saved["step"]), float(saved.get("best", -1.0))
        torch.set_rng_state(saved["torch_rng"])
        if cuda and "cuda_rng" in saved:
            torch.cuda.set_rng_state_all(saved["cuda_rng"])
        history_note = f"resumed at step {step}"
        init_note = f"checkpoint {ckpt}"
    ddp_model = model
    if dd.world > 1:
        ddp_model = torch.nn.parallel.DistributedDataParallel(model, device_ids=[device.index] if cuda else None)

    metrics_path = run_dir / "metrics.jsonl"
    writer = None
    if dd.main:
        run_dir.mkdir(parents=True, exist_ok=True)
        if cfg.resume and metrics_path.exists():
            keep = [ln for ln in metrics_path.read_text().splitlines() if json.loads(ln).get("step", 0) <= step]
            metrics_path.write_text("".join(ln + "\n" for ln in keep))
        (run_dir / "config.json").write_text(json.dumps({**{k: str(v) if isinstance(v, Path) else v
                                                            for k, v in asdict(cfg).items()},
                                                         "recipe_values": asdict(recipe), "world": dd.world,
                                                         "init": init_note}, indent=2))
        try:
            from torch.utils.tensorboard import SummaryWriter

            writer = SummaryWriter(str(run_dir / "tb"))
        except Exception:  # noqa: BLE001 - tensorboard is optional
            writer = None

    sampler = _EpochSampler(train_ds, num_replicas=dd.world, rank=dd.rank, shuffle=True, seed=cfg.seed,
                            drop_last=True)
    loader = None
    ddp_model.train()
    t0, seen, last_log = time.monotonic(), 0, time.monotonic()
    data_wait = 0.0
    while step < total:
        epoch, offset = divmod(step, steps_per_epoch)
        sampler.set_epoch(epoch)
        sampler.start = offset * per_rank
        loader = _loader(train_ds, sampler, per_rank, cfg, cuda)
        t_data = time.monotonic()
        for x, y in loader:
            data_wait += time.monotonic() - t_data
            lr = lr_at(recipe, step, total)
            for g in optimizer.param_groups:
                g["lr"] = lr * g["lr_mult"]
            x = x.to(device, non_blocking=cuda).contiguous(memory_format=torch.channels_last)
            y = y.to(device, non_blocking=cuda)
            # Dropout masks depend on (seed, step, rank) only, not on how much of the global
            # RNG stream data loaders or validation used: a resumed run replays them exactly.
            torch.manual_seed(cfg.seed * 1_000_003 + step * 7_919 + dd.rank)
            with torch.autocast("cuda", dtype=torch.bfloat16, enabled=amp):
                logits = ddp_model(x)
            loss = F.cross_entropy(logits.float(), y, label_smoothing=recipe.label_smoothing)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            step += 1
            seen += global_batch
            loss_value = loss.detach()
            if dd.world > 1:
                dist.all_reduce(loss_value)
                loss_value /= dd.world
            elapsed = time.monotonic() - t0
            record = {"step": step, "epoch": epoch, "loss": float(loss_value), "lr": lr,
                      "images_per_s": seen / max(elapsed, 1e-9), "data_wait_share": data_wait / max(elapsed, 1e-9)}
            if dd.main:
                with metrics_path.open("a") as fh:
                    fh.write(json.dumps(record) + "\n")
                if writer is not None:
                    writer.add_scalar("train/loss", record["loss"], step)
                    writer.add_scalar("train/lr", lr, step)
                if progress and (time.monotonic() - last_log > 0.5 or step == total):
                    progress({**record, "total": total})
                    last_log = time.monotonic()
            if step % cfg.checkpoint_every == 0 or step == total:
                val_acc = None
                if dd.main:
                    if val_ds is None or not len(val_ds):
                        # No validation images: the latest model is the best we know.
                        save_weights(run_dir / "best.safetensors", model.state_dict(), mean_bgr,
                                     metadata={"step": str(step)})
                    else:
                        val_acc = validate(model, val_ds, device, per_rank, cfg.workers, amp)
                        with metrics_path.open("a") as fh:
                            fh.write(json.dumps({"step": step, "val_accuracy": val_acc, "val_n": len(val_ds)}) + "\n")
                        if writer is not None:
                            writer.add_scalar("val/accuracy", val_acc, step)
                        if val_acc > best:
                            best = val_acc
                            save_weights(run_dir / "best.safetensors", model.state_dict(), mean_bgr,
                                         metadata={"step": str(step), "val_accuracy": f"{val_acc:.6f}"})
                    _save_checkpoint(run_dir, model, optimizer, step, {"best": best, "seed": cfg.seed}, mean_bgr)
                if dd.world > 1:
                    dist.barrier()
            if step >= total:
                break
            t_data = time.monotonic()
    if writer is not None:
        writer.close()
    summary = {"steps": step, "total": total, "best_val_accuracy": best if best >= 0 else None,
               "run_dir": str(run_dir), "world": dd.world, "init": init_note, "note": history_note,
               "images_per_s": seen / max(time.monotonic() - t0, 1e-9)}
    if dd.world > 1:
        dist.barrier()
        dist.destroy_process_group()
    return summary

"""fit(): one training phase (WSOL baseline or PixelCAM) with B-LOC / B-CL model selection.

Selection follows the official protocol (docs/official-code.md, Model selection): every epoch,
epoch 0 (before any update) included, the valcl accuracy (B-CL) and the valpx PxAP (B-LOC) are
measured; ties go to the latest epoch. The resume state (`state.pt`: weights, optimiser, scheduler,
every generator) and the B-LOC/B-CL weights found since its last write are written atomically at
most once per `state_every_s` seconds (default 60), always after the last epoch, and after the
epoch in which a SIGTERM arrives (then fit raises TrainingInterrupted); with `resume_state: false`
(the preflight, whose runs are never resumed) only the B-LOC/B-CL weights are written then, and the
state only on SIGTERM. A SIGKILL loses at most that interval; the rerun resumes from the state on
disk and gives the same numbers. The images of the three splits are decoded once and kept in memory
when they fit in `image_cache_mb` (WSOLDataset.preload); augmentations are still drawn per sample.

Under torchrun (pixelcam.distributed) the same fit() trains with DistributedDataParallel: each rank
gets batch_size / N images of every global batch (FilledBatchSampler, which shuffles like a
DistributedSampler), BatchNorm uses the global batch's statistics, rank 0 validates and its scores
are broadcast so every rank selects the same epochs, and rank 0 alone writes files. A single
process takes the unchanged path.

Every training batch holds exactly `batch_size` images: the last, partial batch of an epoch is
filled by repeating its own images cyclically, as the official code's `_fill_minibatch`
(docs/official-code.md), so BatchNorm never sees e.g. GlaS's 67 = 32 + 32 + 3 leftover trio.
"""

from __future__ import annotations

import random
import signal
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, Dataset, Sampler, Subset

from pixelcam import distributed
from pixelcam.atomic import link_over, read_back, save_torch, write_json
from pixelcam.config import Config
from pixelcam.data.dataset import preload_within
from pixelcam.errors import TrainingInterrupted
from pixelcam.evaluate import (
    accuracy_only,
    correct_count,
    eval_loader,
    evaluate_split,
    loader_workers,
)
from pixelcam.losses import denormalize, negev_losses, pixelcam_objective
from pixelcam.methods import METHODS
from pixelcam.models.model import WSOLModel
from pixelcam.models.unet import segmentation_loss
from pixelcam.sampler import sample_seeds_pb, sample_seeds_th

CHECKPOINTS = ("b-loc", "b-cl")
_clock = time.monotonic  # the state cadence's clock (a test replaces it)


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and torch so a rerun on the same machine gives the same numbers."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def _seed_worker(worker_id: int) -> None:
    seed = torch.initial_seed() % 2**32
    np.random.seed(seed)
    random.seed(seed)


class FilledBatchSampler(Sampler[list[int]]):
    """Shuffled index batches of exactly `batch_size`; the last one filled from its own samples.

    Each epoch is one random permutation of the `n` dataset indices cut into ceil(n / batch_size)
    global batches. The last, partial batch of r < batch_size indices is filled cyclically with
    those same r indices (i0..ir-1, i0..ir-1, ... up to batch_size), which is what the official
    code's `_fill_minibatch` does to the tensors of the last batch; a split smaller than
    `batch_size` becomes one batch filled the same way. Every index appears at least once per
    epoch and only the last batch's indices repeat. The dataset loads a repeated index afresh,
    so it gets its own random crop, flips and jitter (the official code repeats the augmented
    tensors); that costs up to batch_size - 1 extra image loads per epoch.

    With `world` > 1 (torchrun) rank `rank` takes positions rank, rank + world, ... of every global
    batch: batch_size / world indices, the share a DistributedSampler with the DataLoader's
    batching gives it, and exactly its order whenever n is a multiple of batch_size. Filling
    before the split keeps every global batch the same for any world size (a DistributedSampler
    instead pads the epoch with images from its start and leaves per-rank partial batches).

    Order: with a `generator` (the single-process path, whose state `state.pt` keeps) each epoch
    draws one `randperm` from it; without one, `randperm` of a generator seeded with
    seed + epoch (call `set_epoch`), the DistributedSampler's rule, so every rank agrees without
    communicating.
    """

    def __init__(self, n: int, batch_size: int, *, generator: torch.Generator | None = None,
                 seed: int = 0, rank: int = 0, world: int = 1) -> None:
        if batch_size < 1 or world < 1 or batch_size % world:
            raise ValueError(f"FilledBatchSampler: batch_size={batch_size} must be a positive "
                             f"multiple of world={world}")
        if not 0 <= rank < world:
            raise ValueError(f"FilledBatchSampler: rank={rank} must lie in [0, {world})")
        self.n, self.batch_size, self.generator = int(n), int(batch_size), generator
        self.seed, self.rank, self.world, self.epoch = int(seed), int(rank), int(world), 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return -(-self.n // self.batch_size)

    def global_batches(self) -> torch.Tensor:
        """(batches, batch_size) indices of the next epoch (draws from the generator, if any)."""
        if self.n == 0:
            return torch.zeros(0, self.batch_size, dtype=torch.long)
        if self.generator is not None:
            order = torch.randperm(self.n, generator=self.generator)
        else:
            g = torch.Generator()
            g.manual_seed(self.seed + self.epoch)
            order = torch.randperm(self.n, generator=g)
        batches = len(self)
        short = batches * self.batch_size - self.n
        if short:
            start = (batches - 1) * self.batch_size
            cycle = torch.arange(short) % (self.n - start)  # the last batch's own samples, cyclic
            order = torch.cat([order, order[start + cycle]])
        return order.view(batches, self.batch_size)

    def __iter__(self) -> Iterator[list[int]]:
        yield from self.global_batches()[:, self.rank::self.world].tolist()


def train_loader(dataset: Dataset, cfg: Config, device: torch.device, seed: int) -> DataLoader:
    """Shuffled batches of exactly `batch_size` (see FilledBatchSampler); under torchrun this
    rank's share of each global batch.

    A single process shuffles with the loader's generator (seeded with `seed`, saved in
    `state.pt`); under torchrun every rank shuffles with the config seed + epoch (the same order on
    every rank, set by `set_epoch`) and `seed` only seeds the loader's workers.
    """
    gen = torch.Generator()
    gen.manual_seed(seed)
    if not distributed.initialized():
        batches = FilledBatchSampler(len(dataset), cfg.batch_size, generator=gen)
    else:  # torchrun, even with one process: the rank-independent seed + epoch order
        world = distributed.world_size()
        distributed.local_batch_size(cfg.batch_size, world)  # a clear error if it does not divide
        batches = FilledBatchSampler(len(dataset), cfg.batch_size, seed=cfg.seed,
                                     rank=distributed.rank(), world=world)
    workers = loader_workers(cfg.num_workers)
    return DataLoader(dataset, batch_sampler=batches, num_workers=workers, generator=gen,
                      worker_init_fn=_seed_worker, pin_memory=device.type == "cuda",
                      persistent_workers=workers > 0)


def make_optimizer(model: torch.nn.Module, cfg: Config,
                   lr: float | None = None) -> torch.optim.SGD:
    """SGD over the model's groups at base lr `lr` (default cfg.lr)."""
    lr = cfg.lr if lr is None else lr
    if hasattr(model, "param_groups"):
        groups = model.param_groups(lr, cfg.head_lr_ratio)
    else:  # U-Net, NEGEV: one group of whatever is trainable
        groups = [{"params": [p for p in model.parameters() if p.requires_grad], "lr": lr}]
    return torch.optim.SGD(groups, lr=lr, momentum=cfg.momentum, nesterov=cfg.nesterov,
                           weight_decay=cfg.weight_decay)


def make_scheduler(opt: torch.optim.Optimizer, cfg: Config) -> torch.optim.lr_scheduler.LambdaLR:
    """Step decay with an absolute floor, per group (the official MyStepLR)."""
    bases = [g["lr"] for g in opt.param_groups]

    def factor(base: float) -> Callable[[int], float]:
        return lambda e: max(cfg.gamma ** (e // cfg.step_size), cfg.lr_floor / base)

    return torch.optim.lr_scheduler.LambdaLR(opt, [factor(b) for b in bases])


@dataclass
class PhaseSpec:
    """What differs between the baseline and the PixelCAM phase."""

    name: str  # baseline | pixelcam | unet | negev: also the key of its objective in OBJECTIVES
    map_method: str  # map used for B-LOC on valpx
    epochs: int
    lr: float | None = None  # base lr; None = cfg.lr (PixelCAM: cfg.pixelcam_lr when set)
    # other maps of the same trained network whose B-LOC is kept too ("b-loc@<map>"): CAM,
    # GradCAM++ and LayerCAM baselines train the same WGAP net and differ only in their map
    also_select: tuple[str, ...] = ()

    @property
    def selections(self) -> tuple[tuple[str, str], ...]:
        """(checkpoint, history key) of every best epoch this phase keeps; ties go to the later."""
        own = (("b-loc", "valpx_pxap"), ("b-cl", "valcl_accuracy"))
        return own + tuple((f"b-loc@{m}", f"valpx_pxap@{m}") for m in self.also_select)

    @property
    def objective(self) -> str:
        return self.name

    @property
    def classifies(self) -> bool:
        """U-Net has no image classifier: its B-CL is meaningless and its CL is n/a."""
        return self.name != "unet"

    @property
    def pixel(self) -> bool:
        return self.name == "pixelcam"


@dataclass
class FitResult:
    history: list[dict[str, Any]] = field(default_factory=list)
    best: dict[str, int] = field(default_factory=dict)  # checkpoint name -> epoch
    seconds: float = 0.0
    resumed_from: int | None = None
    # per epoch run here: seconds waiting for batches, in the steps, validating, writing state
    timings: list[dict[str, float]] = field(default_factory=list)

    def time_split(self) -> dict[str, float]:
        """Total seconds per part of an epoch (data, step, validation, state) over this fit."""
        parts = ("data_s", "step_s", "val_s", "state_s")
        return {p: sum(t.get(p, 0.0) for t in self.timings) for p in parts}


def bg_region_share(cfg: Config) -> float:
    """The lowest-CAM share of pixels the configured seeder draws BG from: TH's `th_min_p`
    (official sl_min_p), PB's `min_p`."""
    return cfg.th_min_p if cfg.seeder == "th" else cfg.min_p


def configured_seeds(cfg: Config, cams: torch.Tensor,
                     gen: torch.Generator) -> torch.Tensor:
    """The configured seeder, as the trainer draws (pixelcam.seed_quality measures its draws)."""
    if cfg.seeder == "th":
        return sample_seeds_th(cams, n_fg=cfg.n_fg, n_bg=cfg.n_bg, min_p=bg_region_share(cfg),
                               generator=gen)
    return sample_seeds_pb(cams, n_fg=cfg.n_fg, n_bg=cfg.n_bg, min_p=bg_region_share(cfg),
                           bg_mode=cfg.bg_mode, generator=gen)


Parts = dict[str, torch.Tensor]


def baseline_objective(model: WSOLModel, batch: dict[str, torch.Tensor], cfg: Config,
                       gen: torch.Generator, use_amp: bool) -> tuple[torch.Tensor, Parts]:
    """Image cross-entropy: the WSOL baselines (phase 1), plus a method's extra losses (SAT's
    area and norm terms)."""
    x, y = batch["image"], batch["label"]
    with torch.autocast(x.device.type, dtype=torch.bfloat16, enabled=use_amp):
        out = model(x)
    loss = F.cross_entropy(out.logits.float(), y)
    parts = {"loss_cl": loss.detach()}
    extra = METHODS[cfg.method].extra_losses  # baseline phase only, as in the official code
    if extra is not None:
        for name, term in extra(distributed.unwrap(model)).items():  # unwrap DDP / compile
            loss = loss + term
            parts[name] = term.detach()
    return loss, parts


def pixelcam_objective_step(model: WSOLModel, batch: dict[str, torch.Tensor], cfg: Config,
                            gen: torch.Generator, use_amp: bool) -> tuple[torch.Tensor, Parts]:
    """Image CE + lam * partial CE on seeds drawn afresh from the aligned CAM at every step."""
    x, y, cams = batch["image"], batch["label"], batch["cam"]
    with torch.autocast(x.device.type, dtype=torch.bfloat16, enabled=use_amp):
        out = model(x)
    pixel_logits = out.pixel_logits.float()
    if cfg.low_res:
        cams = F.interpolate(cams[:, None], size=pixel_logits.shape[-2:], mode="bilinear",
                             align_corners=False)[:, 0]
    with torch.no_grad():
        target = configured_seeds(cfg, cams, gen)
    rows = (y == 1) if cfg.pixel_loss_rows == "positive" else None
    return pixelcam_objective(out.logits.float(), y, pixel_logits, target, cfg.lam, rows)


def unet_objective(model: torch.nn.Module, batch: dict[str, torch.Tensor], cfg: Config,
                   gen: torch.Generator, use_amp: bool) -> tuple[torch.Tensor, Parts]:
    """Fully supervised pixel CE on the train masks: the U-Net upper bound of Table 1."""
    x = batch["image"]
    with torch.autocast(x.device.type, dtype=torch.bfloat16, enabled=use_amp):
        logits = model(x)
    loss = segmentation_loss(logits.float(), batch["mask"])
    return loss, {"loss_seg": loss.detach()}


def negev_objective(model: torch.nn.Module, batch: dict[str, torch.Tensor], cfg: Config,
                    gen: torch.Generator, use_amp: bool) -> tuple[torch.Tensor, Parts]:
    """NEGEV's decoder on the frozen classifier: seeds + local CRF + size barrier (+ negatives)."""
    x, y, cams = batch["image"], batch["label"], batch["cam"]
    with torch.autocast(x.device.type, dtype=torch.bfloat16, enabled=use_amp):
        seg_logits, _ = model(x)
    with torch.no_grad():
        target = configured_seeds(cfg, cams, gen)
    terms = negev_losses(seg_logits.float(), target, denormalize(x), y,
                         negative_samples=cfg.pixel_loss_rows == "positive")
    parts = {f"loss_{k}": v.detach() for k, v in terms.items() if k != "total"}
    return terms["total"], parts


OBJECTIVES = {"baseline": baseline_objective, "pixelcam": pixelcam_objective_step,
              "unet": unet_objective, "negev": negev_objective}


def _train_epoch(model: WSOLModel, loader: DataLoader, opt: torch.optim.Optimizer, cfg: Config,
                 phase: PhaseSpec, device: torch.device, gen: torch.Generator,
                 clock: dict[str, float] | None = None) -> dict[str, float]:
    """One pass over the loader; `clock` gets the seconds spent waiting for batches (data_s)
    and in the steps (step_s; on CUDA the launch time, the wait shows up in the next sync)."""
    model.train()
    use_amp = cfg.amp and device.type == "cuda"
    objective = OBJECTIVES[phase.objective]
    sums: dict[str, torch.Tensor] = {}  # loss terms summed on the device: no host sync per step
    batches = 0
    data_s = step_s = 0.0
    tick = time.perf_counter()
    for batch in loader:
        batch = {k: v.to(device, non_blocking=True) if torch.is_tensor(v) else v
                 for k, v in batch.items()}
        fetched = time.perf_counter()
        data_s += fetched - tick
        loss, parts = objective(model, batch, cfg, gen, use_amp)
        for name, value in parts.items():
            sums[name] = sums.get(name, 0) + value
        batches += 1
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        tick = time.perf_counter()
        step_s += tick - fetched
    if clock is not None:
        clock["data_s"], clock["step_s"] = data_s, step_s
    if distributed.world_size() == 1:
        return {name: float(total) / max(batches, 1) for name, total in sums.items()}
    # every rank runs as many batches (FilledBatchSampler): the mean of the rank means
    names = sorted(sums)
    if not names:
        return {}
    means = torch.stack([torch.as_tensor(sums[n], dtype=torch.float32) for n in names])
    means = distributed.all_reduce_mean(means / max(batches, 1)).tolist()
    return dict(zip(names, means))


def _validate(model: WSOLModel, valcl: DataLoader, valpx: DataLoader, phase: PhaseSpec,
              device: torch.device, valcl_rest: DataLoader | None = None) -> dict[str, float]:
    """Selection scores, and the valpx threshold of each map (its test rates at this epoch's
    weights need no second valpx pass); under torchrun rank 0 measures them and every rank
    gets its numbers.

    With `valcl_rest` (valcl's images outside valpx, when valpx lies inside valcl as in the
    protocol) the valcl accuracy counts the valpx images from their map pass, whose logits are
    those of the plain forward: one encoder pass per valpx image instead of two.
    """
    scores = None
    if distributed.is_main():
        loc = evaluate_split(model, valpx, phase.map_method, device, with_per_image=False,
                             resamples=0)
        acc = float("nan")
        if phase.classifies and valcl_rest is None:
            acc = accuracy_only(model, valcl, device)
        elif phase.classifies:
            correct, total = correct_count(model, valcl_rest, device)
            acc = 100.0 * (correct + loc.n_correct) / max(total + loc.n_images, 1)
        scores = {"valcl_accuracy": acc, "valpx_pxap": loc.pxap,
                  "valpx_threshold": loc.metric.best_miou_threshold()}
        # each pass over a DataLoader draws its base seed from torch's global RNG, which the
        # training augmentations use too: the extra passes must leave it as they found it, or
        # the shared training would differ from the runs it stands for
        with torch.random.fork_rng(devices=[]):
            for other in phase.also_select:
                other_loc = evaluate_split(model, valpx, other, device, with_per_image=False,
                                           resamples=0)
                scores[f"valpx_pxap@{other}"] = other_loc.pxap
                scores[f"valpx_threshold@{other}"] = other_loc.metric.best_miou_threshold()
    return distributed.broadcast(scores)


def _valcl_outside_valpx(valcl_ds: Dataset, valpx_ds: Dataset) -> Dataset | None:
    """valcl's images that are not in valpx, when every valpx image is a valcl image read the
    same way (the protocol's valpx is a subset of valcl); None otherwise."""
    valcl_records = getattr(valcl_ds, "records", None)
    valpx_records = getattr(valpx_ds, "records", None)
    if valcl_records is None or valpx_records is None:
        return None
    same_view = all(getattr(valcl_ds, a, None) == getattr(valpx_ds, a, None)
                    for a in ("data_root", "image_size", "train"))
    inside = {r.image_id for r in valpx_records}
    valcl_ids = [r.image_id for r in valcl_records]
    if not same_view or not inside <= set(valcl_ids) or len(inside) != len(valpx_records):
        return None
    return Subset(valcl_ds, [i for i, image_id in enumerate(valcl_ids) if image_id not in inside])


def _rng_states(gen: torch.Generator, loader: DataLoader) -> dict[str, Any]:
    return {"sampler_rng": gen.get_state(), "loader_rng": loader.generator.get_state(),
            "torch_rng": torch.get_rng_state(), "python_rng": random.getstate(),
            "numpy_rng": np.random.get_state()}


def _restore_rng(state: dict[str, Any], gen: torch.Generator, loader: DataLoader,
                 device: torch.device) -> None:
    gen.set_state(state["sampler_rng"].to(gen.device) if device.type == "cpu"
                  else state["sampler_rng"])
    loader.generator.set_state(state["loader_rng"])
    torch.set_rng_state(state["torch_rng"])
    random.setstate(state["python_rng"])
    np.random.set_state(state["numpy_rng"])


def _training_module(model: torch.nn.Module, cfg: Config,
                     device: torch.device) -> torch.nn.Module:
    """What the training step calls: DDP across ranks, torch.compile'd if asked; the weights
    stay those of `model`, which validation and checkpoints use directly."""
    net = model
    if distributed.world_size() > 1:
        net = DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda"
                                      else None)
    if cfg.compile:
        net = torch.compile(net)
    return net


class _SigtermFlag:
    """While active, SIGTERM only sets `requested`: the loop finishes its epoch, writes the
    resume state and raises TrainingInterrupted. A SIGTERM the loop did not get to act on is
    re-raised, with the previous handler, on exit. Outside the main thread (where Python
    cannot install handlers) it does nothing."""

    def __init__(self) -> None:
        self.requested = False
        self.acted = False
        self._previous: Any = None
        self._installed = False

    def __enter__(self) -> _SigtermFlag:
        if threading.current_thread() is threading.main_thread():
            self._previous = signal.signal(signal.SIGTERM, self._handle)
            self._installed = True
        return self

    def _handle(self, signum: int, frame: Any) -> None:
        self.requested = True

    def __exit__(self, *exc: Any) -> None:
        if not self._installed:
            return
        signal.signal(signal.SIGTERM, self._previous if self._previous is not None
                      else signal.SIG_DFL)
        if self.requested and not self.acted:
            signal.raise_signal(signal.SIGTERM)


def _cpu_copy(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """A snapshot that later steps cannot change (the weights of a best epoch, until written)."""
    return {k: v.detach().to("cpu", copy=True) for k, v in state.items()}


def _save_best(pending: dict[str, dict[str, torch.Tensor]], ckpt_dir: Path) -> None:
    """Write the pending B-LOC/B-CL weights; when both chose the same epoch, one file, two names."""
    written: dict[int, Path] = {}
    for name, weights in pending.items():
        path = ckpt_dir / f"{name}.pt"
        if id(weights) in written:
            link_over(written[id(weights)], path)
        else:
            save_torch(weights, path)
            written[id(weights)] = path


def fit(model: WSOLModel, cfg: Config, phase: PhaseSpec, *, train_ds: Dataset, valcl_ds: Dataset,
        valpx_ds: Dataset, out_dir: Path, device: torch.device,
        log: Callable[[str], None] = print,
        on_epoch: Callable[[int, int], None] | None = None) -> FitResult:
    """Train one phase, keep the B-LOC and B-CL weights, resume from `state.pt` if present.

    Under torchrun every rank calls this with the same arguments (see the module docstring).
    """
    device = distributed.init(device)  # cuda:LOCAL_RANK under torchrun; unchanged otherwise
    world, rank, main = distributed.world_size(), distributed.rank(), distributed.is_main()
    log = distributed.quiet_unless_main(log)
    out_dir.mkdir(parents=True, exist_ok=True)
    ckpt_dir = out_dir / "checkpoints"
    ckpt_dir.mkdir(exist_ok=True)
    state_path = out_dir / "state.pt"

    seed_everything(cfg.seed + rank)  # dropout and augmentation differ between ranks
    if device.type == "cpu":  # CPU runs are bitwise repeatable; warn (not fail) on a missing kernel
        torch.use_deterministic_algorithms(True, warn_only=True)
    model.to(device)
    if device.type == "cuda" and "resnet" in cfg.backbone:
        model.to(memory_format=torch.channels_last)
    if world > 1:  # N ranks of batch_size / N normalise like one batch of batch_size
        model = distributed.sync_batchnorm(model, device)
    opt = make_optimizer(model, cfg, phase.lr)
    sched = make_scheduler(opt, cfg)
    # decode each image once (before loader workers fork, so they share the pixels)
    preload_within((valpx_ds, valcl_ds, train_ds), cfg.image_cache_mb)
    loader = train_loader(train_ds, cfg, device, cfg.seed + rank)
    valcl = eval_loader(valcl_ds, cfg.eval_batch_size, cfg.num_workers, device)
    valpx = eval_loader(valpx_ds, cfg.eval_batch_size, cfg.num_workers, device)
    valcl_rest = None
    rest_ds = _valcl_outside_valpx(valcl_ds, valpx_ds)
    if rest_ds is not None:
        # an empty pass still draws its loader seed, as the whole valcl's did: same RNG stream
        valcl_rest = eval_loader(rest_ds, cfg.eval_batch_size,
                                 cfg.num_workers if len(rest_ds) else 0, device)
    gen = torch.Generator(device=device)
    gen.manual_seed(cfg.seed + 1 + rank)

    result = FitResult()
    best_score = {name: -1.0 for name, _ in phase.selections}
    start_epoch = 0
    if state_path.exists():
        state = read_back(state_path, weights_only=False, map_location=device)
        model.load_state_dict(state["model"])
        opt.load_state_dict(state["optimizer"])
        sched.load_state_dict(state["scheduler"])
        result.history = state["history"]
        result.best = state["best"]
        best_score = state["best_score"]
        # a map that was not selected from the first epoch on has no valid B-LOC: its run trains
        # on its own later
        kept = tuple(m for m in phase.also_select if f"b-loc@{m}" in best_score)
        if kept != phase.also_select:
            phase = replace(phase, also_select=kept)
        ranks = state.get("ranks")  # per-rank generators of a torchrun run
        if world > 1 and ranks is not None and len(ranks) == world:
            _restore_rng(ranks[rank], gen, loader, device)
        else:
            _restore_rng(state, gen, loader, device)
        start_epoch = state["epoch"] + 1
        result.resumed_from = state["epoch"]
        log(f"[{phase.name}] resuming after epoch {state['epoch']}")
    net = _training_module(model, cfg, device)  # DDP's constructor also syncs the ranks

    t0 = time.perf_counter()
    with _SigtermFlag() as sigterm:
        pending: dict[str, dict[str, torch.Tensor]] = {}  # best weights not on disk yet
        last_write = _clock()
        for epoch in range(start_epoch, phase.epochs + 1):
            clock: dict[str, float] = {"epoch": epoch, "data_s": 0.0, "step_s": 0.0}
            row: dict[str, Any] = {"epoch": epoch, "lr": opt.param_groups[0]["lr"]}
            if epoch > 0:
                if isinstance(loader.batch_sampler, FilledBatchSampler):
                    # the torchrun order; unused with a generator
                    loader.batch_sampler.set_epoch(epoch)
                row.update(_train_epoch(net, loader, opt, cfg, phase, device, gen, clock))
                sched.step()
            tick = time.perf_counter()
            row.update(_validate(model, valcl, valpx, phase, device, valcl_rest))
            result.history.append(row)
            snapshot = None
            for name, key in phase.selections:
                score = row["valpx_pxap"] if not phase.classifies and name == "b-cl" else row[key]
                if score >= best_score[name]:  # ties go to the latest epoch
                    best_score[name] = score
                    result.best[name] = epoch
                    if main:
                        if snapshot is None:
                            snapshot = _cpu_copy(model.state_dict())
                        pending[name] = snapshot
            clock["val_s"] = time.perf_counter() - tick
            losses = " ".join(f"{k} {v:.3f}" for k, v in row.items() if k.startswith("loss_"))
            log(f"[{phase.name}] epoch {epoch:3d}/{phase.epochs} {losses} "
                f"valcl acc {row['valcl_accuracy']:.1f} valpx PxAP {row['valpx_pxap']:.1f}")
            tick = time.perf_counter()
            due = epoch == phase.epochs or _clock() - last_write >= cfg.state_every_s
            stop = sigterm.requested
            if world > 1:  # rank 0 decides, so that every rank joins the same collectives
                due, stop = distributed.broadcast((due, stop))
            if due or stop:
                if main:
                    _save_best(pending, ckpt_dir)  # before the state that names their epoch
                if cfg.resume_state or stop:  # the same on every rank: the gather stays in step
                    rngs = _rng_states(gen, loader)
                    ranks = distributed.gather(rngs) if world > 1 else None
                    if main:
                        state = {
                            "epoch": epoch, "model": model.state_dict(),
                            "optimizer": opt.state_dict(), "scheduler": sched.state_dict(),
                            "history": result.history, "best": result.best,
                            "best_score": best_score, **rngs,
                        }
                        if ranks is not None:
                            state["ranks"] = ranks
                        save_torch(state, state_path)
                pending.clear()
                last_write = _clock()
            clock["state_s"] = time.perf_counter() - tick
            result.timings.append(clock)
            if on_epoch is not None:
                on_epoch(epoch, phase.epochs)
            if stop:
                sigterm.acted = True
                raise TrainingInterrupted(
                    f"[{phase.name}] stopped by SIGTERM after epoch {epoch}/{phase.epochs}; the "
                    f"resume state is written: run the same command again to go on from there")
    result.seconds = time.perf_counter() - t0
    if main:
        write_json(out_dir / "history.json", {"history": result.history, "best": result.best})
    distributed.barrier()  # the checkpoints exist before any rank goes on to read them
    return result

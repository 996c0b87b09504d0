"""The DISARM training loop: seeds, devices, checkpoints, resume, torchrun.

Output directory layout::

    OUT/checkpoints/step-000500/   model dir + training_state.* (every ``checkpoint_every``)
    OUT/latest.json                 {"checkpoint": "checkpoints/step-000500", "step": 500}
    OUT/losses.tsv                  one row of losses per step
    OUT/model/                      the final model directory (what ``--model`` points to)

Every directory is written beside its destination and renamed into place; ``latest.json`` is
replaced atomically after the checkpoint it names is complete, and older checkpoints are
removed only then (``keep_checkpoints`` kept).

Launched by ``torchrun`` (``WORLD_SIZE`` > 1), each process trains on its own samples and
gradients are averaged (gloo on CPU, nccl on CUDA); rank 0 writes everything.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist

from .atomic import write_json_atomic, write_text_atomic
from .checkpoint import (
    CheckpointError,
    load_model,
    load_training_state,
    read_card,
    versions,
    write_model_dir,
)
from .data import PairSampler, Prefetcher, TrainImage
from .devices import DeviceError, resolve_device
from .disarm import Disarm, one_hot
from .losses import LossWeights
from .networks import NetworkConfig, get_config
from .trainer import LOSS_NAMES, DisarmTrainer

__all__ = ["TrainOptions", "TrainingError", "resolve_device", "train", "INTENSITY_CARD"]

INTENSITY_CARD = {
    "method": "robust-range",
    "lo": "0.5th percentile of all voxels",
    "hi": "99.5th percentile of the foreground (voxels above 5% of the maximum)",
    "maps": "[lo, hi] -> [-1, 1], clipped to [-1, clip_max]",
}


class TrainingError(RuntimeError):
    """A user-level problem with a training run (bad output dir, nothing to resume...)."""


@dataclass
class TrainOptions:
    out_dir: Path
    config: str = "fast"
    config_overrides: dict = field(default_factory=dict)
    steps: int = 3000
    patch_size: int | None = 64  #: None = whole volumes (GPU)
    lr: float = 1e-4
    seed: int = 0
    device: str = "auto"
    amp: bool = False
    checkpoint_every: int = 500
    keep_checkpoints: int = 2
    elastic_p: float = 0.7
    content_d_every: int = 1
    code_images: int = 4  #: images per scanner averaged for the stored mean scanner code
    code_windows: int = 8  #: training-size windows per image averaged for its scanner code
    randomize: bool = True  #: simulated domains: a new scanner of the family at every draw
    paired: bool = True  #: simulated domains: travelling heads and their losses
    age_window: float | None = None  #: real domains: pair images within this many years
    loss_weights: dict = field(default_factory=dict)  #: LossWeights overrides
    progress: bool = True
    name: str = "disarm"


def _dist_setup(device: torch.device) -> tuple[int, int, torch.device]:
    ws = int(os.environ.get("WORLD_SIZE", "1"))
    if ws <= 1:
        return 0, 1, device
    if not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    rank = dist.get_rank()
    if device.type == "cuda":
        local = int(os.environ.get("LOCAL_RANK", "0"))
        torch.cuda.set_device(local)
        device = torch.device("cuda", local)
    return rank, ws, device


@torch.no_grad()
def scanner_codes(
    model: Disarm, sampler: PairSampler, n_images: int, seed: int, n_windows: int = 8
) -> dict:
    """Mean E_s code (mu) of each training scanner: over up to ``n_images`` images, each seen
    the way E_s saw it in training (``n_windows`` windows of the training patch size,
    averaged; whole volumes for a model trained on them), undeformed, simulated by the named
    profile itself. The sampler's own state is never touched (it may be prefetching)."""
    dev = next(model.parameters()).device
    model.eval()
    rng = np.random.default_rng([seed, 777])
    size = sampler.patch_size
    codes = {}
    try:
        for k, name in enumerate(sampler.scanners):
            pool = sampler.by_scanner[name]
            pick = rng.permutation(len(pool))[:n_images]
            label = one_hot([k], len(sampler.scanners), dev)
            mus = []
            for i in pick:
                im = pool[int(i)]
                for _ in range(n_windows if size else 1):
                    x = sampler.load(im, rng, size, deform=False, profile=im.profile)
                    mu, _ = model.scanner(x[None].to(dev), label)
                    mus.append(mu[0].float().cpu())
            codes[name] = torch.stack(mus).mean(0).tolist()
    finally:
        model.train()
    return codes


def _scanner_info(images: list[TrainImage], scanners: list[str]) -> dict:
    info = {}
    for s in scanners:
        ims = [im for im in images if im.scanner == s]
        prof = ims[0].profile
        info[s] = {
            "n_images": len(ims),
            "simulated": prof is not None,
            "profile": prof.to_dict() if prof is not None else None,
        }
    return info


def grid_summary(images: list[TrainImage]) -> dict:
    """Voxel size (median per axis), most common shape and its (first image's) affine of the
    training images, so that inference can tell when an image is not on the grid the model
    learned and resample one from another grid of its template world onto it
    (:mod:`models.domain`)."""
    import nibabel as nib

    zooms, shapes = [], {}
    for path in sorted({im.path for im in images}):
        img = nib.load(path)
        zooms.append([float(z) for z in img.header.get_zooms()[:3]])
        shape = tuple(int(n) for n in img.shape[:3])
        if shape not in shapes:
            shapes[shape] = [0, img.affine]
        shapes[shape][0] += 1
    if not zooms:
        return {}
    shape = max(shapes, key=lambda k: shapes[k][0])
    return {
        "voxel_size_mm": [round(float(v), 4) for v in np.median(zooms, axis=0)],
        "shape": list(shape),
        "affine": np.round(shapes[shape][1], 6).tolist(),
    }


def _card(
    opts,
    cfg,
    scanners,
    codes,
    images,
    grid,
    step,
    world,
    dev,
    data_summary,
    *,
    paired: bool,
    weights: LossWeights,
) -> dict:
    return {
        "name": opts.name,
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "config": cfg.to_dict(),
        "scanners": list(scanners),
        "scanner_codes": codes,
        "scanner_info": _scanner_info(images, scanners),
        "intensity": dict(INTENSITY_CARD, clip_max=cfg.clip_max),
        "training": {
            "steps": step,
            "total_steps": opts.steps,
            "patch_size": opts.patch_size,
            "lr": opts.lr,
            "seed": opts.seed,
            "world_size": world,
            "device": dev.type,
            "amp_bf16": opts.amp,
            "elastic_p": opts.elastic_p,
            "content_d_every": opts.content_d_every,
            "content_d_alone": opts.content_d_every > 1,
            "randomized_scanners": opts.randomize,
            "travelling_heads": paired,  # what the sampler did: real or split domains never pair
            "age_window": opts.age_window,
            "code_windows": opts.code_windows,
            "grid": grid,
            "data": data_summary or {},
        },
        "loss_weights": weights.to_dict(),
        "versions": versions(),
    }


def train(
    images: list[TrainImage],
    scanners: list[str],
    opts: TrainOptions,
    *,
    resume: bool = False,
    data_summary: dict | None = None,
) -> Path:
    """Train DISARM on ``images`` (labels in the order of ``scanners``); returns OUT/model."""
    out = Path(opts.out_dir)
    latest = out / "latest.json"
    try:
        device = resolve_device(opts.device)
    except DeviceError as exc:
        raise TrainingError(str(exc)) from None
    rank, world, device = _dist_setup(device)
    if resume and not latest.is_file():
        raise TrainingError(f"--resume: no checkpoint to resume from in {out}")
    if not resume and latest.is_file():
        raise TrainingError(f"{out} already holds a training run; use --resume or another --out")
    cfg = get_config(opts.config, n_scanners=len(scanners), **opts.config_overrides)

    torch.manual_seed(opts.seed)  # identical initial weights on every rank
    model = Disarm(cfg).to(device)
    weights = LossWeights.for_config(opts.config, **opts.loss_weights)
    trainer = DisarmTrainer(
        model,
        opts.steps,
        lr=opts.lr,
        weights=weights,
        content_d_every=opts.content_d_every,
        amp=opts.amp,
    )
    start = 0
    if resume:
        ckpt = out / json.loads(latest.read_text())["checkpoint"]
        card = read_card(ckpt)
        same_cfg = NetworkConfig.from_dict(card["config"]) == cfg
        if card["scanners"] != list(scanners) or not same_cfg:
            raise TrainingError(f"{ckpt} was trained with other scanners or another configuration")
        loaded, _ = load_model(ckpt, device)
        model.load_state_dict(loaded.state_dict())
        state = load_training_state(ckpt)
        trainer.load_state_dict(state["trainer"])
        start = int(state["step"])
        if start >= opts.steps:
            raise TrainingError(f"{ckpt} is already at step {start} >= --steps {opts.steps}")
    if world > 1:
        for p in model.parameters():
            dist.broadcast(p.data, 0)

    # stochastic parts (noise, codes, sampling) depend on (seed, rank, first step): a resumed
    # run is reproducible from its checkpoint
    torch.manual_seed(opts.seed + 100_003 * rank + start)
    sampler = PairSampler(
        images,
        scanners,
        patch_size=opts.patch_size,
        elastic_p=opts.elastic_p,
        clip_max=cfg.clip_max,
        seed=[opts.seed, rank, start],
        randomize=opts.randomize,
        paired=opts.paired,
        age_window=opts.age_window,
        head_quantiles=cfg.curve_quantiles if cfg.curves_per_head else 0,
    )
    if rank == 0:
        (out / "checkpoints").mkdir(parents=True, exist_ok=True)

    codes_at: dict[int, dict] = {}
    grid = grid_summary(images)  # read once: every checkpoint's card carries it

    def save(step: int, final: bool = False) -> Path:
        if step not in codes_at:  # the final model reuses the last checkpoint's codes
            codes_at.clear()
            codes_at[step] = scanner_codes(
                model, sampler, opts.code_images, opts.seed, opts.code_windows
            )
        codes = codes_at[step]
        card = _card(
            opts,
            cfg,
            scanners,
            codes,
            images,
            grid,
            step,
            world,
            device,
            data_summary,
            paired=sampler.paired,
            weights=weights,
        )
        state = model.state_dict()
        if final:
            return write_model_dir(out / "model", state, card)
        name = f"checkpoints/step-{step:06d}"
        tstate = {"step": step, "seed": opts.seed, "trainer": trainer.state_dict()}
        write_model_dir(out / name, state, card, training_state=tstate)
        write_json_atomic(latest, {"checkpoint": name, "step": step})
        olds = sorted((out / "checkpoints").glob("step-*"))[: -max(1, opts.keep_checkpoints)]
        for old in olds:
            shutil.rmtree(old, ignore_errors=True)
        return out / name

    from tqdm import tqdm

    log = None
    columns = list(LOSS_NAMES)  # fixed: D_b-only steps leave the other columns empty
    if rank == 0:
        _align_loss_log(out / "losses.tsv", ["step", "lr", *columns], start)
        log = open(out / "losses.tsv", "a")  # noqa: SIM115 - closed in finally
    prefetch = Prefetcher(sampler)
    bar = tqdm(total=opts.steps, initial=start, disable=not opts.progress or rank != 0, unit="it")
    header_done = (out / "losses.tsv").stat().st_size > 0 if rank == 0 else True
    t0 = time.perf_counter()
    try:
        for step in range(start, opts.steps):
            pair = prefetch.next()
            n = len(scanners)
            clean = None if pair.clean is None else pair.clean.to(device)
            losses = trainer.step(
                pair.xa.to(device),
                pair.xb.to(device),
                one_hot([pair.ka], n, device),
                one_hot([pair.kb], n, device),
                clean,
                pair.qa,
                pair.qb,
                pair.q_clean,
            )
            bar.update(1)
            bar.set_postfix(
                {
                    k: f"{losses[k]:.3f}"
                    for k in ("rec", "cc", "adv_s", "cls_s", "lat", "D_b")
                    if k in losses
                }  # fmt: skip
            )
            if log is not None:
                if not header_done:
                    log.write("\t".join(["step", "lr", *columns]) + "\n")
                    header_done = True
                vals = [f"{losses[k]:.5g}" if k in losses else "" for k in columns]
                log.write("\t".join([str(step + 1), f"{trainer.lr():.3g}", *vals]) + "\n")
                log.flush()
            done = step + 1
            if rank == 0 and (done % opts.checkpoint_every == 0 or done == opts.steps):
                save(done)
        final = out / "model"
        if rank == 0:
            final = save(opts.steps, final=True)
    finally:
        prefetch.close()
        bar.close()
        if log is not None:
            log.close()
        if world > 1 and dist.is_initialized():
            dist.barrier()
            dist.destroy_process_group()
    if rank == 0 and opts.progress:
        secs = time.perf_counter() - t0
        print(f"trained {opts.steps - start} steps in {secs:.0f} s -> {final}")
    return final


def _align_loss_log(path: Path, header: list[str], start: int = 0) -> None:
    """Give an existing ``losses.tsv`` (a resumed run) this version's columns and the rows of
    the ``start`` steps its checkpoint holds only (rows are numbered from 1): a log written
    before a loss was added is rewritten (atomically) with the new header, each old value
    under its own column name, the new columns empty; rows of later steps (logged by a run
    stopped after its last checkpoint, which the resumed run logs again) are dropped. An
    empty or missing log is left."""
    if not path.exists() or path.stat().st_size == 0:
        return
    lines = path.read_text().splitlines()
    old = lines[0].split("\t")
    rows = [dict(zip(old, line.split("\t"), strict=False)) for line in lines[1:] if line]
    kept = [row for row in rows if not row.get("step", "").isdigit() or int(row["step"]) <= start]
    if old == header and len(kept) == len(rows):
        return
    body = ["\t".join(row.get(k, "") for k in header) for row in kept]
    write_text_atomic(path, "\n".join(["\t".join(header), *body]) + "\n")


def asdict_options(opts: TrainOptions) -> dict:
    d = asdict(opts)
    d["out_dir"] = str(d["out_dir"])
    return d


__all__ += ["CheckpointError", "asdict_options", "scanner_codes"]

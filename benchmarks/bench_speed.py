"""Wall time and peak memory of every stage of the pipeline for one head; GPU throughput.

Stages, each in a fresh process (so its peak resident memory, ``ru_maxrss``, is its own,
ITK and torch allocations included): reorientation, N4 bias correction, brain extraction and
affine registration to the template, the alignment check (all four run by
``benchmarks/bench_preproc.py``'s stage runner, not duplicated here), DISARM harmonization
(scanner-free; model loading timed apart) and the participant report
(``pipeline.reports.generate_participant_report`` on the stage outputs laid out as
derivatives). When ``torch.cuda.is_available()``, harmonization throughput on the GPU
(volumes/s over ``--gpu-repeats`` volumes after one warm-up) is measured too; else 'no GPU'.

    python benchmarks/bench_speed.py                                  # the 1 mm Philips head
    python benchmarks/bench_speed.py --t1w head.nii.gz --model DIR --out bench-out

``--model`` defaults to the shipped model; without one, a random-weight model of the fast
configuration is written to the work folder (same layers, so the same cost).
"""

from __future__ import annotations

import argparse
import concurrent.futures as cf
import csv
import json
import multiprocessing as mp
import os
import resource
import shutil
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
for _p in (REPO, REPO / "benchmarks"):
    if str(_p) not in sys.path:
        sys.path.insert(0, str(_p))

import bench_preproc  # noqa: E402  (the preprocessing stage runner, reused)

DEFAULT_T1W = REPO.parent / "shared" / "data" / "philips-3t-1mm" / "sub-01" / "anat"
DEFAULT_T1W = DEFAULT_T1W / "sub-01_T1w.nii.gz"
#: (stage key, row label, runner): "preproc" = bench_preproc's stage, "own" = this module's.
STAGES = (
    ("reorient", "reorient (fslreorient2std-like)", "preproc"),
    ("n4", "bias correction (N4)", "preproc"),
    ("brain_extraction", "registration: brain extraction (BET)", "preproc"),
    ("affine", "registration: affine to template", "preproc"),
    ("alignment_ncc", "registration: alignment NCC check", "preproc"),
    ("harmonize", "harmonization (DISARM scanner-free)", "own"),
    ("report", "participant report", "own"),
)
SUBJECT = "bench"


class BenchError(Exception):
    """A user mistake: printed as one line, exit code 1."""


def _peak_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def _own_stage(name: str, work: str, model: str, threads: int, repeats: int):
    """Run one of this module's stages in this (fresh) process -> (s, peak MiB, extra)."""
    import nibabel as nib
    import torch

    torch.set_num_threads(threads)
    from models.harmonize import Harmonizer

    w = Path(work)
    deriv = w / "deriv" / f"sub-{SUBJECT}" / "anat"
    preproc = next(deriv.glob("*_desc-preproc_T1w.nii.gz"))
    extra: dict = {}
    if name == "harmonize":
        t0 = time.perf_counter()
        h = Harmonizer.from_dir(model, device="cpu")
        extra["load_s"] = time.perf_counter() - t0
        img = nib.load(str(preproc))
        start = time.perf_counter()
        out, meta = h.harmonize(img)
        seconds = time.perf_counter() - start
        stem = preproc.name.replace("_desc-preproc_T1w.nii.gz", "")
        nib.save(out, str(deriv / f"{stem}_desc-harmonized_T1w.nii.gz"))
        (deriv / f"{stem}_desc-harmonized_T1w.json").write_text(
            json.dumps({"Harmonization": meta}, default=str)
        )
        extra["shape"] = list(img.shape)
        extra["config"] = h.cfg.name
    elif name == "report":
        from pipeline.reports import generate_participant_report

        start = time.perf_counter()
        generate_participant_report(w / "deriv", SUBJECT)
        seconds = time.perf_counter() - start
    elif name == "gpu":
        if not torch.cuda.is_available():
            return 0.0, _peak_mib(), {"gpu": None}
        h = Harmonizer.from_dir(model, device="cuda")
        img = nib.load(str(preproc))
        h.harmonize(img)  # warm-up: cuDNN autotuning, allocator
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        start = time.perf_counter()
        for _ in range(repeats):
            h.harmonize(img)
        torch.cuda.synchronize()
        seconds = time.perf_counter() - start
        extra = {
            "gpu": torch.cuda.get_device_name(0),
            "volumes_per_s": repeats / seconds,
            "gpu_peak_mib": torch.cuda.max_memory_allocated() / 2**20,
        }
    else:
        raise ValueError(name)
    return seconds, _peak_mib(), extra


def run_own(name: str, work: Path, model: Path, threads: int, repeats: int = 10):
    ctx = mp.get_context("spawn")
    with cf.ProcessPoolExecutor(max_workers=1, mp_context=ctx) as pool:
        job = pool.submit(_own_stage, name, str(work), str(model), threads, repeats)
        return job.result()


def random_model(dest: Path) -> Path:
    """A fast-configuration model with random weights (for timing only)."""
    import torch

    from models.checkpoint import write_model_dir
    from models.disarm import Disarm
    from models.networks import get_config

    torch.manual_seed(0)
    cfg = get_config("fast", n_scanners=5)
    names = [f"scanner-{i}" for i in range(5)]
    card = {
        "name": "random-weights-timing-only",
        "config": cfg.to_dict(),
        "scanners": names,
        "scanner_codes": {n: [0.0] * cfg.z_dim for n in names},
    }
    return write_model_dir(dest, Disarm(cfg).state_dict(), card)


def lay_out_derivatives(work: Path, resolution: int, ncc: float | None, t1w: Path) -> Path:
    """The registered head named as a disarm-pipeline output, so the report can find it."""
    from pipeline.templates import get_template

    tpl = get_template("ants", resolution)
    anat = work / "deriv" / f"sub-{SUBJECT}" / "anat"
    anat.mkdir(parents=True, exist_ok=True)
    res = f"_res-{resolution}" if resolution != 1 else ""
    stem = f"sub-{SUBJECT}_space-{tpl.space}{res}"
    registered = work / f"space-template_res-{resolution}.nii.gz"  # bench_preproc's name
    shutil.copyfile(registered, anat / f"{stem}_desc-preproc_T1w.nii.gz")
    meta = {
        "Sources": [str(t1w)],
        "SkullStripped": False,
        "Preprocessing": {"Backend": "ants", "AlignmentNCC": ncc},
    }
    (anat / f"{stem}_desc-preproc_T1w.json").write_text(json.dumps(meta))
    return anat


def markdown(rows: list[dict], header: str, gpu: str) -> str:
    lines = [
        header,
        "",
        "| stage | wall time (s) | peak RSS (MiB) | note |",
        "|---|---:|---:|---|",
    ]
    for r in rows:
        lines.append(f"| {r['stage']} | {r['seconds']:.1f} | {r['peak_mib']:.0f} | {r['note']} |")
    total = sum(r["seconds"] for r in rows if r["key"] != "baseline")
    peak = max(r["peak_mib"] for r in rows)
    lines.append(f"| **total** | **{total:.1f}** | **{peak:.0f}** (max) | |")
    return "\n".join(lines) + f"\n\nGPU: {gpu}\n"


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="bench_speed.py", description=__doc__.splitlines()[0])
    p.add_argument("--t1w", type=Path, default=DEFAULT_T1W, help="raw T1w head (NIfTI)")
    p.add_argument("--model", type=Path, help="DISARM model folder (default: shipped/random)")
    p.add_argument("--resolution", type=int, choices=(1, 2), default=1, help="template grid, mm")
    p.add_argument("--threads", type=int, default=2, help="ITK and torch threads")
    p.add_argument("--gpu-repeats", type=int, default=10, help="volumes timed on the GPU")
    p.add_argument("--work", type=Path, help="work folder (default: temporary, removed)")
    p.add_argument("--out", type=Path, help="write speed.md/.csv here")
    return p


def run(args: argparse.Namespace) -> int:
    import nibabel as nib
    import torch

    from models.harmonize import DEFAULT_MODEL_DIR

    if not args.t1w.is_file():
        raise BenchError(f"T1w image not found: {args.t1w}")
    try:
        img = nib.load(str(args.t1w))
    except Exception as exc:  # noqa: BLE001 - any reader error is the user's file
        raise BenchError(f"cannot read {args.t1w}: {exc}") from None
    if len(img.shape) != 3:
        raise BenchError(f"{args.t1w}: expected a 3D image, got shape {img.shape}")
    if args.model is not None and not (args.model / "model_card.json").is_file():
        raise BenchError(f"not a DISARM model folder (no model_card.json): {args.model}")
    temp = args.work is None
    work = args.work or Path(tempfile.mkdtemp(prefix="bench-speed-"))
    work.mkdir(parents=True, exist_ok=True)
    os.environ.setdefault("DISARM_CACHE", str(work / "cache"))
    model, model_note = args.model, ""
    if model is None and (DEFAULT_MODEL_DIR / "model_card.json").is_file():
        model = DEFAULT_MODEL_DIR
    if model is None:
        model = random_model(work / "random-model")
        model_note = "random weights (fast configuration; same cost as trained)"
    try:
        rows = []
        base_s, base_mib, _ = bench_preproc.run_stage(
            "baseline", args.t1w, work, args.resolution, 1
        )
        rows.append(
            {"key": "baseline", "stage": "baseline process (imports ants)", "seconds": base_s,
             "peak_mib": base_mib, "note": "not counted in the total"}
        )  # fmt: skip
        ncc = None
        for key, label, runner in STAGES:
            note = ""
            if runner == "preproc":
                s, mib, result = bench_preproc.run_stage(
                    key, args.t1w, work, args.resolution, args.threads
                )
                if key == "alignment_ncc":
                    ncc = float(result)
                    note = f"NCC {ncc:.3f} (good > 0.8)"
                    lay_out_derivatives(work, args.resolution, ncc, args.t1w)
            else:
                s, mib, extra = run_own(key, work, model, args.threads)
                if key == "harmonize":
                    shape = "x".join(map(str, extra["shape"]))
                    note = f"{extra['config']} config, {shape}; model load {extra['load_s']:.1f} s"
                    note += f"; {model_note}" if model_note else ""
            rows.append({"key": key, "stage": label, "seconds": s, "peak_mib": mib, "note": note})
            print(f"# {key}: {s:.1f} s, {mib:.0f} MiB", file=sys.stderr, flush=True)
        gpu_info: dict = {"gpu": None}
        if torch.cuda.is_available():
            _, _, gpu_info = run_own("gpu", work, model, args.threads, args.gpu_repeats)
    finally:
        if temp:
            shutil.rmtree(work, ignore_errors=True)
    if gpu_info.get("gpu"):
        gpu = (
            f"{gpu_info['gpu']}: {gpu_info['volumes_per_s']:.2f} volumes/s over "
            f"{args.gpu_repeats} harmonizations, {gpu_info['gpu_peak_mib']:.0f} MiB peak"
        )
    else:
        gpu = "no GPU (torch.cuda.is_available() is False)"
    zooms = "x".join(f"{z:g}" for z in img.header.get_zooms()[:3])
    header = (
        f"## Pipeline stages for one head: {args.t1w.name} ({'x'.join(map(str, img.shape))} "
        f"voxels of {zooms} mm), template grid {args.resolution} mm, {args.threads} threads, "
        f"each stage in a fresh process"
    )
    text = markdown(rows, header, gpu)
    print(text)
    if args.out:
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "speed.md").write_text(text)
        with open(args.out / "speed.csv", "w", newline="") as fh:
            writer = csv.DictWriter(fh, fieldnames=["key", "stage", "seconds", "peak_mib", "note"])
            writer.writeheader()
            writer.writerows(rows)
        (args.out / "speed_gpu.json").write_text(json.dumps(gpu_info, indent=2) + "\n")
    return 0


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return run(args)
    except BenchError as exc:
        print(f"bench_speed.py: error: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    raise SystemExit(main())

"""Benchmark of the ants preprocessing backend: time and peak memory per stage, alignment NCC.

Each stage runs in its own fresh process, so its peak resident memory (``ru_maxrss``) is that
stage's own, ITK allocations included (tracemalloc would only see Python's). The baseline row
is a process that only imports ants, nibabel and brainextractor.

    python benchmarks/bench_preproc.py                      # ../shared/data, 10 IXI heads
    python benchmarks/bench_preproc.py --n-ixi 3 --resolution 2

Prints markdown tables; nothing is written outside --work (a temporary folder by default).
"""

from __future__ import annotations

import argparse
import concurrent.futures as cf
import multiprocessing as mp
import os
import resource
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

STAGES = ("reorient", "n4", "brain_extraction", "affine", "alignment_ncc")


def _stage(name: str, raw: str, work: str, resolution: int, threads: int):
    """Run one stage in this (fresh) process; return (seconds, peak RSS MiB, result)."""
    os.environ["ITK_GLOBAL_DEFAULT_NUMBER_OF_THREADS"] = str(threads)
    from pipeline.interfaces import ants as A
    from pipeline.qc import alignment_ncc
    from pipeline.templates import get_template

    tpl = get_template("ants", resolution)
    w = Path(work)
    files = {
        "ro": w / "reoriented.nii.gz",
        "n4": w / "n4.nii.gz",
        "bias": w / "bias.nii.gz",
        "brain": w / "brain.nii.gz",
        "mask": w / "brainmask.nii.gz",
        "out": w / f"space-template_res-{resolution}.nii.gz",
        "xfm": w / f"xfm_res-{resolution}.txt",
    }
    result = None
    start = time.perf_counter()
    if name == "baseline":
        pass
    elif name == "reorient":
        A.reorient_to_std(raw, files["ro"])
    elif name == "n4":
        A.n4_bias_correct(files["ro"], files["n4"], files["bias"])
    elif name == "brain_extraction":
        A.extract_brain(files["n4"], files["brain"], files["mask"])
    elif name == "affine":
        A.affine_to_template(
            files["brain"], files["n4"], tpl.brain, tpl.grid, files["out"], files["xfm"]
        )
    elif name == "alignment_ncc":
        result = alignment_ncc(files["out"], tpl)
    seconds = time.perf_counter() - start
    peak_mib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0
    return seconds, peak_mib, result


def run_stage(name: str, raw: Path, work: Path, resolution: int, threads: int):
    ctx = mp.get_context("spawn")
    with cf.ProcessPoolExecutor(max_workers=1, mp_context=ctx) as pool:
        return pool.submit(_stage, name, str(raw), str(work), resolution, threads).result()


def run_head(raw: Path, work: Path, resolution: int, threads: int) -> dict:
    work.mkdir(parents=True, exist_ok=True)
    return {s: run_stage(s, raw, work, resolution, threads) for s in STAGES}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=REPO.parent / "shared" / "data")
    parser.add_argument("--n-ixi", type=int, default=10)
    parser.add_argument("--resolution", type=int, default=1, choices=(1, 2))
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--work", type=Path, default=None)
    args = parser.parse_args(argv)

    philips = args.data / "philips-3t-1mm" / "sub-01" / "anat" / "sub-01_T1w.nii.gz"
    ixi = sorted((args.data / "ixi-hh").glob("sub-*/anat/sub-*_T1w.nii.gz"))[: args.n_ixi]
    if not philips.is_file() and not ixi:
        print(f"error: no heads under {args.data}", file=sys.stderr)
        return 1
    work = args.work or Path(tempfile.mkdtemp(prefix="bench-preproc-"))
    os.environ.setdefault("DISARM_CACHE", str(work / "cache"))
    heads = ([("philips-3t-1mm", philips)] if philips.is_file() else []) + [
        (p.name.split("_")[0], p) for p in ixi
    ]

    import nibabel as nb

    base_s, base_mib, _ = run_stage("baseline", heads[0][1], work, args.resolution, 1)
    results = {}
    for label, raw in heads:
        t0 = time.perf_counter()
        results[label] = run_head(raw, work / label, args.resolution, args.threads)
        print(f"# {label}: {time.perf_counter() - t0:.0f} s", file=sys.stderr, flush=True)

    print(
        f"\n## ants backend, template resolution {args.resolution} mm, "
        f"{args.threads} ITK threads, stages in fresh processes\n"
    )
    print(f"Baseline process (imports only): peak RSS {base_mib:.0f} MiB\n")
    detailed = [h for h in heads[:2]]
    for label, raw in detailed:
        img = nb.load(raw)
        zooms = "x".join(f"{z:g}" for z in img.header.get_zooms()[:3])
        print(f"### {label} ({'x'.join(map(str, img.shape))} voxels of {zooms} mm)\n")
        print("| stage | wall time (s) | peak RSS (MiB) |")
        print("|---|---:|---:|")
        total = 0.0
        for stage in STAGES:
            s, mib, _ = results[label][stage]
            total += s
            print(f"| {stage} | {s:.1f} | {mib:.0f} |")
        print(f"| **total** | **{total:.1f}** | |\n")

    print("### Alignment NCC (good > 0.8; FINDINGS: good 0.82-0.90, failed 0.45-0.78)\n")
    print("| image | NCC | total time (s) | max stage peak RSS (MiB) |")
    print("|---|---:|---:|---:|")
    scores = []
    for label, _ in heads:
        res = results[label]
        ncc = res["alignment_ncc"][2]
        scores.append(ncc)
        total = sum(v[0] for v in res.values())
        peak = max(v[1] for v in res.values())
        print(f"| {label} | {ncc:.3f} | {total:.1f} | {peak:.0f} |")
    import statistics

    print(
        f"\nNCC: min {min(scores):.3f}, median {statistics.median(scores):.3f}, "
        f"max {max(scores):.3f}; {sum(s > 0.8 for s in scores)}/{len(scores)} above 0.8"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

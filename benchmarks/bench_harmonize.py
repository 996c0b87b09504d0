"""Harmonization time and peak memory of the DISARM configurations (and training speed).

For each configuration a fresh Python process builds a model (random weights, or a trained
model directory with ``--model``), loads one 182x218x182 volume (the 1 mm MNI template grid),
and harmonizes it (scanner-free) on ``--threads`` CPU threads. Reported: the time of the
first harmonization call (what one pipeline node pays after loading), the best of
``--repeats`` calls, and the process's peak RSS (``ru_maxrss``: Python + torch + data).

    python benchmarks/bench_harmonize.py                      # reference vs fast
    python benchmarks/bench_harmonize.py --train 64 96 128    # + s/iteration of training

``--train`` times training iterations of the fast configuration (batch 2, patches of the
given sides, bf16 off) with the same fresh-process protocol.

``--command`` times the whole ``disarm-harmonize IN.nii.gz OUT.nii.gz --nthreads THREADS``
command (the shipped model, or ``--model``) on a synthetic head on that grid (an ellipsoid
of smooth texture in faint noise), best of ``--repeats`` fresh processes, and splits one run
into its stages (imports, reading, loading the model, harmonizing, writing image and sidecar)
in a fresh process:

    python benchmarks/bench_harmonize.py --configs --command
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

SHAPE = (182, 218, 182)

_HARMONIZE = r"""
import json, resource, sys, time
import numpy as np, nibabel as nib, torch
from scipy import ndimage
torch.set_num_threads({threads})
from models.checkpoint import write_model_dir
from models.disarm import Disarm
from models.harmonize import Harmonizer
from models.networks import get_config
model_dir = {model!r}
if not model_dir:
    torch.manual_seed(0)
    cfg = get_config({config!r}, n_scanners=5)
    m = Disarm(cfg)
    if cfg.output == "affine":
        torch.nn.init.normal_(m.gen.head.weight, 0, 0.02)
    names = [f"s{{i}}" for i in range(5)]
    card = {{"name": "bench", "config": cfg.to_dict(), "scanners": names,
            "scanner_codes": {{n: [0.0] * cfg.z_dim for n in names}}}}
    model_dir = {tmp!r} + "/" + {config!r}
    write_model_dir(model_dir, m.state_dict(), card)
    del m
h = Harmonizer.from_dir(model_dir, device="cpu")
rng = np.random.default_rng(0)
data = ndimage.gaussian_filter(rng.random({shape}, dtype=np.float32), 2) * 1000
img = nib.Nifti1Image(data.astype(np.float32), np.diag([-1.0, 1.0, 1.0, 1.0]))
times = []
for _ in range({repeats}):
    t = time.perf_counter(); h.harmonize(img); times.append(time.perf_counter() - t)
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
print(json.dumps({{"first": times[0], "best": min(times), "peak_mb": peak,
                  "config": h.cfg.name}}))
"""

_TRAIN = r"""
import json, resource, time
import torch
torch.set_num_threads({threads})
from models.disarm import Disarm, one_hot
from models.trainer import DisarmTrainer
from models.networks import get_config
torch.manual_seed(0)
m = Disarm(get_config("fast", n_scanners=5))
tr = DisarmTrainer(m, 1000)
P = {patch}
xa, xb = torch.rand(1, 1, P, P, P) * 2 - 1, torch.rand(1, 1, P, P, P) * 2 - 1
tr.step(xa, xb, one_hot([0], 5), one_hot([1], 5))  # warm-up (oneDNN primitive creation)
times = []
for _ in range({repeats}):
    t = time.perf_counter(); tr.step(xa, xb, one_hot([0], 5), one_hot([1], 5))
    times.append(time.perf_counter() - t)
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
print(json.dumps({{"mean": sum(times) / len(times), "best": min(times), "peak_mb": peak}}))
"""


_HEAD = r"""
import sys
import nibabel as nib, numpy as np
from scipy import ndimage
shape = {shape}
rng = np.random.default_rng(0)
grid = np.indices(shape, dtype=np.float32)
r2 = sum(((g - n / 2) / (0.42 * n)) ** 2 for g, n in zip(grid, shape))
tex = ndimage.gaussian_filter(rng.random(shape, dtype=np.float32), 2)
data = np.where(r2 < 1, 300 + 2000 * tex, 20 * rng.random(shape, dtype=np.float32))
affine = np.diag([-1.0, 1.0, 1.0, 1.0])
affine[:3, 3] = [90, -126, -72]
nib.save(nib.Nifti1Image(data.astype(np.float32), affine), sys.argv[1])
"""

_STAGES = r"""
import time
t0 = time.perf_counter()
import json, sys
import nibabel as nib, numpy as np, torch
from models.atomic import atomic_path, write_json_atomic
from models.harmonize import Harmonizer
t1 = time.perf_counter()
torch.set_num_threads({threads})
img = nib.load({src!r})  # read once, here: harmonize would read the file's dataobj again
img = nib.Nifti1Image(np.asarray(img.dataobj, dtype=np.float32), img.affine, img.header)
t2 = time.perf_counter()
h = Harmonizer.from_dir({model!r} or None, device="cpu")
t3 = time.perf_counter()
out, meta = h.harmonize(img)
t4 = time.perf_counter()
with atomic_path({dst!r}, suffix=".nii.gz") as tmp:
    nib.save(out, str(tmp))
write_json_atomic({dst!r}.replace(".nii.gz", ".json"), meta, sort_keys=False)
t5 = time.perf_counter()
print(json.dumps({{"imports": t1 - t0, "read": t2 - t1, "load model": t3 - t2,
                  "harmonize": t4 - t3, "write": t5 - t4}}))
"""


def _command(args: argparse.Namespace, tmp: str) -> None:
    """Time the disarm-harmonize command, whole and by stage (``--command``)."""
    import time

    src, dst = f"{tmp}/sub-01_T1w.nii.gz", f"{tmp}/sub-01_desc-harmonized_T1w.nii.gz"
    subprocess.run([sys.executable, "-c", _HEAD.format(shape=SHAPE), src], check=True)
    cmd = [sys.executable, "-m", "pipeline.cli.harmonize", src, dst]
    cmd += ["--nthreads", str(args.threads)] + (["--model", args.model] if args.model else [])
    times = []
    for _ in range(args.repeats):
        t = time.perf_counter()
        subprocess.run(cmd, check=True, capture_output=True, cwd=Path(__file__).parents[1])
        times.append(time.perf_counter() - t)
    code = _STAGES.format(threads=args.threads, src=src, dst=dst, model=args.model)
    stages = _run(code)
    print(f"\n`disarm-harmonize` on a synthetic {'x'.join(map(str, SHAPE))} head, scanner-free, "
          f"{args.threads} threads, {args.model or 'the shipped model'}\n")  # fmt: skip
    print(f"| whole command, best of {args.repeats} (s) | " + " | ".join(stages) + " |")
    print("|---" * (len(stages) + 1) + "|")
    print(f"| {min(times):.2f} | " + " | ".join(f"{v:.2f}" for v in stages.values()) + " |")


def _run(code: str) -> dict:
    res = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        cwd=Path(__file__).resolve().parents[1],
    )
    if res.returncode != 0:
        raise SystemExit(f"benchmark process failed:\n{res.stderr[-3000:]}")
    return json.loads(res.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--configs", nargs="*", default=["reference", "fast"])
    p.add_argument("--model", default="", help="a trained model directory to time as well")
    p.add_argument("--train", nargs="*", type=int, default=None, metavar="PATCH")
    p.add_argument("--command", action="store_true", help="time disarm-harmonize as a whole")
    args = p.parse_args(argv)

    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        runs = [(c, "") for c in args.configs] + ([("trained", args.model)] if args.model else [])
        for config, model in runs:
            code = _HARMONIZE.format(threads=args.threads, model=model, config=config, tmp=tmp,
                                     shape=SHAPE, repeats=args.repeats)  # fmt: skip
            r = _run(code)
            rows.append((config if not model else f"{model} ({r['config']})", r))
        if args.command:
            _command(args, tmp)
    if rows:
        print(f"Harmonization of one {'x'.join(map(str, SHAPE))} volume, scanner-free, "
              f"{args.threads} CPU threads, fresh process per row\n")  # fmt: skip
        print(f"| configuration | first call (s) | best of {args.repeats} (s) | peak RSS (MB) |")
        print("|---|---|---|---|")
        for name, r in rows:
            print(f"| {name} | {r['first']:.2f} | {r['best']:.2f} | {r['peak_mb']:.0f} |")

    if args.train:
        print(
            f"\nTraining iteration of the fast configuration (batch 2, {args.threads} threads)\n"
        )
        print("| patch | mean s/it | best s/it | peak RSS (MB) |")
        print("|---|---|---|---|")
        for patch in args.train:
            r = _run(_TRAIN.format(threads=args.threads, patch=patch, repeats=args.repeats))
            print(f"| {patch}^3 | {r['mean']:.2f} | {r['best']:.2f} | {r['peak_mb']:.0f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())

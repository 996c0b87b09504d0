"""Harmonization quality of DISARM against simple baselines, on simulated travelling heads.

Real heads, preprocessed by this pipeline (``--deriv``: an existing derivatives folder; else
the pipeline is run with ``--harmonize none`` into ``--work``), are "acquired" on K simulated
scanners (:mod:`models.simulate`; default: the held-out profiles, never seen in training).
Every simulated image is then harmonized by each method:

* ``none``: the simulated image as it is;
* ``zscore``: (x - mean) / sd inside the brain mask (intensity-normalization);
* ``histmatch``: ``skimage.exposure.match_histograms`` of the whole volume to one reference
  image: the reference head simulated on the target scanner (below);
* ``nyul``: Nyul & Udupa piecewise-linear landmark standardization (intensity-normalization),
  standard scale learned from the reference head simulated on every training scanner;
* ``whitestripe``: WhiteStripe (Shinohara et al. 2014; intensity-normalization, T1 mode):
  z-score by the normal-appearing white-matter stripe, inside the brain mask;
* ``disarm-free`` / ``disarm-target``: :class:`models.harmonize.Harmonizer`, scanner-free
  mode and target mode (target = the first training scanner of the model card).

Metrics, all inside the template brain mask (``pipeline.reports.template_mask``: the brain
mask of the derivatives' template space, resampled to their grid if needed):

* travelling-head consistency: mean SSIM and mean absolute difference (MAD) over all pairs of
  the K harmonized versions of one head. Common scale: per method and head, the 1st and 99th
  percentiles of the K outputs pooled inside the mask go to 0 and 1 (one map for all K, so
  gain/offset differences between scanners still count, while methods' units do not);
* anatomy kept: SSIM between the clean head and each harmonized version, each mapped by its own
  1st/99th mask percentiles to 0/1 (a pure rescaling costs nothing);
* scanner signal left, on a per-method scale (1st/99th percentiles of all that method's outputs
  pooled, heads never used): the k-sample Anderson-Darling test across the K scanners
  (``scipy.stats.anderson_ksamp``, permutation p) on two per-image summaries, the median and
  the interquartile range of the brain intensities (level and spread/contrast); and the
  accuracy of a logistic regression predicting the scanner from the 32-bin brain histogram,
  cross-validated with ``GroupKFold`` by head (a head is never in train and test; chance 1/K).

SSIM: ``skimage.metrics.structural_similarity`` (7-voxel window, data_range 1) on the
brain-mask bounding box, its map averaged inside the mask. One head is processed at a time and
kept cropped to that box, so memory stays well under 8 GB on 1 mm data.

    python benchmarks/bench_quality.py --deriv /work/scratch/ixi-deriv \
        --model /work/scratch/train-default/model --out bench-out

Default heads: with a model card that lists its training subjects, the first ``--n-heads``
participants (sorted) that are not among them; ``--participant-label`` picks them explicitly.
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import shutil
import subprocess
import sys
import tempfile
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from itertools import combinations
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

DEFAULT_BIDS = REPO.parent / "shared" / "data" / "ixi-hh"
METHODS = ("none", "zscore", "histmatch", "nyul", "whitestripe", "disarm-free", "disarm-target")
DISARM_METHODS = ("disarm-free", "disarm-target")
#: Percentiles of the brain voxels kept per image (every 0.1%): enough for the summaries,
#: the histograms and the pooled per-method scale, without keeping the images.
QUANTILES = np.linspace(0.0, 100.0, 1001)
HIST_BINS, HIST_RANGE = 32, (-0.25, 1.25)
N_PERMUTATIONS = 2000

Volume = np.ndarray
MethodFn = Callable[[Volume, np.ndarray], Volume]  # (image, brain mask) -> harmonized image


class BenchError(Exception):
    """A user mistake: printed as one line, exit code 1."""


@dataclass
class Head:
    label: str  #: participant label, no ``sub-``
    item: object  #: pipeline.reports.ImageOutputs of its preprocessed image


@dataclass
class Plan:
    """What to evaluate, settled from the command line and the model card."""

    args: argparse.Namespace
    profiles: list  #: simulated evaluation scanners (ScannerProfile)
    methods: list[str]
    harmonizer: object | None
    target: str | None  #: DISARM target scanner (first of the card)
    train_profiles: list  #: the model's training scanners (Nyul population, reference)
    heads: list[str]
    reference: str  #: participant whose head makes the histmatch reference and Nyul population


# --------------------------------------------------------------------------- inputs


def _label(text: str) -> str:
    return text[4:] if text.startswith("sub-") else text


def bids_participants(bids_dir: Path) -> list[str]:
    """Sorted participant labels (folders ``sub-*``) of a BIDS dataset."""
    if not bids_dir.is_dir():
        raise BenchError(f"BIDS folder not found: {bids_dir}")
    labels = sorted(p.name[4:] for p in bids_dir.glob("sub-*") if p.is_dir())
    if not labels:
        raise BenchError(f"no sub-* folder in {bids_dir}")
    return labels


def preprocessed(deriv: Path) -> dict[str, object]:
    """``{label: ImageOutputs}``: the first preprocessed T1w of each participant in ``deriv``."""
    from pipeline.reports import collect_outputs

    found: dict[str, object] = {}
    for item in collect_outputs(deriv):
        found.setdefault(item.subject, item)
    return found


def choose_heads(
    labels: list[str],
    n_heads: int,
    explicit: list[str] | None,
    exclude: list[str],
) -> list[str]:
    """Explicit labels, else the first ``n_heads`` of ``labels`` not in ``exclude``."""
    if explicit:
        missing = [x for x in explicit if x not in labels]
        if missing:
            raise BenchError(f"participant(s) not found: {', '.join(missing)}")
        return list(explicit)
    chosen = [x for x in labels if x not in set(exclude)][:n_heads]
    if len(chosen) < 2:
        raise BenchError(
            f"need at least 2 heads, found {len(chosen)} (after excluding {len(exclude)} "
            "training participant(s))"
        )
    return chosen


def run_preprocessing(bids: Path, labels: list[str], work: Path, resolution: int) -> Path:
    """Run ``disarm-pipeline ... --harmonize none`` on ``labels``; return the derivatives."""
    out = work / "deriv"
    cmd = [
        sys.executable, "-m", "pipeline.cli.run", str(bids), str(out), "participant",
        "-w", str(work / "nipype"), "--harmonize", "none", "--no-reports",
        "--backend", "ants", "--output-resolution", str(resolution),
        "--nprocs", "2", "--omp-nthreads", "1", "--participant-label", *labels,
    ]  # fmt: skip
    print(f"# preprocessing {len(labels)} head(s) with disarm-pipeline", file=sys.stderr)
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO)
    if proc.returncode != 0:
        tail = (proc.stderr.strip().splitlines() or ["(no message)"])[-1]
        raise BenchError(f"preprocessing failed (exit {proc.returncode}): {tail}")
    return out


def load_head(head: Head):
    """(nibabel image, float32 data, boolean brain mask on its grid)."""
    import nibabel as nib

    from pipeline.reports import template_mask

    img = nib.load(str(head.item.preproc))
    data = np.nan_to_num(np.asarray(img.dataobj, dtype=np.float32)).reshape(img.shape[:3])
    mask_img, _ = template_mask(head.item, img)
    mask = np.asarray(mask_img.dataobj) > 0
    if mask.sum() < 100:
        raise BenchError(f"the template brain mask is (almost) empty on {head.item.preproc}")
    return img, data, mask


def brain_box(mask: np.ndarray, margin: int = 3) -> tuple[slice, ...]:
    """Bounding box of ``mask`` grown by ``margin`` voxels (half the SSIM window)."""
    idx = np.nonzero(mask)
    return tuple(
        slice(max(int(i.min()) - margin, 0), min(int(i.max()) + margin + 1, n))
        for i, n in zip(idx, mask.shape, strict=True)
    )


# --------------------------------------------------------------------------- profiles, model


def eval_profiles(spec: str, n_scanners: int | None):
    from models.simulate import load_profiles, training_profiles, unseen_profiles

    if spec == "unseen":
        profiles = unseen_profiles()
    elif spec == "training":
        profiles = training_profiles()
    else:
        try:
            profiles = load_profiles(spec)
        except ValueError as exc:
            raise BenchError(str(exc)) from None
    if n_scanners:
        profiles = profiles[:n_scanners]
    if len(profiles) < 2:
        raise BenchError("need at least 2 scanner profiles")
    return profiles


def card_training_profiles(card: dict | None):
    """Training scanner profiles of the model (card's simulated profiles, else the defaults)."""
    from models.simulate import ScannerProfile, training_profiles

    if card:
        info = card.get("scanner_info") or {}
        profs = [info.get(s, {}).get("profile") for s in card.get("scanners", [])]
        if profs and all(profs):
            return [ScannerProfile.from_dict(p) for p in profs]
    return training_profiles()


def card_subjects(card: dict | None) -> list[str]:
    subjects = ((card or {}).get("training") or {}).get("data", {}).get("subjects") or []
    return [_label(s) for s in subjects]


# --------------------------------------------------------------------------- methods


def build_methods(
    names: list[str],
    reference: Volume,
    population: list[Volume],
    ref_mask: np.ndarray,
    harmonizer,
    target: str | None,
    affine: np.ndarray,
) -> dict[str, MethodFn]:
    """One callable per method; the population methods are fitted here, once."""
    import nibabel as nib
    from intensity_normalization import NyulNormalizer, WhiteStripeNormalizer, ZScoreNormalizer
    from intensity_normalization.adapters.images import NumpyImageAdapter as Adapter
    from skimage.exposure import match_histograms

    def mask_image(mask: np.ndarray) -> Adapter:
        return Adapter(mask.astype(np.float32))

    def zscore(x: Volume, mask: np.ndarray) -> Volume:
        norm, m = ZScoreNormalizer(), mask_image(mask)
        return norm.fit_transform(Adapter(x), m).get_data()

    def whitestripe(x: Volume, mask: np.ndarray) -> Volume:
        norm, m = WhiteStripeNormalizer(), mask_image(mask)
        return norm.fit_transform(Adapter(x), m).get_data()

    nyul_norm = None
    if "nyul" in names:
        nyul_norm = NyulNormalizer()
        nyul_norm.fit_population(
            [Adapter(v) for v in population], [mask_image(ref_mask)] * len(population)
        )

    def nyul(x: Volume, mask: np.ndarray) -> Volume:
        return nyul_norm.transform(Adapter(x), mask_image(mask)).get_data()

    def histmatch(x: Volume, mask: np.ndarray) -> Volume:
        return match_histograms(x, reference)

    def disarm(mode: str) -> MethodFn:
        def run(x: Volume, mask: np.ndarray) -> Volume:
            out, _ = harmonizer.harmonize(
                nib.Nifti1Image(x, affine), mode=mode, target=target if mode == "target" else None
            )
            return np.asarray(out.dataobj, dtype=np.float32)

        return run

    table: dict[str, MethodFn] = {
        "none": lambda x, mask: x,
        "zscore": zscore,
        "histmatch": histmatch,
        "nyul": nyul,
        "whitestripe": whitestripe,
        "disarm-free": disarm("scanner-free"),
        "disarm-target": disarm("target"),
    }
    return {n: table[n] for n in names}


# --------------------------------------------------------------------------- metrics


def to_unit(x: Volume, lo: float, hi: float) -> Volume:
    return ((x - lo) / (hi - lo if hi > lo else 1.0)).astype(np.float32)


def masked_ssim(a: Volume, b: Volume, mask: np.ndarray) -> float:
    """SSIM map of two volumes on the unit scale (data_range 1), averaged inside ``mask``."""
    from skimage.metrics import structural_similarity

    _, smap = structural_similarity(a, b, data_range=1.0, full=True)
    return float(smap[mask].mean())


def head_metrics(clean: Volume, outputs: dict[str, list[Volume]], mask: np.ndarray) -> dict:
    """Travelling-head consistency and anatomy kept of every method for one (cropped) head."""
    lo, hi = np.percentile(clean[mask], [1, 99])
    clean_u = to_unit(clean, lo, hi)
    result = {}
    for method, vols in outputs.items():
        pooled = np.concatenate([v[mask] for v in vols])
        plo, phi = np.percentile(pooled, [1, 99])
        common = [to_unit(v, plo, phi) for v in vols]
        pairs = list(combinations(range(len(vols)), 2))
        own = []
        for v in vols:
            vlo, vhi = np.percentile(v[mask], [1, 99])
            own.append(masked_ssim(clean_u, to_unit(v, vlo, vhi), mask))
        ssims = [masked_ssim(common[a], common[b], mask) for a, b in pairs]
        mads = [np.abs(common[a] - common[b])[mask].mean() for a, b in pairs]
        result[method] = {
            "pair_ssim": float(np.mean(ssims)),
            "pair_mad": float(np.mean(mads)),
            "clean_ssim": float(np.mean(own)),
        }
    return result


def anderson_p(groups: list[np.ndarray], seed: int = 0) -> float:
    """Permutation p of the k-sample Anderson-Darling test (1.0 when all values are equal)."""
    from scipy import stats

    if np.unique(np.concatenate(groups)).size < 2:
        return 1.0
    method = stats.PermutationMethod(n_resamples=N_PERMUTATIONS, rng=np.random.default_rng(seed))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return float(stats.anderson_ksamp(groups, method=method).pvalue)


def scanner_signal(records: list[dict], n_scanners: int, seed: int = 0) -> dict:
    """AD p (median, IQR) and grouped-CV scanner accuracy from per-image brain quantiles."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import GroupKFold, cross_val_score
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    q = np.stack([r["quantiles"] for r in records])
    lo, hi = np.percentile(q, [1, 99])
    u = (q - lo) / (hi - lo if hi > lo else 1.0)
    scanners = np.array([r["scanner"] for r in records])
    heads = np.array([r["head"] for r in records])
    median = u[:, 500]
    iqr = u[:, 750] - u[:, 250]
    groups = lambda v: [v[scanners == s] for s in range(n_scanners)]  # noqa: E731
    feats = np.stack([np.histogram(row, HIST_BINS, HIST_RANGE)[0] / row.size for row in u])
    n_heads = len(set(heads.tolist()))
    clf = make_pipeline(StandardScaler(), LogisticRegression(max_iter=5000))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # constant features, small folds
        acc = cross_val_score(
            clf, feats, scanners, groups=heads, cv=GroupKFold(n_splits=min(5, n_heads))
        )
    return {
        "ad_p_median": anderson_p(groups(median), seed),
        "ad_p_iqr": anderson_p(groups(iqr), seed),
        "scanner_acc": float(acc.mean()),
    }


# --------------------------------------------------------------------------- main loop


def evaluate(
    heads: list[Head],
    profiles,
    methods: dict[str, MethodFn],
    seed: int,
) -> tuple[list[dict], dict[str, list[dict]], dict[str, float]]:
    """-> (per-head rows, per-method per-image records, seconds per image per method)."""
    from models.simulate import simulate_scanner

    rows: list[dict] = []
    records: dict[str, list[dict]] = {m: [] for m in methods}
    seconds: dict[str, float] = dict.fromkeys(methods, 0.0)
    for i, head in enumerate(heads):
        t0 = time.perf_counter()
        img, clean, mask = load_head(head)
        vox = tuple(float(v) for v in img.header.get_zooms()[:3])
        box = brain_box(mask)
        outputs: dict[str, list[Volume]] = {m: [] for m in methods}
        for k, prof in enumerate(profiles):
            sim = simulate_scanner(clean, prof, voxel_size_mm=vox, seed=seed + 1000 * i + k)
            for name, fn in methods.items():
                t = time.perf_counter()
                out = np.asarray(fn(sim, mask), dtype=np.float32)
                seconds[name] += time.perf_counter() - t
                out = np.ascontiguousarray(out[box])
                outputs[name].append(out)
                records[name].append(
                    {
                        "head": i,
                        "scanner": k,
                        "quantiles": np.percentile(out[mask[box]], QUANTILES),
                    }
                )
            del sim
        metrics = head_metrics(clean[box], outputs, mask[box])
        for name, values in metrics.items():
            rows.append({"method": name, "head": head.label, **values})
        del outputs
        print(
            f"# head {i + 1}/{len(heads)} sub-{head.label}: {time.perf_counter() - t0:.0f} s",
            file=sys.stderr,
            flush=True,
        )
    n_images = len(heads) * len(profiles)
    return rows, records, {m: s / n_images for m, s in seconds.items()}


COLUMNS = (
    ("pair_ssim", "pair SSIM ↑"),
    ("pair_mad", "pair MAD ↓"),
    ("clean_ssim", "SSIM to clean ↑"),
    ("ad_p_median", "AD p median ↑"),
    ("ad_p_iqr", "AD p IQR ↑"),
    ("scanner_acc", "scanner acc. ↓"),
    ("sec_per_image", "s/image"),
)


def summarize(rows: list[dict], signal: dict[str, dict], seconds: dict[str, float]) -> list[dict]:
    table = []
    for method in signal:
        mine = [r for r in rows if r["method"] == method]
        row: dict = {"method": method}
        for key in ("pair_ssim", "pair_mad", "clean_ssim"):
            v = np.array([r[key] for r in mine])
            row[key], row[f"{key}_sd"] = float(v.mean()), float(v.std())
        row.update(signal[method])
        row["sec_per_image"] = seconds[method]
        table.append(row)
    return table


def _fmt(row: dict, key: str) -> str:
    v = row[key]
    if key == "sec_per_image":
        return f"{v:.2f}"
    if key.startswith("ad_p"):
        return f"{v:.3f}" if not math.isnan(v) else "n/a"
    if f"{key}_sd" in row:
        return f"{v:.4f} ± {row[f'{key}_sd']:.4f}"
    return f"{v:.3f}"


def markdown(table: list[dict], header: str) -> str:
    lines = [
        header,
        "",
        "| method | " + " | ".join(t for _, t in COLUMNS) + " |",
        "|---|" + "---:|" * len(COLUMNS),
    ]
    for row in table:
        lines.append(f"| {row['method']} | " + " | ".join(_fmt(row, k) for k, _ in COLUMNS) + " |")
    return "\n".join(lines) + "\n"


def write_outputs(out: Path, table: list[dict], rows: list[dict], text: str, info: dict) -> None:
    out.mkdir(parents=True, exist_ok=True)
    (out / "quality.md").write_text(text)
    with open(out / "quality.csv", "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(table[0]))
        writer.writeheader()
        writer.writerows(table)
    with open(out / "quality_per_head.csv", "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    (out / "quality_settings.json").write_text(json.dumps(info, indent=2) + "\n")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="bench_quality.py", description=__doc__.splitlines()[0])
    p.add_argument("bids_dir", nargs="?", type=Path, default=DEFAULT_BIDS, help="BIDS dataset")
    p.add_argument("--deriv", type=Path, help="existing disarm-pipeline derivatives to reuse")
    p.add_argument("--model", type=Path, help="DISARM model folder (default: the shipped one)")
    p.add_argument(
        "--profiles",
        default="unseen",
        help="simulated scanners: 'unseen' (held-out defaults), 'training', or a JSON file",
    )
    p.add_argument("--n-scanners", type=int, default=None, help="use the first K profiles only")
    p.add_argument("--n-heads", type=int, default=6, help="heads to evaluate (default 6)")
    p.add_argument("--participant-label", nargs="+", type=_label, help="heads to evaluate")
    p.add_argument(
        "--exclude-participant-label",
        nargs="+",
        type=_label,
        default=None,
        help="never evaluate these (default: the training subjects in the model card)",
    )
    p.add_argument("--reference-participant", type=_label, help="head for histmatch and Nyul")
    p.add_argument("--methods", nargs="+", choices=METHODS, default=list(METHODS))
    p.add_argument("--resolution", type=int, choices=(1, 2), default=1, help="when preprocessing")
    p.add_argument("--work", type=Path, help="work folder when preprocessing (default: temp)")
    p.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", type=Path, help="write quality.md/.csv here")
    return p


def run(args: argparse.Namespace) -> int:
    import torch

    torch.set_num_threads(args.threads)
    if args.n_heads < 2:
        raise BenchError("--n-heads must be at least 2")
    profiles = eval_profiles(args.profiles, args.n_scanners)
    labels = bids_participants(args.bids_dir)
    if args.deriv is not None and not args.deriv.is_dir():
        raise BenchError(f"derivatives folder not found: {args.deriv}")
    harmonizer, card, target = None, None, None
    methods = list(dict.fromkeys(args.methods))
    if any(m in DISARM_METHODS for m in methods):
        from models.checkpoint import CheckpointError
        from models.harmonize import Harmonizer

        try:
            harmonizer = Harmonizer.from_dir(args.model, device="cpu")
        except (CheckpointError, ValueError, OSError) as exc:
            raise BenchError(f"cannot load the DISARM model: {exc}") from None
        card = harmonizer.card
        target = harmonizer.scanners[0]
    train_profiles = card_training_profiles(card)

    exclude = args.exclude_participant_label
    if exclude is None:
        exclude = card_subjects(card)
    if args.deriv is not None:
        found = preprocessed(args.deriv)
        labels = [x for x in labels if x in found]
        if not labels:
            raise BenchError(
                f"no preprocessed T1w (desc-preproc) of {args.bids_dir} in {args.deriv}"
            )
    chosen = choose_heads(labels, args.n_heads, args.participant_label, exclude)
    ref = args.reference_participant or next(
        (x for x in labels if x in set(exclude) and x not in chosen),
        next((x for x in labels if x not in chosen), chosen[0]),
    )
    if ref not in labels:
        raise BenchError(f"reference participant not found: {ref}")
    temp = None
    if args.deriv is None:
        work = args.work or Path(tempfile.mkdtemp(prefix="bench-quality-"))
        temp = None if args.work else work
        try:
            deriv = run_preprocessing(args.bids_dir, sorted({*chosen, ref}), work, args.resolution)
        except BenchError:
            if temp:
                shutil.rmtree(temp, ignore_errors=True)
            raise
        found = preprocessed(deriv)
    else:
        deriv = args.deriv
    plan = Plan(args, profiles, methods, harmonizer, target, train_profiles, chosen, ref)
    try:
        return evaluate_and_report(plan, found, deriv)
    finally:
        if temp:
            shutil.rmtree(temp, ignore_errors=True)


def evaluate_and_report(plan: Plan, found: dict[str, object], deriv: Path) -> int:
    """Simulate, harmonize, measure; print the table (and write it with ``--out``)."""
    args, profiles, methods = plan.args, plan.profiles, plan.methods
    harmonizer, target, ref = plan.harmonizer, plan.target, plan.reference
    missing = [x for x in {*plan.heads, ref} if x not in found]
    if missing:
        raise BenchError(f"no preprocessed image of: {', '.join(sorted(missing))}")
    target_profile = plan.train_profiles[0]
    heads = [Head(x, found[x]) for x in plan.heads]
    card = harmonizer.card if harmonizer else {}

    from models.simulate import simulate_scanner

    ref_img, ref_clean, ref_mask = load_head(Head(ref, found[ref]))
    vox = tuple(float(v) for v in ref_img.header.get_zooms()[:3])
    population = [
        simulate_scanner(ref_clean, p, voxel_size_mm=vox, seed=args.seed + 999_000 + j)
        for j, p in enumerate(plan.train_profiles)
    ]
    reference = population[0]  # the reference head on the target (first training) scanner
    fns = build_methods(
        methods, reference, population, ref_mask, harmonizer, target, ref_img.affine
    )
    del ref_clean

    rows, records, seconds = evaluate(heads, profiles, fns, args.seed)
    signal = {m: scanner_signal(records[m], len(profiles), args.seed) for m in methods}
    table = summarize(rows, signal, seconds)
    model_txt = (
        f"{harmonizer.model_dir} ({card.get('name')}, {card.get('training', {}).get('steps')} "
        f"steps, target {target})"
        if harmonizer
        else "none"
    )
    header = (
        f"## Harmonization quality: {len(heads)} heads x {len(profiles)} simulated scanners "
        f"({args.profiles}: {', '.join(p.name for p in profiles)})\n\n"
        f"Heads: {', '.join('sub-' + h.label for h in heads)} of {args.bids_dir.name} "
        f"(from {deriv}); reference head for histmatch/Nyul: sub-{ref} on "
        f"{target_profile.name}. Model: {model_txt}. Chance accuracy: {1 / len(profiles):.3f}."
    )
    text = markdown(table, header)
    print(text)
    if args.out:
        info = {
            "bids_dir": str(args.bids_dir),
            "deriv": str(deriv),
            "heads": [h.label for h in heads],
            "reference": ref,
            "profiles": [p.to_dict() for p in profiles],
            "model": str(harmonizer.model_dir) if harmonizer else None,
            "target": target,
            "seed": args.seed,
        }
        write_outputs(args.out, table, rows, text, info)
    return 0


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return run(args)
    except BenchError as exc:
        print(f"bench_quality.py: error: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    raise SystemExit(main())

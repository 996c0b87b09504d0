"""Settle the plan from the command line, evaluate, report."""

from __future__ import annotations

import argparse
import shutil
import tempfile
from pathlib import Path

import numpy as np

from .common import DISARM_METHODS, NAN, BenchError, Head, Plan
from .evaluation import evaluate
from .inputs import (
    bids_participants,
    card_subjects,
    card_training_profiles,
    choose_heads,
    eval_profiles,
    load_head,
    participant_ages,
    preprocessed,
    run_preprocessing,
)
from .methods import build_methods
from .metrics import biology, pearson, scanner_signal
from .tables import markdown, summarize, write_outputs


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
        simulate_scanner(
            ref_clean, p, voxel_size_mm=vox, seed=args.seed + 999_000 + j, brain_mask=ref_mask
        )
        for j, p in enumerate(plan.train_profiles)
    ]
    reference = population[0]  # the reference head on the target (first training) scanner
    fns = build_methods(
        methods, reference, population, ref_mask, harmonizer, target, ref_img.affine
    )
    del ref_clean

    rows, records, seconds = evaluate(heads, profiles, fns, args.seed, plan.train_profiles)
    signal = {m: scanner_signal(records[m], len(profiles), args.seed) for m in methods}
    known = participant_ages(args.bids_dir)
    ages = np.array([known.get(h.label, NAN) for h in heads])
    clean_gm = np.array([r["gm_frac"] for r in rows if r["method"] == "clean"])
    bio = {"clean": {"gm_age_r": pearson(clean_gm, ages)}}
    bio.update({m: biology(records[m], clean_gm, ages) for m in methods})
    table = summarize(rows, signal, seconds, bio)
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
        f" Ages known for {int(np.isfinite(ages).sum())} of {len(heads)} heads."
        + (
            f" Target hit: nearest of {len(plan.train_profiles)} training scanners "
            f"({', '.join(p.name for p in plan.train_profiles)}); chance "
            f"{1 / len(plan.train_profiles):.3f}."
            if "disarm-target" in methods
            else ""
        )
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
            "target_profiles": [p.name for p in plan.train_profiles],
            "ages": {h.label: known.get(h.label) for h in heads},
            "seed": args.seed,
        }
        write_outputs(args.out, table, rows, text, info)
    return 0

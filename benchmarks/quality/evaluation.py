"""The main loop: simulate each head on each scanner, harmonize, measure."""

from __future__ import annotations

import sys
import time

import numpy as np

from .common import NAN, ORACLES, QUANTILES, Head, MethodFn, Volume
from .inputs import brain_box, load_head
from .metrics import head_metrics, head_tissue, nearest_distribution, scanner_quantiles
from .segmentation import tissue_fractions


def evaluate(
    heads: list[Head],
    profiles,
    methods: dict[str, MethodFn],
    seed: int,
    target_profiles: list | None = None,
) -> tuple[list[dict], dict[str, list[dict]], dict[str, float]]:
    """-> (per-head rows, per-method per-image records, seconds per image per method).

    ``target_profiles``: the model's training scanners, target first; with ``disarm-target``
    among ``methods``, each head is also simulated on each of them for the target hit.
    Per-head rows include one ``clean`` row per head (its tissue fractions).
    """
    from models.evaluate import nyquist_energy
    from models.simulate import simulate_scanner

    rows: list[dict] = []
    records: dict[str, list[dict]] = {m: [] for m in methods}
    seconds: dict[str, float] = dict.fromkeys(methods, 0.0)
    check_target = bool(target_profiles) and "disarm-target" in methods
    for i, head in enumerate(heads):
        t0 = time.perf_counter()
        img, clean, mask = load_head(head)
        vox = tuple(float(v) for v in img.header.get_zooms()[:3])
        box = brain_box(mask)
        inside = mask[box]
        gm, wm = tissue_fractions(clean[box], inside)
        rows.append({"method": "clean", "head": head.label, "gm_frac": gm, "wm_frac": wm})
        references = (
            scanner_quantiles(clean, mask, box, target_profiles, vox, seed + 1000 * i + 500)
            if check_target
            else {}
        )
        outputs: dict[str, list[Volume]] = {m: [] for m in methods}
        for k, prof in enumerate(profiles):
            sim = simulate_scanner(
                clean, prof, voxel_size_mm=vox, seed=seed + 1000 * i + k, brain_mask=mask
            )
            sim_energy = nyquist_energy(sim[box], inside)
            for name, fn in methods.items():
                t = time.perf_counter()
                out = fn(sim, mask, clean) if name in ORACLES else fn(sim, mask)
                out = np.asarray(out, dtype=np.float32)
                seconds[name] += time.perf_counter() - t
                out = np.ascontiguousarray(out[box])
                outputs[name].append(out)
                gm, wm = tissue_fractions(out, inside)
                record = {
                    "head": i,
                    "scanner": k,
                    "quantiles": np.percentile(out[inside], QUANTILES),
                    "gm": gm,
                    "wm": wm,
                    "checkerboard": nyquist_energy(out, inside) / sim_energy
                    if sim_energy > 0
                    else NAN,
                }
                if name == "disarm-target" and references:
                    nearest = nearest_distribution(record["quantiles"], references)
                    record["target_hit"] = float(nearest == target_profiles[0].name)
                records[name].append(record)
            del sim
        metrics = head_metrics(clean[box], outputs, inside)
        for name, values in metrics.items():
            mine = [r for r in records[name] if r["head"] == i]
            rows.append({"method": name, "head": head.label, **values, **head_tissue(mine)})
        del outputs
        print(
            f"# head {i + 1}/{len(heads)} sub-{head.label}: {time.perf_counter() - t0:.0f} s",
            file=sys.stderr,
            flush=True,
        )
    n_images = len(heads) * len(profiles)
    return rows, records, {m: s / n_images for m, s in seconds.items()}

"""The harmonization methods compared: baselines and DISARM, one callable each."""

from __future__ import annotations

import numpy as np

from .common import MethodFn, Volume


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

    def oracle_curve(x: Volume, mask: np.ndarray, clean: Volume) -> Volume:
        # the best one global monotone map can do: the version's histogram matched to its
        # own clean head (the truth no harmonizer has); what blur, noise and the bias field
        # leave is beyond any global intensity curve
        return match_histograms(x, clean)

    def oracle_landmarks(x: Volume, mask: np.ndarray, clean: Volume) -> Volume:
        # the same truth through the landmark-curves model's own form: a piecewise-linear
        # curve through the version's 16 head quantiles, each taken to the clean head's
        return _landmark_map(x, clean)

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
        "oracle-curve": oracle_curve,
        "oracle-landmarks": oracle_landmarks,
    }
    return {n: table[n] for n in names}


def _landmark_map(x: Volume, clean: Volume, n: int = 16) -> Volume:
    """x mapped by the piecewise-linear curve that takes its ``n`` head quantiles (as the
    landmark-curves model reads them, on normalized intensities) to the clean head's."""
    import torch

    from models.intensity import HEAD_STRIDE, head_quantiles, normalize, robust_range

    def landmarks(v: Volume) -> tuple[np.ndarray, tuple[float, float]]:
        lo, hi = robust_range(v)
        t = torch.from_numpy(normalize(v, lo, hi, 2.0))[None, None]
        q = head_quantiles(t, n, HEAD_STRIDE)[0].numpy().astype(np.float64)
        return np.concatenate([[-1.0], np.maximum.accumulate(q), [2.0]]), (lo, hi)

    (qx, (lo, hi)), (qc, (clo, chi)) = landmarks(x), landmarks(clean)
    y = np.interp(normalize(x, lo, hi, 2.0), qx, qc)
    return ((y + 1) * (chi - clo) / 2 + clo).astype(np.float32)

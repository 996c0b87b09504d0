"""Group level: the DISARM paper's evaluation on the participant-level outputs.

Images are grouped by scanner (a sidecar field, ``ManufacturersModelName`` by default, or a
``participants.tsv`` column of that name). Each *stage* is one kind of image: ``preproc``
(before harmonization) and every ``harmonized*`` desc found (after). Per stage:

* **Grey levels.** Intensities inside the template brain mask, each image divided by its own
  99th percentile there (``pipeline.figures.normalize_in_mask``), histogrammed on fixed bins
  (0 to 1.25, 125 bins; higher values dropped) and averaged per scanner (the paper's
  Fig. 2/3) -> ``group_intensity.tsv``, ``group_intensity.svg``.
* **k-sample Anderson-Darling test across scanners** (``scipy.stats.anderson_ksamp``).
  Main sample ``image_median``: one value per image, the normalized median brain intensity,
  so images are the independent units; p-value by permutation (9999 resamples, exact when
  fewer partitions exist, seeded). Secondary sample ``voxels``: 1000 normalized brain voxels
  drawn per image (seeded) and pooled per scanner; its p-value is scipy's interpolation,
  capped to [0.001, 0.25], and voxels are not independent (read it as a distance, not a test).
  Scanners with fewer than 2 images are left out; with fewer than 2 scanners left: NaN.
  -> ``group_anderson_darling.tsv``.
* **SSIM** (``skimage.metrics.structural_similarity``, whole 3D grid, 7-voxel window,
  data_range = max - min over the pair) between each preprocessed image and its harmonized
  version, and between random pairs of preprocessed images of different subjects (at most
  100 pairs, seeded) as the floor; both images normalized as above first, so the gain of
  the harmonized output does not count. -> ``group_ssim.tsv``, ``group_ssim.svg``.
* **Total grey-matter volume (TGV)**, when ``participants.tsv`` has ``age``: 3-class Atropos
  segmentation (k-means start, MRF 0.1, 3 iterations; at 2 mm, coarser images untouched,
  finer ones resampled) inside the template brain mask; TGV = sum of the grey-matter
  posterior (the middle class) x voxel volume, in template space, then times the affine's
  Jacobian to native mL (:func:`native_volume_factor`). -> ``group_tgv.tsv``.
* **Age regression** (statsmodels OLS) ``age ~ TGV * C(scanner)``: F-test of the
  TGV x scanner interaction against ``age ~ TGV + C(scanner)``, and RMSE of the full model,
  in-sample and leave-one-out (exact, from the hat matrix). Scanners with fewer than 2 images
  with an age are left out. -> ``group_regression.tsv``, ``group_tgv.svg``.

``group_images.tsv`` lists every image and stage with its scanner and summary values;
``group.html`` shows everything. :func:`format_summary` gives the key numbers as Markdown.
"""

from pipeline.group.core import TABLES, run_group_level
from pipeline.group.inputs import BEFORE
from pipeline.group.report import format_summary
from pipeline.group.stats import N_PERMUTATIONS, N_RANDOM_PAIRS, VOXELS_PER_IMAGE
from pipeline.group.volume import SEGMENTATION_MM, grey_matter_ml, native_volume_factor

__all__ = [
    "BEFORE",
    "N_PERMUTATIONS",
    "N_RANDOM_PAIRS",
    "SEGMENTATION_MM",
    "TABLES",
    "VOXELS_PER_IMAGE",
    "format_summary",
    "grey_matter_ml",
    "native_volume_factor",
    "run_group_level",
]

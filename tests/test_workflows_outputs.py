"""Sidecar notes on the source's resolution against the template grid."""

from __future__ import annotations

import nibabel as nib
import numpy as np

from pipeline.bids import T1wInput
from workflows.outputs import coarse_source_note, fine_source_note, preproc_metadata


def test_thick_slices_are_noted_along_their_axis_only():
    note = coarse_source_note([0.45, 0.45, 6.0], 1.0)
    assert note and "k 6 mm" in note and "i 0.45" not in note
    assert coarse_source_note([1.0, 1.0, 1.2], 1.0) is None
    assert coarse_source_note([1.0, 1.0, 1.0], 2.0) is None


def test_sub_millimetre_sources_get_a_native_space_note():
    note = fine_source_note([0.5, 0.5, 0.5], 1.0)
    assert note and "0.5 mm grid" in note and "two resamplings" in note
    assert fine_source_note([1.0, 1.0, 1.0], 1.0) is None


def test_preproc_sidecar_records_the_source_voxel_size(tmp_path):
    path = tmp_path / "sub-01_T1w.nii.gz"
    affine = np.diag([0.45, 0.45, 6.0, 1.0])
    nib.Nifti1Image(np.zeros((8, 8, 4), np.float32), affine).to_filename(path)
    t1w = T1wInput(path=path, relpath="sub-01/anat/sub-01_T1w.nii.gz", entities={"subject": "01"})
    prep = preproc_metadata(t1w, "ants", "MNI152NLin2009aSym", "nilearn", 1.0)["Preprocessing"]
    assert prep["SourceVoxelSizeMM"] == [0.45, 0.45, 6.0]
    assert (prep["Backend"], prep["BiasCorrection"]) == ("ants", "N4")  # compared with the card
    assert "k 6 mm" in prep["SourceResolutionNote"]


def test_thread_counts_go_where_the_sidecar_describes_the_computation():
    from workflows.outputs import _with_threads

    counts = {"N4": 2, "Registration": 2}
    preproc = _with_threads(
        {"Preprocessing": {"Backend": "ants"}}, counts, note="why", alignment_ncc=0.85
    )
    assert preproc["Preprocessing"] == {
        "Backend": "ants",
        "AlignmentNCC": 0.85,
        "NumThreads": counts,
        "NumThreadsNote": "why",
    }
    # the bias field: made by N4 alone
    assert _with_threads({"Sources": []}, counts, steps=["N4"], note="why") == {
        "Sources": [],
        "NumThreads": {"N4": 2},
        "NumThreadsNote": "why",
    }
    # fsl (no thread count) or a result cached by an older version: nothing recorded
    assert _with_threads({"Sources": []}, {}, note="why") == {"Sources": []}

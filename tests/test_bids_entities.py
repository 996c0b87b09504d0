"""Every T1w entity BIDS allows (task, echo, part, chunk) carried to the outputs' names."""

import json

import nibabel as nib
import numpy as np
import pytest

from pipeline.bids import collect_t1w, derivative_name, load_layout
from pipeline.config import Config
from pipeline.reports import collect_outputs

FILES = [
    "sub-01/anat/sub-01_echo-1_T1w.nii.gz",  # multi-echo MPRAGE
    "sub-01/anat/sub-01_echo-2_T1w.nii.gz",
    "sub-02/anat/sub-02_part-mag_T1w.nii.gz",  # magnitude and phase
    "sub-02/anat/sub-02_part-phase_T1w.nii.gz",
    "sub-03/anat/sub-03_chunk-1_T1w.nii.gz",
    "sub-03/anat/sub-03_chunk-2_T1w.nii.gz",
]
SPACE = "MNI152NLin2009aSym"


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    root = tmp_path_factory.mktemp("bids")
    (root / "dataset_description.json").write_text(
        json.dumps({"Name": "entities", "BIDSVersion": "1.10.0"})
    )
    data = np.random.default_rng(0).random((12, 12, 12)).astype(np.float32)
    for rel in FILES:
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        nib.save(nib.Nifti1Image(data, np.eye(4)), root / rel)
    return root


def test_inputs_keep_every_entity_and_unique_idents(dataset):
    inputs = collect_t1w(load_layout(dataset))
    assert len(inputs) == len(FILES)
    assert len({t.ident for t in inputs}) == len(FILES)
    by_name = {t.path.name: t.entities for t in inputs}
    assert by_name["sub-01_echo-2_T1w.nii.gz"]["echo"] == "2"
    assert by_name["sub-02_part-phase_T1w.nii.gz"]["part"] == "phase"
    assert by_name["sub-03_chunk-1_T1w.nii.gz"]["chunk"] == "1"


def test_output_names_follow_the_bids_entity_order(dataset):
    inputs = collect_t1w(load_layout(dataset))
    names = [
        derivative_name(t.entities, suffix="T1w", extension=".nii.gz", space=SPACE, res=1,
                        desc="preproc")
        for t in inputs
    ]  # fmt: skip
    assert len(set(names)) == len(names)
    assert f"sub-01_echo-1_space-{SPACE}_res-1_desc-preproc_T1w.nii.gz" in names
    assert f"sub-02_part-phase_space-{SPACE}_res-1_desc-preproc_T1w.nii.gz" in names
    assert f"sub-03_space-{SPACE}_chunk-2_res-1_desc-preproc_T1w.nii.gz" in names
    xfm = derivative_name(inputs[-1].entities, suffix="xfm", extension=".txt",
                          **{"from": "T1w", "to": SPACE, "mode": "image"})  # fmt: skip
    assert xfm == f"sub-03_from-T1w_to-{SPACE}_mode-image_chunk-2_xfm.txt"


def test_workflow_builds_one_subgraph_per_image(dataset, tmp_path):
    from workflows.base import init_disarm_wf

    inputs = collect_t1w(load_layout(dataset))
    config = Config(dataset, tmp_path / "out", "participant", tmp_path / "work",
                    output_resolution=2, harmonize="none", reports=False)  # fmt: skip
    wf = init_disarm_wf(config, inputs)  # a duplicate name would raise here
    assert len(wf.list_node_names()) > len(FILES)
    assert len({name.split(".")[0] for name in wf.list_node_names()}) == len(FILES)


def test_reports_read_the_names_back(dataset, tmp_path):
    inputs = collect_t1w(load_layout(dataset))
    out = tmp_path / "deriv"
    for t in inputs:
        anat = out / f"sub-{t.subject}" / "anat"
        anat.mkdir(parents=True, exist_ok=True)
        for desc in ("preproc", "harmonized"):
            name = derivative_name(t.entities, suffix="T1w", extension=".nii.gz", space=SPACE,
                                   res=1, desc=desc)  # fmt: skip
            (anat / name).write_bytes(b"")
        xfm = derivative_name(t.entities, suffix="xfm", extension=".txt",
                              **{"from": "T1w", "to": SPACE, "mode": "image"})  # fmt: skip
        (anat / xfm).write_text("")
    found = collect_outputs(out)
    assert len(found) == len(FILES)
    assert all("harmonized" in item.harmonized and item.xfm for item in found)
    assert {item.chunk for item in found} == {None, "1", "2"}

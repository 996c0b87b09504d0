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


def test_outputs_are_read_back_by_their_entities(tmp_path):
    """pybids pairs the files by entities (acq, run, echo, res kept apart), ignores what is no
    output (a hidden half-written file, a renamed copy) and tells sub-1 from sub-10."""
    from pipeline.cli.train_inputs import preproc_images

    out = tmp_path / "deriv"  # no dataset_description.json: read all the same
    written = []

    def write(entities, **derived):
        suffix, ext = ("xfm", ".txt") if "mode" in derived else ("T1w", ".nii.gz")
        name = derivative_name(entities, suffix=suffix, extension=ext, **derived)
        path = out / f"sub-{entities['subject']}" / "anat" / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"")
        written.append(path)
        return path

    xfm = {"from": "T1w", "to": SPACE, "mode": "image"}
    echo2 = {"subject": "1", "acquisition": "mprage", "run": "01", "echo": "2"}
    echo1 = {**echo2, "echo": "1"}
    preproc2 = write(echo2, space=SPACE, res=2, desc="preproc")
    harmonized = write(echo2, space=SPACE, res=2, desc="harmonized")
    to_a = write(echo2, space=SPACE, res=2, desc="harmonizedToScannerA")
    affine = write(echo2, **xfm)
    preproc1 = write(echo1, space=SPACE, res=2, desc="preproc")
    write(echo1, space=SPACE, res=1, desc="harmonized")  # another grid: not echo1's
    other = write({"subject": "10"}, space=SPACE, desc="preproc")
    # not outputs: a copy beside a harmonized image, a half-written hidden file
    harmonized.with_name(harmonized.name + ".orig").write_bytes(b"")
    preproc1.with_name(f".{preproc1.name}.x1y2.nii.gz").write_bytes(b"")

    found = {item.preproc: item for item in collect_outputs(out, ["sub-1"])}
    assert set(found) == {preproc1, preproc2}
    item = found[preproc2]
    assert item.source == "sub-1_acq-mprage_run-01_echo-2" and item.subject == "1"
    assert (item.space, item.res, item.chunk) == (SPACE, "2", None)
    assert item.harmonized == {"harmonizedToScannerA": to_a, "harmonized": harmonized}
    assert item.xfm == affine
    assert found[preproc1].harmonized == {} and found[preproc1].xfm is None
    assert [o.preproc for o in collect_outputs(out, ["10"])] == [other]
    assert len(collect_outputs(out)) == 3
    assert preproc_images(out) == sorted([preproc1, preproc2, other])

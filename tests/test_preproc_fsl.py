"""The fsl backend: command lines must be the reference's (METHOD.md), flag for flag."""

from __future__ import annotations

import shlex
import shutil
from pathlib import Path

import nibabel as nb
import numpy as np
import pytest

from pipeline.templates import FSL_SPACE, fsl_available, get_template
from workflows.preproc import OUTPUT_FIELDS, init_preproc_wf

FAST_FLAGS = "-t 1 -n 3 -H 0.1 -I 4 -l 20.0 --nopve -B"
FLIRT_FLAGS = (
    "-bins 256 -cost corratio -searchrx -90 90 -searchry -90 90 -searchrz -90 90 "
    "-dof 12 -interp trilinear"
)


def _write(path: Path, shape=(9, 11, 9), value: float = 1.0) -> Path:
    affine = np.diag([-2.0, 2.0, 2.0, 1.0])
    nb.Nifti1Image(np.full(shape, value, np.float32), affine).to_filename(path)
    return path


@pytest.fixture
def fake_fsldir(tmp_path, monkeypatch):
    """An $FSLDIR holding only (tiny) MNI152 files, enough to build command lines."""
    std = tmp_path / "fsl" / "data" / "standard"
    std.mkdir(parents=True)
    for res in (1, 2):
        for suffix in ("", "_brain", "_brain_mask"):
            _write(std / f"MNI152_T1_{res}mm{suffix}.nii.gz")
    monkeypatch.setenv("FSLDIR", str(tmp_path / "fsl"))
    monkeypatch.setenv("FSLOUTPUTTYPE", "NIFTI_GZ")
    return tmp_path / "fsl"


def _pairs(tokens: list[str]) -> list[tuple[str, ...]]:
    """Split a command line into (flag, values...) groups."""
    groups: list[list[str]] = []
    for tok in tokens:
        if tok.startswith("-") and not tok.lstrip("-").isdigit():
            groups.append([tok])
        elif groups:
            groups[-1].append(tok)
    return [tuple(g) for g in groups]


def _cmd(node) -> list[str]:
    return shlex.split(node.interface.cmdline)


def test_fsl_template_is_the_reference_path(fake_fsldir):
    tpl = get_template("fsl")
    assert tpl.head == fake_fsldir / "data" / "standard" / "MNI152_T1_1mm.nii.gz"
    assert tpl.brain.name == "MNI152_T1_1mm_brain.nii.gz"
    assert tpl.mask.name == "MNI152_T1_1mm_brain_mask.nii.gz"
    assert (tpl.space, tpl.resolution, tpl.source) == (FSL_SPACE, 1, "fsl")
    assert get_template("fsl", 2).head.name == "MNI152_T1_2mm.nii.gz"


def test_fsl_command_lines_match_reference(fake_fsldir, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    tpl = get_template("fsl")
    wf = init_preproc_wf(backend="fsl", template=tpl)
    raw = _write(tmp_path / "sub-01_T1w.nii.gz")
    restored = _write(tmp_path / "t1w_restore.nii.gz")

    reorient = wf.get_node("reorient")
    reorient.inputs.in_file = str(raw)
    tokens = _cmd(reorient)
    assert tokens[0] == "fslreorient2std"
    assert tokens[1] == str(raw)
    assert tokens[2].endswith(".nii.gz")

    fast = wf.get_node("fast")
    fast.inputs.in_files = [str(raw)]
    tokens = _cmd(fast)
    assert tokens[0] == "fast"
    assert tokens[-1] == str(raw)
    groups = set(_pairs(tokens[1:-1]))
    reference = set(_pairs(FAST_FLAGS.split()))
    assert reference <= groups
    # besides the reference: the output name and -b (keep the bias field), nothing else
    assert groups - reference == {("-o", "t1w"), ("-b",)}
    assert "-l 20.0" in fast.interface.cmdline and "-H 0.1 " in fast.interface.cmdline

    flirt = wf.get_node("flirt")
    flirt.inputs.in_file = str(restored)
    tokens = _cmd(flirt)
    assert tokens[0] == "flirt"
    groups = _pairs(tokens[1:])
    assert ("-in", str(restored)) in groups
    assert ("-ref", str(fake_fsldir / "data" / "standard" / "MNI152_T1_1mm.nii.gz")) in groups
    omat = dict((g[0], g[1:]) for g in groups)["-omat"]
    assert omat[0].endswith(".mat")
    rest = {g for g in groups if g[0] not in ("-in", "-ref", "-out", "-omat")}
    assert rest == set(_pairs(FLIRT_FLAGS.split()))


def test_fsl_workflow_wiring(fake_fsldir):
    wf = init_preproc_wf(backend="fsl", template=get_template("fsl"))
    graph = wf._graph
    edges = {(u.name, v.name): data["connect"] for u, v, data in graph.edges(data=True)}
    assert ("reorient", "fast") in edges
    fast_to_flirt = edges[("fast", "flirt")]
    assert fast_to_flirt[0][0][0] == "restored_image"
    assert fast_to_flirt[0][1] == "in_file"
    outputs = {dst for (_, v), conns in edges.items() if v == "outputnode" for _, dst in conns}
    assert outputs == set(OUTPUT_FIELDS) - {"template_space", "thread_counts"}
    assert wf.get_node("outputnode").inputs.template_space == FSL_SPACE
    assert wf.get_node("outputnode").inputs.thread_counts == {}  # FAST, FLIRT: no thread count
    assert wf.get_node("fast").inputs.output_biasfield is True


def test_fsl_backend_needs_whole_head_template(tmp_path, monkeypatch):
    monkeypatch.delenv("FSLDIR", raising=False)
    monkeypatch.setenv("DISARM_CACHE", str(tmp_path))
    tpl = get_template("ants", 2)
    with pytest.raises(ValueError, match="whole-head"):
        init_preproc_wf(backend="fsl", template=tpl)
    with pytest.raises(ValueError, match="resolve 'auto'"):
        init_preproc_wf(backend="auto", template=tpl)


@pytest.mark.fsl
@pytest.mark.slow
def test_fsl_real_run(tmp_path):
    if not (fsl_available() and shutil.which("fslreorient2std")):
        pytest.skip("FSL (fast, flirt, $FSLDIR) is not installed")
    from nipype.interfaces import utility as niu
    from nipype.pipeline import engine as pe

    from pipeline.qc import alignment_ncc

    tpl = get_template("fsl", 2)
    # a small head: the 2 mm template itself, shifted in its header
    head = nb.load(tpl.head)
    moved = head.affine.copy()
    moved[:3, 3] += (6.0, -4.0, 5.0)
    raw = tmp_path / "sub-01_T1w.nii.gz"
    nb.Nifti1Image(np.asanyarray(head.dataobj), moved).to_filename(raw)

    wf = init_preproc_wf(backend="fsl", template=tpl)
    sink = pe.Node(
        niu.Function(input_names=OUTPUT_FIELDS, output_names=["out"], function=_pack),
        name="pack",
    )
    outputnode = wf.get_node("outputnode")
    wf.connect([(outputnode, sink, [(f, f) for f in OUTPUT_FIELDS])])
    wf.base_dir = str(tmp_path / "work")
    wf.inputs.inputnode.in_file = str(raw)
    graph = wf.run()
    out = next(n for n in graph.nodes() if n.name == "pack").result.outputs.out
    assert nb.load(out["t1w_preproc"]).shape == head.shape
    assert out["xfm"].endswith(".mat")
    assert np.all(nb.load(out["bias_field"]).get_fdata() > 0)
    assert out["alignment_ncc"] > 0.8
    assert out["alignment_ncc"] == pytest.approx(alignment_ncc(out["t1w_preproc"], tpl))


def _pack(**kwargs):
    return kwargs


def _fsl_coords(img: nb.Nifti1Image) -> np.ndarray:
    """FSL's scaled-voxel coordinates of ``img``'s voxels (4x4): x flipped when the voxel
    axes are right-handed in world space (the FSL convention, written out independently of
    nitransforms)."""
    zooms = np.array(img.header.get_zooms()[:3], dtype=float)
    m = np.diag([*zooms, 1.0])
    if np.linalg.det(img.affine[:3, :3]) > 0:
        m[0, 0] = -zooms[0]
        m[0, 3] = (img.shape[0] - 1) * zooms[0]
    return m


def test_flirt_matrix_is_re_expressed_for_the_raw_image(tmp_path):
    """A FLIRT matrix of the reoriented copy, re-expressed by MatFromRaw, maps each raw voxel
    (in the raw image's FSL coordinates) where the original maps the same point of the
    reoriented copy; and it differs from the original when the reorientation flipped axes."""
    from nitransforms import linear

    from pipeline.interfaces.ants import reorient_to_std
    from pipeline.interfaces.fsl import MatFromRaw

    rng = np.random.default_rng(0)
    affine = np.array([[0, 0, -1.2, 80], [-1.0, 0, 0, 100], [0, 1.1, 0, -60], [0, 0, 0, 1]])
    raw = tmp_path / "raw.nii.gz"
    nb.Nifti1Image(rng.random((20, 24, 18)).astype(np.float32), affine).to_filename(raw)
    reoriented = reorient_to_std(raw, tmp_path / "reoriented.nii.gz")
    ref = tmp_path / "ref.nii.gz"
    nb.Nifti1Image(np.zeros((30, 32, 28), np.float32), np.diag([-2.0, 2, 2, 1])).to_filename(ref)
    # a world (RAS) transform, written as FLIRT would for the reoriented copy
    theta = 0.2
    ras = np.array([[np.cos(theta), -np.sin(theta), 0, 4], [np.sin(theta), np.cos(theta), 0, -3],
                    [0, 0, 1.05, 2], [0, 0, 0, 1]])  # fmt: skip
    flirt_mat = tmp_path / "flirt.mat"
    linear.Affine(ras, reference=str(ref)).to_filename(
        flirt_mat, fmt="fsl", moving=str(reoriented)
    )
    res = MatFromRaw(
        in_matrix=str(flirt_mat), reoriented=str(reoriented), raw=str(raw), reference=str(ref)
    ).run(cwd=str(tmp_path))
    out = np.loadtxt(res.outputs.out_file)
    orig = np.loadtxt(flirt_mat)
    assert not np.allclose(out, orig, atol=1e-3)
    raw_img, reo_img = nb.load(raw), nb.load(reoriented)
    vox = np.c_[rng.integers(0, 18, (10, 3)), np.ones(10)].T  # raw voxels
    world = raw_img.affine @ vox
    vox_reo = np.linalg.inv(reo_img.affine) @ world
    via_raw = out @ _fsl_coords(raw_img) @ vox
    via_reo = orig @ _fsl_coords(reo_img) @ vox_reo
    np.testing.assert_allclose(via_raw, via_reo, atol=1e-4)

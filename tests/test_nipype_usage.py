"""The harmonization node inside a user-style Nipype workflow, as docs/nipype.md shows it."""

from __future__ import annotations

import json
from pathlib import Path

import nibabel as nb
import numpy as np
import pytest
from conftest import make_random_model
from nipype.interfaces import utility as niu
from nipype.pipeline import engine as pe

from pipeline.interfaces.disarm import DisarmHarmonize
from workflows.harmonize import init_harmonize_wf


@pytest.fixture(scope="module")
def random_model(tmp_path_factory):
    return make_random_model(tmp_path_factory.mktemp("m") / "model", ["A", "B"])


def _head(path, seed):
    rng = np.random.default_rng(seed)
    grid = np.stack(np.meshgrid(*[np.linspace(-1, 1, 23)] * 3, indexing="ij"))
    data = (np.exp(-3 * (grid**2).sum(0)) * 400 + rng.random((23, 23, 23)) * 20).astype("f4")
    affine = np.diag([-4.0, 4, 4, 1])
    affine[:3, 3] = [90, -126, -72]
    nb.save(nb.Nifti1Image(data, affine), str(path))
    return path


def _finish(harmonized, metadata):
    """A user's next step: it receives the harmonized file and the provenance dict."""
    return f"{harmonized}|{metadata['mode']}"


def test_harmonize_wf_in_user_workflow(tmp_path, random_model):
    inputs = [str(_head(tmp_path / f"t1w_{i}.nii.gz", i)) for i in range(2)]
    wf = pe.Workflow(name="user_wf", base_dir=str(tmp_path / "work"))
    source = pe.Node(niu.IdentityInterface(fields=["t1w"]), name="source")
    source.iterables = ("t1w", inputs)
    harmonize_wf = init_harmonize_wf(
        mode="target", target_scanner="B", model_dir=random_model, device="cpu", seed=3
    )
    finish = pe.Node(
        niu.Function(
            function=_finish, input_names=["harmonized", "metadata"], output_names=["out"]
        ),
        name="finish",
    )
    # fmt: off
    wf.connect([
        (source, harmonize_wf, [("t1w", "inputnode.in_file")]),
        (harmonize_wf, finish, [("outputnode.out_file", "harmonized"),
                                ("outputnode.metadata", "metadata")]),
    ])
    # fmt: on
    graph = wf.run(plugin="Linear")
    results = [n.result.outputs.out for n in graph.nodes() if n.name.startswith("finish")]
    assert len(results) == 2
    for result, source_file in zip(sorted(results), sorted(inputs), strict=True):
        out_file, mode = result.split("|")
        assert mode == "target"
        out, src = nb.load(out_file), nb.load(source_file)
        assert out.shape == src.shape and np.allclose(out.affine, src.affine)
        provenance = json.loads(Path(out_file).with_name("harmonized_T1w.json").read_text())
        assert provenance["seed"] == 3 and provenance["target"] == "B"


def test_node_is_a_gpu_node_only_on_cuda(random_model):
    cpu = pe.Node(DisarmHarmonize(model=str(random_model), device="cpu"), name="cpu")
    assert not cpu.is_gpu_node()
    wf = init_harmonize_wf(model_dir=random_model, device="cpu")
    assert not wf.get_node("disarm_harmonize").is_gpu_node()
    gpu = pe.Node(
        DisarmHarmonize(model=str(random_model), device="cuda", use_gpu=True), name="gpu"
    )
    assert gpu.is_gpu_node()


def test_reference_mode_refuses_4d_reference(tmp_path, random_model):
    image = _head(tmp_path / "t1w.nii.gz", 0)
    reference = tmp_path / "ref.nii.gz"
    nb.save(nb.Nifti1Image(np.ones((8, 8, 8, 2), "f4"), np.eye(4)), str(reference))
    node = DisarmHarmonize(
        in_file=str(image),
        model=str(random_model),
        mode="reference",
        reference_file=str(reference),
        device="cpu",
    )
    with pytest.raises(Exception, match="3D|shape"):
        node.run(cwd=str(tmp_path))


def test_new_weights_in_the_same_folder_are_not_a_cache_hit(tmp_path):
    """Retraining into the same model folder changes the node's hash: Nipype reruns it and the
    sidecar names the new weights; a model swapped after the workflow was built is refused."""
    model = make_random_model(tmp_path / "model", ["A", "B"], seed=0)
    in_file = str(_head(tmp_path / "t1w.nii.gz", 0))

    def run():
        wf = init_harmonize_wf(model_dir=model, device="cpu", name="h")
        wf.base_dir = str(tmp_path / "work")
        wf.inputs.inputnode.in_file = in_file
        node = wf.get_node("disarm_harmonize")
        return wf, node

    wf, node = run()
    first = node.inputs.get_hashval()[1]
    wf.run()
    result = json.loads(
        (tmp_path / "work" / "h" / "disarm_harmonize" / "harmonized_T1w.json").read_text()
    )
    old_sha = result["weights_sha256"]

    make_random_model(tmp_path / "model", ["A", "B"], seed=1)  # retrained in place
    wf, node = run()
    assert node.inputs.get_hashval()[1] != first
    wf.run()
    result = json.loads(
        (tmp_path / "work" / "h" / "disarm_harmonize" / "harmonized_T1w.json").read_text()
    )
    assert result["weights_sha256"] != old_sha

    stale = DisarmHarmonize(in_file=in_file, model=str(model), model_sha256=old_sha, device="cpu")
    (tmp_path / "stale").mkdir()
    with pytest.raises(RuntimeError, match="changed after the workflow was built"):
        stale.run(cwd=str(tmp_path / "stale"))

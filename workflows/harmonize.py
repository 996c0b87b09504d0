"""DISARM harmonization as a Nipype workflow that slots into other people's pipelines."""

from __future__ import annotations

import json
from pathlib import Path

from nipype.interfaces import utility as niu
from nipype.pipeline import engine as pe

from models import DEFAULT_MODEL_DIR
from pipeline.interfaces.disarm import DisarmHarmonize, resolve_device


def model_sha256(model_dir: Path | str | None) -> str | None:
    """The ``weights_sha256`` of a model card (``None`` = the shipped model), or ``None`` when
    there is no readable card (the node then fails with the loader's clear error)."""
    card = Path(model_dir or DEFAULT_MODEL_DIR) / "model_card.json"
    try:
        return str(json.loads(card.read_text())["weights_sha256"])
    except (OSError, ValueError, KeyError, TypeError):
        return None


def init_harmonize_wf(
    *,
    mode: str = "scanner-free",
    target_scanner: str | None = None,
    model_dir: Path | str | None = None,
    device: str = "auto",
    seed: int = 0,
    omp_nthreads: int = 1,
    mem_gb: float = 2.0,
    space: str | None = None,
    preprocessing: dict | None = None,
    name: str = "harmonize_wf",
) -> pe.Workflow:
    """Harmonize a T1w image that is already on an MNI template grid.

    The image must be preprocessed as the model's training images were (reoriented,
    bias-corrected, affinely registered to the 1 mm MNI template): the ``t1w_preproc`` output of
    :func:`workflows.preproc.init_preproc_wf`, or your own equivalent.

    Parameters
    ----------
    mode
        ``scanner-free`` (the common space), ``target`` (as if acquired on ``target_scanner``,
        a training scanner of the model) or ``reference`` (the scanner of ``reference_file``).
    model_dir
        a model trained with ``disarm-train``; ``None`` uses the shipped default model.
    device
        ``auto``, ``cpu`` or ``cuda``. On CUDA the node is flagged as a GPU node, so that
        MultiProc's ``n_gpu_procs`` limits how many run at once.
    space, preprocessing
        the input's template space and preprocessing (``Backend``, ``BiasCorrection``). An
        image on another grid of the model's template world (FSL's MNI152NLin6Asym for a model
        trained on MNI152NLin2009aSym) is harmonized on the model's grid and resampled back;
        differences from the model's space and preprocessing are warned about in the sidecar
        (:mod:`models.domain`). ``None``: not compared, nothing resampled.

    Inputs (``inputnode``)
    ----------------------
    in_file
        preprocessed T1w image in template space
    reference_file
        (mode ``reference`` only) an image of the scanner to imitate, preprocessed alike

    Outputs (``outputnode``)
    ------------------------
    out_file
        harmonized image, with the input's affine and header
    out_json
        provenance JSON (mode, target, model name and sha256, seed, versions)
    metadata
        the same provenance as a dict, ready for a sidecar
    """
    workflow = pe.Workflow(name=name)
    inputnode = pe.Node(
        niu.IdentityInterface(fields=["in_file", "reference_file"]), name="inputnode"
    )
    outputnode = pe.Node(
        niu.IdentityInterface(fields=["out_file", "out_json", "metadata"]), name="outputnode"
    )
    resolved = resolve_device(device)
    harmonize = pe.Node(
        DisarmHarmonize(
            mode=mode,
            device=resolved,
            seed=seed,
            num_threads=omp_nthreads,
            use_gpu=resolved == "cuda",
        ),
        name="disarm_harmonize",
        n_procs=omp_nthreads,
        mem_gb=mem_gb,
    )
    if target_scanner:
        harmonize.inputs.target_scanner = target_scanner
    if model_dir:
        harmonize.inputs.model = str(model_dir)
    if space:
        harmonize.inputs.in_space = space
    if preprocessing:
        harmonize.inputs.in_preprocessing = preprocessing
    sha = model_sha256(model_dir)
    if sha:  # the weights' checksum enters the node's hash: a changed model is not a cache hit
        harmonize.inputs.model_sha256 = sha
    # fmt: off
    workflow.connect([
        (inputnode, harmonize, [("in_file", "in_file")]),
        (harmonize, outputnode, [("out_file", "out_file"),
                                 ("out_json", "out_json"),
                                 ("metadata", "metadata")]),
    ])
    if mode == "reference":
        workflow.connect(inputnode, "reference_file", harmonize, "reference_file")
    # fmt: on
    return workflow

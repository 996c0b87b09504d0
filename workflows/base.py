"""The top-level workflow: one subgraph per T1w image."""

from __future__ import annotations

from nipype.pipeline import engine as pe

from pipeline.bids import T1wInput
from pipeline.config import Config


def init_disarm_wf(config: Config, inputs: list[T1wInput]) -> pe.Workflow:
    """Build the participant-level workflow for every selected T1w image.

    Each image gets its own :func:`init_single_t1w_wf`, so images run in parallel under
    MultiProc or as separate jobs under a cluster plugin.

    Parameters
    ----------
    config
        the run's configuration (:class:`pipeline.config.Config`)
    inputs
        the T1w images to process (:func:`pipeline.bids.collect_t1w`)

    Inputs / Outputs
    ----------------
    None: every subgraph's input file is fixed when the graph is built, and its outputs are
    written by its BIDS-Derivatives sinks into ``config.output_dir``.
    """
    from pipeline.templates import get_template

    template = get_template(config.backend, config.output_resolution)
    workflow = pe.Workflow(name="disarm_wf", base_dir=str(config.work_dir))
    for t1w in inputs:
        workflow.add_nodes([init_single_t1w_wf(config, t1w, template)])
    return workflow


def init_single_t1w_wf(config: Config, t1w: T1wInput, template) -> pe.Workflow:
    """Preprocess and harmonize one T1w image, and store its derivatives.

    preprocessing (:func:`workflows.preproc.init_preproc_wf`) -> harmonization
    (:func:`workflows.harmonize.init_harmonize_wf`, unless ``--harmonize none``) -> optional
    resampling back to native space -> BIDS-Derivatives sinks (:mod:`workflows.outputs`).

    Nodes
    -----
    preproc_wf
        reorientation, bias-field correction, registration to ``template``
    ds_preproc_wf
        stores ``desc-preproc``, the transform and the bias field
    harmonize_wf, ds_harmonized_wf
        DISARM and its ``desc-harmonized*`` outputs (unless ``--harmonize none``)
    to_native_wf
        the harmonized image resampled to the T1w's own grid (``--output-spaces T1w``)

    Inputs / Outputs
    ----------------
    None: the workflow has no inputnode or outputnode. The T1w file is fixed when the graph
    is built, and the sinks write every output into ``config.output_dir``.
    """
    from workflows.outputs import init_ds_preproc_wf
    from workflows.preproc import init_preproc_wf

    workflow = pe.Workflow(name=f"t1w_{t1w.ident}_wf")
    preproc_wf = init_preproc_wf(
        backend=config.backend, template=template, omp_nthreads=config.omp_nthreads
    )
    preproc_wf.inputs.inputnode.in_file = str(t1w.path)
    ds_preproc_wf = init_ds_preproc_wf(
        output_dir=config.output_dir,
        t1w=t1w,
        backend=config.backend,
        space=template.space,
        resolution=config.output_resolution,
        template_source=template.source,
    )
    # fmt: off
    workflow.connect([
        (preproc_wf, ds_preproc_wf, [
            ("outputnode.t1w_preproc", "inputnode.t1w_preproc"),
            ("outputnode.xfm", "inputnode.xfm"),
            ("outputnode.bias_field", "inputnode.bias_field"),
            ("outputnode.alignment_ncc", "inputnode.alignment_ncc"),
            ("outputnode.thread_counts", "inputnode.thread_counts"),
        ]),
    ])
    # fmt: on
    if config.harmonize_mode is None:
        return workflow

    from workflows.harmonize import init_harmonize_wf
    from workflows.outputs import harmonized_desc, init_ds_harmonized_wf, preprocessing_summary

    native = "T1w" in config.output_spaces
    harmonize_wf = init_harmonize_wf(
        mode=config.harmonize_mode,
        target_scanner=config.target_scanner,
        model_dir=config.model_dir,
        device=config.device,
        seed=config.seed,
        omp_nthreads=config.omp_nthreads,
        space=template.space,
        preprocessing=preprocessing_summary(config.backend, template.space, template.source),
    )
    ds_harmonized_wf = init_ds_harmonized_wf(
        output_dir=config.output_dir,
        t1w=t1w,
        space=template.space,
        resolution=config.output_resolution,
        desc=harmonized_desc(config.harmonize_mode, config.target_scanner),
        native=native,
    )
    # fmt: off
    workflow.connect([
        (preproc_wf, harmonize_wf, [("outputnode.t1w_preproc", "inputnode.in_file")]),
        (harmonize_wf, ds_harmonized_wf, [("outputnode.out_file", "inputnode.harmonized"),
                                          ("outputnode.metadata", "inputnode.metadata")]),
        (ds_preproc_wf, ds_harmonized_wf, [("outputnode.t1w_preproc", "inputnode.preproc_file")]),
    ])
    # fmt: on
    if native:
        from workflows.resampling import init_to_native_wf

        to_native_wf = init_to_native_wf(backend=config.backend, omp_nthreads=config.omp_nthreads)
        # fmt: off
        workflow.connect([
            (harmonize_wf, to_native_wf, [("outputnode.out_file", "inputnode.in_file")]),
            (preproc_wf, to_native_wf, [("outputnode.xfm_reoriented", "inputnode.xfm"),
                                        ("outputnode.t1w_reoriented", "inputnode.reference")]),
            (to_native_wf, ds_harmonized_wf, [
                ("outputnode.out_file", "inputnode.harmonized_native"),
            ]),
        ])
        # fmt: on
    return workflow

"""``disarm-pipeline bids_dir out_dir {participant,group}``: the BIDS-App entry point."""

from __future__ import annotations

import json
import logging
import os
import shutil
import signal
import sys
import tempfile
from pathlib import Path

from pipeline.cli.parser import build_parser
from pipeline.config import Config
from pipeline.exitcodes import ExitCode, UserError

LOGGER = logging.getLogger("disarm")
#: plugins that call a status callback from the scheduling process (not graph submitters)
PROGRESS_PLUGINS = ("MultiProc", "LegacyMultiProc", "Linear", "SLURM", "SGE", "PBS", "LSF")


def _inside(path: Path, parent: Path) -> bool:
    return path == parent or parent in path.parents


def _writable_dir(path: Path, what: str) -> None:
    """Create ``path`` and prove it is writable with a probe file (``os.access`` lies to root)."""
    try:
        path.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=path, prefix=".disarm-write-test"):
            pass
    except OSError as err:
        raise UserError(
            f"cannot write the {what} {path}: {err.strerror or err}", ExitCode.CANT_CREATE
        ) from None


def _load_json_arg(value: str | None, what: str) -> dict:
    """JSON given inline or as a file name."""
    if not value:
        return {}
    text = value
    if not value.lstrip().startswith("{"):
        try:
            text = Path(value).read_text()
        except OSError as err:
            raise UserError(
                f"cannot read the {what} {value}: {err.strerror}", ExitCode.USAGE
            ) from None
    try:
        content = json.loads(text)
    except ValueError as err:
        raise UserError(f"the {what} is not valid JSON: {err}", ExitCode.USAGE) from None
    if not isinstance(content, dict):
        raise UserError(f"the {what} must be a JSON object", ExitCode.USAGE)
    return content


def build_config(argv: list[str] | None = None) -> Config:
    """Parse and check the command line; raise :class:`UserError` on a mistake."""
    from pipeline.templates import fsl_available, resolve_backend

    opts = build_parser().parse_args(argv)
    if opts.analysis_level not in ("participant", "group"):
        raise UserError(
            f"unknown analysis level {opts.analysis_level!r}: use participant or group",
            ExitCode.UNKNOWN_LEVEL,
        )
    bids_dir = Path(opts.bids_dir).absolute()
    output_dir = Path(opts.output_dir).absolute()
    work_dir = Path(opts.work_dir).absolute()
    if not bids_dir.is_dir():
        raise UserError(
            f"bids_dir {bids_dir} does not exist or is not a folder", ExitCode.NO_INPUT
        )
    bids_real = bids_dir.resolve()
    for path, what in ((output_dir, "output_dir"), (work_dir, "work dir (-w)")):
        if _inside(path.resolve(), bids_real):
            raise UserError(
                f"the {what} {path} is inside bids_dir: nothing may be written there",
                ExitCode.USAGE,
            )
    if opts.backend == "fsl" and not fsl_available():
        raise UserError(
            "--backend fsl needs $FSLDIR and fast, flirt, fslreorient2std on PATH", ExitCode.USAGE
        )
    nprocs = opts.nprocs or os.cpu_count() or 1
    omp_nthreads = opts.omp_nthreads or min(8, nprocs)
    plugin_args = _load_json_arg(opts.plugin_args, "--plugin-args")
    model_dir = Path(opts.model_dir).absolute() if opts.model_dir else None
    if model_dir is not None and not model_dir.is_dir():
        raise UserError(f"--model {model_dir} is not a folder", ExitCode.USAGE)
    return Config(
        bids_dir=bids_dir,
        output_dir=output_dir,
        analysis_level=opts.analysis_level,
        work_dir=work_dir,
        participant_label=opts.participant_label,
        session_label=opts.session_label,
        bids_filters=_load_json_arg(opts.bids_filter_file, "--bids-filter-file"),
        backend=resolve_backend(opts.backend),
        output_resolution=opts.output_resolution,
        harmonize=opts.harmonize,
        model_dir=model_dir,
        output_spaces=opts.output_spaces,
        device=opts.device,
        seed=opts.seed,
        nprocs=nprocs,
        omp_nthreads=omp_nthreads,
        mem_gb=opts.mem_gb,
        plugin=opts.plugin,
        plugin_args=plugin_args,
        stop_on_first_crash=opts.stop_on_first_crash,
        clean_workdir=opts.clean_workdir,
        reports=opts.reports,
        scanner_field=opts.scanner_field,
        verbosity=-1 if opts.quiet else opts.verbosity,
    )


def _plugin_settings(config: Config, status_callback=None) -> tuple[str | object, dict]:
    args = dict(config.plugin_args)
    if status_callback is not None and config.plugin in PROGRESS_PLUGINS:
        args["status_callback"] = status_callback
    if config.plugin in ("MultiProc", "LegacyMultiProc"):
        args.setdefault("n_procs", config.nprocs)
        if config.mem_gb:
            args.setdefault("memory_gb", config.mem_gb)
        args.setdefault("raise_insufficient", False)
        # Forked workers inherit torch's OpenMP state from this process (it loaded the model
        # in check_model) and can deadlock in their first parallel region: start them clean.
        args.setdefault("mp_context", "forkserver")
    if config.plugin == "MultiProc":
        from pipeline.plugins import SafeMultiProcPlugin

        # a worker killed by a segfault or the OOM killer fails its node instead of hanging
        return SafeMultiProcPlugin(plugin_args=args), args
    return config.plugin, args


def _configure_nipype(config: Config) -> None:
    from nipype import config as ncfg
    from nipype import logging as nlogging

    ncfg.update_config(
        {
            "execution": {
                "crashdump_dir": str(config.work_dir / "crash"),
                "crashfile_format": "txt",
                "stop_on_first_crash": config.stop_on_first_crash,
                "remove_unnecessary_outputs": False,
                "hash_method": "content",
                "parameterize_dirs": False,
            },
            "monitoring": {"enabled": False},
        }
    )
    level = "INFO" if config.verbosity > 0 else "WARNING"
    for name in ("nipype.workflow", "nipype.interface", "nipype.utils"):
        nlogging.getLogger(name).setLevel(level)
    # MultiProc workers start from a forkserver and read Nipype's configuration afresh:
    # hand them the same log levels through a config folder of their own.
    config_dir = config.work_dir / "nipype-config"
    config_dir.mkdir(parents=True, exist_ok=True)
    (config_dir / "nipype.cfg").write_text(
        "[logging]\n"
        + "".join(f"{key}_level = {level}\n" for key in ("workflow", "interface", "utils"))
    )
    os.environ["NIPYPE_CONFIG_DIR"] = str(config_dir)
    os.environ["OMP_NUM_THREADS"] = str(config.omp_nthreads)
    os.environ["ITK_GLOBAL_DEFAULT_NUMBER_OF_THREADS"] = str(config.omp_nthreads)


def check_model(config: Config) -> None:
    """Load the model once before anything runs: a missing or corrupt model, or an unknown
    target scanner, is a usage error, not a crash in the middle of the workflow."""
    if config.harmonize_mode is None:
        return
    from models.checkpoint import CheckpointError
    from models.harmonize import Harmonizer

    try:
        harmonizer = Harmonizer.from_dir(config.model_dir, device="cpu")
    except CheckpointError as err:
        raise UserError(f"cannot use the DISARM model: {err}", ExitCode.USAGE) from None
    target = config.target_scanner
    if target is not None and target not in harmonizer.scanners:
        raise UserError(
            f"unknown target scanner {target!r}; the model knows: "
            + ", ".join(harmonizer.scanners),
            ExitCode.USAGE,
        )


def run_participant(config: Config) -> int:
    from pipeline.bids import check_t1w_image, collect_t1w, load_layout, write_dataset_description
    from pipeline.progress import ProgressReporter, node_counts
    from workflows.base import init_disarm_wf

    layout = load_layout(config.bids_dir)
    inputs = collect_t1w(
        layout, config.participant_label, config.session_label, config.bids_filters
    )
    for t1w in inputs:
        check_t1w_image(t1w.path)
    check_model(config)
    _writable_dir(config.output_dir, "output_dir")
    _writable_dir(config.work_dir, "work dir")
    print(
        f"disarm-pipeline: {len(inputs)} T1w image(s) of {len({i.subject for i in inputs})} "
        f"participant(s); backend {config.backend}",
        file=sys.stderr,
    )
    write_dataset_description(config.output_dir, config.bids_dir)
    _configure_nipype(config)
    workflow = init_disarm_wf(config, inputs)
    progress = ProgressReporter(
        {t1w.ident: t1w.path.name.split(".nii")[0] for t1w in inputs}, node_counts(workflow)
    )
    plugin, plugin_args = _plugin_settings(config, progress)
    try:
        workflow.run(plugin=plugin, plugin_args=plugin_args)
    except RuntimeError:
        LOGGER.debug("workflow error", exc_info=True)
        crash_dir = config.work_dir / "crash"
        crashes = sorted(crash_dir.glob("crash-*")) if crash_dir.is_dir() else []
        print(
            f"disarm-pipeline: processing failed: {len(crashes)} node(s) crashed; see the crash "
            f"files in {crash_dir}",
            file=sys.stderr,
        )
        return int(ExitCode.FAILURE)
    except BaseException:
        # SIGTERM (scancel, a job's time limit) or Ctrl-C: stop the workers too; outputs are
        # written atomically, so nothing half-written stays under a final name
        if hasattr(plugin, "terminate_workers"):
            plugin.terminate_workers()
        raise
    if config.reports:
        from pipeline.reports import generate_participant_report

        for subject in sorted({t1w.subject for t1w in inputs}):
            report = generate_participant_report(config.output_dir, subject, config.bids_dir)
            print(f"disarm-pipeline: report {report}", file=sys.stderr)
    if config.clean_workdir:
        shutil.rmtree(config.work_dir / "disarm_wf", ignore_errors=True)
    print(f"disarm-pipeline: done, outputs in {config.output_dir}", file=sys.stderr)
    return int(ExitCode.SUCCESS)


def run_group(config: Config) -> int:
    from pipeline.group import format_summary, run_group_level

    if not (config.output_dir / "dataset_description.json").is_file():
        raise UserError(
            f"{config.output_dir} holds no participant-level outputs: run the participant "
            "level first",
            ExitCode.NO_INPUT,
        )
    _writable_dir(config.output_dir, "output_dir")
    paths = run_group_level(
        config.output_dir,
        config.bids_dir,
        scanner_field=config.scanner_field,
        participant_label=config.participant_label or None,
        seed=config.seed,
    )
    print(format_summary(paths))
    print(f"disarm-pipeline: group report {paths['html']}", file=sys.stderr)
    return int(ExitCode.SUCCESS)


def _configure_progress_log(verbosity: int) -> None:
    """Progress lines on stderr with a time stamp: every node at INFO (default), images done
    only with ``-q`` (verbosity -1)."""
    from pipeline.progress import IMAGE_DONE, LOGGER_NAME

    log = logging.getLogger(LOGGER_NAME)
    if not log.handlers:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("%(asctime)s %(message)s", "%y%m%d-%H:%M:%S"))
        log.addHandler(handler)
    log.propagate = False
    log.setLevel(IMAGE_DONE if verbosity < 0 else logging.INFO)


class Terminated(Exception):
    """SIGTERM received."""


def _raise_terminated(signum, frame) -> None:
    raise Terminated()


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(format="%(name)s: %(message)s", level=logging.WARNING)
    signal.signal(signal.SIGTERM, _raise_terminated)
    try:
        config = build_config(argv)
        _configure_progress_log(config.verbosity)
        if config.verbosity > 1:
            logging.getLogger("disarm").setLevel(logging.DEBUG)
        if config.analysis_level == "group":
            return run_group(config)
        return run_participant(config)
    except UserError as err:
        print(f"disarm-pipeline: error: {err}", file=sys.stderr)
        return int(err.code)
    except KeyboardInterrupt:
        print("disarm-pipeline: interrupted", file=sys.stderr)
        return 130
    except Terminated:
        print("disarm-pipeline: terminated (SIGTERM); rerun to resume", file=sys.stderr)
        return 128 + signal.SIGTERM


if __name__ == "__main__":
    sys.exit(main())

"""Participant reports: ``<output_dir>/sub-<label>.html`` and its figures.

For every T1w image of a participant the report shows the registration to the template
(template brain-mask outline over the preprocessed head), the preprocessed and harmonized
images on the same slices and intensity window, their grey-level histograms inside the
template brain mask, the alignment score and the provenance of each output (sidecars).
Figures go to ``<output_dir>/sub-<label>/figures/`` as SVG; the HTML links them relatively
and needs no JavaScript. ``.bidsignore`` is completed so the BIDS validator skips reports.

This module also finds the participant-level outputs (:func:`collect_outputs`) and the
template mask of their grid (:func:`template_mask`); the group level reuses both.
"""

from __future__ import annotations

import html
import json
from dataclasses import dataclass, field
from functools import lru_cache
from importlib import resources
from pathlib import Path
from string import Template as TextTemplate
from typing import Any

import nibabel as nb
import numpy as np

from pipeline import __version__
from pipeline.bids import sidecar_of
from pipeline.exitcodes import ExitCode, UserError
from pipeline.qc import GOOD_NCC

#: Lines ``.bidsignore`` must hold so the validator skips reports and group-level files.
#: ``figures`` without a slash: bids-validator-deno 2 does not match ``figures/`` or
#: ``**/figures/``. Transforms (``*_xfm.*``) are not in BIDS 1.10 yet (BEP014): any
#: extension is reported NOT_INCLUDED.
BIDSIGNORE = ("*.html", "figures", "group_*", "*_xfm.*")

#: pybids query of the T1w images among the outputs.
_T1W = {"datatype": "anat", "suffix": "T1w", "extension": [".nii", ".nii.gz"]}
#: Entities that name one output of an image rather than the image.
_OUTPUT_ENTITIES = frozenset({"suffix", "extension", "desc"})
_XFM_ENTITIES = frozenset({"suffix", "extension", "from", "to", "mode"})


@dataclass
class ImageOutputs:
    """The participant-level outputs of one T1w image (paths inside ``output_dir``)."""

    source: str  #: source entities before space, e.g. ``sub-01_ses-a_run-1_echo-1``
    space: str
    res: str | None
    preproc: Path
    preproc_meta: dict[str, Any]
    harmonized: dict[str, Path] = field(default_factory=dict)  #: desc -> image
    harmonized_meta: dict[str, dict[str, Any]] = field(default_factory=dict)
    xfm: Path | None = None
    chunk: str | None = None  #: BIDS puts chunk after space

    @property
    def subject(self) -> str:
        return self.source.split("_")[0][len("sub-") :]

    @property
    def stem(self) -> str:
        """Name up to ``desc``: ``<source>_space-<space>[_chunk-<chunk>][_res-<res>]``."""
        chunk = f"_chunk-{self.chunk}" if self.chunk else ""
        return f"{self.source}_space-{self.space}{chunk}" + (
            f"_res-{self.res}" if self.res else ""
        )

    @property
    def resolution(self) -> int:
        return int(self.res) if self.res and self.res.isdigit() else 1

    @property
    def backend(self) -> str:
        return str(self.preproc_meta.get("Preprocessing", {}).get("Backend", ""))


def _read_json(path: Path) -> dict[str, Any]:
    try:
        content = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return content if isinstance(content, dict) else {}


def _is_harmonized(desc: str) -> bool:
    """``desc-harmonized`` or ``desc-harmonizedTo<Scanner>`` (what the pipeline writes)."""
    target = desc.removeprefix("harmonizedTo")
    return desc == "harmonized" or (target != desc and target.isascii() and target.isalnum())


def _identity(entities: dict[str, Any], drop: frozenset[str], **extra: str) -> frozenset:
    """The entities that tell an image apart, as a hashable key (pybids values as strings)."""
    kept = {k: str(v) for k, v in entities.items() if k not in drop}
    return frozenset({**kept, **extra}.items())


def _subject_label(subject: str) -> str:
    return subject[len("sub-") :] if subject.startswith("sub-") else subject


def collect_outputs(output_dir: Path, subjects: list[str] | None = None) -> list[ImageOutputs]:
    """Every ``desc-preproc`` T1w in ``output_dir`` with its harmonized images and affine.

    ``subjects`` (labels, with or without ``sub-``) restricts the search. Sorted by file name.
    The outputs are read back with pybids (:func:`pipeline.bids.load_derivatives`): an image's
    harmonized images and affine are the files with the same entities.
    """
    from bids.layout import Query

    from pipeline.bids import SOURCE_ENTITIES, load_derivatives

    output_dir = Path(output_dir)
    if not output_dir.is_dir():
        return []
    labels = [_subject_label(s) for s in subjects] if subjects else None
    layout = load_derivatives(output_dir, labels)
    selection = {"subject": labels} if labels else {}
    found = layout.get(**_T1W, **selection, space=Query.REQUIRED, desc=Query.REQUIRED)
    # (path, entities), sorted like the paths: .nii.gz after .nii, harmonizedTo<X> before
    # harmonized
    images = sorted((Path(f.relpath), f.get_entities()) for f in found)
    harmonized: dict[frozenset, dict[str, Path]] = {}
    for rel, entities in images:
        if _is_harmonized(str(entities["desc"])):
            key = _identity(entities, _OUTPUT_ENTITIES)
            harmonized.setdefault(key, {})[str(entities["desc"])] = output_dir / rel
    xfms: dict[frozenset, Path] = {}
    transforms = layout.get(
        datatype="anat", suffix="xfm", extension=[".mat", ".txt"], mode="image",
        to=Query.REQUIRED, **{"from": "T1w"}, **selection,
    )  # fmt: skip
    for f in transforms:  # .txt rather than .mat when both are there
        entities = f.get_entities()
        key = _identity(entities, _XFM_ENTITIES, space=str(entities["to"]))
        if key not in xfms or entities["extension"] == ".txt":
            xfms[key] = output_dir / f.relpath
    outputs = []
    for rel, entities in images:
        if entities["desc"] != "preproc":
            continue
        path = output_dir / rel
        item = ImageOutputs(
            source="_".join(
                f"{key}-{entities[name]!s}"
                for name, key in SOURCE_ENTITIES
                if name in entities and name != "chunk"
            ),
            space=str(entities["space"]),
            res=str(entities["res"]) if "res" in entities else None,
            preproc=path,
            preproc_meta=_read_json(sidecar_of(path)),
            chunk=str(entities["chunk"]) if "chunk" in entities else None,
        )
        for desc, candidate in harmonized.get(_identity(entities, _OUTPUT_ENTITIES), {}).items():
            item.harmonized[desc] = candidate
            item.harmonized_meta[desc] = _read_json(sidecar_of(candidate))
        item.xfm = xfms.get(_identity(entities, _OUTPUT_ENTITIES | {"res"}))
        outputs.append(item)
    return outputs


def read_participants(bids_dir: Path | None) -> dict[str, dict[str, str]]:
    """``participants.tsv`` of the raw dataset: ``{label (no sub-): {column: value}}``."""
    if bids_dir is None:
        return {}
    path = Path(bids_dir) / "participants.tsv"
    try:
        lines = path.read_text().splitlines()
    except OSError:
        return {}
    if not lines:
        return {}
    header = lines[0].split("\t")
    table = {}
    for line in lines[1:]:
        if not line.strip():
            continue
        row = dict(zip(header, line.split("\t"), strict=False))
        pid = row.get("participant_id", "")
        if pid:
            table[_subject_label(pid)] = row
    return table


def _resample_mask(mask_img: nb.spatialimages.SpatialImage, ref: nb.spatialimages.SpatialImage):
    """Nearest-neighbour resampling of a mask onto ``ref``'s grid (world coordinates)."""
    from scipy import ndimage

    vox2vox = np.linalg.inv(mask_img.affine) @ ref.affine
    data = ndimage.affine_transform(
        (np.asarray(mask_img.dataobj) > 0).astype(np.uint8),
        vox2vox,
        output_shape=ref.shape[:3],
        order=0,
    )
    return nb.Nifti1Image(data, ref.affine)


@lru_cache(maxsize=8)
def _template_mask_file(space: str, resolution: int, backend: str) -> tuple[Path, str]:
    """The template mask for ``space``, and a note when only an approximate one exists."""
    from pipeline import templates

    # the templates come in 1 and 2 mm; other grids get the 2 mm mask resampled
    resolution = resolution if resolution in templates.RESOLUTIONS else 2
    try:
        tpl = templates.get_template(backend or "auto", resolution)
    except (templates.TemplateError, ValueError):
        tpl = None
    if tpl is not None and tpl.space == space:
        return tpl.mask, ""
    if space == templates.NILEARN_SPACE:
        # get_template prefers FSL's files when present; nilearn's template is the exact one.
        return templates._nilearn_template(resolution).mask, ""
    fallback = templates._nilearn_template(resolution)
    return fallback.mask, (
        f"the {space} brain mask is not available here (FSL not installed): the "
        f"{fallback.space} mask, resampled to the image grid, was used instead"
    )


def template_mask(item: ImageOutputs, ref: nb.spatialimages.SpatialImage):
    """Template brain mask of ``item`` on ``ref``'s grid, and a note if approximate."""
    path, note = _template_mask_file(item.space, item.resolution, item.backend)
    mask = nb.load(str(path))
    same = mask.shape[:3] == ref.shape[:3] and np.allclose(mask.affine, ref.affine, atol=1e-3)
    return (mask if same else _resample_mask(mask, ref)), note


def write_bidsignore(output_dir: Path) -> Path:
    """Add the report and group-level patterns to ``output_dir/.bidsignore`` (kept if present)."""
    path = Path(output_dir) / ".bidsignore"
    lines = path.read_text().splitlines() if path.is_file() else []
    missing = [line for line in BIDSIGNORE if line not in lines]
    if missing or not path.is_file():
        path.write_text("\n".join([*lines, *missing]) + "\n")
    return path


def render_page(title: str, body: str) -> str:
    """The page skeleton of ``pipeline/data/report.html`` around ``body`` (HTML)."""
    skeleton = resources.files("pipeline").joinpath("data/report.html").read_text()
    return TextTemplate(skeleton).substitute(
        title=html.escape(title), body=body, version=html.escape(__version__)
    )


def html_table(rows: list[tuple[str, Any]]) -> str:
    """A two-column key/value table; values are escaped."""
    cells = "".join(
        f"<tr><th>{html.escape(str(k))}</th><td>{html.escape(_fmt(v))}</td></tr>" for k, v in rows
    )
    return f"<table>{cells}</table>"


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, dict | list):
        return json.dumps(value, sort_keys=True)
    return str(value)


def _figure(src: str, caption: str) -> str:
    return (
        f'<figure><img src="{html.escape(src)}" alt="{html.escape(caption)}">'
        f"<figcaption>{html.escape(caption)}</figcaption></figure>"
    )


def _image_section(item: ImageOutputs, output_dir: Path, figures: Path) -> str:
    from pipeline import figures as figs

    img = nb.load(str(item.preproc))
    mask_img, note = template_mask(item, img)
    head, zooms = figs.canonical(img)
    mask = figs.canonical(mask_img)[0] > 0.5
    rel = figures.relative_to(output_dir).as_posix()
    meta = item.preproc_meta
    prep = meta.get("Preprocessing", {})
    parts = [f'<h2 id="{html.escape(item.stem)}">{html.escape(item.stem)}</h2>']
    scanner = [
        (k, meta[k])
        for k in ("Manufacturer", "ManufacturersModelName", "MagneticFieldStrength")
        if k in meta
    ]
    parts.append(html_table([("Sources", meta.get("Sources", [])), *scanner]))

    parts.append("<h3>Preprocessing and registration</h3>")
    ncc = prep.get("AlignmentNCC")
    if isinstance(ncc, int | float):
        good = ncc >= GOOD_NCC
        verdict = (
            f'<span class="{"ok" if good else "warn"}">{ncc:.3f} '
            f"({'good' if good else 'check the registration'}; "
            f"threshold {GOOD_NCC})</span>"
        )
    else:
        verdict = "not recorded"
    parts.append(
        html_table(
            [
                ("Backend", prep.get("Backend", "n/a")),
                ("Template", f"{item.space} ({prep.get('TemplateSource', 'n/a')})"),
                (
                    "Grid",
                    f"{'x'.join(map(str, img.shape[:3]))}, "
                    f"{'x'.join(f'{z:g}' for z in img.header.get_zooms()[:3])} mm",
                ),
                ("Affine", item.xfm.name if item.xfm else "not found"),
            ]
        ).replace("</table>", f"<tr><th>AlignmentNCC</th><td>{verdict}</td></tr></table>")
    )
    if prep.get("Steps"):
        steps = "".join(f"<li><code>{html.escape(str(s))}</code></li>" for s in prep["Steps"])
        parts.append(f"<ol>{steps}</ol>")
    if note:
        parts.append(f'<p class="note">{html.escape(note)}</p>')
    name = f"{item.stem}_desc-registration_T1w.svg"
    figs.plot_registration(head, mask, zooms, figures / name)
    parts.append(
        _figure(
            f"{rel}/{name}",
            "Template brain-mask outline (red) over the preprocessed head, three orthogonal "
            "views through the mask's centre.",
        )
    )

    curves = {"preprocessed": figs.histogram(figs.normalize_in_mask(head, mask)[mask])}
    if not item.harmonized:
        parts.append(
            '<p class="note">No harmonized image for this input (harmonization was not run): '
            "preprocessing only.</p>"
        )
    for desc, path in item.harmonized.items():
        hmeta = item.harmonized_meta.get(desc, {})
        harm = hmeta.get("Harmonization", {})
        parts.append(f"<h3>Harmonization: <code>desc-{html.escape(desc)}</code></h3>")
        keys = ("mode", "target", "model", "weights_sha256", "seed", "scanner_code_source")
        keys += ("InputSpace", "ModelSpace", "ResampledToModelGrid")
        parts.append(html_table([(k, harm[k]) for k in keys if k in harm] or [("", "n/a")]))
        for warning in harm.get("warnings", []) + harm.get("ModelDomainWarnings", []):
            parts.append(f'<p class="note">Warning: {html.escape(str(warning))}</p>')
        after, _ = figs.canonical(nb.load(str(path)))
        if after.shape != head.shape:
            parts.append(f'<p class="note">{path.name} is not on the preprocessed grid.</p>')
            continue
        name = f"{item.stem}_desc-{desc}_T1w.svg"
        figs.plot_before_after(head, after, mask, zooms, figures / name, ("preprocessed", desc))
        parts.append(
            _figure(
                f"{rel}/{name}",
                "Preprocessed (top) and harmonized (middle) image on the same slices, each "
                f"divided by its {figs.NORM_PERCENTILE:g}th percentile inside the template "
                "brain mask, same window [0, 1.1]; bottom: harmonized minus preprocessed.",
            )
        )
        curves[desc] = figs.histogram(figs.normalize_in_mask(after, mask)[mask])
    name = f"{item.stem}_desc-histogram_T1w.svg"
    figs.plot_histograms(curves, figures / name)
    parts.append(
        _figure(
            f"{rel}/{name}",
            "Grey-level histograms inside the template brain mask, each image divided by its "
            f"{figs.NORM_PERCENTILE:g}th percentile there.",
        )
    )
    return "\n".join(parts)


def generate_participant_report(
    output_dir: Path, subject: str, bids_dir: Path | None = None
) -> Path:
    """Write ``output_dir/sub-<label>.html`` and its figures; return the HTML path.

    Raises :class:`~pipeline.exitcodes.UserError` (``NO_INPUT``) when the participant has no
    ``desc-preproc`` output. Rerunning on the same outputs rewrites identical files.
    """
    output_dir = Path(output_dir)
    label = _subject_label(subject)
    outputs = collect_outputs(output_dir, [label])
    if not outputs:
        raise UserError(
            f"no preprocessed output (desc-preproc T1w) of sub-{label} in {output_dir}",
            ExitCode.NO_INPUT,
        )
    figures = output_dir / f"sub-{label}" / "figures"
    figures.mkdir(parents=True, exist_ok=True)
    body = []
    info = read_participants(bids_dir).get(label)
    if info:
        body.append(html_table([(k, v) for k, v in info.items() if k != "participant_id"]))
    body.append(
        "<nav><ul>"
        + "".join(
            f'<li><a href="#{html.escape(o.stem)}">{html.escape(o.stem)}</a></li>' for o in outputs
        )
        + "</ul></nav>"
    )
    body += [_image_section(item, output_dir, figures) for item in outputs]
    report = output_dir / f"sub-{label}.html"
    report.write_text(render_page(f"disarm-pipeline report: sub-{label}", "\n".join(body)))
    write_bidsignore(output_dir)
    return report

"""The run configuration: what the command line asked for, resolved and checked once."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any


@dataclass
class Config:
    """Everything a run needs, passed down to the workflow builders."""

    bids_dir: Path
    output_dir: Path
    analysis_level: str
    work_dir: Path
    participant_label: list[str] = field(default_factory=list)
    session_label: list[str] = field(default_factory=list)
    bids_filters: dict[str, Any] = field(default_factory=dict)
    backend: str = "ants"  # resolved: "fsl" or "ants"
    output_resolution: int = 1
    harmonize: str = "scanner-free"  # "scanner-free", "target:<name>" or "none"
    model_dir: Path | None = None
    output_spaces: list[str] = field(default_factory=lambda: ["template"])
    device: str = "auto"
    seed: int = 0
    nprocs: int = 1
    omp_nthreads: int = 1
    mem_gb: float | None = None
    plugin: str = "MultiProc"
    plugin_args: dict[str, Any] = field(default_factory=dict)
    stop_on_first_crash: bool = False
    clean_workdir: bool = False
    reports: bool = True
    scanner_field: str = "ManufacturersModelName"
    verbosity: int = 0

    @property
    def harmonize_mode(self) -> str | None:
        """``None``, ``"scanner-free"`` or ``"target"``."""
        if self.harmonize == "none":
            return None
        return "target" if self.harmonize.startswith("target:") else "scanner-free"

    @property
    def target_scanner(self) -> str | None:
        return self.harmonize.split(":", 1)[1] if self.harmonize.startswith("target:") else None

    def to_dict(self) -> dict[str, Any]:
        """JSON-serializable view, for the run's provenance record."""
        return {k: (str(v) if isinstance(v, Path) else v) for k, v in asdict(self).items()}

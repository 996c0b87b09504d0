"""Progress of a participant run: each node started/finished with its image, and a line per
image done (n of N, elapsed), through the status callback Nipype's MultiProc and Linear
plugins call from the scheduling process."""

from __future__ import annotations

import logging
import re
import time
from collections import Counter

__all__ = ["ProgressReporter", "node_counts", "LOGGER_NAME", "IMAGE_DONE"]

LOGGER_NAME = "disarm.progress"
IMAGE_DONE = 25  #: log level of the per-image lines: above INFO, so ``-q`` keeps them
logging.addLevelName(IMAGE_DONE, "PROGRESS")
_IMAGE_WF = re.compile(r"^t1w_(.+)_wf$")


class ProgressReporter:
    """Nipype ``status_callback``: logs node starts and ends (INFO) and images done.

    ``names``: ``{workflow ident: display name}`` of every image (e.g. the T1w file name);
    ``node_counts``: nodes per image ident, to tell when an image is complete. Cached nodes
    count as done; a crashed node ends its image as failed.
    """

    def __init__(self, names: dict[str, str], node_counts: dict[str, int]) -> None:
        self.names = names
        self.node_counts = node_counts
        self.done: Counter[str] = Counter()
        self.failed: set[str] = set()
        self.finished: list[str] = []
        self.started: dict[str, float] = {}
        self.t0 = time.monotonic()
        self.log = logging.getLogger(LOGGER_NAME)

    @staticmethod
    def image_of(node) -> str | None:
        """The image ident of a node, from its ``t1w_<ident>_wf`` parent workflow."""
        return _image_ident(node.fullname)

    def __call__(self, node, status: str) -> None:
        ident = self.image_of(node)
        name = self.names.get(ident, ident or "?")
        key, short = node.fullname, node.name
        if status == "start":
            self.started[key] = time.monotonic()
            self.log.info("[%s] %s: started", name, short)
            return
        began = self.started.pop(key, None)
        secs = time.monotonic() - began if began is not None else 0.0
        if status == "exception":
            self.log.error("[%s] %s: FAILED after %.0f s", name, short, secs)
            if ident is not None and ident not in self.failed:
                self.failed.add(ident)
                self._image_ended(ident, failed=True)
            return
        if began is None:  # run in the scheduler (run_without_submitting): no start call
            self.log.info("[%s] %s: finished", name, short)
        else:
            self.log.info("[%s] %s: finished in %.1f s", name, short, secs)
        if ident is None:
            return
        self.done[ident] += 1
        if self.done[ident] == self.node_counts.get(ident, -1) and ident not in self.failed:
            self._image_ended(ident, failed=False)

    def _image_ended(self, ident: str, failed: bool) -> None:
        self.finished.append(ident)
        elapsed = time.monotonic() - self.t0
        minutes, seconds = divmod(int(elapsed), 60)
        self.log.log(
            logging.ERROR if failed else IMAGE_DONE,
            "image %d of %d %s: %s (elapsed %d:%02d)",
            len(self.finished),
            len(self.node_counts),
            "FAILED" if failed else "done",
            self.names.get(ident, ident),
            minutes,
            seconds,
        )


def node_counts(workflow) -> dict[str, int]:
    """Nodes per image ident of the top-level workflow (``t1w_<ident>_wf`` subgraphs), as
    Nipype runs them: identity nodes (inputnode, outputnode) are removed from the graph it
    executes, so they are not counted."""
    from nipype.interfaces.utility import IdentityInterface

    counts: Counter[str] = Counter()
    for name in workflow.list_node_names():
        if isinstance(workflow.get_node(name).interface, IdentityInterface):
            continue
        ident = _image_ident(name)
        if ident is not None:
            counts[ident] += 1
    return dict(counts)


def _image_ident(dotted_name: str) -> str | None:
    """The ident of the ``t1w_<ident>_wf`` workflow in a dotted node name, if any."""
    for part in dotted_name.split("."):
        m = _IMAGE_WF.match(part)
        if m:
            return m.group(1)
    return None

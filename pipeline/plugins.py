"""Nipype execution plugins: MultiProc that fails a run when a worker dies, never hangs it.

Nipype's MultiProc runs nodes in a ``concurrent.futures.ProcessPoolExecutor``. When a worker
process dies (a segmentation fault in a compiled library, the out-of-memory killer), every
future of the pool raises ``BrokenProcessPool``; MultiProc's done-callback re-raises it, the
task's result is never recorded, and the scheduler polls for it forever at 0% CPU
(nipy/nipype#2548, PennLINC/xcp_d#1512). Here the broken pool is replaced by a fresh one, the
tasks that were in flight in it run again one at a time, and the one whose worker dies alone
is recorded as failed with a one-line reason. The run then ends as any run with crashed nodes
does: finished outputs kept, a crash file per failed node, a non-zero exit, and a rerun
resuming from the cache.
"""

from __future__ import annotations

import multiprocessing as mp
from collections import deque
from concurrent.futures import Future, ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool

from nipype.pipeline.plugins.multiproc import MultiProcPlugin, process_initializer, run_node

__all__ = ["SafeMultiProcPlugin", "WORKER_DIED"]

WORKER_DIED = (
    "a worker process died while this node ran or waited in its pool (a segmentation fault "
    "or the out-of-memory killer ends a process this way); rerun to retry the nodes it took "
    "with it, or lower --nprocs / raise --mem-gb"
)


class SafeMultiProcPlugin(MultiProcPlugin):
    """MultiProc whose tasks always end: a dead worker fails its node instead of hanging.

    Takes MultiProc's ``plugin_args``. When a worker dies its pool breaks, and every task in
    flight in it raises ``BrokenProcessPool``: the one whose worker died and the others, which
    cannot be told apart. The pool is replaced for new nodes, and those tasks run again one at
    a time in a one-worker pool of their own: the healthy ones finish there, and a task whose
    worker dies there, alone, is recorded as failed with :data:`WORKER_DIED`.
    """

    def __init__(self, plugin_args: dict | None = None) -> None:
        super().__init__(plugin_args=plugin_args)
        self._pool_broken = False
        self._jobs: dict[int, tuple] = {}  # taskid -> (node, updatehash), to run it again
        self._suspects: deque[int] = deque()  # in flight when a pool broke: to run alone
        self._alone: Future | None = None  # the suspect running in the one-worker pool
        self._alone_pool: ProcessPoolExecutor | None = None

    def _new_pool(self, workers: int) -> ProcessPoolExecutor:
        return ProcessPoolExecutor(
            max_workers=workers,
            initializer=process_initializer,
            initargs=(self._cwd,),
            mp_context=mp.get_context(self.plugin_args.get("mp_context")),
        )

    def _taskid_of(self, future: Future) -> int | None:
        return next((t for t, f in self._task_obj.items() if f is future), None)

    def _async_callback(self, args: Future) -> None:
        try:
            result = args.result()
        except BrokenProcessPool:
            taskid = self._taskid_of(args)
            if args is self._alone:  # it ran alone: its own worker died
                self._alone = self._alone_pool = None
                self._taskresult[taskid] = {
                    "result": None,
                    "traceback": [f"RuntimeError: {WORKER_DIED}\n"],
                    "taskid": taskid,
                }
            else:
                self._pool_broken = True
                if taskid is not None:
                    self._suspects.append(taskid)
            return
        if args is self._alone:
            self._alone = None
        self._taskresult[result["taskid"]] = result

    def _get_result(self, taskid: int):
        self._run_next_suspect()
        return super()._get_result(taskid)

    def _run_next_suspect(self) -> None:
        if self._alone is not None or not self._suspects:
            return
        if self._alone_pool is None:
            self._alone_pool = self._new_pool(1)
        taskid = self._suspects.popleft()
        node, updatehash = self._jobs[taskid]
        future = self._alone_pool.submit(run_node, node, updatehash, taskid)
        self._task_obj[taskid] = self._alone = future
        future.add_done_callback(self._async_callback)

    def _clear_task(self, taskid: int) -> None:
        super()._clear_task(taskid)
        self._jobs.pop(taskid, None)

    def _submit_job(self, node, updatehash: bool = False) -> int:
        # as MultiProc's, but the future is registered before its callback can run (a future
        # of a broken pool is done at once and calls back inside add_done_callback)
        if self._pool_broken:
            self.pool.shutdown(wait=False, cancel_futures=True)
            self.pool = self._new_pool(self.processors)
            self._pool_broken = False
        self._taskid += 1
        taskid = self._taskid
        if getattr(node.interface, "terminal_output", "") == "stream":
            node.interface.terminal_output = "allatonce"
        self._jobs[taskid] = (node, updatehash)
        try:
            future = self.pool.submit(run_node, node, updatehash, taskid)
        except BrokenProcessPool:  # broke since the check above: the node waits its turn
            self._pool_broken = True
            self._suspects.append(taskid)
            return taskid
        self._task_obj[taskid] = future
        future.add_done_callback(self._async_callback)
        return taskid

    def terminate_workers(self) -> None:
        """Stop every worker now (on SIGTERM or Ctrl-C): they are children of the forkserver,
        not of this process, and would otherwise finish their node after the run is gone."""
        for pool in (self.pool, self._alone_pool):
            if pool is None:
                continue
            for proc in list((getattr(pool, "_processes", None) or {}).values()):
                if proc.is_alive():
                    proc.terminate()
            pool.shutdown(wait=False, cancel_futures=True)

    def _postrun_check(self) -> None:
        super()._postrun_check()
        if self._alone_pool is not None:
            self._alone_pool.shutdown()

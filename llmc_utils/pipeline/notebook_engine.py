"""The papermill engine of the pipeline (`papermill --engine llmc`, every notebook stage of dvc.yaml): papermill's own
nbclient engine, except that a kernel which dies while it starts is started again.

Why: jupyter_client chooses a kernel's five TCP ports by binding free ones and closing them, writes them to the
connection file, and the kernel binds them a moment later. When other processes start kernels or open connections at
the same time (the launch runs repetitions side by side, the tests run on every core), one of those ports can be taken
in between; the kernel then exits on "Address already in use" before it answers, and nbclient raises "Kernel died
before replying to kernel_info" (jupyter/jupyter_client#154, nteract/papermill#511). Nothing has run at that point, so
starting a fresh kernel, with freshly chosen ports, is safe. A failure after the kernel answered (a cell's error, a
kernel that dies while running a cell) is never retried: cells would run twice.

The same rule guards nbval's kernels in the tests (notebooks/conftest.py wraps nbval's kernel start with
`retry_kernel_start`)."""

import functools
import logging
from collections.abc import Callable
from typing import TypeVar

# what jupyter_client's wait_for_ready raises when the kernel process exits, or stays silent, before its first reply
STARTUP_FAILURES = ("Kernel died before replying to kernel_info", "Kernel didn't respond in")
KERNEL_START_ATTEMPTS = 3

log = logging.getLogger("llmc.notebook_engine")
T = TypeVar("T")


def is_startup_failure(exc: BaseException) -> bool:
    """True for the errors a kernel raises before it ran anything (see the module docstring)."""
    return isinstance(exc, RuntimeError) and str(exc).startswith(STARTUP_FAILURES)


def retry_kernel_start(start: Callable[[], T], attempts: int = KERNEL_START_ATTEMPTS) -> T:
    """`start()` again, up to `attempts` times in all, while it fails because the kernel failed to start; any other
    error, and the last startup failure, propagate unchanged."""
    for attempt in range(1, attempts + 1):
        try:
            return start()
        except RuntimeError as exc:
            if not is_startup_failure(exc) or attempt == attempts:
                raise
            log.warning(
                "kernel failed to start (attempt %d of %d: %s; its own error output, where shown, is above); "
                "starting a fresh kernel on new ports",
                attempt,
                attempts,
                exc,
            )
    raise AssertionError("unreachable: the loop returns or raises")


def __getattr__(name: str):
    """`LLMCEngine`, papermill's nbclient engine with `retry_kernel_start` around each execution (registered as `llmc`
    in pyproject.toml's `papermill.engine` entry points), made on first access: papermill loads its entry points while
    papermill.engines itself is being imported, so this module must not import papermill.engines at its top (imported
    first, it would be re-entered half-built and lack the class)."""
    if name == "LLMCEngine":
        return _engine()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


@functools.cache
def _engine() -> type:
    from papermill.engines import NBClientEngine

    class LLMCEngine(NBClientEngine):
        @classmethod
        def execute_managed_notebook(cls, nb_man, kernel_name, **kwargs):
            run_on_nbclient = super().execute_managed_notebook
            return retry_kernel_start(lambda: run_on_nbclient(nb_man, kernel_name, **kwargs))

    return LLMCEngine

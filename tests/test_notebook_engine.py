"""The pipeline's papermill engine (llmc_utils.pipeline.notebook_engine): a kernel that dies while it starts is started
again, anything that fails after the kernel answered is not.

The real failure is provoked, not simulated: the first kernel is handed a shell port another socket holds, as when a
concurrent process takes it between jupyter_client choosing it and the kernel binding it. papermill's own engine fails
on it (so the setup does kill the kernel); the llmc engine runs the notebook on a second kernel."""

import socket

import nbformat
import papermill
import pytest
from jupyter_client.manager import AsyncKernelManager
from papermill.exceptions import PapermillExecutionError

from llmc_utils.pipeline.notebook_engine import retry_kernel_start


def write_notebook(path, *sources):
    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(s) for s in sources])
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nbformat.write(nb, path)
    return path


@pytest.fixture
def held_port():
    """A local TCP port in use for the duration of the test."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        yield s.getsockname()[1]


def first_kernel_on_port(port: int) -> type[AsyncKernelManager]:
    """A kernel manager class whose first instance's kernel must bind `port` for its shell channel."""

    class FirstKernelOnPort(AsyncKernelManager):
        created = 0

        def __init__(self, **kwargs):
            super().__init__(**kwargs)
            type(self).created += 1
            if type(self).created == 1:
                self.cache_ports = False  # else jupyter_client replaces the port with a free one
                self.shell_port = port

    return FirstKernelOnPort


def run(nb_path, out_path, engine, manager):
    return papermill.execute_notebook(
        str(nb_path),
        str(out_path),
        engine_name=engine,
        kernel_manager_class=manager,
        progress_bar=False,
        start_timeout=30,
    )


def test_a_kernel_that_cannot_bind_its_port_dies_under_papermills_engine(tmp_path, held_port):
    nb = write_notebook(tmp_path / "nb.ipynb", "print(6 * 7)")
    with pytest.raises(RuntimeError, match="Kernel died before replying to kernel_info"):
        run(nb, tmp_path / "out.ipynb", None, first_kernel_on_port(held_port))


def test_the_llmc_engine_starts_a_fresh_kernel_and_runs_the_notebook_once(tmp_path, held_port):
    ran = tmp_path / "ran.txt"
    nb = write_notebook(tmp_path / "nb.ipynb", f"open({str(ran)!r}, 'a').write('ran\\n')\nprint(6 * 7)")
    manager = first_kernel_on_port(held_port)
    out = run(nb, tmp_path / "out.ipynb", "llmc", manager)
    assert manager.created == 2
    assert out.cells[0].outputs[0]["text"] == "42\n"
    assert ran.read_text() == "ran\n"


def test_a_failing_cell_is_not_run_again(tmp_path):
    ran = tmp_path / "ran.txt"
    nb = write_notebook(tmp_path / "nb.ipynb", f"open({str(ran)!r}, 'a').write('ran\\n')\nraise RuntimeError('boom')")
    with pytest.raises(PapermillExecutionError, match="boom"):
        run(nb, tmp_path / "out.ipynb", "llmc", AsyncKernelManager)
    assert ran.read_text() == "ran\n"


def flaky(failures: list[Exception]):
    calls = []

    def start():
        calls.append(1)
        if len(calls) <= len(failures):
            raise failures[len(calls) - 1]
        return "kernel"

    return start, calls


def test_retry_rule():
    died = RuntimeError("Kernel died before replying to kernel_info")
    silent = RuntimeError("Kernel didn't respond in 60 seconds")
    start, calls = flaky([died, silent])
    assert retry_kernel_start(start, attempts=3) == "kernel" and len(calls) == 3

    start, calls = flaky([died, died, died])
    with pytest.raises(RuntimeError, match="died"):
        retry_kernel_start(start, attempts=3)
    assert len(calls) == 3

    for other in (RuntimeError("No kernel is running!"), ValueError("Kernel died before replying to kernel_info")):
        start, calls = flaky([other])
        with pytest.raises(type(other)):
            retry_kernel_start(start, attempts=3)
        assert len(calls) == 1

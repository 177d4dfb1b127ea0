"""What a step's ``run`` may use besides its rows (``Context``), and the build's one LLM endpoint."""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Callable
from dataclasses import dataclass, field

from ..core.config import Config, QaConfig
from ..core.ranks import Ranks
from ..core.work import WorkDir
from ..models import categories
from ..models.llm import LlmClient
from ..models.llm_server import embedded_server, resolve_endpoint


class LlmEndpoint:
    """The build's LLM endpoint: the configured one, or the embedded llama.cpp server, started on the
    first request of the build and kept until its end (one server per build, QA and empathy alike)."""

    def __init__(self, config: Config, say: Callable[[str], None], stack: contextlib.ExitStack):
        self.base_url, model = resolve_endpoint(config.qa)
        self.qa = dataclasses.replace(config.qa, model=model)
        self._say, self._stack = say, stack

    def open(self) -> tuple[str, QaConfig]:
        """(base URL, QA config naming the model the endpoint serves)."""
        if self.base_url is None:
            self._say("starting the embedded LLM server (llama.cpp, SmolLM2-135M-Instruct) ...")
            self.base_url = self._stack.enter_context(embedded_server(self.qa.model))
        return self.base_url, self.qa


@dataclass
class Context:
    """What a step's ``run`` may use besides its rows."""

    config: Config
    ranks: Ranks
    work: WorkDir
    endpoint: LlmEndpoint
    _categoriser: list = field(default_factory=list)

    @property
    def cache_dir(self) -> str:
        return str(self.work.root / "llm-cache")

    def categoriser(self) -> LlmClient | None:
        """The Table-1 categoriser's client (None: the rules), made once per build."""
        if not self._categoriser:
            pf, qa = self.config.postfilter, self.config.qa
            self._categoriser.append(categories.client_for(pf.categoriser, qa, self.cache_dir))
        return self._categoriser[0]

"""Preflight: what a build needs that can fail, checked before any audio is processed.

``check_build(config, out_dir, stop_after=...)`` raises ``PreflightError`` when something is missing;
``pipeline.build`` calls it first, on every rank (so none waits at a barrier for a rank 0 that stopped). Every problem is one line that names the cause and the
fix; the error's first line is the first problem (and says how many there are), its other lines the
rest (``--debug`` shows them all). Checked, in this order:

- config values (``check_config``): each has the type of its default (a float may be given as an int, an optional one
  as null); every numeric setting lies in the range declared beside its default in ``build.core.config``
  (``ranged``; for a mapping such as α, each value), found by walking every field of every section, one
  line per bad setting naming it, its value and the range; then the closed sets of the method (α keys
  among the emotion labels, the aligner, the structured-output mode, the precision, the device form)
  and the rules across settings (split fractions summing to 1, ``min_segment_s`` <= ``max_segment_s``);
- the output folder can be created and written;
- every model the config names: a local folder exists and holds the files its loader reads
  (FunASR: ``config.yaml``, ``model.pt``, ``tokens.txt``; transformers: ``config.json``;
  CTranslate2: ``model.bin``); a Hub id is in the local Hugging Face cache
  (``snapshot_download(local_files_only=True)``) unless the Hub can be reached. The emotion2vec
  members are looked up the way FunASR's ``hub="hf"`` loader does (its ``name_maps_hf`` maps
  ``iic/...`` to ``emotion2vec/...``); a faster-whisper size name (``large-v3``) the way
  faster-whisper does (``Systran/faster-whisper-large-v3``). The Hub counts as unreachable when
  ``HF_HUB_OFFLINE`` is set or a TCP connection to it fails within 3 s;
- unless ``stop_after`` excludes them: the ASR model, the embedding model of the post-filter, and
  the QA endpoint: a configured ``base_url`` accepts a TCP connection (nothing is sent, so no
  request log sees it) and, when it is not on this machine, the key variable ``qa.api_key_env`` is
  set; without one, the embedded server's GGUF file exists.

``publish.check_push(token_env)``: a token in ``$HF_TOKEN`` (or huggingface_hub's own login) before uploading.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import os
import re
import socket
import tempfile
from pathlib import Path
from urllib.parse import urlparse

from ..core.config import Config, field_range
from ..core.errors import PreflightError, first_line
from ..core.schema import EMOTION_LABELS
from ..models.base import PRECISIONS, funasr_side_effects_contained
from ..models.categories import MODES as CATEGORISERS
from ..models.diarize import check_available
from ..models.llm_server import EmbeddedServerError, gguf_path, resolve_endpoint
from ..models.prompting import STRUCTURED_MODES as STRUCTURED_OUTPUTS
from ..publishing import licences, splits
from ..stages.align import ALIGNERS, BUNDLED_PREFIX, resolve_model
from ..stages.empathy import STRATEGY_MODES
from ..stages.qa import QA_LANGUAGES, WORD_TIMINGS, prompt_versions

HUB_HOST = "huggingface.co"
_DEVICE = re.compile(r"^(auto|cpu|mps|cuda(:\d+)?)$")
# files each loader reads from a local folder
FUNASR_FILES = ("config.yaml", "model.pt", "tokens.txt")
TRANSFORMERS_FILES = ("config.json",)
CTRANSLATE2_FILES = ("model.bin",)
TINY_HINT = "or use --profile tiny"


def check_build(config: Config, out_dir: str | Path, *, stop_after: str | None = None) -> None:
    """Raise ``PreflightError`` naming every problem found (see the module docstring)."""
    problems = check_config(config)
    if problems:  # the other checks read these values
        raise PreflightError(problems)
    problems += check_output(out_dir)
    hub = _Hub()
    models = config.models
    for i, model in enumerate(models.emotion):
        problems += check_model(f"models.emotion[{i}]", model, FUNASR_FILES, hub, repo=_funasr_repo(model))
    problems += check_model("models.dimension", models.dimension, TRANSFORMERS_FILES, hub)
    problems += check_model("models.gender", models.gender, TRANSFORMERS_FILES, hub)
    if stop_after is None:
        problems += check_asr_model(config.asr.model, hub)
        if config.postfilter.embedding_model != "bundled":
            name = config.postfilter.embedding_model
            problems += check_model("postfilter.embedding_model", name, TRANSFORMERS_FILES, hub, repo=name if "/" in name else f"sentence-transformers/{name}")
        problems += check_qa_endpoint(config.qa)
        problems += check_categoriser(config)
        if config.asr.diarize:
            problems += _raised(diarize_check)
    if problems:
        raise PreflightError(problems)


def diarize_check() -> None:
    check_available()  # the gated pyannote model needs a token


def check_categoriser(config: Config) -> list[str]:
    """``postfilter.categoriser=llm`` needs an endpoint (the embedded server never categorises)."""
    if config.postfilter.categoriser == "llm" and resolve_endpoint(config.qa)[0] is None:
        return ["postfilter.categoriser=llm needs an endpoint: set qa.base_url or $OPENAI_BASE_URL, or use postfilter.categoriser=rules"]
    return []


def _raised(check) -> list[str]:
    try:
        check()
    except (RuntimeError, ValueError) as error:
        return [str(error)]
    return []


# ---------------------------------------------------------------- config values
def check_config(config: Config) -> list[str]:
    """Type and range problems of the config's values, one line each."""
    problems = _check_types(config, "")
    if problems:
        return problems
    problems = _check_ranges(config, "")
    c = config
    for label, alpha in c.condense.alpha.items():
        if label not in EMOTION_LABELS:
            problems.append(_bad(f"condense.alpha.{label}", alpha, f"a key among {', '.join(EMOTION_LABELS)}"))
    for key, value, allowed in (
        ("asr.aligner", c.asr.aligner, ALIGNERS),
        ("qa.structured_output", c.qa.structured_output, STRUCTURED_OUTPUTS),
        ("qa.prompt_version", c.qa.prompt_version, prompt_versions()),
        ("qa.word_timing", c.qa.word_timing, WORD_TIMINGS),
        ("postfilter.categoriser", c.postfilter.categoriser, CATEGORISERS),
        ("empathy.structured_output", c.empathy.structured_output, STRUCTURED_OUTPUTS),
        ("empathy.strategy", c.empathy.strategy, STRATEGY_MODES),
        ("runtime.precision", c.runtime.precision, PRECISIONS),
    ):
        if value not in allowed:
            problems.append(_bad(key, value, f"one of {', '.join(allowed)}"))
    if not _DEVICE.match(c.runtime.device):
        problems.append(_bad("runtime.device", c.runtime.device, "auto, cpu, mps, cuda or cuda:N"))
    if c.qa.language not in QA_LANGUAGES:
        problems.append(_bad("qa.language", c.qa.language, f"one of {', '.join(QA_LANGUAGES)}"))
    splits_in_range = not any(p.startswith("config value export.splits.") for p in problems)  # else said once
    checks = [lambda: licences.check_mode(c.export.publish), lambda: splits.check_split_by(c.export.split_by)]
    if splits_in_range:
        checks.insert(1, lambda: splits.check_splits(c.export.splits))
    for check in checks:
        try:
            check()
        except ValueError as error:
            problems.append(str(error))
    if not problems and c.min_segment_s > c.max_segment_s:
        problems.append(f"config value min_segment_s = {c.min_segment_s:g} is above max_segment_s = {c.max_segment_s:g}: no segment could pass the length filter; lower it with --set min_segment_s=...")
    return problems


def _bad(key: str, value, expected: str) -> str:
    return f"config value {key} = {value!r} is not {expected}: fix it with --set {key}=... or in --config"


def _check_ranges(node, prefix: str) -> list[str]:
    """Every numeric setting (each value of a numeric mapping) against the range declared with its default."""
    problems = []
    for f in dataclasses.fields(node):
        key, value = f"{prefix}{f.name}", getattr(node, f.name)
        if dataclasses.is_dataclass(value):
            problems += _check_ranges(value, f"{key}.")
            continue
        allowed = field_range(f)
        if allowed is None:
            continue
        entries = [(f"{key}.{k}", v) for k, v in value.items()] if isinstance(value, dict) else [(key, value)]
        integers = str(f.type).endswith("int]")  # a mapping of integers (scalars: _check_types saw to it)
        for name, v in entries:
            if v is None:  # an optional setting left unset (its type was checked)
                continue
            if isinstance(v, bool) or not isinstance(v, int if integers else (int, float)):
                problems.append(_bad(name, v, "an integer" if integers else "a number"))
            elif v not in allowed:
                problems.append(_bad(name, v, f"{allowed.what}in {allowed}"))
    return problems


def _check_types(node, prefix: str) -> list[str]:
    problems = []
    for f in dataclasses.fields(node):
        key, value = f"{prefix}{f.name}", getattr(node, f.name)
        default = f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default
        if dataclasses.is_dataclass(default):
            if not dataclasses.is_dataclass(value):
                problems.append(_bad(key, value, "a section (a mapping of its keys)"))
            else:
                problems += _check_types(value, f"{key}.")
            continue
        expected = _expected_type(str(f.type))
        if expected is None:
            continue
        types, optional, name = expected
        if value is None and optional:
            continue
        if isinstance(value, bool) and bool not in types or not isinstance(value, types):
            problems.append(_bad(key, value, name))
        elif isinstance(value, list) and not all(isinstance(v, str) for v in value):
            problems.append(_bad(key, value, "a list of strings"))
    return problems


def _expected_type(annotation: str) -> tuple[tuple[type, ...], bool, str] | None:
    optional = annotation.endswith(" | None")
    base = annotation.removesuffix(" | None")
    table = {
        "float": ((int, float), "a number"),
        "int": ((int,), "an integer"),
        "str": ((str,), "a string"),
        "bool": ((bool,), "true or false"),
        "list[str]": ((list,), "a list of strings"),
        "dict[str, int]": ((dict,), "a mapping"),
        "dict[str, float]": ((dict,), "a mapping"),
    }
    if base not in table:
        return None
    types, name = table[base]
    return types, optional, name + (" or null" if optional else "")


# ---------------------------------------------------------------- output
def check_output(out_dir: str | Path) -> list[str]:
    out = Path(out_dir)
    try:
        out.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=out, prefix=".cpqa-preflight-"):
            pass
    except OSError as exc:
        return [f"output folder {out} cannot be written ({first_line(exc)}): choose another --out"]
    return []


# ---------------------------------------------------------------- models
class _Hub:
    """Whether the Hub can be reached, asked once per preflight."""

    def __init__(self):
        self._reachable: bool | None = None

    @property
    def why_not(self) -> str | None:
        """None when reachable, else the reason it is not."""
        from huggingface_hub import constants

        if constants.HF_HUB_OFFLINE:
            return "HF_HUB_OFFLINE is set"
        if self._reachable is None:
            host = urlparse(constants.ENDPOINT).hostname or HUB_HOST
            self._reachable = _connects(host, 443)
        return None if self._reachable else f"{urlparse(constants.ENDPOINT).hostname or HUB_HOST} cannot be reached"


def _connects(host: str, port: int, timeout_s: float = 3.0) -> bool:
    try:
        with socket.create_connection((host, port), timeout=timeout_s):
            return True
    except OSError:
        return False


def looks_local(name: str) -> bool:
    """A path rather than a Hub id (``owner/name``): absolute, relative with ./ or ~, or deeper than one /."""
    return name.startswith(("/", ".", "~")) or name.count("/") > 1 or os.sep != "/" and os.sep in name or Path(name).exists()


def _cached(repo: str) -> bool:
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import LocalEntryNotFoundError

    try:
        return Path(snapshot_download(repo, local_files_only=True)).is_dir()
    except (LocalEntryNotFoundError, OSError, ValueError):
        return False


def check_model(key: str, name: str, files: tuple[str, ...], hub: _Hub, *, repo: str | None = None) -> list[str]:
    """A local folder with ``files``, or a Hub id that is cached or downloadable."""
    if looks_local(name):
        folder = Path(name).expanduser()
        if not folder.is_dir():
            return [f"model {key} = {name}: no such folder: point it at a downloaded checkpoint, or give a Hub id, {TINY_HINT}"]
        missing = [f for f in files if not (folder / f).exists()]
        if missing:
            return [f"model {key} = {name}: the folder lacks {', '.join(missing)}: point it at a complete checkpoint, {TINY_HINT}"]
        return []
    repo = repo or name
    if _cached(repo):
        return []
    why = hub.why_not
    if why is None:
        return []  # it will be downloaded
    via = f" (as {repo})" if repo != name else ""
    return [f"model {name}{via} for {key} is not in the local cache and the Hub cannot be reached ({why}): download it with `huggingface-cli download {repo}` where the Hub is reachable, {TINY_HINT}"]


def _funasr_repo(model: str) -> str:
    """The Hub repository FunASR's ``hub="hf"`` loader downloads for ``model``."""
    try:
        with funasr_side_effects_contained():  # importing FunASR changes the process's logging
            from funasr.download.name_maps_from_hub import name_maps_hf
    except ImportError:
        return model
    return name_maps_hf.get(model, model)


def check_asr_model(name: str, hub: _Hub) -> list[str]:
    if name.startswith(BUNDLED_PREFIX):
        try:
            folder = resolve_model(name)
        except (ValueError, ModuleNotFoundError) as exc:
            return [f"model asr.model = {name}: {first_line(exc, with_type=False)}"]
        return check_model("asr.model", folder, CTRANSLATE2_FILES, hub)
    if looks_local(name):
        return check_model("asr.model", name, CTRANSLATE2_FILES, hub)
    try:
        from faster_whisper.utils import _MODELS as sizes  # size name -> Hub repository
    except ImportError:
        sizes = {}
    return check_model("asr.model", name, CTRANSLATE2_FILES, hub, repo=sizes.get(name, name))


# ---------------------------------------------------------------- the QA endpoint
def is_loopback(host: str | None) -> bool:
    if host in (None, "", "localhost"):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def check_qa_endpoint(qa_config) -> list[str]:
    base_url, model = resolve_endpoint(qa_config)
    if base_url is None:
        try:
            gguf_path(model)
        except EmbeddedServerError as exc:
            return [f"the embedded QA server cannot start: {first_line(exc, with_type=False)}; or set qa.base_url to an OpenAI-compatible endpoint"]
        return []
    url = urlparse(base_url)
    if url.scheme not in ("http", "https") or not url.hostname:
        return [f"qa.base_url = {base_url!r} is not an http(s) URL: give the endpoint's base URL, e.g. http://localhost:8000/v1"]
    problems = []
    if not is_loopback(url.hostname) and not os.environ.get(qa_config.api_key_env):
        problems.append(f"the QA endpoint {base_url} needs an API key and ${qa_config.api_key_env} is not set: export it (qa.api_key_env names the variable)")
    port = url.port or (443 if url.scheme == "https" else 80)
    if not _connects(url.hostname, port):
        problems.append(f"the QA endpoint {base_url} cannot be reached ({url.hostname}:{port} refuses or does not answer): start the server, or fix qa.base_url / $OPENAI_BASE_URL")
    return problems



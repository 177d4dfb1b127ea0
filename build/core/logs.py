"""Third-party chatter goes to the log, not to the terminal: what libraries print, or log at INFO,
while cpqa loads their models is shown only at DEBUG (``cpqa.py --debug`` or ``CPQA_LOG=DEBUG``).

    with third_party_quiet():
        model = whisperx.load_model(...)   # pyannote's "Model was trained with ..." lines, Lightning's
                                           # "automatically upgraded your loaded checkpoint" line
"""

from __future__ import annotations

import contextlib
import io
import logging
from collections.abc import Iterator

LOG = logging.getLogger("build.third_party")
# loggers that report at INFO what a user of cpqa need not read
CHATTY = ("pytorch_lightning", "lightning", "lightning.pytorch", "lightning_fabric")


class _LogLines(io.TextIOBase):
    """A text stream whose lines become DEBUG records of ``LOG``."""

    def __init__(self):
        self._partial = ""

    def writable(self) -> bool:
        return True

    def write(self, text: str) -> int:
        lines = (self._partial + text).split("\n")
        self._partial = lines.pop()
        for line in lines:
            if line.strip():
                LOG.debug(line)
        return len(text)

    def flush(self) -> None:
        if self._partial.strip():
            LOG.debug(self._partial)
        self._partial = ""


@contextlib.contextmanager
def third_party_quiet() -> Iterator[None]:
    """Inside: stdout lines go to ``LOG`` at DEBUG, and the chatty libraries' INFO records are dropped
    unless the root logger shows DEBUG."""
    if logging.getLogger().getEffectiveLevel() > logging.DEBUG:
        for name in CHATTY:
            logging.getLogger(name).setLevel(logging.WARNING)
    lines = _LogLines()
    try:
        with contextlib.redirect_stdout(lines):
            yield
    finally:
        lines.flush()

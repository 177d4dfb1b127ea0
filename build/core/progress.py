"""Progress a person can watch: one line per stage and process, on stderr (stdout keeps the report).

    label     [rank 0/2] 3/10 shards | 1.23/4.00 audio-h | 850 audio-h/h | ETA 01:10 (elapsed 00:31)

Audio hours count the stage's input: recordings for the labelling stages, condensed segments after
sampling. Audio-hours per hour is the same ratio as audio seconds per second (the real-time factor).
Off with ``--quiet``; ``tqdm`` draws it (a plain line every 30 s when stderr is not a terminal).
"""

from __future__ import annotations

import sys

from tqdm.auto import tqdm


class StageProgress:
    """Progress of one stage on one rank; ``advance`` takes audio seconds, ``shard_done`` counts shards."""

    def __init__(self, stage: str, n_shards: int, audio_s: float, *, rank: int = 0, world: int = 1, enabled: bool = True):
        self.n_shards = n_shards
        self.shards_done = 0
        self.total_s = max(audio_s, 1e-9)
        self.name = f"{stage:<10}" + (f"[rank {rank}/{world}] " if world > 1 else "")
        interactive = sys.stderr.isatty()
        self.bar = tqdm(
            total=self.total_s,
            desc=self._text(0.0),
            bar_format="{desc} | ETA {remaining} (elapsed {elapsed})",
            disable=not enabled or n_shards == 0,
            mininterval=0.5 if interactive else 30.0,
            file=sys.stderr,
            leave=True,
        )

    def _text(self, done_s: float, elapsed_s: float = 0.0) -> str:
        rate = f"{done_s / elapsed_s:,.0f}" if elapsed_s > 0 else "-"
        return f"{self.name}{self.shards_done}/{self.n_shards} shards | {done_s / 3600:.2f}/{self.total_s / 3600:.2f} audio-h | {rate} audio-h/h"

    def _refresh(self) -> None:
        self.bar.set_description_str(self._text(self.bar.n, self.bar.format_dict.get("elapsed") or 0.0), refresh=False)

    def advance(self, audio_s: float) -> None:
        audio_s = min(audio_s, self.total_s - self.bar.n)
        if audio_s > 0:
            self._refresh()
            self.bar.update(audio_s)

    def shard_done(self, remaining_audio_s: float = 0.0) -> None:
        """One shard finished; ``remaining_audio_s`` is what ``advance`` did not report for it."""
        self.shards_done += 1
        self.advance(remaining_audio_s)
        self._refresh()
        self.bar.refresh()

    def close(self) -> None:
        self._refresh()
        self.bar.close()

    def __enter__(self) -> StageProgress:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

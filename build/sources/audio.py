"""Decode audio on demand, 16 kHz mono, through torchcodec (the decoder datasets uses).

Stages carry ``(audio_path, start, end)`` and call ``decode_span`` / ``decode_spans``; VAD reads a
whole recording with ``iter_blocks``. Nothing is ever copied to disk. ``decode_spans`` decodes each
file once over the range covering its spans and slices it; a file that fails gives an
``AudioError`` for its items instead of stopping the batch.

Where the audio lives (the value of ``audio_path``)
- A plain file path: decoded from the file, as is.
- A reference to one row of a table written by ``datasets`` whose Audio column embeds the bytes::

      parquet:<Parquet file or hf:// URL>#<column>[<row>]
      arrow:<Arrow file of a save_to_disk folder>#<column>[<row>]

  e.g. ``parquet:hf://datasets/owner/name/data/train-00000-of-00004.parquet#audio[17]``.
  ``<row>`` counts from 0 within that one file; the location is everything before the last ``#``.
  ``make_reference`` / ``parse_reference`` write and read this form.

How a reference is read
- Parquet: the footer, then only ``<column>`` of the row group that holds the row (datasets caps a
  row group at 100 MB). ``hf://`` locations go through ``huggingface_hub.HfFileSystem``
  (``hub_filesystem``), which fetches byte ranges: the rest of the file is never downloaded.
- Arrow: the file is memory-mapped, so only the pages of that one cell are read.
- The cell's ``bytes`` are decoded by torchcodec from memory. A cell without bytes whose ``path``
  is an existing local file is decoded from that file; otherwise the reference fails.
- Per process, the last few row groups read (at most 4 and 256 MB, the newest always kept) stay in
  memory, so the many segments of a recording, and neighbouring rows, are fetched once.

Time and samples
- Times are seconds of the stream's own clock; anything before its first sample (an MP3 encoder's
  delay can start the stream at 0.069 s) is silence, so spans and blocks stay on that clock.
- ``decode_span`` returns the samples torchcodec's ``get_samples_played_in_range`` gives on a fresh
  decoder (padded to the exact length). torchcodec 0.7 seeks audio only back to the stream's
  start, so a fresh decoder decodes everything before the span. For a source FFmpeg does not
  resample, the process keeps a forward reader per file (the last 2 files): a span that starts at
  or after the previous span's end continues from there, with the same samples, and a recording's
  segments in order are decoded once in all. A resampled source gets a fresh decoder per span.
- ``iter_blocks`` reads forward through one decoder in blocks of exactly ``round(block_s * 16000)``
  samples (the last block holds the rest), so memory is bounded by the block, not the recording.
  Without resampling the blocks put end to end equal ``decode_span`` of the whole recording sample
  for sample. When FFmpeg resamples (an 8 kHz or 44.1 kHz MP3), torchcodec 0.7 flushes its
  resampler at the end of every range it returns, and each block after the first is shifted by
  the resampler's delay (32 samples, 2 ms, from 8 kHz) against a whole-file decode; the total
  length is the same.

Errors: ``AudioError``, one line: the file or reference, then the problem.
"""

from __future__ import annotations

import os
import re
import threading
from collections import OrderedDict, defaultdict
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..core.config import SAMPLE_RATE
from ..core.errors import first_line

REFERENCE_KINDS = ("parquet", "arrow")
_REFERENCE = re.compile(r"^(parquet|arrow):(.+)#([^#]+)\[(\d+)\]$", re.DOTALL)
_CACHE_ENTRIES = 4
_CACHE_BYTES = 256 * 2**20


class AudioError(RuntimeError):
    """Audio that cannot be read or decoded; the message names the file (or reference) and the cause."""


# ---------------------------------------------------------------- references to rows of a table


@dataclass(frozen=True)
class Reference:
    kind: str  # "parquet" or "arrow"
    location: str  # a local file, or an hf:// URL (parquet only)
    column: str
    row: int


def make_reference(kind: str, location: str, column: str, row: int) -> str:
    """``<kind>:<location>#<column>[<row>]`` (see the module docstring)."""
    if kind not in REFERENCE_KINDS:
        raise ValueError(f"{kind}: not a reference kind ({', '.join(REFERENCE_KINDS)})")
    return f"{kind}:{location}#{column}[{int(row)}]"


def is_reference(path: str) -> bool:
    return str(path).startswith(tuple(f"{k}:" for k in REFERENCE_KINDS))


def parse_reference(path: str) -> Reference:
    match = _REFERENCE.match(str(path))
    if match is None:
        raise AudioError(f"{path}: not a table reference (expected <parquet|arrow>:<file>#<column>[<row>])")
    kind, location, column, row = match.groups()
    return Reference(kind, location, column, int(row))


def hub_filesystem():
    """The fsspec filesystem behind ``hf://`` locations: ``HfFileSystem`` (ranged reads). Tests swap it."""
    from huggingface_hub import HfFileSystem

    return HfFileSystem()


def hub_path(location: str) -> str:
    """``hf://datasets/o/n/f.parquet`` -> ``datasets/o/n/f.parquet`` (the path ``hub_filesystem`` takes)."""
    return location[len("hf://") :]


class _Cache:
    """A small LRU, safe across threads; a forked child starts with it empty (see ``_after_fork``)."""

    def __init__(self, entries: int, max_bytes: int | None = None):
        self.entries, self.max_bytes = entries, max_bytes
        self._items: OrderedDict = OrderedDict()
        self._lock = threading.Lock()

    def get(self, key):
        with self._lock:
            if key not in self._items:
                return None
            self._items.move_to_end(key)
            return self._items[key][0]

    def take(self, key):
        """Remove and return the entry (None when absent): the caller has it to itself until it puts it back."""
        with self._lock:
            entry = self._items.pop(key, None)
            return None if entry is None else entry[0]

    def put(self, key, value, size: int = 0):
        with self._lock:
            self._items[key] = (value, size)
            self._items.move_to_end(key)
            while len(self._items) > self.entries or (
                self.max_bytes is not None and len(self._items) > 1 and sum(s for _, s in self._items.values()) > self.max_bytes
            ):
                self._items.popitem(last=False)  # the newest entry always stays
            return value

    def clear(self) -> None:
        with self._lock:
            self._items.clear()

    def reset(self) -> None:
        """In a forked child: open files, sessions and decoders belong to the parent; a held lock too.

        The parent's entries are kept alive, never freed here: a torchcodec decoder destroyed in a
        forked child can wait forever on a lock its parent's threads held at the fork."""
        _INHERITED.append(self._items)
        self._items, self._lock = OrderedDict(), threading.Lock()


_INHERITED: list = []  # a forked child's copy of its parent's cache entries (see _Cache.reset)
_PARQUET_FILES = _Cache(8)  # location -> (ParquetFile, first row of each row group)
_ARROW_TABLES = _Cache(8)  # location -> memory-mapped table
_ROW_GROUPS = _Cache(_CACHE_ENTRIES, _CACHE_BYTES)  # (location, column, row group) -> column chunk
_READERS = _Cache(2)  # (path, sample rate) -> the _ForwardReader of its last span
_READ_LOCK = threading.RLock()  # open Parquet/Arrow files are shared by the threads of a process


def reading() -> threading.RLock:
    """Hold while using ``parquet_file`` / ``arrow_table`` results (one table read at a time per process)."""
    return _READ_LOCK


def _after_fork() -> None:
    global _READ_LOCK
    for cache in (_PARQUET_FILES, _ARROW_TABLES, _ROW_GROUPS, _READERS):
        cache.reset()
    _READ_LOCK = threading.RLock()


os.register_at_fork(after_in_child=_after_fork)


def clear_caches() -> None:
    """Forget open files, decoders and cached row groups (tests; a long-lived process switching datasets)."""
    for cache in (_PARQUET_FILES, _ARROW_TABLES, _ROW_GROUPS, _READERS):
        cache.clear()


def parquet_file(location: str):
    """``(pyarrow.parquet.ParquetFile, starts)``: the open file and the first row of each row group."""
    import pyarrow.parquet as pq

    cached = _PARQUET_FILES.get(location)
    if cached is not None:
        return cached
    if location.startswith("hf://"):
        handle = hub_filesystem().open(hub_path(location), "rb")
        parquet = pq.ParquetFile(handle)
    else:
        parquet = pq.ParquetFile(location)
    starts = [0]
    for g in range(parquet.metadata.num_row_groups):
        starts.append(starts[-1] + parquet.metadata.row_group(g).num_rows)
    return _PARQUET_FILES.put(location, (parquet, starts))


def arrow_table(location: str):
    """The table of one Arrow file written by ``save_to_disk``, memory-mapped (no copy)."""
    import pyarrow as pa

    cached = _ARROW_TABLES.get(location)
    if cached is not None:
        return cached
    source = pa.memory_map(location)
    try:
        table = pa.ipc.open_stream(source).read_all()
    except pa.ArrowInvalid:  # written as an IPC file rather than a stream
        table = pa.ipc.open_file(source).read_all()
    return _ARROW_TABLES.put(location, table)


def _cell(ref: Reference) -> dict:
    """``{"bytes", "path"}`` of the referenced Audio cell (one read at a time per process: open files are shared)."""
    with reading():
        return _read_cell(ref)


def _read_cell(ref: Reference) -> dict:
    if ref.kind == "arrow":
        table = arrow_table(ref.location)
        if ref.column not in table.column_names:
            raise KeyError(f"no column {ref.column!r} (columns: {', '.join(table.column_names)})")
        if ref.row >= table.num_rows:
            raise IndexError(f"row {ref.row} is past the end ({table.num_rows} rows)")
        return table.column(ref.column)[ref.row].as_py()
    parquet, starts = parquet_file(ref.location)
    if ref.column not in parquet.schema_arrow.names:
        raise KeyError(f"no column {ref.column!r} (columns: {', '.join(parquet.schema_arrow.names)})")
    if ref.row >= starts[-1]:
        raise IndexError(f"row {ref.row} is past the end ({starts[-1]} rows)")
    group = next(g for g in range(len(starts) - 1) if starts[g] <= ref.row < starts[g + 1])
    key = (ref.location, ref.column, group)
    chunk = _ROW_GROUPS.get(key)
    if chunk is None:
        chunk = parquet.read_row_group(group, columns=[ref.column]).column(ref.column)
        _ROW_GROUPS.put(key, chunk, chunk.nbytes)
    return chunk[ref.row - starts[group]].as_py()


def _source(path: str):
    """What torchcodec opens: the path of a plain file, or the bytes a reference points to."""
    if not is_reference(path):
        return str(path)
    ref = parse_reference(path)
    try:
        cell = _cell(ref)
    except FileNotFoundError as exc:
        raise AudioError(f"{path}: file not found ({first_line(exc)})") from exc
    except Exception as exc:  # pyarrow / fsspec / the Hub: one line with the cause
        raise AudioError(f"{path}: cannot read the row ({first_line(exc)})") from exc
    if not isinstance(cell, dict):
        raise AudioError(f"{path}: column {ref.column!r} is not an Audio column (a cell holds {type(cell).__name__})")
    if cell.get("bytes"):
        return cell["bytes"]
    if cell.get("path") and Path(cell["path"]).is_file():
        return cell["path"]
    raise AudioError(f"{path}: the row holds no audio bytes (path: {cell.get('path')!r})")


# ---------------------------------------------------------------- decoding


def _decoder(path: str, sample_rate: int):
    from torchcodec.decoders import AudioDecoder

    source = _source(path)
    try:
        return AudioDecoder(source, sample_rate=sample_rate, num_channels=1)
    except Exception as exc:  # torchcodec raises ValueError/RuntimeError with FFmpeg's words
        raise AudioError(f"{path}: cannot open as audio ({first_line(exc)})") from exc


def _mono(samples) -> np.ndarray:
    # num_channels=1 makes FFmpeg downmix; copy so the decoder's frame buffer can be freed.
    return np.array(samples.data[0].numpy(), dtype=np.float32)


def probe_duration(path: str) -> float:
    """Duration in seconds from the container, falling back to a full decode when it has none."""
    decoder = _decoder(path, SAMPLE_RATE)
    duration = decoder.metadata.duration_seconds_from_header
    if duration is None:
        duration = sum(len(block) for _, block in iter_blocks(path)) / SAMPLE_RATE
    if not duration or duration <= 0:
        raise AudioError(f"{path}: holds no audio samples")
    return float(duration)


def riff_data_seconds(path: str) -> tuple[float, float] | None:
    """``(seconds the header promises, seconds of data present)`` of a RIFF/WAVE file, else None.

    Reads the chunk headers only: the ``fmt `` chunk's byte rate and the ``data`` chunk's size
    against the bytes actually in the file. None for other containers, for a header that states no
    data size (streaming writers put 0 or 0xFFFFFFFF there), or when the chunks cannot be walked."""
    import struct

    try:
        size = os.path.getsize(path)
        with open(path, "rb") as f:
            head = f.read(12)
            if len(head) < 12 or head[:4] != b"RIFF" or head[8:12] != b"WAVE":
                return None
            byte_rate = None
            while True:
                chunk = f.read(8)
                if len(chunk) < 8:
                    return None
                name, length = chunk[:4], struct.unpack("<I", chunk[4:])[0]
                if name == b"fmt ":
                    fmt = f.read(min(length, 16))
                    if len(fmt) < 12:
                        return None
                    byte_rate = struct.unpack("<I", fmt[8:12])[0]
                    f.seek(length - len(fmt) + (length & 1), os.SEEK_CUR)
                elif name == b"data":
                    if not byte_rate or length in (0, 0xFFFFFFFF):
                        return None
                    present = max(0, min(length, size - f.tell()))
                    return length / byte_rate, present / byte_rate
                else:
                    f.seek(length + (length & 1), os.SEEK_CUR)
    except (OSError, struct.error):
        return None


class _ForwardReader:
    """Spans of one source read in increasing order through one decoder, each sample decoded once.

    torchcodec 0.7 restarts from the beginning of the stream whenever a request starts before the
    end of the last frame it decoded (``[start, end)`` always decodes the whole frame holding
    ``end``). This reader keeps the samples decoded past the end of the last span and asks the
    decoder only for what lies beyond them, so reading forward never restarts. Only for sources
    that FFmpeg does not resample: with a resampler, each request's output is shifted.
    """

    def __init__(self, path: str, decoder, sample_rate: int):
        self.path, self.decoder, self.rate = path, decoder, sample_rate
        self.buffer = np.zeros(0, dtype=np.float32)
        self.first = 0  # sample index of buffer[0]
        self.ended = False

    def can_read(self, start: int) -> bool:
        return start >= self.first

    def read(self, start: int, stop: int | None) -> np.ndarray:
        """Samples ``[start, stop)`` (sample indices; ``stop=None``: to the end)."""
        from torchcodec import _core as core

        if start >= self.first + len(self.buffer):  # nothing buffered is needed
            self.buffer, self.first = self.buffer[:0], start
        while not self.ended and (stop is None or self.first + len(self.buffer) < stop):
            ask = self.first + len(self.buffer)
            try:
                frames, pts = core.get_frames_by_pts_in_range_audio(
                    self.decoder._decoder, start_seconds=ask / self.rate, stop_seconds=None if stop is None else stop / self.rate
                )
            except RuntimeError as exc:
                if "No audio frames were decoded" in str(exc):
                    self.ended = True
                    break
                raise AudioError(f"{self.path}: cannot decode {ask / self.rate:g} s on ({first_line(exc)})") from exc
            got = frames[0].numpy()  # float32, sharing the decoder's output tensor (no copy)
            begin = int(round(float(pts) * self.rate))
            if len(self.buffer) and begin == self.first + len(self.buffer):
                self.buffer = np.concatenate([self.buffer, got])
            else:  # the first frames of a read: they start at or before `ask`
                self.buffer, self.first = got, begin
            self.ended = stop is None
        # A view: the buffer is replaced below, so nothing else holds these samples.
        out = self.buffer[max(start - self.first, 0) : None if stop is None else max(stop - self.first, 0)]
        lead = self.first - start if stop is None else min(self.first, stop) - start
        if lead > 0:  # silence before the stream starts
            out = np.concatenate([np.zeros(lead, dtype=np.float32), out])
        if stop is None:
            self.buffer, self.first = self.buffer[:0], self.first + len(self.buffer)
        elif stop > self.first:
            self.buffer, self.first = self.buffer[stop - self.first :].copy(), stop  # a frame's worth at most
        return out


def _forward_reader(path: str, decoder, sample_rate: int) -> _ForwardReader | None:
    """A reader for ``decoder`` when it can read forward exactly (no resampling), else None."""
    try:
        from torchcodec import _core as core
    except ImportError:
        return None
    if decoder.metadata.sample_rate != sample_rate or not hasattr(core, "get_frames_by_pts_in_range_audio"):
        return None
    return _ForwardReader(path, decoder, sample_rate)


def _read_fresh(path: str, decoder, start: float | None, end: float | None) -> np.ndarray:
    try:
        samples = decoder.get_samples_played_in_range(start_seconds=start or 0.0, stop_seconds=end)
    except Exception as exc:
        raise AudioError(f"{path}: cannot decode {start}-{end} s ({first_line(exc)})") from exc
    lead = int(round((samples.pts_seconds - (start or 0.0)) * decoder._desired_sample_rate))
    audio = _mono(samples)
    return np.concatenate([np.zeros(lead, dtype=np.float32), audio]) if lead > 0 else audio  # silence before the stream starts


def decode_span(path: str, start: float | None = None, end: float | None = None, sample_rate: int = SAMPLE_RATE) -> np.ndarray:
    """Samples of ``[start, end)`` seconds as float32 mono at ``sample_rate``.

    The same samples as torchcodec's ``get_samples_played_in_range`` on a fresh decoder. torchcodec
    0.7 can seek audio only back to its beginning, so a fresh decoder decodes everything before
    ``start``; when the source is not resampled, the last reader of the same file (per process)
    carries on instead when the span starts at or after the previous one's end (segments in order),
    and nothing is decoded twice.
    """
    first = int(round((start or 0.0) * sample_rate))
    stop = None if end is None else first + int(round((end - (start or 0.0)) * sample_rate))
    key = (str(path), sample_rate)
    reader = _READERS.take(key)
    if reader is None or not reader.can_read(first):
        decoder = _decoder(path, sample_rate)
        reader = _forward_reader(path, decoder, sample_rate)
        if reader is None:
            audio = _read_fresh(path, decoder, start, end)
    if reader is not None:
        audio = reader.read(first, stop)
        _READERS.put(key, reader)
    if start is not None and end is not None:
        # Frame boundaries can add or drop a few samples: make the length exact.
        expected = int(round((end - start) * sample_rate))
        audio = audio[:expected] if len(audio) >= expected else np.pad(audio, (0, expected - len(audio)))
    return audio


def iter_blocks(path: str, block_s: float = 600.0, sample_rate: int = SAMPLE_RATE) -> Iterator[tuple[float, np.ndarray]]:
    """``(offset_s, samples)`` for consecutive blocks of ``round(block_s * sample_rate)`` samples.

    One decoder reads forward through the recording; only the last block is shorter. See the module
    docstring for when the blocks equal a whole-file decode sample for sample.
    """
    size = int(round(block_s * sample_rate))
    if size <= 0:
        raise ValueError(f"{path}: block_s must be positive (got {block_s})")
    decoder = _decoder(path, sample_rate)
    reader = _forward_reader(path, decoder, sample_rate)
    index = 0
    while True:
        start, stop = index * size / sample_rate, (index + 1) * size / sample_rate
        if reader is not None:
            block = reader.read(index * size, (index + 1) * size)
        else:
            try:
                block = _read_fresh(path, decoder, start, stop)[:size]
            except AudioError as exc:
                if index > 0 and "No audio frames were decoded" in str(exc):
                    return  # the previous block ended exactly at the end of the stream
                raise
        if len(block):
            yield start, block
        if len(block) < size:
            return
        index += 1


def decode_spans(paths: list[str], starts: list[float], ends: list[float], sample_rate: int = SAMPLE_RATE) -> list[np.ndarray | AudioError]:
    """Decode many spans; each file is decoded once over the range covering its spans."""
    by_path: dict[str, list[int]] = defaultdict(list)
    for i, path in enumerate(paths):
        by_path[path].append(i)
    out: list[np.ndarray | AudioError] = [None] * len(paths)  # type: ignore[list-item]
    for path, items in by_path.items():
        lo = min(starts[i] for i in items)
        hi = max(ends[i] for i in items)
        try:
            block = decode_span(path, lo, hi, sample_rate)
        except AudioError as exc:
            for i in items:
                out[i] = exc
            continue
        for i in items:
            a = int(round((starts[i] - lo) * sample_rate))
            b = a + int(round((ends[i] - starts[i]) * sample_rate))
            out[i] = block[a:b]
    return out

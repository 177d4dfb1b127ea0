"""The options of ``cpqa.py review`` (argparse only: building the parser imports nothing heavy)."""

from __future__ import annotations

import argparse

USAGE = "cpqa.py review OUT | review export OUT | review import OUT FILE"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "words", nargs="+", metavar="WORD", help="OUT (serve the app), export OUT, or import OUT FILE"
    )
    parser.add_argument(
        "--host", default="127.0.0.1", help="address to serve on (default 127.0.0.1; any other needs --auth)"
    )
    parser.add_argument("--port", type=int, default=7860)
    parser.add_argument("--share", action="store_true", help="a public Gradio link (needs --auth)")
    parser.add_argument(
        "--auth", metavar="FILE|env:NAME", help="user:password lines; the user is the annotator"
    )
    parser.add_argument(
        "--overlap",
        type=int,
        default=1,
        metavar="K",
        help="annotators per clip (2 or more gives agreement figures)",
    )
    parser.add_argument(
        "--audio-root", help="your copy of the sources, for a metadata-only build (checked by sha256)"
    )

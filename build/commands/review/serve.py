"""Who may reach the review app, and starting it.

The app binds to 127.0.0.1 unless ``--host`` says otherwise. Any other host, or ``--share`` (a public
Gradio link), is refused unless ``--auth`` is given: ``--auth FILE`` (one ``user:password`` per line;
blank lines and ``#`` comments skipped) or ``--auth env:NAME`` (the variable holds such lines, or pairs
separated by commas). With auth, the logged-in user is the annotator recorded with every action.
"""

from __future__ import annotations

import os
from pathlib import Path

from .session import Review

LOCAL_HOSTS = ("127.0.0.1", "localhost", "::1")
DEFAULT_PORT = 7860
HOW = "give --auth FILE (user:password lines) or --auth env:NAME"


class AccessRefused(ValueError):
    """Serving as asked would expose the data (one line)."""


def read_auth(spec: str) -> list[tuple[str, str]]:
    """``(user, password)`` pairs from ``FILE`` or ``env:NAME``; any malformed line is an error naming it."""
    if spec.startswith("env:"):
        name = spec[4:]
        text = os.environ.get(name)
        if not text:
            raise AccessRefused(f"--auth {spec}: the environment variable {name} is not set or empty")
        where, lines = f"${name}", text.replace(",", "\n").splitlines()
    else:
        path = Path(spec)
        if not path.is_file():
            raise AccessRefused(f"--auth {spec}: no such file (expected user:password lines, or env:NAME)")
        where, lines = spec, path.read_text(encoding="utf-8").splitlines()
    pairs = []
    for n, line in enumerate(lines, 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        user, sep, password = line.partition(":")
        if not sep or not user.strip() or not password:
            raise AccessRefused(f"{where}:{n}: expected user:password")
        pairs.append((user.strip(), password))
    if not pairs:
        raise AccessRefused(f"{where}: no user:password line")
    return pairs


def check_access(host: str, share: bool, auth: list[tuple[str, str]] | None) -> None:
    """Refuse a non-local host or a share link without auth."""
    if auth:
        return
    if share:
        raise AccessRefused(f"--share makes the review reachable by anyone with the link: {HOW}")
    if host not in LOCAL_HOSTS:
        raise AccessRefused(
            f"--host {host} would open the review to the network: {HOW}, or keep the default 127.0.0.1"
        )


def serve(
    review: Review, host: str, port: int, share: bool, users: list[tuple[str, str]] | None, say=print
) -> None:
    """Serve the app until the process ends (every action is already on disk); ``check_access`` first."""
    check_access(host, share, users)
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
    from .app import make_blocks  # gradio is imported only to serve
    from .page import CSS, KEYS_JS

    blocks = make_blocks(review, named_by_login=bool(users))
    build = review.build
    counts = f"{len(build.clips)} clips, {len(build.pairs)} LLM pairs, {len(build.empathy)} empathy samples"
    say(f"cpqa review: {counts}; actions in {review.store.path}")
    for name, n in sorted(build.left_out.items()):
        say(f"  left out: {name} ({n} clips)")
    blocks.queue(default_concurrency_limit=8)
    blocks.launch(
        server_name=host,
        server_port=port,
        share=share,
        auth=users,
        allowed_paths=[str(build.out / "review" / "audio")],
        css=CSS,
        head=KEYS_JS,
        ssr_mode=False,
        show_error=True,
        quiet=False,
        footer_links=[],
    )

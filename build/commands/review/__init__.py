"""Human review of a built folder (``cpqa.py review``): people check the LLM's pairs and labels and
write their own.

    store.py      the SQLite log of every action (append-only, committed before the page shows it)
    folder.py     the built folder as the reviewers see it: clips, pairs, empathy samples, clip audio
    state.py      what the actions mean now: decisions, queues, progress, final verdicts
    session.py    one review: the build, its log and the overlap; actions checked against the build
    agreement.py  pseudo-label precision with Wilson intervals; Cohen's / Fleiss' kappa
    report.py     the card's "Human review" section (also printed by ``review export``)
    export.py     qa_reviewed, qa_human and empathy_reviewed configs; the card's YAML and section
    imports.py    human pairs from a CSV or JSONL file (all rows or none)
    render.py     escaped HTML of the clip (player, waveform, transcript, pairs, sample)
    page.py       the guidelines, CSS and JavaScript of the page
    layout.py     the page's components;  app.py  what its buttons do
    serve.py      access rules (--host, --share, --auth) and launching
    options.py, cli.py   the ``cpqa.py review`` command

Nothing outside this package imports it except ``cpqa.py``; it reads the build's tables and never
writes them.
"""

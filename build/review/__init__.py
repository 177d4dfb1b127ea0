"""Human review of a built folder (``cpqa.py review``): people check the LLM's pairs and labels and
write their own.

    store.py    the SQLite log of every action (append-only, committed before the page shows it)
    folder.py   the built folder as the reviewers see it: clips, pairs, empathy samples, clip audio
    state.py    what the actions mean now: each annotator's decisions, queues, progress, final verdicts
    agreement.py  pseudo-label precision with Wilson intervals; Cohen's / Fleiss' kappa
    export.py   qa_reviewed, qa_human and empathy_reviewed configs, and the card's "Human review" section
    imports.py  human pairs from a CSV or JSONL file (all rows or none)
    render.py   escaped HTML of the clip (player, waveform, transcript, pairs)
    app.py      the Gradio page
    serve.py    access rules (--host, --share, --auth) and launching

Nothing outside this package imports it except ``cpqa.py``; it reads the build's tables and never writes them.
"""

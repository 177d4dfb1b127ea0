"""Third-party chatter while models load goes to the log at DEBUG, never to the terminal."""

import logging

from build.core.logs import LOG, third_party_quiet


def test_prints_become_debug_records_and_lightning_info_is_dropped(capsys, caplog):
    logging.getLogger("pytorch_lightning").setLevel(logging.INFO)
    with caplog.at_level(logging.DEBUG, logger=LOG.name), third_party_quiet():
        print("Model was trained with pyannote.audio 0.0.1, yours is 3.4.0.")
        print("second line", end="")
    assert capsys.readouterr().out == ""
    assert [(r.name, r.levelno, r.getMessage()) for r in caplog.records if r.name == LOG.name] == [
        (LOG.name, logging.DEBUG, "Model was trained with pyannote.audio 0.0.1, yours is 3.4.0."),
        (LOG.name, logging.DEBUG, "second line"),
    ]
    assert logging.getLogger("pytorch_lightning").getEffectiveLevel() == logging.WARNING  # root shows WARNING


def test_with_the_root_at_debug_lightning_keeps_its_level():
    root = logging.getLogger()
    before = root.level
    logging.getLogger("pytorch_lightning").setLevel(logging.INFO)
    root.setLevel(logging.DEBUG)
    try:
        with third_party_quiet():
            pass
        assert logging.getLogger("pytorch_lightning").level == logging.INFO
    finally:
        root.setLevel(before)

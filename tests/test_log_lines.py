"""tapper's log lines: shown on stderr inside tapper_log_shown, the logger left as it was after."""

from __future__ import annotations

import logging
import sys

from tapper.log_lines import show_tapper_log, tapper_log_shown

log = logging.getLogger("tapper.some_step")


def test_info_lines_are_shown_inside_the_block_and_not_after(capsys):
    logger = logging.getLogger("tapper")
    level, handlers = logger.level, list(logger.handlers)
    with tapper_log_shown():
        log.info("step 3/10, loss 1.5")
        log.warning("a record was skipped")
    log.info("after the block")
    err = capsys.readouterr().err
    assert "step 3/10, loss 1.5\n" in err
    assert "warning: a record was skipped\n" in err
    assert "after the block" not in err
    assert logger.level == level and logger.handlers == handlers


def test_a_script_shows_each_line_once_even_with_a_root_handler(capsys, monkeypatch):
    logger = logging.getLogger("tapper")
    monkeypatch.setattr(logger, "handlers", [])
    monkeypatch.setattr(logger, "propagate", True)
    monkeypatch.setattr(logger, "level", logging.NOTSET)
    root = logging.StreamHandler(sys.stderr)  # what logging.basicConfig, called by some library, would add
    monkeypatch.setattr(logging.getLogger(), "handlers", [root])
    show_tapper_log()
    log.info("history rewrites: 8 of 16 written, 3 s")
    assert capsys.readouterr().err.count("history rewrites: 8 of 16 written") == 1

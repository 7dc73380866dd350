"""tapper's log lines: shown on stderr inside tapper_log_shown, the logger left as it was after."""

from __future__ import annotations

import logging

from tapper.log_lines import tapper_log_shown

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

"""The progress display: a live tqdm bar on a terminal, plain log lines elsewhere."""

import logging

from metarl_ray.training.progress import Progress


def test_live_bar_counts_from_a_resumed_start_and_keeps_log_lines_readable(capsys):
    progress = Progress(5, "it", "train run", live=True, initial=2)
    progress.update(1, steps=300, post_succ="0.50")
    logging.getLogger("metarl_ray.driver.trainer").warning("a log line while the bar is shown")
    progress.close()
    err = capsys.readouterr().err
    assert "train run" in err and "3/5" in err and "steps=300" in err and "post_succ=0.50" in err
    assert "a log line while the bar is shown" in err  # printed above the bar, not into it


def test_off_a_terminal_progress_is_plain_log_lines_with_an_eta(caplog):
    caplog.set_level(logging.INFO, logger="metarl_ray")
    progress = Progress(4, "goals", "meta-test", log_every_s=0.0, live=False)
    progress.update(2)
    progress.update(2)
    progress.close()
    lines = [r.getMessage() for r in caplog.records if r.name == "metarl_ray.training.progress"]
    assert lines[0].startswith("meta-test: 2/4 goals (50%)") and "ETA" in lines[0]
    assert lines[-1].startswith("meta-test: 4/4 goals (100%)")

"""Progress bars: items pass through unchanged, and the bar reaches the total with its postfix."""

from __future__ import annotations

from attncraft.progress import progress_bar, progress_task, step_counter


def test_progress_bar_yields_every_item_enabled_or_not(capsys):
    assert list(progress_bar(range(4), "work", enabled=False)) == [0, 1, 2, 3]
    assert list(progress_bar(range(4), "work", enabled=True, postfix=lambda: "score 0.5")) == [0, 1, 2, 3]
    err = capsys.readouterr().err
    assert "work" in err and "4/4" in err and "score 0.5" in err


def test_progress_task_counts_callback_progress(capsys):
    with progress_task("denoising", 5, enabled=True) as update:
        for i in range(1, 6):
            update(i)
    assert "5/5" in capsys.readouterr().err
    with progress_task("silent", 5, enabled=False) as update:
        update(3)
    assert capsys.readouterr().err == ""


def test_step_counter_counts_across_loops_and_returns_the_kwargs():
    seen = []
    callback = step_counter(lambda done, total: seen.append((done, total)), 3)
    kwargs = {"latents": object()}
    assert callback(None, 0, 999, kwargs) is kwargs
    callback(None, 1, 500, {})
    callback(None, 0, 999, {})  # a second denoising loop (e.g. the video stage) continues the count
    assert seen == [(1, 3), (2, 3), (3, 3)]
    assert step_counter(None, 2)(None, 0, 1, kwargs) is kwargs

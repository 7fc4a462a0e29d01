"""When a training loop stops: the time budget's step plan, and Ctrl-C / SIGTERM ending with a checkpoint."""
from __future__ import annotations


def fit_to_budget(total: int, requested: int, step: int, start_step: int,
                  elapsed: float, max_minutes: float) -> int:
    """The step count the time budget can reach at the speed measured so far (capped at ``requested``).

    The learning-rate schedule reads ``recipe.total_steps``, so a run that is slower than
    planned (a shared machine) still anneals fully before its budget ends instead of
    stopping at a high learning rate. In the first third of the plan it may also grow
    back towards ``requested``: a pause early on (the other core busy with tests, say)
    would otherwise cut the whole run short for good, and this early the cosine barely
    moves. Later it only shrinks. The plan is saved in the checkpoint, so a resumed run
    continues the same schedule.
    """
    done = step - start_step
    if done < 50 or elapsed <= 0:
        return total
    reachable = max(step + 1, step + int(done / elapsed * (max_minutes * 60 - elapsed) * 0.97))
    if reachable < total or step < total / 3:
        return min(requested, reachable)
    return total


def stop_on_signals(signalled: dict[str, bool]):
    """Make Ctrl-C and SIGTERM end training with a checkpoint.

    A job started with ``nohup ... &`` inherits an ignored SIGINT, and ``kill`` sends
    SIGTERM: both would otherwise lose everything since the last periodic save.
    The first signal sets ``signalled`` and training stops after the current step
    (all DDP ranks at the same one); a second one interrupts at once.
    Returns a function that restores the previous handlers.
    """
    import signal
    import threading

    if threading.current_thread() is not threading.main_thread():
        return lambda: None

    def stop(signum, frame):
        if signalled:
            raise KeyboardInterrupt
        signalled["signal"] = True

    previous = {sig: signal.signal(sig, stop) for sig in (signal.SIGINT, signal.SIGTERM)}
    return lambda: [signal.signal(sig, h) for sig, h in previous.items()]


def make_progress(enabled: bool):
    """The training progress bar: steps, elapsed, ETA and the latest loss terms."""
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

    return Progress(
        TextColumn("[bold]{task.description}"), BarColumn(), TextColumn("{task.completed}/{task.total}"),
        TimeElapsedColumn(), TextColumn("eta"), TimeRemainingColumn(), TextColumn("{task.fields[terms]}"),
        disable=not enabled, transient=False,
    )

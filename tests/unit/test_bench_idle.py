"""``bench train`` starts each system's turn from an idle process: work a system's threads
left running (a prefetch thread refilling its queue) ends before the next system is timed."""

from __future__ import annotations

import threading
import time

from dist_train.bench.train import wait_until_idle

# wider than the bench's 10 ms: on a loaded machine a busy thread may get under a tenth of
# a core for 10 ms, which would read as idle
WINDOW_S = 0.05


def _spin(seconds: float, started: threading.Event) -> None:
    started.set()
    end = time.perf_counter() + seconds
    while time.perf_counter() < end:
        pass


def test_waits_for_a_busy_thread_to_finish() -> None:
    started = threading.Event()
    worker = threading.Thread(target=_spin, args=(0.4, started))
    worker.start()
    started.wait()
    begin = time.perf_counter()
    assert wait_until_idle(window=WINDOW_S, timeout=5.0)
    waited = time.perf_counter() - begin
    worker.join()
    # it returned only after the thread's work ended, not at once and not at the timeout
    assert 0.3 < waited < 3.0


def test_gives_up_on_a_thread_that_stays_busy() -> None:
    started = threading.Event()
    worker = threading.Thread(target=_spin, args=(1.5, started))
    worker.start()
    started.wait()
    assert not wait_until_idle(window=WINDOW_S, timeout=0.5)
    worker.join()


def test_returns_at_once_in_an_idle_process() -> None:
    begin = time.perf_counter()
    assert wait_until_idle()
    assert time.perf_counter() - begin < 0.5

"""``bench train`` starts each timed round from a quiet process: work a system's threads
left running (a prefetch thread refilling its queue) ends before the next round."""

from __future__ import annotations

import threading
import time

from dist_train.bench.train import settle


def _spin(seconds: float, started: threading.Event) -> None:
    started.set()
    end = time.perf_counter() + seconds
    while time.perf_counter() < end:
        pass


def test_settle_waits_for_a_busy_thread_to_finish() -> None:
    started = threading.Event()
    worker = threading.Thread(target=_spin, args=(0.3, started))
    worker.start()
    started.wait()
    begin = time.perf_counter()
    assert settle(timeout=5.0)
    waited = time.perf_counter() - begin
    worker.join()
    # it returned only after the thread's work ended, not at once and not at the timeout
    assert 0.2 < waited < 2.0


def test_settle_gives_up_on_a_thread_that_stays_busy() -> None:
    started = threading.Event()
    worker = threading.Thread(target=_spin, args=(1.0, started))
    worker.start()
    started.wait()
    assert not settle(timeout=0.3)
    worker.join()


def test_settle_returns_at_once_in_a_quiet_process() -> None:
    begin = time.perf_counter()
    assert settle()
    assert time.perf_counter() - begin < 0.5

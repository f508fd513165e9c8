"""``bench train`` starts each system's turn from an idle process: work a system's threads
left running (a prefetch thread refilling its queue) ends before the next system is timed."""

from __future__ import annotations

import shlex
import threading
import time
from collections.abc import Iterator
from pathlib import Path

from dist_train.bench.train import built_ahead, wait_until_idle
from dist_train.data.stream import prefetch
from tests.conftest import small_config

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


def test_ingest_counts_the_cpu_of_the_processes_it_starts_not_the_machines() -> None:
    """Ray Data's work runs in worker processes, reaped by a raylet that ignores SIGCHLD:
    counted, once. Other programs' work: not."""
    import subprocess
    import sys
    import time

    from dist_train.bench.ingest import TreeCpu

    burn = "import time\nt = time.process_time()\nwhile time.process_time() - t < {}: pass"
    with TreeCpu() as cpu:
        before = cpu.seconds()
        subprocess.run([sys.executable, "-c", burn.format(0.5)], check=True)  # a child
        assert 0.45 <= cpu.seconds() - before < 1.0
        # a grandchild under a shell that ignores SIGCHLD: its CPU never reaches a cutime.
        # The shell waits for it (a `sleep 1` left it orphaned, uncounted, where a loaded
        # machine gave it under 0.5 s of CPU in that second), and it idles a while after
        # its work, so that a sample sees all of it before it exits
        code = shlex.quote(burn.format(0.5) + "\ntime.sleep(0.3)")
        shell = f"trap '' CHLD; {sys.executable} -c {code} & wait"
        before = cpu.seconds()
        subprocess.run(["sh", "-c", shell], check=True)
        assert 0.45 <= cpu.seconds() - before < 1.0
        # a program orphaned at once (its shell exits): no longer this process's descendant
        orphan = f"{sys.executable} -c {shlex.quote(burn.format(1.0))} >/dev/null 2>&1 &"
        subprocess.run(["sh", "-c", orphan], check=True)
        before, start = cpu.seconds(), time.perf_counter()
        time.sleep(0.6)
        assert cpu.seconds() - before < 0.2  # the machine's busy time rose by about 0.6 s
        time.sleep(max(0.0, 1.2 - (time.perf_counter() - start)))  # let it finish


def test_the_batches_built_ahead_are_the_queue_and_the_one_the_thread_holds(
    tmp_path: Path,
) -> None:
    """bench train spends them untimed before each end-to-end round: spending only the
    queue's left one batch built off the clock in every round."""
    built = 0

    def source() -> Iterator[int]:
        nonlocal built
        while True:
            built += 1
            yield built

    cfg = small_config(tmp_path, ["train.prefetch_batches=2"])
    stream = prefetch(source(), cfg.train.prefetch_batches, niceness=0)
    next(stream)
    deadline = time.perf_counter() + 5.0
    while built < 1 + built_ahead(cfg) and time.perf_counter() < deadline:
        time.sleep(0.01)
    time.sleep(0.1)  # no more comes
    assert built == 1 + built_ahead(cfg) == 4
    assert built_ahead(small_config(tmp_path, ["train.prefetch_batches=0"])) == 0

"""Worker threads that serve all live streams in turn, many streams per model call.

A ``Batcher`` keeps a queue of streams that have work waiting (a stream is in it at most once).
Each tick its thread takes up to ``max_batch`` of them, longest-waiting first, and hands them to
``work`` together, which runs one model call for all of them. A stream that is served goes to the
back of the queue when it has work again, so a stream that sends fast cannot starve one that
sends slowly: every waiting stream is served within ``ceil(waiting / max_batch)`` ticks.

What a stream waits with is not queued here: the stream keeps only its newest input (one frame,
one audio window), and ``work`` takes that when the tick starts, so under load answers describe
the latest picture instead of a backlog.
"""
from __future__ import annotations

import logging
import threading
import time
from collections import deque
from typing import Callable, Generic, TypeVar

log = logging.getLogger(__name__)

T = TypeVar("T")


class Batcher(Generic[T]):
    """One worker thread; ``work(batch)`` runs in it for up to ``max_batch`` waiting items per tick.

    ``max_share`` below 1 makes the thread rest after each tick, so that it works at most that share of
    the time: a lane whose work is expensive and can wait (voice estimates) leaves the CPU to one that
    cannot (frames). Thread priorities cannot do this: TensorFlow runs a call's ops in its own pool.
    """

    def __init__(self, name: str, work: Callable[[list[T]], None], max_batch: int = 8,
                 max_share: float = 1.0) -> None:
        if max_batch < 1:
            raise ValueError(f"max_batch must be at least 1, got {max_batch}")
        if not 0 < max_share <= 1:
            raise ValueError(f"max_share must be above 0 and at most 1, got {max_share}")
        self.name, self.work, self.max_batch, self.max_share = name, work, max_batch, max_share
        self._cond = threading.Condition()
        self._queue: deque[T] = deque()
        self._waiting: set[int] = set()  # id() of queued items: an item is queued at most once
        self._thread: threading.Thread | None = None
        self._generation = 0  # a thread from before stop() finishes its tick and then exits
        self.ticks = 0        # counters for the tests and the logs
        self.served = 0

    @property
    def waiting(self) -> int:
        return len(self._queue)

    def start(self) -> None:
        with self._cond:
            if self._thread is not None:
                return
            self._generation += 1
            self._thread = threading.Thread(target=self._run, args=(self._generation,), name=f"live-{self.name}",
                                            daemon=True)
            self._thread.start()

    def stop(self, timeout: float = 2.0) -> None:
        with self._cond:
            thread, self._thread = self._thread, None
            self._generation += 1
            self._queue.clear()
            self._waiting.clear()
            self._cond.notify_all()
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout)

    def submit(self, item: T) -> None:
        """Queue ``item`` unless it already waits (its newer input will be taken when its turn comes)."""
        with self._cond:
            if self._thread is None or id(item) in self._waiting:
                return
            self._waiting.add(id(item))
            self._queue.append(item)
            self._cond.notify()

    def discard(self, item: T) -> None:
        """Forget ``item`` (a closed stream)."""
        with self._cond:
            if id(item) in self._waiting:
                self._waiting.discard(id(item))
                self._queue.remove(item)

    def _run(self, generation: int) -> None:
        while True:
            with self._cond:
                while not self._queue and generation == self._generation:
                    self._cond.wait()
                if generation != self._generation:
                    return
                batch = [self._queue.popleft() for _ in range(min(self.max_batch, len(self._queue)))]
                for item in batch:
                    self._waiting.discard(id(item))
            self.ticks += 1
            self.served += len(batch)
            started = time.perf_counter()
            try:
                self.work(batch)
            except Exception:  # a bug in one tick must not end the lane for every stream
                log.exception("%s: a batch failed", self.name)
            if self.max_share < 1:
                done = time.perf_counter()
                until = done + (done - started) * (1 - self.max_share) / self.max_share
                with self._cond:  # new work does not cut the rest short; stop() does
                    while generation == self._generation and (left := until - time.perf_counter()) > 0:
                        self._cond.wait(left)

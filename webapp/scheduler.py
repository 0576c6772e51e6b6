"""Worker threads that serve all live streams in turn, many streams per model call.

A ``Batcher`` keeps a queue of streams that have work waiting (a stream is in it at most once).
Each tick one of its threads takes up to ``max_batch`` of them, longest-waiting first, and hands
them to ``work`` together, which runs one model call for all of them. A stream that is served goes to the
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
    """Worker threads; ``work(batch)`` runs in one of them for up to ``max_batch`` waiting items per tick.

    With ``threads`` > 1 several ticks run at once (image decoding, detection and the model calls release
    the GIL), but an item is never in two ticks at once: one submitted while its tick runs waits until
    that tick is done, so a stream's state needs no lock and its replies keep their order.

    ``max_share`` below 1 makes a thread rest after each tick, so that it works at most that share of the
    time: a lane whose work is expensive and can wait (voice estimates) leaves the CPU to one that cannot
    (frames). Thread priorities cannot do this: TensorFlow runs a call's ops in its own pool.
    """

    def __init__(self, name: str, work: Callable[[list[T]], None], max_batch: int = 8,
                 max_share: float = 1.0, threads: int = 1) -> None:
        if max_batch < 1:
            raise ValueError(f"max_batch must be at least 1, got {max_batch}")
        if not 0 < max_share <= 1:
            raise ValueError(f"max_share must be above 0 and at most 1, got {max_share}")
        if threads < 1:
            raise ValueError(f"threads must be at least 1, got {threads}")
        self.name, self.work, self.max_batch, self.max_share, self.threads = name, work, max_batch, max_share, threads
        self._cond = threading.Condition()
        self._queue: deque[T] = deque()
        self._waiting: set[int] = set()   # id() of queued items: an item is queued at most once
        self._busy: set[int] = set()      # in a tick now
        self._again: dict[int, T] = {}    # submitted while busy: queued when their tick ends
        self._workers: list[threading.Thread] = []
        self._generation = 0  # threads from before stop() finish their tick and then exit
        self.ticks = 0        # counters for the tests and the logs
        self.served = 0

    @property
    def waiting(self) -> int:
        return len(self._queue)

    def start(self) -> None:
        with self._cond:
            if self._workers:
                return
            self._generation += 1
            self._workers = [threading.Thread(target=self._run, args=(self._generation,),
                                              name=f"live-{self.name}-{k}", daemon=True) for k in range(self.threads)]
            for thread in self._workers:
                thread.start()

    def stop(self, timeout: float = 2.0) -> None:
        with self._cond:
            workers, self._workers = self._workers, []
            self._generation += 1
            self._queue.clear()
            self._waiting.clear()
            self._busy.clear()
            self._again.clear()
            self._cond.notify_all()
        deadline = time.perf_counter() + timeout
        for thread in workers:
            if thread is not threading.current_thread():
                thread.join(max(0.0, deadline - time.perf_counter()))

    def submit(self, item: T) -> None:
        """Queue ``item`` unless it already waits (its newer input will be taken when its turn comes)."""
        with self._cond:
            key = id(item)
            if not self._workers or key in self._waiting:
                return
            if key in self._busy:
                self._again[key] = item
                return
            self._waiting.add(key)
            self._queue.append(item)
            self._cond.notify()

    def discard(self, item: T) -> None:
        """Forget ``item`` (a closed stream)."""
        with self._cond:
            self._again.pop(id(item), None)
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
                    self._busy.add(id(item))
                self.ticks += 1
                self.served += len(batch)
            started = time.perf_counter()
            try:
                self.work(batch)
            except Exception:  # a bug in one tick must not end the lane for every stream
                log.exception("%s: a batch failed", self.name)
            with self._cond:
                if generation != self._generation:
                    return
                for item in batch:  # served: back in line (at the end) if it got new work meanwhile
                    key = id(item)
                    self._busy.discard(key)
                    if self._again.pop(key, None) is not None:
                        self._waiting.add(key)
                        self._queue.append(item)
                        self._cond.notify()
            if self.max_share < 1:
                done = time.perf_counter()
                until = done + (done - started) * (1 - self.max_share) / self.max_share
                with self._cond:  # new work does not cut the rest short; stop() does
                    while generation == self._generation and (left := until - time.perf_counter()) > 0:
                        self._cond.wait(left)

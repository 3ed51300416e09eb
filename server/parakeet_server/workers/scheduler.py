"""The one owner of an engine: a single thread that loads it and runs its work in turn.

In the server the engine is the model process (remote.py), which answers one call at a time;
MLX state is not meant for concurrent threads either. Two kinds of work queue here:

- stream blocks: the next block of a live stream. All the blocks waiting when the thread is
  free go to the engine as one batch (`stream_blocks`), up to `max_batch_size`, so N live
  streams cost one encoder call with N rows instead of N calls; a batch may wait up to
  `max_batch_wait` seconds for the other open streams' blocks to fill it;
- jobs: anything else (a step of a long transcription, a stream's final pass), in order;
  short recordings (one chunk) are jobs that batch too: when one comes up, the other short
  recordings queued behind it join it in one `transcribe_batch` call, and it may wait up to
  `max_batch_wait` for requests already admitted (their audio being decoded) to queue theirs
  (10 ms when none is).

Stream blocks go first, so that a long recording's chunks never hold a dictation back for
more than the one job already running; a job that has waited `job_patience` seconds goes
before the next batch, so that streams cannot starve one-shot requests either.

The queue is bounded so that overload becomes an immediate, explicit error instead of
unbounded latency. A request takes its place in the queue (`admit`) before it does any
expensive work of its own, such as decoding its audio, so that a burst beyond the limit is
refused at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator
from concurrent.futures import Future
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

import numpy as np

from parakeet_server.domain import BlockResult, Transcript, TranscriptionOptions
from parakeet_server.engine.interface import TranscriptionEngine
from parakeet_server.errors import DeadlineExceeded, ModelUnavailable, Overloaded

log = logging.getLogger(__name__)

T = TypeVar("T")


E = TypeVar("E", bound=TranscriptionEngine)


@dataclass(frozen=True)
class Timed(Generic[T]):
    """A job's result with the time it waited for the model and the time it ran."""

    value: T
    queue_seconds: float
    run_seconds: float
    batch_size: int = 1  # stream blocks: how many streams shared the engine call


@dataclass(frozen=True)
class BatchPolicy:
    """How stream blocks and short recordings are batched (see the module's docstring)."""

    max_batch_size: int = 8
    max_batch_wait: float = 0.05  # seconds
    job_patience: float = 2.0  # seconds


@dataclass
class _Job:
    run: Callable[[Any], Any]  # engine -> value
    future: Future[Any]
    queued_at: float
    deadline: float | None


@dataclass
class _Clip:
    """A short recording to transcribe whole, batchable with the others queued."""

    samples: np.ndarray
    options: TranscriptionOptions
    future: Future[Any]
    queued_at: float
    deadline: float | None


# How long a short recording that came up alone waits for the rest of a burst.
_BURST_GRACE = 0.01  # seconds


@dataclass
class _Admission:
    """An admitted request (`admit`), until it queues its first work."""

    scheduler: object
    queued: bool = False


# The admission of the request this task serves: its first job or clip ends its arrival.
_ADMISSION: contextvars.ContextVar[_Admission | None] = contextvars.ContextVar(
    "parakeet_admission", default=None
)


@dataclass
class _Block:
    session: Callable[[Any], object]  # engine -> the stream's session (opened on first use)
    samples: np.ndarray
    future: Future[Any]
    queued_at: float


class ModelScheduler(Generic[E]):
    """Runs work against one engine on one dedicated thread, at most `max_pending` at a time."""

    def __init__(
        self,
        load: Callable[[], E],
        *,
        max_pending: int = 64,
        batching: BatchPolicy | None = None,
        on_batch: Callable[[str, int, float], None] | None = None,
        on_drop: Callable[[str], None] | None = None,
    ) -> None:
        """`on_batch(work, size, seconds)` hears of every batch: work "stream" (blocks of live
        streams) or "oneshot" (short recordings); `on_drop(reason)` of every piece of queued
        work dropped without reaching the engine: reason "deadline" (its deadline passed) or
        "cancelled" (its caller went away). Both for metrics."""
        self._load = load
        self._max_pending = max_pending
        self._batching = batching or BatchPolicy()
        self._on_batch = on_batch
        self._on_drop = on_drop
        self._pending = 0
        self._lock = threading.Lock()
        self._ready = threading.Condition(self._lock)
        self._jobs: deque[_Job | _Clip] = deque()
        self._blocks: deque[_Block] = deque()
        self._streams = 0  # open streams: how many blocks a batch may wait for
        self._unqueued = 0  # admitted requests that have queued no work yet
        self._engine: E | None = None
        self._closed = False
        self._closed_because = "the server is shutting down"
        self._stopping = False
        self._thread = threading.Thread(target=self._serve, name="model", daemon=True)
        self._thread.start()

    @property
    def engine(self) -> E | None:
        """The loaded engine, for reading its description; never call into it directly."""
        return self._engine

    @property
    def pending(self) -> int:
        """Jobs queued or running."""
        return self._pending

    async def start(self) -> E:
        """Loads and warms up the engine on the model thread."""

        def load_and_warm(_: object) -> E:
            engine = self._load()
            if not self._closed:
                engine.warm_up()
            if self._closed:  # shut down while loading: nobody else will close it
                engine.close()
                raise ModelUnavailable("the server shut down while the model was loading")
            return engine

        loaded: Timed[E] = await asyncio.wrap_future(self._submit(load_and_warm, None))
        self._engine = loaded.value
        return loaded.value

    @contextlib.contextmanager
    def admit(self) -> Iterator[None]:
        """Holds a place in the queue for a whole request, from before its audio is decoded to
        its last job; raises Overloaded at once when the queue is full. Jobs run inside it pass
        `admitted=True`."""
        self._usable_engine()
        self._take_place()
        admission = _Admission(self)
        with self._lock:
            self._unqueued += 1
        token = _ADMISSION.set(admission)
        try:
            yield
        finally:
            with contextlib.suppress(ValueError):  # closed from another context (an
                _ADMISSION.reset(token)  # abandoned generator finalized by the event loop)
            self._queues(admission)
            self._release(None)

    def _queues(self, admission: _Admission | None) -> None:
        """The admitted request (this task's, by default) queues work now, or never will."""
        if admission is None or admission.scheduler is not self or admission.queued:
            return
        admission.queued = True
        with self._ready:
            self._unqueued -= 1
            self._ready.notify()  # a batch waiting for it may go

    async def run(
        self,
        job: Callable[[E], T],
        *,
        deadline: float | None = None,
        admitted: bool = False,
    ) -> Timed[T]:
        """Runs `job(engine)` on the model thread once the jobs before it are done.

        `deadline` is a time.monotonic() value; a job still queued when it passes, or whose
        caller was cancelled, is dropped without running. A job of an admitted request takes
        no second place in the queue.
        """
        self._usable_engine()
        if admitted:
            self._queues(_ADMISSION.get())
        else:
            self._take_place()
        future = self._submit(job, deadline)
        if not admitted:
            future.add_done_callback(self._release)
        # Cancelling the awaiting task cancels a job that has not started yet.
        timed: Timed[T] = await asyncio.wrap_future(future)
        return timed

    async def run_clip(
        self,
        samples: np.ndarray,
        options: TranscriptionOptions,
        *,
        deadline: float | None = None,
        admitted: bool = False,
    ) -> Timed[Transcript]:
        """Transcribes a recording of at most one chunk, in one batch with the other short
        recordings queued when its turn comes (see `run` for `deadline` and `admitted`)."""
        self._usable_engine()
        if admitted:
            self._queues(_ADMISSION.get())
        else:
            self._take_place()
        future: Future[Any] = Future()
        if not admitted:
            future.add_done_callback(self._release)
        with self._ready:
            self._jobs.append(_Clip(samples, options, future, time.monotonic(), deadline))
            self._ready.notify()
        timed: Timed[Transcript] = await asyncio.wrap_future(future)
        return timed

    async def run_block(
        self, session: Callable[[E], object], samples: np.ndarray
    ) -> Timed[BlockResult]:
        """Gives a live stream's new samples to its session and runs its next block if it
        can, batched with the blocks of other streams waiting at the same time.

        `session(engine)` is the stream's session, called on the model thread."""
        self._usable_engine()
        self._take_place()
        future: Future[Any] = Future()
        future.add_done_callback(self._release)
        with self._ready:
            self._blocks.append(_Block(session, samples, future, time.monotonic()))
            self._ready.notify()
        timed: Timed[BlockResult] = await asyncio.wrap_future(future)
        return timed

    @contextlib.contextmanager
    def stream(self) -> Iterator[None]:
        """Counts an open stream while the block runs: a batch may wait for its blocks."""
        with self._lock:
            self._streams += 1
        try:
            yield
        finally:
            with self._lock:
                self._streams -= 1

    def _usable_engine(self) -> E:
        if self._engine is None or self._closed:
            raise ModelUnavailable(
                "the model is not loaded yet" if not self._closed else self._closed_because
            )
        return self._engine

    def _take_place(self) -> None:
        with self._lock:
            if self._pending >= self._max_pending:
                raise Overloaded(
                    f"{self._pending} requests are already queued for the model "
                    f"(limit {self._max_pending}); retry in a moment"
                )
            self._pending += 1

    def _release(self, _: object) -> None:
        with self._lock:
            self._pending -= 1

    async def close(self, timeout: float = 30.0, *, because: str | None = None) -> None:
        """Refuses new work (with `because` as the reason), lets what is queued run (on a dead
        engine it fails at once), then closes the engine on the model thread.
        """
        self._closed = True
        if because is not None:
            self._closed_because = because
        engine = self._engine
        if engine is not None:
            closing = self._submit(lambda engine: engine.close(), None)
            try:
                await asyncio.wait_for(asyncio.wrap_future(closing), timeout)
            except asyncio.TimeoutError:
                log.warning("the model thread did not finish within %.0f s", timeout)
        with self._ready:
            self._stopping = True
            self._ready.notify()

    # -- the model thread ------------------------------------------------------------------------

    def _submit(self, run: Callable[[Any], Any], deadline: float | None) -> Future[Any]:
        future: Future[Any] = Future()
        with self._ready:
            self._jobs.append(_Job(run, future, time.monotonic(), deadline))
            self._ready.notify()
        return future

    def _serve(self) -> None:
        while True:
            with self._ready:
                while not (self._jobs or self._blocks or self._stopping):
                    self._ready.wait()
                if not (self._jobs or self._blocks):
                    return  # stopping, and nothing left
                work = self._next_work()
            if isinstance(work, _Job):
                self._run_job(work)
            elif work and isinstance(work[0], _Clip):
                self._run_clips([clip for clip in work if isinstance(clip, _Clip)])
            else:
                self._run_blocks([block for block in work if isinstance(block, _Block)])
            # Waiting for the next work, the thread holds nothing: it held the last job (an
            # hour of audio, 230 MB, in a long recording's closure) until the next one came.
            del work

    def _next_work(self) -> _Job | list[_Clip] | list[_Block]:
        """Stream blocks first, unless a job has waited past its patience (lock held)."""
        patience = self._batching.job_patience
        job_waited = bool(self._jobs) and time.monotonic() - self._jobs[0].queued_at > patience
        if self._jobs and (not self._blocks or job_waited or self._engine is None):
            job = self._jobs.popleft()
            if isinstance(job, _Job):
                return job
            clips = [job]  # and the other short recordings queued behind it
            self._gather(clips)
            if self._batching.max_batch_wait > 0:
                # Requests admitted but not queued yet (their audio is being decoded) are
                # about to queue: wait up to max_batch_wait for them, so that recordings
                # sent together share the call; and a few milliseconds in any case, for the
                # rest of a burst to be admitted (measured: the first of 8 requests sent at
                # once could be decoded and queued before the second was admitted).
                now = time.monotonic()
                until = now + self._batching.max_batch_wait
                grace = now + min(_BURST_GRACE, self._batching.max_batch_wait)
                while (
                    len(clips) < self._batching.max_batch_size
                    and (left := (until if self._unqueued > 0 else grace) - time.monotonic()) > 0
                ):
                    self._ready.wait(left)
                    self._gather(clips)
            return clips
        if self._batching.max_batch_wait > 0:
            # Wait a little for the other open streams' blocks, so that they share the call.
            # From now, not from when the first block came: while the model was busy, the
            # streams it just answered are about to send their next blocks.
            until = time.monotonic() + self._batching.max_batch_wait
            wanted = min(self._batching.max_batch_size, self._streams)
            while len(self._blocks) < wanted and (left := until - time.monotonic()) > 0:
                self._ready.wait(left)
        batch: list[_Block] = []
        while self._blocks and len(batch) < self._batching.max_batch_size:
            batch.append(self._blocks.popleft())
        return batch

    def _gather(self, clips: list[_Clip]) -> None:
        """Moves the short recordings queued into `clips`, up to a batch (lock held)."""
        for other in list(self._jobs):
            if len(clips) >= self._batching.max_batch_size:
                break
            if isinstance(other, _Clip):
                self._jobs.remove(other)
                clips.append(other)

    def _run_job(self, job: _Job) -> None:
        started = time.monotonic()
        if not job.future.set_running_or_notify_cancel():
            self._dropped(job.deadline, started)  # its caller gave up while it was queued
            return
        try:
            if job.deadline is not None and started > job.deadline:
                self._dropped(job.deadline, started)
                raise _expired(job.queued_at, started)
            value = job.run(self._engine)
        except BaseException as error:
            job.future.set_exception(error)
            return
        job.future.set_result(Timed(value, started - job.queued_at, time.monotonic() - started))

    def _run_clips(self, clips: list[_Clip]) -> None:
        now = time.monotonic()
        ready = []
        for clip in clips:
            if not clip.future.set_running_or_notify_cancel():
                self._dropped(clip.deadline, now)  # its caller gave up while it was queued
                continue
            if clip.deadline is not None and now > clip.deadline:
                self._dropped(clip.deadline, now)
                clip.future.set_exception(_expired(clip.queued_at, now))
                continue
            ready.append(clip)
        if ready:
            self._transcribe_clips(ready)

    def _transcribe_clips(self, clips: list[_Clip]) -> None:
        engine = self._engine
        started = time.monotonic()
        try:
            if engine is None:
                raise ModelUnavailable(self._closed_because)
            transcripts = engine.transcribe_batch([(c.samples, c.options) for c in clips])
        except BaseException as error:
            if len(clips) > 1 and not isinstance(error, ModelUnavailable):
                # Whatever it was, it fails only the recording it came from: one at a time.
                for clip in clips:
                    self._transcribe_clips([clip])
                return
            for clip in clips:
                clip.future.set_exception(error)
            return
        seconds = time.monotonic() - started
        if self._on_batch is not None:
            self._on_batch("oneshot", len(clips), seconds)
        for clip, transcript in zip(clips, transcripts, strict=True):
            clip.future.set_result(
                Timed(transcript, started - clip.queued_at, seconds, batch_size=len(clips))
            )

    def _run_blocks(self, blocks: list[_Block]) -> None:
        batch = [block for block in blocks if block.future.set_running_or_notify_cancel()]
        for _ in range(len(blocks) - len(batch)):
            self._dropped(None, 0.0)  # their streams ended while they were queued
        if not batch:
            return
        engine = self._engine
        started = time.monotonic()
        try:
            if engine is None:
                raise ModelUnavailable(self._closed_because)
            results = engine.stream_blocks([(b.session(engine), b.samples) for b in batch])
        except BaseException as error:
            for block in batch:
                block.future.set_exception(error)
            return
        seconds = time.monotonic() - started
        if self._on_batch is not None:
            self._on_batch("stream", len(batch), seconds)
        for block, result in zip(batch, results, strict=True):
            block.future.set_result(
                Timed(result, started - block.queued_at, seconds, batch_size=len(batch))
            )

    def _dropped(self, deadline: float | None, now: float) -> None:
        if self._on_drop is not None:
            self._on_drop("deadline" if deadline is not None and now > deadline else "cancelled")


def _expired(queued_at: float, now: float) -> DeadlineExceeded:
    return DeadlineExceeded(f"the deadline passed after {now - queued_at:.2f} s in the queue")

"""The model scheduler's order and batching, with an engine that records its calls.

The model thread is held busy by a job that waits on an event, so that work queues up behind
it exactly as it does while a real model computes; then the test releases it and reads the
calls the engine got.
"""

from __future__ import annotations

import asyncio
import contextvars
import threading
import time
from collections.abc import Awaitable
from typing import Any

import numpy as np
import pytest

from parakeet_server.domain import BlockResult, ModelInfo, Transcript, TranscriptionOptions
from parakeet_server.errors import DeadlineExceeded, InvalidRequest
from parakeet_server.workers.scheduler import BatchPolicy, ModelScheduler

INFO = ModelInfo(
    model_id="fake",
    kind="ctc",
    sample_rate=16000,
    vocabulary_size=1,
    dtype="float32",
    device="cpu",
    blas="",
    parameter_count=0,
    min_samples=1,
    frame_seconds=0.08,
    hop_length=160,
    win_length=400,
    n_fft=512,
    subsampling=8,
    load_seconds=0.0,
)


class RecordingEngine:
    """Answers at once and notes what it was asked, in order."""

    info = INFO

    def __init__(self) -> None:
        self.calls: list[tuple[str, int]] = []
        self.fail_batches = False

    def warm_up(self) -> float:
        return 0.0

    def close(self) -> None:
        self.calls.append(("close", 0))

    def stream_blocks(self, blocks: list[tuple[object, np.ndarray]]) -> list[BlockResult]:
        self.calls.append(("blocks", len(blocks)))
        return [BlockResult(0, 0.0, str(session), "") for session, _ in blocks]

    def transcribe_batch(
        self, requests: list[tuple[np.ndarray, TranscriptionOptions]]
    ) -> list[Transcript]:
        self.calls.append(("clips", len(requests)))
        if self.fail_batches and len(requests) > 1:
            raise RuntimeError("a batch-wide failure")
        if any(samples.size == 0 for samples, _ in requests):
            raise InvalidRequest("empty")
        return [Transcript(text=str(samples.size)) for samples, _ in requests]


async def _started(policy: BatchPolicy | None = None) -> tuple[ModelScheduler[Any], Any]:
    engine = RecordingEngine()
    scheduler: ModelScheduler[Any] = ModelScheduler(lambda: engine, batching=policy)
    await scheduler.start()
    return scheduler, engine


async def _hold(scheduler: ModelScheduler[Any]) -> tuple[threading.Event, Awaitable[Any]]:
    """Occupies the model thread until the event is set."""
    release = threading.Event()
    running = threading.Event()

    def busy(_: object) -> None:
        running.set()
        release.wait(30)

    held = asyncio.ensure_future(scheduler.run(busy))
    await asyncio.to_thread(running.wait, 30)
    return release, held


def _job(engine: RecordingEngine) -> str:
    engine.calls.append(("job", 0))
    return "job"


def _session(name: str) -> Any:
    return lambda _engine: name


async def _queued(awaitables: list[Awaitable[Any]]) -> list[asyncio.Future[Any]]:
    tasks: list[asyncio.Future[Any]] = [asyncio.ensure_future(a) for a in awaitables]
    await asyncio.sleep(0.05)  # every one of them is in the queue now
    return tasks


def test_blocks_waiting_together_go_as_one_batch_before_queued_jobs() -> None:
    async def scenario() -> list[tuple[str, int]]:
        scheduler, engine = await _started()
        release, held = await _hold(scheduler)
        job = await _queued([scheduler.run(_job)])
        blocks = await _queued(
            [scheduler.run_block(_session(n), np.zeros(1, np.float32)) for n in "abc"]
        )
        release.set()
        await held
        results = [(await block).value.committed_text for block in blocks]
        assert results == ["a", "b", "c"]  # each stream got its own result
        assert (await job[0]).value == "job"
        await scheduler.close()
        calls: list[tuple[str, int]] = engine.calls
        return calls

    # The job was queued first, but the streams' blocks went first, all in one call.
    assert asyncio.run(scenario()) == [("blocks", 3), ("job", 0), ("close", 0)]


def test_a_batch_holds_at_most_max_batch_size_blocks_in_arrival_order() -> None:
    async def scenario() -> list[tuple[str, int]]:
        scheduler, engine = await _started(BatchPolicy(max_batch_size=2))
        release, held = await _hold(scheduler)
        blocks = await _queued(
            [scheduler.run_block(_session(n), np.zeros(1, np.float32)) for n in "abcde"]
        )
        release.set()
        await held
        assert [(await b).value.committed_text for b in blocks] == list("abcde")
        assert [(await b).batch_size for b in blocks] == [2, 2, 2, 2, 1]
        await scheduler.close()
        calls: list[tuple[str, int]] = engine.calls
        return calls

    assert asyncio.run(scenario()) == [("blocks", 2), ("blocks", 2), ("blocks", 1), ("close", 0)]


def test_short_recordings_queued_together_share_one_call_and_jobs_keep_their_turn() -> None:
    async def scenario() -> list[tuple[str, int]]:
        scheduler, engine = await _started()
        release, held = await _hold(scheduler)
        options = TranscriptionOptions()
        first = await _queued([scheduler.run_clip(np.zeros(5, np.float32), options)])
        job = await _queued([scheduler.run(_job)])
        rest = await _queued([scheduler.run_clip(np.zeros(n, np.float32), options) for n in (6, 7)])
        release.set()
        await held
        texts = [(await clip).value.text for clip in first + rest]
        assert texts == ["5", "6", "7"]
        assert (await job[0]).value == "job"
        await scheduler.close()
        calls: list[tuple[str, int]] = engine.calls
        return calls

    # The first recording's turn takes the other two along; the job queued between them
    # runs after that batch.
    assert asyncio.run(scenario()) == [("clips", 3), ("job", 0), ("close", 0)]


def test_a_failing_batch_fails_only_the_recording_at_fault() -> None:
    async def scenario() -> None:
        scheduler, engine = await _started()
        engine.fail_batches = True
        release, held = await _hold(scheduler)
        options = TranscriptionOptions()
        clips = await _queued(
            [scheduler.run_clip(np.zeros(n, np.float32), options) for n in (3, 0, 4)]
        )
        release.set()
        await held
        outcomes = await asyncio.gather(*clips, return_exceptions=True)
        assert [o.value.text for o in outcomes if not isinstance(o, BaseException)] == ["3", "4"]
        assert isinstance(outcomes[1], InvalidRequest)
        await scheduler.close()

    asyncio.run(scenario())


def test_queued_work_past_its_deadline_or_cancelled_is_dropped_without_running() -> None:
    async def scenario() -> None:
        engine = RecordingEngine()
        dropped: list[str] = []
        scheduler: ModelScheduler[Any] = ModelScheduler(lambda: engine, on_drop=dropped.append)
        await scheduler.start()
        release, held = await _hold(scheduler)
        ran: list[str] = []
        past = 0.0  # a deadline long past
        queued = await _queued(
            [
                scheduler.run(lambda _: ran.append("late"), deadline=past),
                scheduler.run_clip(np.zeros(1, np.float32), TranscriptionOptions(), deadline=past),
                scheduler.run(lambda _: ran.append("abandoned")),
                scheduler.run_clip(np.zeros(2, np.float32), TranscriptionOptions()),
                scheduler.run_block(_session("a"), np.zeros(1, np.float32)),
            ]
        )
        for abandoned in queued[2:]:
            abandoned.cancel()  # its caller went away while it waited
        # The cancellations reach the queue (the model's futures) before the model is free:
        # released at once, the model thread could take a job before its caller's
        # cancellation was processed (a race the test lost now and then).
        await asyncio.wait(queued[2:])
        release.set()
        await held
        for late in queued[:2]:
            with pytest.raises(DeadlineExceeded):
                await late
        await asyncio.sleep(0.05)  # the model thread has been through the queue
        assert ran == []
        assert [call for call in engine.calls if call[0] != "close"] == []
        assert sorted(dropped) == ["cancelled"] * 3 + ["deadline"] * 2
        await scheduler.close()

    asyncio.run(scenario())


def test_streams_cannot_starve_a_job_that_waited_past_its_patience() -> None:
    async def scenario() -> list[str]:
        scheduler, _ = await _started(BatchPolicy(job_patience=0.0))
        order: list[str] = []
        release, held = await _hold(scheduler)
        job = await _queued([scheduler.run(lambda _: order.append("job"))])
        blocks = await _queued([scheduler.run_block(_session("a"), np.zeros(1, np.float32))])
        release.set()
        await held
        await job[0]
        await blocks[0]
        order.append("block done")
        await scheduler.close()
        return order

    # With no patience the job, queued first, goes before the block.
    assert asyncio.run(scenario()) == ["job", "block done"]


async def _request(
    scheduler: ModelScheduler[Any], size: int, *, decoding: float = 0.0, fails: bool = False
) -> tuple[str, float]:
    """A one-shot request as the server runs one: admitted, then `decoding` seconds of its
    own work, then its recording queued (or, when it `fails` to decode, nothing queued).
    Returns its text and the seconds from its recording's queueing to its result."""
    with scheduler.admit():
        await asyncio.sleep(decoding)
        if fails:
            return "failed", 0.0
        queued = time.monotonic()
        timed = await scheduler.run_clip(
            np.zeros(size, np.float32), TranscriptionOptions(), admitted=True
        )
        return timed.value.text, time.monotonic() - queued


def test_a_recording_waits_for_requests_admitted_with_it_to_share_its_call() -> None:
    async def scenario() -> list[tuple[str, int]]:
        scheduler, engine = await _started(BatchPolicy(max_batch_wait=10.0))
        # The model is free: the first recording comes up at once, while the other two
        # requests are still decoding their audio.
        results = await asyncio.gather(
            _request(scheduler, 5),
            _request(scheduler, 6, decoding=0.2),
            _request(scheduler, 7, decoding=0.4),
        )
        assert [text for text, _ in results] == ["5", "6", "7"]
        # They waited for each other, not for the 10 s limit.
        assert max(seconds for _, seconds in results) < 5.0
        await scheduler.close()
        calls: list[tuple[str, int]] = engine.calls
        return calls

    assert asyncio.run(scenario()) == [("clips", 3), ("close", 0)]


def test_a_recording_does_not_wait_for_requests_that_queued_theirs_or_never_will() -> None:
    async def scenario() -> list[tuple[str, int]]:
        scheduler, engine = await _started(BatchPolicy(max_batch_wait=10.0))
        # Alone, it runs at once; so does the next one while the first request is still
        # open (its recording ran: it is not arriving any more).
        with scheduler.admit():
            first = await scheduler.run_clip(
                np.zeros(5, np.float32), TranscriptionOptions(), admitted=True
            )
            assert first.value.text == "5"
            text, seconds = await _request(scheduler, 6)
            assert (text, seconds < 5.0) == ("6", True)
        # A request admitted with it that fails to decode ends the wait.
        results = await asyncio.gather(
            _request(scheduler, 7), _request(scheduler, 0, decoding=0.2, fails=True)
        )
        assert results[0][0] == "7"
        assert results[0][1] < 5.0
        await scheduler.close()
        calls: list[tuple[str, int]] = engine.calls
        return calls

    assert asyncio.run(scenario()) == [("clips", 1)] * 3 + [("close", 0)]


def test_an_admission_closed_from_another_context_still_gives_its_place_back() -> None:
    """An abandoned request's generator can be finalized by the event loop in a context of
    its own: its place in the queue, and its arrival, must end all the same."""

    async def scenario() -> None:
        scheduler, _ = await _started(BatchPolicy(max_batch_wait=10.0))
        admission = scheduler.admit()
        admission.__enter__()
        assert scheduler.pending == 1
        contextvars.Context().run(admission.__exit__, None, None, None)
        assert scheduler.pending == 0
        text, seconds = await _request(scheduler, 5)  # nobody left to wait for
        assert text == "5"
        assert seconds < 5.0
        await scheduler.close()

    asyncio.run(scenario())

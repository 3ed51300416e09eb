"""Fixtures: small generated Parakeet checkpoints, real speech, and real servers on free ports."""

from __future__ import annotations

import contextlib
import os
import signal
import sys
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest

from audio_samples import convert, speak
from parakeet_client.proto.parakeet.v1 import transcription_pb2 as pb
from parakeet_client.proto.parakeet.v1 import transcription_pb2_grpc as pb_grpc
from parakeet_server.engine.checkpoint import write_checkpoint
from parakeet_server.engine.runtime import use_fast_blas
from parakeet_server.testing.launcher import RunningServer, start_server

# In-process engine tests load MLX too: give them the BLAS the server would have.
use_fast_blas()

# The checkpoint trained here on espeak-ng speech, and the tools that made it (its recipe's
# vocabulary says how its words are spoken; test_train_tiny.py tests the tools).
TRAINED_MODEL = Path(__file__).resolve().parent / "models" / "tiny-ctc-espeak"
sys.path.insert(0, str(TRAINED_MODEL.parents[2] / "tools" / "train_tiny"))

SENTENCE = "Please schedule the meeting for Tuesday at ten thirty, and invite the whole team."


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Tests marked `at_end` run after all the others: each collects the outcome of something
    a fixture began earlier and left running on its own (a minute of silence), so that the
    wait overlaps the rest of the run."""
    items.sort(key=lambda item: item.get_closest_marker("at_end") is not None)


@pytest.fixture(scope="session")
def checkpoints(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Tiny random TDT, RNN-T and CTC checkpoints saved the way real ones are."""
    root = tmp_path_factory.mktemp("checkpoints")
    return {kind: write_checkpoint(root / kind, kind=kind) for kind in ("tdt", "rnnt", "ctc")}


@pytest.fixture(scope="session")
def tdt_checkpoint(checkpoints: dict[str, Path]) -> Path:
    return checkpoints["tdt"]


@pytest.fixture(scope="session")
def speech_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One spoken sentence as 16 kHz mono WAV (`speech.wav`) and in every other format."""
    root = tmp_path_factory.mktemp("speech")
    spoken = speak(SENTENCE, root / "espeak.wav")
    convert(spoken, root / "speech.wav", rate=16000, channels=1)
    for suffix in ("flac", "ogg", "opus", "mp3", "m4a", "s16le", "f32le"):
        convert(root / "speech.wav", root / f"speech.{suffix}")
    for rate in (8000, 44100, 48000):
        convert(spoken, root / f"speech_{rate}.wav", rate=rate, channels=1)
    convert(spoken, root / "speech_stereo.wav", rate=44100, channels=2)
    convert(spoken, root / "speech_stereo.m4a", rate=48000, channels=2)
    return root


@pytest.fixture(scope="session")
def speech_wav(speech_dir: Path) -> bytes:
    return (speech_dir / "speech.wav").read_bytes()


@pytest.fixture(scope="session")
def server(
    tdt_checkpoint: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[RunningServer]:
    """The shared server on the tiny TDT checkpoint, with a small message limit.

    Its transcript cache is off, so that every request really runs the model (tests/test_caching.py
    starts servers with it on). It runs one request per model call (--max-batch-size 1): tests
    here compare concurrent results with results alone bit for bit, and a batch sums its
    matmuls in another order, which on this random model's near-ties can flip a token. Batched
    results are compared with results alone on the trained checkpoint (test_stream_batching.py,
    test_trained_model.py).
    """
    running = start_server(
        tdt_checkpoint,
        tmp_path_factory.mktemp("logs"),
        "--max-message-bytes",
        "3000000",
        "--transcript-cache-bytes",
        "0",
        "--max-batch-size",
        "1",
    )
    yield running
    assert running.stop() == 0, running.log()


@pytest.fixture(scope="module")
def metered_server(
    tdt_checkpoint: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[RunningServer]:
    """A server of the module's own (default flags, metrics on), for tests that count model
    steps or read metric deltas no other module's calls may touch."""
    running = start_server(
        tdt_checkpoint, tmp_path_factory.mktemp("metered"), "--metrics-address", "127.0.0.1:0"
    )
    yield running
    assert running.stop() == 0, running.log()


@pytest.fixture(scope="session")
def trained_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    """A server on the trained tiny CTC checkpoint (real words from espeak-ng speech), shared
    by test_trained_model.py, test_endpointing.py and the client tests that need words."""
    running = start_server(
        TRAINED_MODEL,
        tmp_path_factory.mktemp("logs"),
        *("--transcript-cache-bytes", "0", "--metrics-address", "127.0.0.1:0"),
        # A streaming step waits for the other open streams' blocks: concurrent streams
        # share steps for sure (alone, a stream never waits).
        *("--max-batch-size", "8", "--max-batch-wait-ms", "300"),
    )
    yield running
    assert running.stop() == 0, running.log()


@pytest.fixture
def stub(server: RunningServer) -> pb_grpc.TranscriptionServiceStub:
    return server.stub()


def transcribe(
    stub: pb_grpc.TranscriptionServiceStub,
    audio: bytes,
    *,
    encoding: pb.AudioFormat.Encoding = pb.AudioFormat.ENCODING_UNSPECIFIED,
    sample_rate: int = 0,
    channels: int = 0,
    **options: object,
) -> pb.TranscribeResponse:
    request = pb.TranscribeRequest(
        audio=audio,
        format=pb.AudioFormat(
            encoding=encoding, sample_rate_hertz=sample_rate, channel_count=channels
        ),
        options=pb.TranscriptionOptions(**options),  # type: ignore[arg-type]
    )
    response: pb.TranscribeResponse = stub.Transcribe(request, timeout=120)
    return response


def details(error: grpc.RpcError) -> str:
    """The status message of `error` (typed optional; every status this server sends has one)."""
    message = error.details()
    assert message is not None, error.code()
    return message


@contextlib.contextmanager
def model_stalled(server: RunningServer) -> Iterator[None]:
    """Freezes the server's model process (SIGSTOP) so that work waits at a known place: the
    call it was given stays running, everything after it stays queued. SIGCONT at the end."""
    worker = server.stub().GetServerInfo(pb.GetServerInfoRequest(), timeout=10).worker_pid
    os.kill(worker, signal.SIGSTOP)
    try:
        yield
    finally:
        os.kill(worker, signal.SIGCONT)


@pytest.fixture
def unused_port() -> int:
    """A loopback port nothing listens on."""
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


@pytest.fixture(scope="session", autouse=True)
def _release_mlx_streams() -> Iterator[None]:
    """MLX aborts at interpreter exit unless each thread that used it clears its streams."""
    yield
    if "mlx.core" in sys.modules:
        import mlx.core as mx

        mx.clear_streams()


def stream(
    stub: pb_grpc.TranscriptionServiceStub,
    pcm: bytes,
    *,
    chunk_bytes: int = 3200,
    mode: pb.FinalizationMode = pb.FINALIZATION_MODE_STREAMING,
    interim: bool = True,
    sample_rate: int = 16000,
    channels: int = 1,
    encoding: pb.AudioFormat.Encoding = pb.AudioFormat.ENCODING_LINEAR16,
    timeout: float = 300,
    pieces: list[bytes] | None = None,
    **options: object,
) -> list[pb.StreamingTranscribeResponse]:
    """Streams `pcm` in pieces of `chunk_bytes` (or the given `pieces`, which join to `pcm`),
    as fast as possible; returns every response."""
    config = pb.StreamingConfig(
        format=pb.AudioFormat(
            encoding=encoding, sample_rate_hertz=sample_rate, channel_count=channels
        ),
        interim_results=interim,
        finalization_mode=mode,
        options=pb.TranscriptionOptions(**options),  # type: ignore[arg-type]
    )

    if pieces is None:
        pieces = [pcm[start : start + chunk_bytes] for start in range(0, len(pcm), chunk_bytes)]
    assert b"".join(pieces) == pcm
    messages = pieces

    def requests() -> Iterator[pb.StreamingTranscribeRequest]:
        yield pb.StreamingTranscribeRequest(config=config)
        for piece in messages:
            yield pb.StreamingTranscribeRequest(audio=piece)

    return list(stub.StreamingTranscribe(requests(), timeout=timeout))

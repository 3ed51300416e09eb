"""HAProxy in front of three real servers, running deploy/haproxy.cfg as shipped.

Only the listening addresses and the server lines are replaced. The servers and the proxy are
shared by the module and its tests run in file order: a backend still loading its model is
taken in once loaded, then one backend is killed with SIGKILL and another drained with SIGTERM,
while a long dictation, silent for over a minute, stays open on the third. A thread ends the
dictation once its minute of silence is over; the test that reads how it went runs after every
other test of the session (marker `at_end`), so that the minute passes while they run.
"""

from __future__ import annotations

import csv
import io
import os
import queue
import re
import shutil
import signal
import socket
import subprocess
import threading
import time
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import grpc
import hpack
import pytest
from grpc_health.v1 import health_pb2

from parakeet_client.proto.parakeet.v1 import transcription_pb2 as pb
from parakeet_client.proto.parakeet.v1 import transcription_pb2_grpc as pb_grpc
from parakeet_server.testing.launcher import RunningServer, start_server

CONFIG = Path(__file__).resolve().parent.parent / "deploy" / "haproxy.cfg"
HAPROXY = shutil.which("haproxy")
SERVICE = "parakeet.v1.TranscriptionService"

pytestmark = pytest.mark.skipif(
    HAPROXY is None, reason="haproxy is not installed (scripts/setup --dev installs it)"
)

# Longer than the usual proxy timeouts a dictation would meet: nginx's grpc_read_timeout (60 s)
# and the 50 s of Debian's stock haproxy.cfg. The stream is silent both ways for this long.
LONG_SILENCE = 62.0
# The servers' own idle limit (30 s by default) must not end the silent stream first, and a
# drained stream gets all the time a busy machine may need.
SERVER_FLAGS = ("--stream-idle-timeout-seconds", "120", "--shutdown-grace-seconds", "60")
PCM_RATE = 16000
STREAM_CONFIG = pb.StreamingConfig(
    format=pb.AudioFormat(
        encoding=pb.AudioFormat.ENCODING_LINEAR16, sample_rate_hertz=PCM_RATE, channel_count=1
    ),
    interim_results=True,
    finalization_mode=pb.FINALIZATION_MODE_STREAMING,
)


# --- the proxy --------------------------------------------------------------------------------


@dataclass
class Proxy:
    process: subprocess.Popen[bytes]
    port: int
    stats_port: int
    log_path: Path
    channel: grpc.Channel = field(init=False)

    def __post_init__(self) -> None:
        self.channel = grpc.insecure_channel(f"127.0.0.1:{self.port}")

    def stub(self) -> pb_grpc.TranscriptionServiceStub:
        return pb_grpc.TranscriptionServiceStub(self.channel)

    def states(self) -> dict[str, str]:
        """Each backend server's state as HAProxy sees it: UP, DOWN, ... (from /stats;csv)."""
        url = f"http://127.0.0.1:{self.stats_port}/stats;csv"
        with urllib.request.urlopen(url, timeout=10) as answer:
            text = answer.read().decode().removeprefix("# ")
        return {
            row["svname"]: row["status"]
            for row in csv.DictReader(io.StringIO(text))
            if row["pxname"] == "parakeet" and row["svname"] != "BACKEND"
        }

    def wait_state(self, name: str, state: str, timeout: float = 60.0) -> None:
        deadline = time.monotonic() + timeout
        while (seen := self.states().get(name)) != state:
            assert self.process.poll() is None, self.log()
            assert time.monotonic() < deadline, f"{name} is {seen}, not {state}:\n{self.log()}"
            time.sleep(0.1)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def stop(self) -> None:
        self.channel.close()
        self.process.terminate()
        self.process.wait(30)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


def render(config: str, port: int, stats_port: int, servers: dict[str, str]) -> str:
    """The shipped config with our addresses: the same file otherwise."""
    shipped = re.findall(r"^    server .*$", config, flags=re.M)
    # The options are all on default-server, so replacing these lines loses none of them.
    assert shipped
    assert all(len(line.split()) == 3 for line in shipped), shipped
    lines = "".join(f"    server {name} {address}\n" for name, address in servers.items())
    text = re.sub(r"(^    server .*\n)+", lambda _: lines, config, count=1, flags=re.M)
    for old, new in (
        ("\n    bind :50051 ", f"\n    bind 127.0.0.1:{port} "),
        ("\n    bind 127.0.0.1:8404\n", f"\n    bind 127.0.0.1:{stats_port}\n"),
    ):
        assert text.count(old) == 1, old
        text = text.replace(old, new)
    return text


def start_proxy(servers: dict[str, str], directory: Path) -> Proxy:
    assert HAPROXY is not None
    port, stats_port = _free_port(), _free_port()
    config = directory / "haproxy.cfg"
    config.write_text(render(CONFIG.read_text(), port, stats_port, servers))
    log_path = directory / "haproxy.log"
    with log_path.open("wb") as log_file:
        process = subprocess.Popen(
            [HAPROXY, "-db", "-f", str(config)], stdout=log_file, stderr=subprocess.STDOUT
        )
    proxy = Proxy(process, port, stats_port, log_path)
    deadline = time.monotonic() + 30
    while True:
        try:
            proxy.states()
            return proxy
        except OSError:
            assert process.poll() is None, proxy.log()
            assert time.monotonic() < deadline, proxy.log()
            time.sleep(0.1)


# --- a live stream through the proxy ---------------------------------------------------------


class LiveStream:
    """A StreamingTranscribe call fed from the test, read by a thread."""

    def __init__(self, stub: pb_grpc.TranscriptionServiceStub) -> None:
        self._chunks: queue.Queue[bytes | None] = queue.Queue()
        self.responses: list[pb.StreamingTranscribeResponse] = []
        self.error: grpc.RpcError | None = None
        self.answered = threading.Event()
        self.last_activity = time.monotonic()  # the last message either way
        self.call = stub.StreamingTranscribe(self._requests(), timeout=300)
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _requests(self) -> Iterator[pb.StreamingTranscribeRequest]:
        yield pb.StreamingTranscribeRequest(config=STREAM_CONFIG)
        while (chunk := self._chunks.get(timeout=300)) is not None:
            self.last_activity = time.monotonic()
            yield pb.StreamingTranscribeRequest(audio=chunk)

    def _read(self) -> None:
        try:
            for response in self.call:
                self.last_activity = time.monotonic()
                self.responses.append(response)
                self.answered.set()
        except grpc.RpcError as error:
            self.error = error
            self.answered.set()

    def send(self, pcm: bytes) -> None:
        self._chunks.put(pcm)

    def wait_answer(self, timeout: float = 60.0) -> None:
        assert self.answered.wait(timeout), "no response from the stream"
        assert self.error is None, _status(self.error)

    def finish(self, timeout: float = 120.0) -> list[pb.StreamingTranscribeResponse]:
        """Half-closes; the responses, once the final one is in."""
        self._chunks.put(None)
        self._reader.join(timeout)
        assert not self._reader.is_alive(), "the stream did not end"
        assert self.error is None, _status(self.error)
        assert self.responses
        assert self.responses[-1].is_final
        return self.responses

    def cancel(self) -> None:
        self.call.cancel()
        self._chunks.put(None)


def _status(error: grpc.RpcError) -> str:
    return f"{error.code()}: {error.details()}"


# --- the backends ----------------------------------------------------------------------------


@dataclass
class Cluster:
    proxy: Proxy
    backends: dict[str, RunningServer]
    finish_loading: Callable[[], None]  # lets the loading backend read its config.json

    def alive(self) -> list[str]:
        return [name for name, s in self.backends.items() if s.process.poll() is None]


def _feed_pipe(pipe: Path, content: bytes) -> None:
    """Writes `content` to the named pipe if a reader is waiting for it; else does nothing."""
    try:
        fd = os.open(pipe, os.O_WRONLY | os.O_NONBLOCK)
    except OSError:  # read already, or no reader yet
        return
    with os.fdopen(fd, "wb") as writer:
        writer.write(content)


@pytest.fixture(scope="session")
def cluster(tdt_checkpoint: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    """b1 and b2 serving, b3 still loading its model (its config.json is a named pipe)."""
    logs = tmp_path_factory.mktemp("proxy")
    loading_model = logs / "loading-model"
    loading_model.mkdir()
    os.symlink(tdt_checkpoint / "model.safetensors", loading_model / "model.safetensors")
    os.mkfifo(loading_model / "config.json")
    models = {"b1": tdt_checkpoint, "b2": tdt_checkpoint, "b3": loading_model}
    config = (tdt_checkpoint / "config.json").read_bytes()

    def finish_loading() -> None:
        _feed_pipe(loading_model / "config.json", config)

    # Started together, then waited for: a third of the time on two cores.
    backends = {
        name: start_server(model, logs, *SERVER_FLAGS, wait="none")
        for name, model in models.items()
    }
    proxy: Proxy | None = None
    try:
        backends["b1"].wait_serving()
        backends["b2"].wait_serving()
        backends["b3"].wait_listening()
        proxy = start_proxy({name: s.address for name, s in backends.items()}, logs)
        proxy.wait_state("b1", "UP")
        proxy.wait_state("b2", "UP")
        proxy.wait_state("b3", "DOWN")
        yield Cluster(proxy, backends, finish_loading)
    finally:
        if proxy is not None:
            proxy.stop()
        finish_loading()  # a server still loading would not stop
        for running in backends.values():
            killed = running.process.poll() is not None
            code = running.stop(60)
            assert killed or code == 0, running.log()


@dataclass
class Dictation:
    stream: LiveStream
    holder: str  # the backend it is on
    rest: bytes
    silent_for: float = 0.0  # seconds of silence both ways before the rest was sent
    streams_before: int = 0  # the holder's finished streams just before
    ended: threading.Event = field(default_factory=threading.Event)
    failure: str = ""  # what went wrong ending it, if anything


def _end_after_silence(dictation: Dictation, host: RunningServer) -> None:
    """Waits out LONG_SILENCE without a message either way, then sends the rest and reads the
    final result. Runs on its own thread while the other tests go on."""
    stream = dictation.stream
    try:
        while (idle := time.monotonic() - stream.last_activity) < LONG_SILENCE:
            if stream.error is not None:
                dictation.failure = f"cut after {idle:.0f} s of silence: {_status(stream.error)}"
                return
            time.sleep(min(1.0, LONG_SILENCE - idle))
        dictation.silent_for = time.monotonic() - stream.last_activity
        dictation.streams_before = _count(host, "StreamingTranscribe")
        stream.send(dictation.rest)
        stream.finish()
    except AssertionError as error:
        dictation.failure = str(error)
    finally:
        dictation.ended.set()


@pytest.fixture(scope="session")
def dictation(cluster: Cluster, speech_dir: Path) -> Iterator[Dictation]:
    """A live stream opened through the proxy before the other tests, ended by a thread.

    It sends the first half of a sentence, reads a partial result, then stays silent both
    ways for LONG_SILENCE seconds while the other tests run, then sends the rest.
    """
    pcm = (speech_dir / "speech.s16le").read_bytes()
    half = len(pcm) // 4 * 2
    stream = LiveStream(cluster.proxy.stub())
    stream.send(pcm[:half])
    stream.wait_answer()
    holder = _wait_for_stream_on(cluster, cluster.alive(), {})
    dictation = Dictation(stream, holder, pcm[half:])
    _thread(lambda: _end_after_silence(dictation, cluster.backends[holder]))
    yield dictation
    stream.cancel()  # a no-op once it has ended


def _active_streams(server: RunningServer) -> int:
    info = server.stub().GetServerInfo(pb.GetServerInfoRequest(), timeout=10)
    return int(info.active_streams)


def _wait_for_stream_on(cluster: Cluster, among: list[str], before: dict[str, int]) -> str:
    """The backend among `among` that gained an open stream since `before` (asked directly)."""
    deadline = time.monotonic() + 60
    while True:
        gained = [
            name for name in among if _active_streams(cluster.backends[name]) > before.get(name, 0)
        ]
        if len(gained) == 1:
            return gained[0]
        assert time.monotonic() < deadline, f"no single backend holds the stream: {gained}"
        time.sleep(0.1)


def _count(server: RunningServer, rpc: str) -> int:
    return len(re.findall(rf"PERF .* rpc={rpc} ", server.log()))


def _counts(cluster: Cluster, rpc: str = "Transcribe") -> dict[str, int]:
    return {name: _count(server, rpc) for name, server in cluster.backends.items()}


def _gained(after: dict[str, int], before: dict[str, int]) -> dict[str, int]:
    return {name: after[name] - before[name] for name in after}


def _transcribe(stub: pb_grpc.TranscriptionServiceStub, wav: bytes) -> None:
    stub.Transcribe(pb.TranscribeRequest(audio=wav), timeout=60)


def _transcribe_retrying(
    stub: pb_grpc.TranscriptionServiceStub, wav: bytes, seen: list[tuple[float, str]]
) -> None:
    """What a client should do: retry UNAVAILABLE (a few times, with a pause). Every status
    that came back, retried or not, is appended to `seen` with the time the attempt began."""
    for attempt in range(5):
        began = time.monotonic()
        try:
            _transcribe(stub, wav)
        except grpc.RpcError as error:
            seen.append((began, f"{error.code().name}: {error.details()}"))
            if error.code() != grpc.StatusCode.UNAVAILABLE or attempt == 4:
                raise
            time.sleep(0.2)
        else:
            seen.append((began, "OK"))
            return


# --- the tests, in the order they run --------------------------------------------------------


def test_the_health_check_bytes_are_a_grpc_health_check_for_the_service() -> None:
    steps = re.findall(r"^    tcp-check send-binary ([0-9a-f]+)$", CONFIG.read_text(), re.M)
    sent = bytes.fromhex("".join(steps))
    preface = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
    assert sent.startswith(preface)
    frames = _frames(sent[len(preface) :])
    assert [(kind, stream) for kind, _, stream, _ in frames] == [(4, 0), (1, 1), (0, 1)]
    _, header_flags, _, block = frames[1]
    assert header_flags & 0x4  # END_HEADERS
    headers = {
        name.decode(): value.decode() for name, value in hpack.Decoder().decode(block, raw=True)
    }
    assert headers == {
        ":method": "POST",
        ":scheme": "http",
        ":path": "/grpc.health.v1.Health/Check",
        ":authority": "parakeet",
        "content-type": "application/grpc",
        "te": "trailers",
    }
    _, data_flags, _, message = frames[2]
    assert data_flags & 0x1  # END_STREAM
    expected = health_pb2.HealthCheckRequest(service=SERVICE).SerializeToString()
    assert message == _grpc_message(expected)
    # And what passes the check is a SERVING answer, not NOT_SERVING or SERVICE_UNKNOWN.
    serving = health_pb2.HealthCheckResponse(status=health_pb2.HealthCheckResponse.SERVING)
    assert f"binary {_grpc_message(serving.SerializeToString()).hex()} " in CONFIG.read_text()


def _frames(data: bytes) -> list[tuple[int, int, int, bytes]]:
    """HTTP/2 frames as (type, flags, stream id, payload)."""
    frames = []
    while data:
        length = int.from_bytes(data[:3], "big")
        kind, flags, stream = data[3], data[4], int.from_bytes(data[5:9], "big")
        frames.append((kind, flags, stream, data[9 : 9 + length]))
        data = data[9 + length :]
    return frames


def _grpc_message(payload: bytes) -> bytes:
    return b"\x00" + len(payload).to_bytes(4, "big") + payload


def test_calls_rotate_over_serving_backends_and_none_reach_one_still_loading(
    cluster: Cluster, dictation: Dictation, speech_wav: bytes
) -> None:
    assert cluster.proxy.states()["b3"] == "DOWN", "b3 should still be loading (test order)"
    stub = cluster.proxy.stub()
    before = _counts(cluster)
    for _ in range(12):
        _transcribe(stub, speech_wav)  # no retries: a call reaching b3 would be UNAVAILABLE
    gained = _gained(_counts(cluster), before)
    assert gained["b3"] == 0, gained
    assert min(gained["b1"], gained["b2"]) >= 3, gained

    # Once its model is loaded, b3 is taken in.
    cluster.finish_loading()
    cluster.backends["b3"].wait_serving()
    cluster.proxy.wait_state("b3", "UP")
    before = _counts(cluster)
    for _ in range(9):
        _transcribe(stub, speech_wav)
    gained = _gained(_counts(cluster), before)
    assert min(gained.values()) >= 1, gained


def test_a_stream_stays_on_its_backend_while_calls_around_it_rotate(
    cluster: Cluster, dictation: Dictation, speech_dir: Path, speech_wav: bytes
) -> None:
    pcm = (speech_dir / "speech.s16le").read_bytes()
    stub = cluster.proxy.stub()
    streams_before = _counts(cluster, "StreamingTranscribe")
    calls_before = _counts(cluster)
    stream = LiveStream(stub)
    piece = len(pcm) // 4 // 2 * 2
    for start in range(0, len(pcm), piece):
        stream.send(pcm[start : start + piece])
        for _ in range(2):
            _transcribe(stub, speech_wav)
    responses = stream.finish()
    assert len(responses) > 1  # partial results came back while it was open

    streams = _gained(_counts(cluster, "StreamingTranscribe"), streams_before)
    [host] = [name for name, gained in streams.items() if gained == 1]
    assert sum(streams.values()) == 1, streams
    # The whole recording reached that one server.
    audio = re.findall(r"PERF audio=([0-9.]+)s .* rpc=StreamingTranscribe ", _log(cluster, host))
    assert float(audio[-1]) == pytest.approx(len(pcm) / 2 / PCM_RATE, abs=0.01)
    calls = _gained(_counts(cluster), calls_before)
    assert sum(1 for gained in calls.values() if gained) >= 2, calls


def _log(cluster: Cluster, name: str) -> str:
    return cluster.backends[name].log()


def test_a_backend_killed_with_sigkill_is_taken_out_and_calls_go_on(
    cluster: Cluster, dictation: Dictation, speech_wav: bytes
) -> None:
    victim = next(name for name in cluster.alive() if name != dictation.holder)
    survivors = [name for name in cluster.alive() if name != victim]
    server = cluster.backends[victim]
    server.process.kill()
    server.process.wait(30)

    stub = cluster.proxy.stub()
    seen: list[tuple[float, str]] = []
    before = _counts(cluster)
    for _ in range(8):
        _transcribe_retrying(stub, speech_wav, seen)  # each one succeeds
    cluster.proxy.wait_state(victim, "DOWN")
    # Taken out: from now on nothing is refused, and the calls rotate over the others.
    for _ in range(6):
        _transcribe(stub, speech_wav)
    gained = _gained(_counts(cluster), before)
    assert all(gained[name] >= 1 for name in survivors), gained
    # A connection refused is retried by HAProxy itself on another server (retry-on
    # conn-failure, redispatch); only a call caught on the old connection as it broke could
    # need the client's retry.
    refused = [status for _, status in seen if status != "OK"]
    assert len(refused) <= 1, refused


def test_sigterm_drains_a_backend_through_the_proxy_and_no_client_sees_cancelled(
    cluster: Cluster, dictation: Dictation, speech_dir: Path, speech_wav: bytes
) -> None:
    pcm = (speech_dir / "speech.s16le").read_bytes()
    stub = cluster.proxy.stub()
    target = next(name for name in cluster.alive() if name != dictation.holder)
    # A stream through the proxy that lands on the target (round robin: within a few tries).
    stream: LiveStream | None = None
    for _ in range(6):
        before = {name: _active_streams(cluster.backends[name]) for name in cluster.alive()}
        candidate = LiveStream(stub)
        candidate.send(pcm[: len(pcm) // 2 // 2 * 2])
        candidate.wait_answer()
        if _wait_for_stream_on(cluster, cluster.alive(), before) == target:
            stream = candidate
            break
        candidate.send(pcm[len(pcm) // 2 // 2 * 2 :])
        candidate.finish()
    assert stream is not None, "no stream landed on the backend to drain"

    # Clients keep calling through the proxy the whole time.
    seen: list[tuple[float, str]] = []
    stop = threading.Event()
    failures: list[BaseException] = []

    def keep_calling() -> None:
        try:
            while not stop.is_set():
                _transcribe_retrying(stub, speech_wav, seen)
        except BaseException as error:  # reported by the assertion below
            failures.append(error)

    caller = _thread(keep_calling)
    server = cluster.backends[target]
    try:
        server.process.send_signal(signal.SIGTERM)
        cluster.proxy.wait_state(target, "DOWN")
        out = time.monotonic()
        # The proxy no longer sends it anything; a while of calls to show it.
        _wait_until(lambda: sum(1 for began, _ in seen if began > out) >= 6)
    finally:
        stop.set()
        caller.join(120)
    # The stream it was serving goes on to its final result.
    stream.send(pcm[len(pcm) // 2 // 2 * 2 :])
    stream.finish()
    assert server.process.wait(60) == 0, server.log()

    assert not failures, failures
    statuses = [status for _, status in seen]
    assert not [s for s in statuses if s.startswith("CANCELLED")], statuses
    # Before the proxy saw it NOT_SERVING a call could reach it: refused with UNAVAILABLE and
    # a reason (the client retried it elsewhere); after that, nothing was refused.
    refused = [s for s in statuses if s != "OK"]
    assert all(s.startswith("UNAVAILABLE") and "shutting down" in s for s in refused), refused
    assert all(status == "OK" for began, status in seen if began > out), seen


def _thread(target: Callable[[], None]) -> threading.Thread:
    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    return thread


def _wait_until(condition: Callable[[], bool], timeout: float = 120.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.1)


@pytest.mark.at_end
def test_a_dictation_silent_for_longer_than_proxy_defaults_is_not_cut(
    cluster: Cluster, dictation: Dictation
) -> None:
    assert dictation.ended.wait(LONG_SILENCE + 120), "the dictation did not end"
    assert not dictation.failure, dictation.failure
    assert dictation.silent_for >= LONG_SILENCE
    host = cluster.backends[dictation.holder]
    # The holder finished exactly this stream: the whole sentence reached it, after the silence.
    assert _count(host, "StreamingTranscribe") == dictation.streams_before + 1
    assert dictation.stream.responses[-1].is_final

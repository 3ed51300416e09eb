"""`parakeet-client`: transcribe files and query a parakeet-server from the command line."""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import sys
import threading
from collections.abc import Iterator, Sequence
from pathlib import Path
from types import FrameType
from typing import TextIO

import grpc
from google.protobuf import json_format

from parakeet_client.batch import BatchSettings, balanced_target, collect, plan, run_batch
from parakeet_client.formats import FORMATS
from parakeet_client.phrases import add_phrase_flags, phrases_of
from parakeet_client.proto.parakeet.v1 import transcription_pb2 as pb
from parakeet_client.proto.parakeet.v1 import transcription_pb2_grpc as pb_grpc
from parakeet_client.stream import (
    Microphone,
    MicrophoneUnavailable,
    Renderer,
    chunk_requests,
    requests,
)

DEFAULT_SERVER = "localhost:50051"
AUDIO_INSTALL_HINT = (
    "stream FILE decodes audio with numpy, soundfile and PyAV, which the bare client leaves out: "
    "pip install 'parakeet-client[audio]'"
)
TOKEN_ENV = "PARAKEET_AUTH_TOKEN"
EXIT_USAGE = 2
EXIT_UNAVAILABLE = 3
EXIT_FAILED = 1
EXIT_INTERRUPTED = 130

_ENCODINGS = {
    "container": pb.AudioFormat.ENCODING_UNSPECIFIED,
    "linear16": pb.AudioFormat.ENCODING_LINEAR16,
    "float32": pb.AudioFormat.ENCODING_FLOAT32,
}

_MODES = {
    "auto": pb.FINALIZATION_MODE_AUTO,
    "streaming": pb.FINALIZATION_MODE_STREAMING,
    "full-context": pb.FINALIZATION_MODE_FULL_CONTEXT,
}


def _seconds(duration: object) -> float:
    return duration.ToNanoseconds() / 1e9  # type: ignore[attr-defined, no-any-return]


def format_metrics(metrics: pb.RequestMetrics) -> str:
    """The server's PERF line, rebuilt from the response."""
    return (
        f"PERF audio={metrics.audio_seconds:.2f}s words={metrics.word_count} "
        f"time={metrics.processing_seconds:.3f}s rtf={metrics.real_time_factor:.3f} "
        f"wps={metrics.words_per_second:.1f} ms_per_word={metrics.milliseconds_per_word:.1f}"
        + (" cache_hit=true" if metrics.cache_hit else "")
    )


def format_words(transcript: pb.Transcript) -> str:
    lines = []
    for segment in transcript.segments:
        for word in segment.words:
            lines.append(
                f"{_seconds(word.start_time):8.2f} {_seconds(word.end_time):8.2f}  "
                f"{word.confidence:.2f}  {word.text}"
            )
    return "\n".join(lines)


def _fail(message: str, code: int) -> int:
    print(f"parakeet-client: {message}", file=sys.stderr)
    return code


def _describe_rpc_error(error: grpc.RpcError, server: str) -> tuple[str, int]:
    code = error.code()
    details = error.details()
    if code == grpc.StatusCode.UNAVAILABLE:
        if "loading" in (details or ""):
            return f"the server at {server} is not ready: {details}", EXIT_UNAVAILABLE
        return (
            f"cannot reach parakeet-server at {server} ({details}). Is it running? "
            "Start it with `parakeet-server`, or pass --server HOST:PORT "
            "(and --tls-ca CA.pem if it serves TLS)",
            EXIT_UNAVAILABLE,
        )
    if code == grpc.StatusCode.DEADLINE_EXCEEDED:
        return f"no answer from {server} within the timeout ({details})", EXIT_UNAVAILABLE
    return f"{code.name}: {details}", EXIT_FAILED


def _is_batch(args: argparse.Namespace) -> bool:
    """One file and none of the batch flags: today's single-file output on stdout."""
    batch_flags = (args.jobs, args.output_dir, args.output_format, args.output_template)
    return (
        len(args.files) > 1
        or any(Path(name).is_dir() for name in args.files)
        or any(flag is not None for flag in batch_flags)
    )


def _transcribe(stub: pb_grpc.TranscriptionServiceStub, args: argparse.Namespace) -> int:
    if _is_batch(args):
        return _transcribe_batch(stub, args)
    path = Path(args.files[0])
    try:
        audio = path.read_bytes()
    except OSError as error:
        return _fail(f"cannot read {path}: {error.strerror}", EXIT_USAGE)
    request = pb.TranscribeLongRequest(
        audio=audio,
        format=pb.AudioFormat(
            encoding=_ENCODINGS[args.encoding],
            sample_rate_hertz=args.sample_rate,
            channel_count=args.channels,
        ),
        options=pb.TranscriptionOptions(
            word_timestamps=args.words or args.json,
            decoding_method=pb.DECODING_METHOD_BEAM if args.beam else pb.DECODING_METHOD_GREEDY,
            beam_size=args.beam or 0,
            phrases=args.phrases,
        ),
    )
    show_progress = args.progress if args.progress is not None else sys.stderr.isatty()
    bar = ProgressBar(sys.stderr) if show_progress else None
    final: pb.TranscribeLongResponse | None = None
    # TranscribeLong answers like Transcribe, with progress on the way (long files come in chunks).
    for update in stub.TranscribeLong(request, timeout=args.timeout, metadata=args.metadata):
        if bar is not None:
            bar.show(update.audio_processed_seconds, update.audio_total_seconds)
        if update.is_final:
            final = update
    if bar is not None:
        bar.close()
    if final is None:
        return _fail("the server ended the call without a final result", EXIT_FAILED)
    response = pb.TranscribeResponse(
        transcript=final.transcript, metrics=final.metrics, request_id=final.request_id
    )
    if args.json:
        print(json.dumps(json_format.MessageToDict(response), indent=2))
        return 0
    print(response.transcript.text)
    if args.words:
        print(format_words(response.transcript))
    print(format_metrics(response.metrics), file=sys.stderr)
    return 0


def _transcribe_batch(stub: pb_grpc.TranscriptionServiceStub, args: argparse.Namespace) -> int:
    if args.json or args.words:
        return _fail(
            "--json and --words print one file's result; for many files use --output-format json",
            EXIT_USAGE,
        )
    fmt = args.output_format or "srt"
    jobs = args.jobs if args.jobs is not None else 4
    if jobs < 1 or args.retries < 0:
        return _fail("--jobs must be at least 1 and --retries not negative", EXIT_USAGE)
    try:
        files = collect(args.files)
    except OSError as error:
        return _fail(str(error), EXIT_USAGE)
    if not files:
        return _fail("no audio files found in " + " ".join(args.files), EXIT_USAGE)
    settings = BatchSettings(
        formats=FORMATS if fmt == "all" else (fmt,),
        output_dir=Path(args.output_dir) if args.output_dir else None,
        template=args.output_template or "{filename}",
        jobs=jobs,
        retries=args.retries,
        timeout=args.timeout,
        metadata=args.metadata,
        audio_format=pb.AudioFormat(
            encoding=_ENCODINGS[args.encoding],
            sample_rate_hertz=args.sample_rate,
            channel_count=args.channels,
        ),
        beam=args.beam or 0,
        phrases=tuple(args.phrases),
    )
    try:
        settings.template.format(filename="f", parent="p", date="d", index="1")
    except (KeyError, IndexError, ValueError) as error:
        return _fail(
            f"--output-template {settings.template!r}: {error!r}; the fields are {{filename}}, "
            "{parent}, {date} and {index}",
            EXIT_USAGE,
        )
    try:
        plan(files, settings)
    except ValueError as error:
        return _fail(str(error), EXIT_USAGE)
    show_progress = args.progress if args.progress is not None else sys.stderr.isatty()
    result = run_batch(stub, files, settings, sys.stderr if show_progress else None)
    print(f"parakeet-client: {result.summary()}", file=sys.stderr)
    return EXIT_FAILED if result.failures else 0


class ProgressBar:
    """`[#######.............]  35%   42.0 / 120.0 s audio` on one line, redrawn in place."""

    def __init__(self, out: TextIO, width: int = 30) -> None:
        self._out = out
        self._width = width
        self._shown = False

    def show(self, done: float, total: float) -> None:
        fraction = min(1.0, done / total) if total > 0 else 0.0
        filled = round(fraction * self._width)
        self._out.write(
            f"\r[{'#' * filled}{'.' * (self._width - filled)}] {fraction:4.0%} "
            f"{done:7.1f} / {total:.1f} s audio"
        )
        self._out.flush()
        self._shown = True

    def close(self) -> None:
        if self._shown:
            self._out.write("\n")
            self._out.flush()


@contextlib.contextmanager
def _stop_on_sigint(stop: threading.Event) -> Iterator[None]:
    """The first Ctrl-C ends the audio, and the final result still comes; a second one aborts."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum: int, frame: FrameType | None) -> None:
        if stop.is_set():
            raise KeyboardInterrupt
        stop.set()

    previous = signal.signal(signal.SIGINT, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)


def _stream(stub: pb_grpc.TranscriptionServiceStub, args: argparse.Namespace) -> int:
    if args.chunk_ms <= 0:
        return _fail(f"--chunk-ms must be positive, got {args.chunk_ms}", EXIT_USAGE)
    stop = threading.Event()
    with contextlib.ExitStack() as stack:
        timeout: float | None
        if args.mic:
            try:
                mic = stack.enter_context(Microphone(stop))
            except MicrophoneUnavailable as error:
                return _fail(str(error), EXIT_USAGE)
            rate, channels = mic.sample_rate, mic.channels
            # A recording lasts until Ctrl-C: no deadline.
            timeout = None
        else:
            try:
                # Imported here: the bare client (transcribe, info, --mic) needs no numpy.
                from parakeet_client.audio import UnreadableAudio, read_pcm
            except (ImportError, OSError) as error:  # OSError: soundfile without libsndfile
                return _fail(f"{AUDIO_INSTALL_HINT} ({error})", EXIT_USAGE)
            try:
                pcm, rate, channels = read_pcm(args.file)
            except OSError as error:
                return _fail(f"cannot read {args.file}: {error.strerror}", EXIT_USAGE)
            except UnreadableAudio as error:
                return _fail(str(error), EXIT_USAGE)
            frame_bytes = 2 * channels
            duration = len(pcm) / channels / rate
            timeout = args.timeout + (duration if args.realtime else 0.0)
        config = pb.StreamingConfig(
            format=pb.AudioFormat(
                encoding=pb.AudioFormat.ENCODING_LINEAR16,
                sample_rate_hertz=rate,
                channel_count=channels,
            ),
            interim_results=not args.no_interim,
            options=pb.TranscriptionOptions(
                word_timestamps=args.words or args.json, phrases=args.phrases
            ),
            finalization_mode=_MODES[args.mode],
            endpointing=_endpointing_config(args),
        )
        if args.mic:
            messages = chunk_requests(config, mic.chunks())
            print("parakeet-client: listening; Ctrl-C to stop", file=sys.stderr)
        else:
            messages = requests(
                config,
                pcm.tobytes(),
                max(1, round(rate * args.chunk_ms / 1000)) * frame_bytes,
                realtime_rate_bytes_per_s=rate * frame_bytes if args.realtime else None,
                stop=stop,
            )
        renderer = Renderer(sys.stdout, interim=args.interim, utterances=_endpointing(args))
        final: pb.StreamingTranscribeResponse | None = None
        with _stop_on_sigint(stop):
            call = stub.StreamingTranscribe(messages, timeout=timeout, metadata=args.metadata)
            try:
                for response in call:
                    if response.is_final:
                        final = response
                    elif not args.json:
                        if response.HasField("utterance"):
                            renderer.utterance(response)
                        renderer.update(response)
            except KeyboardInterrupt:
                call.cancel()
                renderer.close()
                return _fail("interrupted", EXIT_INTERRUPTED)
            finally:
                # The call may end before the audio does (an error): release the source.
                stop.set()
                if final is None:
                    renderer.close()
    if final is None:
        return _fail("the server ended the stream without a final result", EXIT_FAILED)
    if args.json:
        print(json.dumps(json_format.MessageToDict(final), indent=2))
        return 0
    renderer.finish(final)
    if args.words:
        print(format_words(final.transcript))
    print(
        f"{format_metrics(final.metrics)} "
        f"finalization_latency={final.finalization_latency_seconds:.3f}s",
        file=sys.stderr,
    )
    return 0


def _endpointing(args: argparse.Namespace) -> bool:
    return bool(args.endpointing or args.single_utterance)


def _endpointing_config(args: argparse.Namespace) -> pb.EndpointingConfig | None:
    """StreamingConfig.endpointing from the endpointing flags (None: none asked for)."""
    if not _endpointing(args):
        return None
    config = pb.EndpointingConfig(single_utterance=args.single_utterance)
    if args.trailing_silence_ms is not None:
        config.trailing_silence.FromMilliseconds(args.trailing_silence_ms)
    if args.max_utterance_seconds is not None:
        config.max_utterance.FromMilliseconds(round(args.max_utterance_seconds * 1000))
    return config


def _add_endpointing_flags(stream: argparse.ArgumentParser) -> None:
    group = stream.add_argument_group("endpointing (utterances closed at each pause)")
    group.add_argument(
        "--endpointing",
        action="store_true",
        help="print each utterance on a line of its own as the server closes it",
    )
    group.add_argument(
        "--single-utterance",
        action="store_true",
        help="end the stream after the first utterance (a voice command); implies --endpointing",
    )
    group.add_argument(
        "--trailing-silence-ms",
        type=int,
        metavar="MS",
        help="a pause this long ends an utterance (server default 800)",
    )
    group.add_argument(
        "--max-utterance-seconds",
        type=float,
        metavar="S",
        help="close an utterance this long even without a pause (server default 30)",
    )


def _info(stub: pb_grpc.TranscriptionServiceStub, args: argparse.Namespace) -> int:
    response = stub.GetServerInfo(
        pb.GetServerInfoRequest(), timeout=args.timeout, metadata=args.metadata
    )
    if args.json:
        print(json.dumps(json_format.MessageToDict(response), indent=2))
        return 0
    kind = pb.ModelKind.Name(response.model_kind).removeprefix("MODEL_KIND_").lower()
    rows = [
        ("model", response.model_id),
        ("kind", kind),
        ("warm", "yes" if response.warm else "no (loading)"),
        ("sample rate", f"{response.sample_rate_hertz} Hz"),
        ("vocabulary", str(response.vocabulary_size)),
        ("parameters", f"{response.parameter_count:,}"),
        ("dtype", response.dtype),
        ("device", response.device + (f" ({response.blas})" if response.blas else "")),
        ("load time", f"{_seconds(response.load_duration):.2f} s"),
        ("warm-up time", f"{_seconds(response.warmup_duration):.2f} s"),
        ("uptime", f"{_seconds(response.uptime):.0f} s"),
        ("server version", response.server_version),
        ("max request", f"{response.max_request_bytes / 1e6:.0f} MB"),
        ("max audio", f"{response.max_audio_seconds:.0f} s"),
    ]
    width = max(len(name) for name, _ in rows)
    for name, value in rows:
        print(f"{name:<{width}}  {value}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="parakeet-client", description="Talk to a parakeet-server over gRPC."
    )
    parser.add_argument(
        "--server",
        default=os.environ.get("PARAKEET_SERVER", DEFAULT_SERVER),
        help="HOST:PORT of the server; several as HOST1:PORT,HOST2:PORT or a dns:///NAME:PORT "
        "target, balanced round-robin [env PARAKEET_SERVER; default %(default)s]",
    )
    parser.add_argument(
        "--timeout", type=float, default=600.0, help="seconds to wait for an answer"
    )
    parser.add_argument(
        "--tls-ca",
        metavar="PEM",
        default=os.environ.get("PARAKEET_TLS_CA"),
        help="connect over TLS, trusting the CA certificates in this PEM file "
        "[env PARAKEET_TLS_CA]",
    )
    parser.add_argument(
        "--tls", action="store_true", help="connect over TLS, trusting the system's CAs"
    )
    token = parser.add_mutually_exclusive_group()
    token.add_argument(
        "--token",
        default=os.environ.get(TOKEN_ENV),
        help="bearer token for a server started with --auth-token-file; visible to other users "
        f"in `ps`, so prefer --token-file or the environment [env {TOKEN_ENV}]",
    )
    token.add_argument("--token-file", metavar="PATH", help="read the bearer token from a file")
    commands = parser.add_subparsers(dest="command", required=True)
    transcribe = commands.add_parser(
        "transcribe",
        help="transcribe audio files",
        description="One file: the text on stdout and the PERF line on stderr. Several files, "
        "a directory, or any of the output flags: each file's transcript written to files "
        "(beside it, or in --output-dir), --jobs at a time, a file whose outputs exist skipped, "
        "and a summary at the end.",
    )
    transcribe.add_argument(
        "files",
        nargs="+",
        metavar="FILE",
        help="WAV, FLAC, OGG, Opus, MP3, m4a/AAC, or raw PCM; or a directory (searched "
        "recursively for audio)",
    )
    transcribe.add_argument("--json", action="store_true", help="print the whole response as JSON")
    transcribe.add_argument("--words", action="store_true", help="print word timestamps")
    transcribe.add_argument(
        "--beam", type=int, metavar="N", help="beam search with N hypotheses (default: greedy)"
    )
    transcribe.add_argument(
        "--encoding",
        choices=sorted(_ENCODINGS),
        default="container",
        help="raw PCM files: linear16 or float32 (default: a container file)",
    )
    transcribe.add_argument("--sample-rate", type=int, default=0, help="raw PCM: sample rate")
    transcribe.add_argument("--channels", type=int, default=1, help="raw PCM: channel count")
    transcribe.add_argument(
        "--progress",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="show a progress bar on stderr (default: when stderr is a terminal)",
    )
    add_phrase_flags(transcribe)
    batch = transcribe.add_argument_group("many files")
    batch.add_argument(
        "--jobs", type=int, metavar="N", help="files transcribed at once (default 4)"
    )
    batch.add_argument(
        "--output-dir",
        metavar="DIR",
        help="where the outputs go (default: beside each audio file)",
    )
    batch.add_argument(
        "--output-format",
        choices=[*FORMATS, "all"],
        help="txt, srt, vtt, json (parakeet-mlx's layout) or all (default srt)",
    )
    batch.add_argument(
        "--output-template",
        metavar="TEMPLATE",
        help="output name without suffix, from {filename} {parent} {date} {index} "
        "(default {filename})",
    )
    batch.add_argument(
        "--retries",
        type=int,
        default=5,
        metavar="N",
        help="tries again after UNAVAILABLE or RESOURCE_EXHAUSTED, with back-off "
        "(default %(default)s)",
    )
    stream = commands.add_parser(
        "stream",
        help="stream an audio file or the microphone, showing partial results",
        description="Stream audio as raw PCM chunks; partial results update in place on a "
        "terminal. Ctrl-C ends the audio early and still prints the final result.",
    )
    source = stream.add_mutually_exclusive_group(required=True)
    source.add_argument(
        "file",
        nargs="?",
        help="an audio file (WAV, FLAC, OGG, MP3, m4a, ...), sent as LINEAR16 "
        "(pip install 'parakeet-client[audio]')",
    )
    source.add_argument(
        "--mic",
        action="store_true",
        help="record from the default microphone until Ctrl-C (pip install 'parakeet-client[mic]')",
    )
    stream.add_argument(
        "--realtime", action="store_true", help="send the file no faster than it plays"
    )
    stream.add_argument(
        "--chunk-ms",
        type=int,
        default=100,
        metavar="N",
        help="milliseconds of audio per message (default %(default)s)",
    )
    stream.add_argument(
        "--mode",
        choices=list(_MODES),
        default="auto",
        help="how the final result is computed (default %(default)s)",
    )
    partials = stream.add_mutually_exclusive_group()
    partials.add_argument(
        "--no-interim", action="store_true", help="ask the server for the final result only"
    )
    partials.add_argument(
        "--interim",
        action="store_true",
        help="when stdout is not a terminal, print each partial result as a line",
    )
    stream.add_argument("--json", action="store_true", help="print only the final response as JSON")
    stream.add_argument("--words", action="store_true", help="print word timestamps")
    _add_endpointing_flags(stream)
    add_phrase_flags(stream)
    info = commands.add_parser("info", help="show the loaded model and server")
    info.add_argument("--json", action="store_true", help="print the response as JSON")
    return parser


def _token(args: argparse.Namespace) -> str | None:
    """The bearer token; raises OSError/ValueError with the reason when unusable."""
    if args.token_file:
        try:
            token = Path(args.token_file).read_text().strip()
        except OSError as error:
            raise OSError(f"cannot read {args.token_file}: {error.strerror}") from None
        if not token:
            raise ValueError(f"the token file {args.token_file} is empty")
        return token
    return args.token.strip() if args.token else None


def _channel(args: argparse.Namespace) -> grpc.Channel:
    options: list[tuple[str, str | int]] = [
        ("grpc.max_send_message_length", 1024 * 1024 * 1024),
        ("grpc.max_receive_message_length", 64 * 1024 * 1024),
    ]
    target = balanced_target(args.server)
    if target != args.server or target.startswith("dns:"):
        # Several servers: every call goes to the next ready one; a dead one is left out.
        options.append(("grpc.lb_policy_name", "round_robin"))
    if not (args.tls or args.tls_ca):
        return grpc.insecure_channel(target, options=options)
    roots = None
    if args.tls_ca:
        try:
            roots = Path(args.tls_ca).read_bytes()
        except OSError as error:
            raise OSError(f"cannot read {args.tls_ca}: {error.strerror}") from None
    credentials = grpc.ssl_channel_credentials(root_certificates=roots)
    if target != args.server:
        # Names resolved to addresses here: the certificate is checked against the first name.
        host = args.server.split(",")[0].rpartition(":")[0].strip("[] ")
        options.append(("grpc.ssl_target_name_override", host))
    return grpc.secure_channel(target, credentials, options=options)


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    handlers = {"transcribe": _transcribe, "stream": _stream, "info": _info}
    try:
        token = _token(args)
        args.phrases = phrases_of(args) if args.command in ("transcribe", "stream") else []
        channel = _channel(args)
    except (OSError, ValueError) as error:
        return _fail(str(error), EXIT_USAGE)
    args.metadata = (("authorization", f"Bearer {token}"),) if token else ()
    with channel:
        stub = pb_grpc.TranscriptionServiceStub(channel)
        try:
            return handlers[args.command](stub, args)
        except grpc.RpcError as error:
            message, code = _describe_rpc_error(error, args.server)
            return _fail(message, code)


if __name__ == "__main__":
    sys.exit(main())

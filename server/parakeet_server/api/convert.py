"""Translation between the parakeet.v1 protos and the domain types, with request validation."""

from __future__ import annotations

from collections.abc import Sequence

from google.protobuf.duration_pb2 import Duration

from parakeet_client.proto.parakeet.v1 import transcription_pb2 as pb
from parakeet_server.audio.decode import Encoding
from parakeet_server.cache.store import CacheStats
from parakeet_server.domain import (
    DecodingMethod,
    Phrase,
    Progress,
    Segment,
    Transcript,
    TranscriptionOptions,
    phrase_problem,
)
from parakeet_server.errors import InvalidRequest
from parakeet_server.ops.perf import RequestFigures
from parakeet_server.pipeline.endpointing import EndpointRules, EndReason
from parakeet_server.pipeline.live import Final, FinalizationMode, Partial, StreamRequest
from parakeet_server.pipeline.unary import UnaryRequest
from parakeet_server.pipeline.utterances import SpeechEvent, Utterance

MAX_BEAM_SIZE = 32

_ENCODINGS: dict[int, Encoding] = {
    pb.AudioFormat.ENCODING_UNSPECIFIED: Encoding.CONTAINER,
    pb.AudioFormat.ENCODING_LINEAR16: Encoding.LINEAR16,
    pb.AudioFormat.ENCODING_FLOAT32: Encoding.FLOAT32,
}


def encoding_from_proto(value: int) -> Encoding:
    try:
        return _ENCODINGS[value]
    except KeyError:
        raise InvalidRequest(
            f"format.encoding {value} is unknown; use ENCODING_UNSPECIFIED (a container file), "
            "ENCODING_LINEAR16 or ENCODING_FLOAT32"
        ) from None


def unary_request_from_proto(
    request: pb.TranscribeRequest | pb.TranscribeLongRequest, deadline: float | None
) -> UnaryRequest:
    """Validates a Transcribe or TranscribeLong request's options and format."""
    return UnaryRequest(
        audio=request.audio,
        encoding=encoding_from_proto(request.format.encoding),
        sample_rate=request.format.sample_rate_hertz,
        channels=request.format.channel_count,
        options=options_from_proto(request.options),
        digest=request.audio_sha256,
        deadline=deadline,
    )


def _seconds(duration: Duration, name: str) -> float | None:
    seconds = duration.seconds + duration.nanos / 1e9
    if seconds < 0:
        raise InvalidRequest(f"options.segmentation.{name} must not be negative")
    return seconds or None


def options_from_proto(options: pb.TranscriptionOptions) -> TranscriptionOptions:
    """Validates the client's options and fills in the defaults."""
    defaults = TranscriptionOptions()
    if options.decoding_method not in (
        pb.DECODING_METHOD_UNSPECIFIED,
        pb.DECODING_METHOD_GREEDY,
        pb.DECODING_METHOD_BEAM,
    ):
        raise InvalidRequest(f"options.decoding_method {options.decoding_method} is unknown")
    beam_size = options.beam_size or defaults.beam_size
    if not 1 <= beam_size <= MAX_BEAM_SIZE:
        raise InvalidRequest(
            f"options.beam_size must be between 1 and {MAX_BEAM_SIZE}, not {options.beam_size}"
        )
    length_penalty = (
        options.length_penalty if options.HasField("length_penalty") else defaults.length_penalty
    )
    patience = options.patience if options.HasField("patience") else defaults.patience
    if patience < 1.0:
        raise InvalidRequest(f"options.patience must be at least 1.0, not {patience}")
    duration_reward = (
        options.duration_reward if options.HasField("duration_reward") else defaults.duration_reward
    )
    if not 0.0 <= duration_reward <= 1.0:
        raise InvalidRequest(
            f"options.duration_reward must be between 0 and 1, not {duration_reward}"
        )
    segmentation = options.segmentation
    if segmentation.max_words < 0:
        raise InvalidRequest("options.segmentation.max_words must not be negative")
    return TranscriptionOptions(
        word_timestamps=options.word_timestamps,
        decoding=(
            DecodingMethod.BEAM
            if options.decoding_method == pb.DECODING_METHOD_BEAM
            else DecodingMethod.GREEDY
        ),
        beam_size=beam_size,
        length_penalty=length_penalty,
        patience=patience,
        duration_reward=duration_reward,
        max_words=segmentation.max_words or None,
        max_silence_seconds=_seconds(segmentation.max_silence, "max_silence"),
        max_segment_seconds=_seconds(segmentation.max_duration, "max_duration"),
        phrases=phrases_from_proto(options.phrases),
    )


def phrases_from_proto(phrases: Sequence[pb.Phrase]) -> tuple[Phrase, ...]:
    """The phrases to boost, checked against the limits (count, length, boost range)."""
    result = tuple(Phrase(text=phrase.text, boost=phrase.boost) for phrase in phrases)
    problem = phrase_problem(result, "options.phrases")
    if problem is not None:
        raise InvalidRequest(problem)
    return result


def duration(seconds: float) -> Duration:
    value = Duration()
    value.FromNanoseconds(round(seconds * 1e9))
    return value


def transcript_to_proto(transcript: Transcript) -> pb.Transcript:
    return pb.Transcript(
        text=transcript.text, segments=[segment_to_proto(s) for s in transcript.segments]
    )


def segment_to_proto(segment: Segment) -> pb.Segment:
    return pb.Segment(
        text=segment.text,
        start_time=duration(segment.start),
        end_time=duration(segment.end),
        confidence=segment.confidence,
        words=[
            pb.Word(
                text=word.text,
                start_time=duration(word.start),
                end_time=duration(word.end),
                confidence=word.confidence,
            )
            for word in segment.words
        ],
    )


def progress_to_proto(progress: Progress, request_id: str) -> pb.TranscribeLongResponse:
    """One TranscribeLong response for a step (the caller adds the last one's transcript)."""
    return pb.TranscribeLongResponse(
        audio_processed_seconds=progress.processed_seconds,
        audio_total_seconds=progress.total_seconds,
        segments=[segment_to_proto(s) for s in progress.segments],
        request_id=request_id,
    )


def metrics_to_proto(figures: RequestFigures) -> pb.RequestMetrics:
    return pb.RequestMetrics(
        audio_seconds=figures.audio_seconds,
        processing_seconds=figures.processing_seconds,
        real_time_factor=figures.real_time_factor,
        word_count=figures.word_count,
        words_per_second=figures.words_per_second,
        cache_hit=figures.cache_hit,
        milliseconds_per_word=figures.milliseconds_per_word,
        audio_decode_seconds=figures.decode_seconds,
        queue_seconds=figures.queue_seconds,
        inference_seconds=figures.inference_seconds,
        audio_cache_hit=figures.audio_cache_hit,
        chunk_count=figures.chunk_count,
    )


def cache_stats_to_proto(stats: CacheStats) -> pb.CacheStats:
    return pb.CacheStats(
        max_bytes=stats.max_bytes,
        bytes=stats.bytes,
        entries=stats.entries,
        hits=stats.hits,
        misses=stats.misses,
        evictions=stats.evictions,
        disk_hits=stats.disk_hits,
        disk_rejected=stats.disk_rejected,
        disk_errors=stats.disk_errors,
    )


_MODES = {
    pb.FINALIZATION_MODE_UNSPECIFIED: FinalizationMode.AUTO,
    pb.FINALIZATION_MODE_AUTO: FinalizationMode.AUTO,
    pb.FINALIZATION_MODE_STREAMING: FinalizationMode.STREAMING,
    pb.FINALIZATION_MODE_FULL_CONTEXT: FinalizationMode.FULL_CONTEXT,
}
MAX_STREAM_CHANNELS = 2


def stream_request_from_proto(config: pb.StreamingConfig) -> StreamRequest:
    """Validates a stream's first message. Format problems are InvalidAudio, as for Transcribe."""
    if config.finalization_mode not in _MODES:
        raise InvalidRequest(f"finalization_mode {config.finalization_mode} is unknown")
    encoding = encoding_from_proto(config.format.encoding)
    if encoding is Encoding.CONTAINER:
        raise InvalidRequest(
            "a stream carries raw PCM: set format.encoding to ENCODING_LINEAR16 or "
            "ENCODING_FLOAT32, and format.sample_rate_hertz (container files go to Transcribe)"
        )
    if not 0 <= config.format.channel_count <= MAX_STREAM_CHANNELS:
        raise InvalidRequest(
            f"format.channel_count {config.format.channel_count}: streams take 1 or 2 channels"
        )
    return StreamRequest(
        encoding=encoding,
        sample_rate=config.format.sample_rate_hertz,
        channels=config.format.channel_count,
        interim_results=config.interim_results,
        options=options_from_proto(config.options),
        mode=_MODES[config.finalization_mode],
        endpointing=endpointing_from_proto(config),
    )


def partial_to_proto(partial: Partial) -> pb.StreamingTranscribeResponse:
    response = pb.StreamingTranscribeResponse(
        finalized_text=partial.finalized_text,
        draft_text=partial.draft_text,
        audio_processed_seconds=partial.audio_processed_seconds,
    )
    if partial.event is not None:
        response.speech_event = _SPEECH_EVENTS[partial.event]
        response.speech_event_offset.CopyFrom(duration(partial.event_offset))
    if partial.utterance is not None:
        response.utterance.CopyFrom(utterance_to_proto(partial.utterance))
    return response


def final_to_proto(final: Final, latency_seconds: float) -> pb.StreamingTranscribeResponse:
    return pb.StreamingTranscribeResponse(
        finalized_text=final.finalized_text,
        is_final=True,
        audio_processed_seconds=final.figures.audio_seconds,
        transcript=transcript_to_proto(final.transcript),
        metrics=metrics_to_proto(final.figures),
        finalization_latency_seconds=latency_seconds,
    )


# Endpointing limits (EndpointingConfig): a pause shorter than 200 ms is the gap between two
# words (the model's frames are 80 ms); longer than 10 s is no longer a pause. An utterance of
# at least 1 s, and at most 5 minutes of audio kept for its full-context pass (19 MB).
TRAILING_SILENCE_RANGE = (0.2, 10.0)
MAX_UTTERANCE_RANGE = (1.0, 300.0)

_SPEECH_EVENTS = {
    SpeechEvent.SPEECH_BEGIN: pb.SPEECH_EVENT_SPEECH_BEGIN,
    SpeechEvent.END_OF_UTTERANCE: pb.SPEECH_EVENT_END_OF_UTTERANCE,
    SpeechEvent.END_OF_SINGLE_UTTERANCE: pb.SPEECH_EVENT_END_OF_SINGLE_UTTERANCE,
}
_END_REASONS = {
    EndReason.SILENCE: pb.Utterance.END_REASON_SILENCE,
    EndReason.MAX_UTTERANCE: pb.Utterance.END_REASON_MAX_UTTERANCE,
    EndReason.END_OF_STREAM: pb.Utterance.END_REASON_END_OF_STREAM,
}


def _endpointing_seconds(
    value: Duration, name: str, default: float, limits: tuple[float, float]
) -> float:
    seconds = value.seconds + value.nanos / 1e9
    if seconds == 0:
        return default
    low, high = limits
    if not low <= seconds <= high:
        raise InvalidRequest(
            f"endpointing.{name} must be between {low * 1000:.0f} ms and {high:g} s "
            f"(or unset for {default:g} s), not {seconds:g} s"
        )
    return seconds


def endpointing_from_proto(config: pb.StreamingConfig) -> EndpointRules | None:
    """A stream's endpointing settings, validated; None when the stream has none."""
    if not config.HasField("endpointing"):
        return None
    endpointing = config.endpointing
    defaults = EndpointRules()
    return EndpointRules(
        trailing_silence=_endpointing_seconds(
            endpointing.trailing_silence,
            "trailing_silence",
            defaults.trailing_silence,
            TRAILING_SILENCE_RANGE,
        ),
        max_utterance=_endpointing_seconds(
            endpointing.max_utterance, "max_utterance", defaults.max_utterance, MAX_UTTERANCE_RANGE
        ),
        single_utterance=endpointing.single_utterance,
    )


def utterance_to_proto(utterance: Utterance) -> pb.Utterance:
    return pb.Utterance(
        index=utterance.index,
        transcript=transcript_to_proto(utterance.transcript),
        audio_start=duration(utterance.audio_start),
        audio_end=duration(utterance.audio_end),
        end_reason=_END_REASONS[utterance.reason],
        closed_at=duration(utterance.closed_at),
        end_of_speech_latency_seconds=utterance.end_of_speech_latency,
    )

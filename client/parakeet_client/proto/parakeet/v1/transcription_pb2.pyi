import datetime

from google.protobuf import duration_pb2 as _duration_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class DecodingMethod(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    DECODING_METHOD_UNSPECIFIED: _ClassVar[DecodingMethod]
    DECODING_METHOD_GREEDY: _ClassVar[DecodingMethod]
    DECODING_METHOD_BEAM: _ClassVar[DecodingMethod]

class FinalizationMode(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    FINALIZATION_MODE_UNSPECIFIED: _ClassVar[FinalizationMode]
    FINALIZATION_MODE_AUTO: _ClassVar[FinalizationMode]
    FINALIZATION_MODE_STREAMING: _ClassVar[FinalizationMode]
    FINALIZATION_MODE_FULL_CONTEXT: _ClassVar[FinalizationMode]

class ModelKind(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    MODEL_KIND_UNSPECIFIED: _ClassVar[ModelKind]
    MODEL_KIND_TDT: _ClassVar[ModelKind]
    MODEL_KIND_RNNT: _ClassVar[ModelKind]
    MODEL_KIND_CTC: _ClassVar[ModelKind]
    MODEL_KIND_TDT_CTC: _ClassVar[ModelKind]

class SpeechEvent(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    SPEECH_EVENT_UNSPECIFIED: _ClassVar[SpeechEvent]
    SPEECH_EVENT_SPEECH_BEGIN: _ClassVar[SpeechEvent]
    SPEECH_EVENT_END_OF_UTTERANCE: _ClassVar[SpeechEvent]
    SPEECH_EVENT_END_OF_SINGLE_UTTERANCE: _ClassVar[SpeechEvent]
DECODING_METHOD_UNSPECIFIED: DecodingMethod
DECODING_METHOD_GREEDY: DecodingMethod
DECODING_METHOD_BEAM: DecodingMethod
FINALIZATION_MODE_UNSPECIFIED: FinalizationMode
FINALIZATION_MODE_AUTO: FinalizationMode
FINALIZATION_MODE_STREAMING: FinalizationMode
FINALIZATION_MODE_FULL_CONTEXT: FinalizationMode
MODEL_KIND_UNSPECIFIED: ModelKind
MODEL_KIND_TDT: ModelKind
MODEL_KIND_RNNT: ModelKind
MODEL_KIND_CTC: ModelKind
MODEL_KIND_TDT_CTC: ModelKind
SPEECH_EVENT_UNSPECIFIED: SpeechEvent
SPEECH_EVENT_SPEECH_BEGIN: SpeechEvent
SPEECH_EVENT_END_OF_UTTERANCE: SpeechEvent
SPEECH_EVENT_END_OF_SINGLE_UTTERANCE: SpeechEvent

class AudioFormat(_message.Message):
    __slots__ = ("encoding", "sample_rate_hertz", "channel_count")
    class Encoding(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
        __slots__ = ()
        ENCODING_UNSPECIFIED: _ClassVar[AudioFormat.Encoding]
        ENCODING_LINEAR16: _ClassVar[AudioFormat.Encoding]
        ENCODING_FLOAT32: _ClassVar[AudioFormat.Encoding]
    ENCODING_UNSPECIFIED: AudioFormat.Encoding
    ENCODING_LINEAR16: AudioFormat.Encoding
    ENCODING_FLOAT32: AudioFormat.Encoding
    ENCODING_FIELD_NUMBER: _ClassVar[int]
    SAMPLE_RATE_HERTZ_FIELD_NUMBER: _ClassVar[int]
    CHANNEL_COUNT_FIELD_NUMBER: _ClassVar[int]
    encoding: AudioFormat.Encoding
    sample_rate_hertz: int
    channel_count: int
    def __init__(self, encoding: _Optional[_Union[AudioFormat.Encoding, str]] = ..., sample_rate_hertz: _Optional[int] = ..., channel_count: _Optional[int] = ...) -> None: ...

class TranscriptionOptions(_message.Message):
    __slots__ = ("word_timestamps", "decoding_method", "beam_size", "length_penalty", "patience", "duration_reward", "segmentation", "phrases")
    WORD_TIMESTAMPS_FIELD_NUMBER: _ClassVar[int]
    DECODING_METHOD_FIELD_NUMBER: _ClassVar[int]
    BEAM_SIZE_FIELD_NUMBER: _ClassVar[int]
    LENGTH_PENALTY_FIELD_NUMBER: _ClassVar[int]
    PATIENCE_FIELD_NUMBER: _ClassVar[int]
    DURATION_REWARD_FIELD_NUMBER: _ClassVar[int]
    SEGMENTATION_FIELD_NUMBER: _ClassVar[int]
    PHRASES_FIELD_NUMBER: _ClassVar[int]
    word_timestamps: bool
    decoding_method: DecodingMethod
    beam_size: int
    length_penalty: float
    patience: float
    duration_reward: float
    segmentation: SegmentationOptions
    phrases: _containers.RepeatedCompositeFieldContainer[Phrase]
    def __init__(self, word_timestamps: _Optional[bool] = ..., decoding_method: _Optional[_Union[DecodingMethod, str]] = ..., beam_size: _Optional[int] = ..., length_penalty: _Optional[float] = ..., patience: _Optional[float] = ..., duration_reward: _Optional[float] = ..., segmentation: _Optional[_Union[SegmentationOptions, _Mapping]] = ..., phrases: _Optional[_Iterable[_Union[Phrase, _Mapping]]] = ...) -> None: ...

class SegmentationOptions(_message.Message):
    __slots__ = ("max_words", "max_silence", "max_duration")
    MAX_WORDS_FIELD_NUMBER: _ClassVar[int]
    MAX_SILENCE_FIELD_NUMBER: _ClassVar[int]
    MAX_DURATION_FIELD_NUMBER: _ClassVar[int]
    max_words: int
    max_silence: _duration_pb2.Duration
    max_duration: _duration_pb2.Duration
    def __init__(self, max_words: _Optional[int] = ..., max_silence: _Optional[_Union[datetime.timedelta, _duration_pb2.Duration, _Mapping]] = ..., max_duration: _Optional[_Union[datetime.timedelta, _duration_pb2.Duration, _Mapping]] = ...) -> None: ...

class TranscribeRequest(_message.Message):
    __slots__ = ("audio", "format", "options", "audio_sha256")
    AUDIO_FIELD_NUMBER: _ClassVar[int]
    FORMAT_FIELD_NUMBER: _ClassVar[int]
    OPTIONS_FIELD_NUMBER: _ClassVar[int]
    AUDIO_SHA256_FIELD_NUMBER: _ClassVar[int]
    audio: bytes
    format: AudioFormat
    options: TranscriptionOptions
    audio_sha256: bytes
    def __init__(self, audio: _Optional[bytes] = ..., format: _Optional[_Union[AudioFormat, _Mapping]] = ..., options: _Optional[_Union[TranscriptionOptions, _Mapping]] = ..., audio_sha256: _Optional[bytes] = ...) -> None: ...

class TranscribeResponse(_message.Message):
    __slots__ = ("transcript", "metrics", "request_id")
    TRANSCRIPT_FIELD_NUMBER: _ClassVar[int]
    METRICS_FIELD_NUMBER: _ClassVar[int]
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    transcript: Transcript
    metrics: RequestMetrics
    request_id: str
    def __init__(self, transcript: _Optional[_Union[Transcript, _Mapping]] = ..., metrics: _Optional[_Union[RequestMetrics, _Mapping]] = ..., request_id: _Optional[str] = ...) -> None: ...

class TranscribeLongRequest(_message.Message):
    __slots__ = ("audio", "format", "options", "audio_sha256")
    AUDIO_FIELD_NUMBER: _ClassVar[int]
    FORMAT_FIELD_NUMBER: _ClassVar[int]
    OPTIONS_FIELD_NUMBER: _ClassVar[int]
    AUDIO_SHA256_FIELD_NUMBER: _ClassVar[int]
    audio: bytes
    format: AudioFormat
    options: TranscriptionOptions
    audio_sha256: bytes
    def __init__(self, audio: _Optional[bytes] = ..., format: _Optional[_Union[AudioFormat, _Mapping]] = ..., options: _Optional[_Union[TranscriptionOptions, _Mapping]] = ..., audio_sha256: _Optional[bytes] = ...) -> None: ...

class TranscribeLongResponse(_message.Message):
    __slots__ = ("audio_processed_seconds", "audio_total_seconds", "segments", "is_final", "transcript", "metrics", "request_id")
    AUDIO_PROCESSED_SECONDS_FIELD_NUMBER: _ClassVar[int]
    AUDIO_TOTAL_SECONDS_FIELD_NUMBER: _ClassVar[int]
    SEGMENTS_FIELD_NUMBER: _ClassVar[int]
    IS_FINAL_FIELD_NUMBER: _ClassVar[int]
    TRANSCRIPT_FIELD_NUMBER: _ClassVar[int]
    METRICS_FIELD_NUMBER: _ClassVar[int]
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    audio_processed_seconds: float
    audio_total_seconds: float
    segments: _containers.RepeatedCompositeFieldContainer[Segment]
    is_final: bool
    transcript: Transcript
    metrics: RequestMetrics
    request_id: str
    def __init__(self, audio_processed_seconds: _Optional[float] = ..., audio_total_seconds: _Optional[float] = ..., segments: _Optional[_Iterable[_Union[Segment, _Mapping]]] = ..., is_final: _Optional[bool] = ..., transcript: _Optional[_Union[Transcript, _Mapping]] = ..., metrics: _Optional[_Union[RequestMetrics, _Mapping]] = ..., request_id: _Optional[str] = ...) -> None: ...

class Transcript(_message.Message):
    __slots__ = ("text", "segments")
    TEXT_FIELD_NUMBER: _ClassVar[int]
    SEGMENTS_FIELD_NUMBER: _ClassVar[int]
    text: str
    segments: _containers.RepeatedCompositeFieldContainer[Segment]
    def __init__(self, text: _Optional[str] = ..., segments: _Optional[_Iterable[_Union[Segment, _Mapping]]] = ...) -> None: ...

class Segment(_message.Message):
    __slots__ = ("text", "start_time", "end_time", "confidence", "words")
    TEXT_FIELD_NUMBER: _ClassVar[int]
    START_TIME_FIELD_NUMBER: _ClassVar[int]
    END_TIME_FIELD_NUMBER: _ClassVar[int]
    CONFIDENCE_FIELD_NUMBER: _ClassVar[int]
    WORDS_FIELD_NUMBER: _ClassVar[int]
    text: str
    start_time: _duration_pb2.Duration
    end_time: _duration_pb2.Duration
    confidence: float
    words: _containers.RepeatedCompositeFieldContainer[Word]
    def __init__(self, text: _Optional[str] = ..., start_time: _Optional[_Union[datetime.timedelta, _duration_pb2.Duration, _Mapping]] = ..., end_time: _Optional[_Union[datetime.timedelta, _duration_pb2.Duration, _Mapping]] = ..., confidence: _Optional[float] = ..., words: _Optional[_Iterable[_Union[Word, _Mapping]]] = ...) -> None: ...

class Word(_message.Message):
    __slots__ = ("text", "start_time", "end_time", "confidence")
    TEXT_FIELD_NUMBER: _ClassVar[int]
    START_TIME_FIELD_NUMBER: _ClassVar[int]
    END_TIME_FIELD_NUMBER: _ClassVar[int]
    CONFIDENCE_FIELD_NUMBER: _ClassVar[int]
    text: str
    start_time: _duration_pb2.Duration
    end_time: _duration_pb2.Duration
    confidence: float
    def __init__(self, text: _Optional[str] = ..., start_time: _Optional[_Union[datetime.timedelta, _duration_pb2.Duration, _Mapping]] = ..., end_time: _Optional[_Union[datetime.timedelta, _duration_pb2.Duration, _Mapping]] = ..., confidence: _Optional[float] = ...) -> None: ...

class RequestMetrics(_message.Message):
    __slots__ = ("audio_seconds", "processing_seconds", "real_time_factor", "word_count", "words_per_second", "cache_hit", "milliseconds_per_word", "audio_decode_seconds", "queue_seconds", "inference_seconds", "audio_cache_hit", "chunk_count")
    AUDIO_SECONDS_FIELD_NUMBER: _ClassVar[int]
    PROCESSING_SECONDS_FIELD_NUMBER: _ClassVar[int]
    REAL_TIME_FACTOR_FIELD_NUMBER: _ClassVar[int]
    WORD_COUNT_FIELD_NUMBER: _ClassVar[int]
    WORDS_PER_SECOND_FIELD_NUMBER: _ClassVar[int]
    CACHE_HIT_FIELD_NUMBER: _ClassVar[int]
    MILLISECONDS_PER_WORD_FIELD_NUMBER: _ClassVar[int]
    AUDIO_DECODE_SECONDS_FIELD_NUMBER: _ClassVar[int]
    QUEUE_SECONDS_FIELD_NUMBER: _ClassVar[int]
    INFERENCE_SECONDS_FIELD_NUMBER: _ClassVar[int]
    AUDIO_CACHE_HIT_FIELD_NUMBER: _ClassVar[int]
    CHUNK_COUNT_FIELD_NUMBER: _ClassVar[int]
    audio_seconds: float
    processing_seconds: float
    real_time_factor: float
    word_count: int
    words_per_second: float
    cache_hit: bool
    milliseconds_per_word: float
    audio_decode_seconds: float
    queue_seconds: float
    inference_seconds: float
    audio_cache_hit: bool
    chunk_count: int
    def __init__(self, audio_seconds: _Optional[float] = ..., processing_seconds: _Optional[float] = ..., real_time_factor: _Optional[float] = ..., word_count: _Optional[int] = ..., words_per_second: _Optional[float] = ..., cache_hit: _Optional[bool] = ..., milliseconds_per_word: _Optional[float] = ..., audio_decode_seconds: _Optional[float] = ..., queue_seconds: _Optional[float] = ..., inference_seconds: _Optional[float] = ..., audio_cache_hit: _Optional[bool] = ..., chunk_count: _Optional[int] = ...) -> None: ...

class StreamingConfig(_message.Message):
    __slots__ = ("format", "interim_results", "options", "finalization_mode", "endpointing")
    FORMAT_FIELD_NUMBER: _ClassVar[int]
    INTERIM_RESULTS_FIELD_NUMBER: _ClassVar[int]
    OPTIONS_FIELD_NUMBER: _ClassVar[int]
    FINALIZATION_MODE_FIELD_NUMBER: _ClassVar[int]
    ENDPOINTING_FIELD_NUMBER: _ClassVar[int]
    format: AudioFormat
    interim_results: bool
    options: TranscriptionOptions
    finalization_mode: FinalizationMode
    endpointing: EndpointingConfig
    def __init__(self, format: _Optional[_Union[AudioFormat, _Mapping]] = ..., interim_results: _Optional[bool] = ..., options: _Optional[_Union[TranscriptionOptions, _Mapping]] = ..., finalization_mode: _Optional[_Union[FinalizationMode, str]] = ..., endpointing: _Optional[_Union[EndpointingConfig, _Mapping]] = ...) -> None: ...

class StreamingTranscribeRequest(_message.Message):
    __slots__ = ("config", "audio")
    CONFIG_FIELD_NUMBER: _ClassVar[int]
    AUDIO_FIELD_NUMBER: _ClassVar[int]
    config: StreamingConfig
    audio: bytes
    def __init__(self, config: _Optional[_Union[StreamingConfig, _Mapping]] = ..., audio: _Optional[bytes] = ...) -> None: ...

class StreamingTranscribeResponse(_message.Message):
    __slots__ = ("finalized_text", "draft_text", "is_final", "audio_processed_seconds", "transcript", "metrics", "finalization_latency_seconds", "speech_event", "utterance", "speech_event_offset")
    FINALIZED_TEXT_FIELD_NUMBER: _ClassVar[int]
    DRAFT_TEXT_FIELD_NUMBER: _ClassVar[int]
    IS_FINAL_FIELD_NUMBER: _ClassVar[int]
    AUDIO_PROCESSED_SECONDS_FIELD_NUMBER: _ClassVar[int]
    TRANSCRIPT_FIELD_NUMBER: _ClassVar[int]
    METRICS_FIELD_NUMBER: _ClassVar[int]
    FINALIZATION_LATENCY_SECONDS_FIELD_NUMBER: _ClassVar[int]
    SPEECH_EVENT_FIELD_NUMBER: _ClassVar[int]
    UTTERANCE_FIELD_NUMBER: _ClassVar[int]
    SPEECH_EVENT_OFFSET_FIELD_NUMBER: _ClassVar[int]
    finalized_text: str
    draft_text: str
    is_final: bool
    audio_processed_seconds: float
    transcript: Transcript
    metrics: RequestMetrics
    finalization_latency_seconds: float
    speech_event: SpeechEvent
    utterance: Utterance
    speech_event_offset: _duration_pb2.Duration
    def __init__(self, finalized_text: _Optional[str] = ..., draft_text: _Optional[str] = ..., is_final: _Optional[bool] = ..., audio_processed_seconds: _Optional[float] = ..., transcript: _Optional[_Union[Transcript, _Mapping]] = ..., metrics: _Optional[_Union[RequestMetrics, _Mapping]] = ..., finalization_latency_seconds: _Optional[float] = ..., speech_event: _Optional[_Union[SpeechEvent, str]] = ..., utterance: _Optional[_Union[Utterance, _Mapping]] = ..., speech_event_offset: _Optional[_Union[datetime.timedelta, _duration_pb2.Duration, _Mapping]] = ...) -> None: ...

class GetServerInfoRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class GetServerInfoResponse(_message.Message):
    __slots__ = ("model_id", "model_kind", "sample_rate_hertz", "vocabulary_size", "dtype", "warm", "server_version", "load_duration", "warmup_duration", "uptime", "device", "blas", "parameter_count", "max_request_bytes", "max_audio_seconds", "library_versions", "resident_memory_bytes", "mlx_active_memory_bytes", "mlx_cache_memory_bytes", "active_streams", "max_streams", "stream_block", "stream_lookahead", "auto_full_context_limit", "chunk_length", "chunk_overlap", "audio_cache", "transcript_cache", "worker_pid", "worker_restarts", "worker_recycles", "worker_resident_memory_bytes", "max_batch_size", "last_batch_size", "last_step_duration", "max_stream_lag", "mlx_peak_memory_bytes", "worker_heap_in_use_bytes", "worker_heap_free_bytes")
    class LibraryVersionsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    MODEL_ID_FIELD_NUMBER: _ClassVar[int]
    MODEL_KIND_FIELD_NUMBER: _ClassVar[int]
    SAMPLE_RATE_HERTZ_FIELD_NUMBER: _ClassVar[int]
    VOCABULARY_SIZE_FIELD_NUMBER: _ClassVar[int]
    DTYPE_FIELD_NUMBER: _ClassVar[int]
    WARM_FIELD_NUMBER: _ClassVar[int]
    SERVER_VERSION_FIELD_NUMBER: _ClassVar[int]
    LOAD_DURATION_FIELD_NUMBER: _ClassVar[int]
    WARMUP_DURATION_FIELD_NUMBER: _ClassVar[int]
    UPTIME_FIELD_NUMBER: _ClassVar[int]
    DEVICE_FIELD_NUMBER: _ClassVar[int]
    BLAS_FIELD_NUMBER: _ClassVar[int]
    PARAMETER_COUNT_FIELD_NUMBER: _ClassVar[int]
    MAX_REQUEST_BYTES_FIELD_NUMBER: _ClassVar[int]
    MAX_AUDIO_SECONDS_FIELD_NUMBER: _ClassVar[int]
    LIBRARY_VERSIONS_FIELD_NUMBER: _ClassVar[int]
    RESIDENT_MEMORY_BYTES_FIELD_NUMBER: _ClassVar[int]
    MLX_ACTIVE_MEMORY_BYTES_FIELD_NUMBER: _ClassVar[int]
    MLX_CACHE_MEMORY_BYTES_FIELD_NUMBER: _ClassVar[int]
    ACTIVE_STREAMS_FIELD_NUMBER: _ClassVar[int]
    MAX_STREAMS_FIELD_NUMBER: _ClassVar[int]
    STREAM_BLOCK_FIELD_NUMBER: _ClassVar[int]
    STREAM_LOOKAHEAD_FIELD_NUMBER: _ClassVar[int]
    AUTO_FULL_CONTEXT_LIMIT_FIELD_NUMBER: _ClassVar[int]
    CHUNK_LENGTH_FIELD_NUMBER: _ClassVar[int]
    CHUNK_OVERLAP_FIELD_NUMBER: _ClassVar[int]
    AUDIO_CACHE_FIELD_NUMBER: _ClassVar[int]
    TRANSCRIPT_CACHE_FIELD_NUMBER: _ClassVar[int]
    WORKER_PID_FIELD_NUMBER: _ClassVar[int]
    WORKER_RESTARTS_FIELD_NUMBER: _ClassVar[int]
    WORKER_RECYCLES_FIELD_NUMBER: _ClassVar[int]
    WORKER_RESIDENT_MEMORY_BYTES_FIELD_NUMBER: _ClassVar[int]
    MAX_BATCH_SIZE_FIELD_NUMBER: _ClassVar[int]
    LAST_BATCH_SIZE_FIELD_NUMBER: _ClassVar[int]
    LAST_STEP_DURATION_FIELD_NUMBER: _ClassVar[int]
    MAX_STREAM_LAG_FIELD_NUMBER: _ClassVar[int]
    MLX_PEAK_MEMORY_BYTES_FIELD_NUMBER: _ClassVar[int]
    WORKER_HEAP_IN_USE_BYTES_FIELD_NUMBER: _ClassVar[int]
    WORKER_HEAP_FREE_BYTES_FIELD_NUMBER: _ClassVar[int]
    model_id: str
    model_kind: ModelKind
    sample_rate_hertz: int
    vocabulary_size: int
    dtype: str
    warm: bool
    server_version: str
    load_duration: _duration_pb2.Duration
    warmup_duration: _duration_pb2.Duration
    uptime: _duration_pb2.Duration
    device: str
    blas: str
    parameter_count: int
    max_request_bytes: int
    max_audio_seconds: float
    library_versions: _containers.ScalarMap[str, str]
    resident_memory_bytes: int
    mlx_active_memory_bytes: int
    mlx_cache_memory_bytes: int
    active_streams: int
    max_streams: int
    stream_block: _duration_pb2.Duration
    stream_lookahead: _duration_pb2.Duration
    auto_full_context_limit: _duration_pb2.Duration
    chunk_length: _duration_pb2.Duration
    chunk_overlap: _duration_pb2.Duration
    audio_cache: CacheStats
    transcript_cache: CacheStats
    worker_pid: int
    worker_restarts: int
    worker_recycles: int
    worker_resident_memory_bytes: int
    max_batch_size: int
    last_batch_size: int
    last_step_duration: _duration_pb2.Duration
    max_stream_lag: _duration_pb2.Duration
    mlx_peak_memory_bytes: int
    worker_heap_in_use_bytes: int
    worker_heap_free_bytes: int
    def __init__(self, model_id: _Optional[str] = ..., model_kind: _Optional[_Union[ModelKind, str]] = ..., sample_rate_hertz: _Optional[int] = ..., vocabulary_size: _Optional[int] = ..., dtype: _Optional[str] = ..., warm: _Optional[bool] = ..., server_version: _Optional[str] = ..., load_duration: _Optional[_Union[datetime.timedelta, _duration_pb2.Duration, _Mapping]] = ..., warmup_duration: _Optional[_Union[datetime.timedelta, _duration_pb2.Duration, _Mapping]] = ..., uptime: _Optional[_Union[datetime.timedelta, _duration_pb2.Duration, _Mapping]] = ..., device: _Optional[str] = ..., blas: _Optional[str] = ..., parameter_count: _Optional[int] = ..., max_request_bytes: _Optional[int] = ..., max_audio_seconds: _Optional[float] = ..., library_versions: _Optional[_Mapping[str, str]] = ..., resident_memory_bytes: _Optional[int] = ..., mlx_active_memory_bytes: _Optional[int] = ..., mlx_cache_memory_bytes: _Optional[int] = ..., active_streams: _Optional[int] = ..., max_streams: _Optional[int] = ..., stream_block: _Optional[_Union[datetime.timedelta, _duration_pb2.Duration, _Mapping]] = ..., stream_lookahead: _Optional[_Union[datetime.timedelta, _duration_pb2.Duration, _Mapping]] = ..., auto_full_context_limit: _Optional[_Union[datetime.timedelta, _duration_pb2.Duration, _Mapping]] = ..., chunk_length: _Optional[_Union[datetime.timedelta, _duration_pb2.Duration, _Mapping]] = ..., chunk_overlap: _Optional[_Union[datetime.timedelta, _duration_pb2.Duration, _Mapping]] = ..., audio_cache: _Optional[_Union[CacheStats, _Mapping]] = ..., transcript_cache: _Optional[_Union[CacheStats, _Mapping]] = ..., worker_pid: _Optional[int] = ..., worker_restarts: _Optional[int] = ..., worker_recycles: _Optional[int] = ..., worker_resident_memory_bytes: _Optional[int] = ..., max_batch_size: _Optional[int] = ..., last_batch_size: _Optional[int] = ..., last_step_duration: _Optional[_Union[datetime.timedelta, _duration_pb2.Duration, _Mapping]] = ..., max_stream_lag: _Optional[_Union[datetime.timedelta, _duration_pb2.Duration, _Mapping]] = ..., mlx_peak_memory_bytes: _Optional[int] = ..., worker_heap_in_use_bytes: _Optional[int] = ..., worker_heap_free_bytes: _Optional[int] = ...) -> None: ...

class CacheStats(_message.Message):
    __slots__ = ("max_bytes", "bytes", "entries", "hits", "misses", "evictions", "disk_hits", "disk_rejected", "disk_errors")
    MAX_BYTES_FIELD_NUMBER: _ClassVar[int]
    BYTES_FIELD_NUMBER: _ClassVar[int]
    ENTRIES_FIELD_NUMBER: _ClassVar[int]
    HITS_FIELD_NUMBER: _ClassVar[int]
    MISSES_FIELD_NUMBER: _ClassVar[int]
    EVICTIONS_FIELD_NUMBER: _ClassVar[int]
    DISK_HITS_FIELD_NUMBER: _ClassVar[int]
    DISK_REJECTED_FIELD_NUMBER: _ClassVar[int]
    DISK_ERRORS_FIELD_NUMBER: _ClassVar[int]
    max_bytes: int
    bytes: int
    entries: int
    hits: int
    misses: int
    evictions: int
    disk_hits: int
    disk_rejected: int
    disk_errors: int
    def __init__(self, max_bytes: _Optional[int] = ..., bytes: _Optional[int] = ..., entries: _Optional[int] = ..., hits: _Optional[int] = ..., misses: _Optional[int] = ..., evictions: _Optional[int] = ..., disk_hits: _Optional[int] = ..., disk_rejected: _Optional[int] = ..., disk_errors: _Optional[int] = ...) -> None: ...

class EndpointingConfig(_message.Message):
    __slots__ = ("trailing_silence", "max_utterance", "single_utterance")
    TRAILING_SILENCE_FIELD_NUMBER: _ClassVar[int]
    MAX_UTTERANCE_FIELD_NUMBER: _ClassVar[int]
    SINGLE_UTTERANCE_FIELD_NUMBER: _ClassVar[int]
    trailing_silence: _duration_pb2.Duration
    max_utterance: _duration_pb2.Duration
    single_utterance: bool
    def __init__(self, trailing_silence: _Optional[_Union[datetime.timedelta, _duration_pb2.Duration, _Mapping]] = ..., max_utterance: _Optional[_Union[datetime.timedelta, _duration_pb2.Duration, _Mapping]] = ..., single_utterance: _Optional[bool] = ...) -> None: ...

class Utterance(_message.Message):
    __slots__ = ("index", "transcript", "audio_start", "audio_end", "end_reason", "closed_at", "end_of_speech_latency_seconds")
    class EndReason(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
        __slots__ = ()
        END_REASON_UNSPECIFIED: _ClassVar[Utterance.EndReason]
        END_REASON_SILENCE: _ClassVar[Utterance.EndReason]
        END_REASON_MAX_UTTERANCE: _ClassVar[Utterance.EndReason]
        END_REASON_END_OF_STREAM: _ClassVar[Utterance.EndReason]
    END_REASON_UNSPECIFIED: Utterance.EndReason
    END_REASON_SILENCE: Utterance.EndReason
    END_REASON_MAX_UTTERANCE: Utterance.EndReason
    END_REASON_END_OF_STREAM: Utterance.EndReason
    INDEX_FIELD_NUMBER: _ClassVar[int]
    TRANSCRIPT_FIELD_NUMBER: _ClassVar[int]
    AUDIO_START_FIELD_NUMBER: _ClassVar[int]
    AUDIO_END_FIELD_NUMBER: _ClassVar[int]
    END_REASON_FIELD_NUMBER: _ClassVar[int]
    CLOSED_AT_FIELD_NUMBER: _ClassVar[int]
    END_OF_SPEECH_LATENCY_SECONDS_FIELD_NUMBER: _ClassVar[int]
    index: int
    transcript: Transcript
    audio_start: _duration_pb2.Duration
    audio_end: _duration_pb2.Duration
    end_reason: Utterance.EndReason
    closed_at: _duration_pb2.Duration
    end_of_speech_latency_seconds: float
    def __init__(self, index: _Optional[int] = ..., transcript: _Optional[_Union[Transcript, _Mapping]] = ..., audio_start: _Optional[_Union[datetime.timedelta, _duration_pb2.Duration, _Mapping]] = ..., audio_end: _Optional[_Union[datetime.timedelta, _duration_pb2.Duration, _Mapping]] = ..., end_reason: _Optional[_Union[Utterance.EndReason, str]] = ..., closed_at: _Optional[_Union[datetime.timedelta, _duration_pb2.Duration, _Mapping]] = ..., end_of_speech_latency_seconds: _Optional[float] = ...) -> None: ...

class Phrase(_message.Message):
    __slots__ = ("text", "boost")
    TEXT_FIELD_NUMBER: _ClassVar[int]
    BOOST_FIELD_NUMBER: _ClassVar[int]
    text: str
    boost: float
    def __init__(self, text: _Optional[str] = ..., boost: _Optional[float] = ...) -> None: ...

"""Loading, warming up and running a Parakeet model on 16 kHz mono PCM with parakeet-mlx.

Not thread-safe: exactly one thread may use a ParakeetEngine (see worker.py).
"""

from __future__ import annotations

import logging
import time
from collections import OrderedDict
from collections.abc import Iterator, Sequence
from dataclasses import replace
from importlib import metadata
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

import numpy as np

from parakeet_server.domain import (
    DEFAULT_MODEL,
    DTYPES,
    BlockResult,
    BlockSchedule,
    ChunkingConfig,
    DecodingMethod,
    MemoryFigures,
    ModelInfo,
    Phrase,
    Progress,
    Segment,
    TimedToken,
    Transcript,
    TranscriptionOptions,
)
from parakeet_server.engine.boosting import (
    ROOT,
    ContextGraph,
    Spelling,
    Unspellable,
    compile_phrases,
)
from parakeet_server.engine.chunking import ChunkJoiner, plan_chunks
from parakeet_server.engine.results import sentences_to_transcript
from parakeet_server.engine.runtime import log_blas, matmul_gflops, use_fast_blas
from parakeet_server.errors import InvalidRequest, ModelLoadError
from parakeet_server.ops.heap import heap_figures, release_free_heap

if TYPE_CHECKING:
    from parakeet_server.engine.streaming import StreamingSession

log = logging.getLogger(__name__)

# A live stream gives its freed memory back every this many blocks (~40 s of audio at 1.28 s a
# block), so that an hour-long stream holds no more than a short one; the release costs 5-8 ms.
RELEASE_EVERY_BLOCKS = 32
# Compiled phrase lists kept for reuse (a dictation client sends the same list every time).
GRAPHS_KEPT = 32


def _library_versions() -> dict[str, str]:
    versions = {}
    for dist in ("mlx", "parakeet-mlx", "grpcio", "numpy"):
        try:
            versions[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            continue
    return versions


class ParakeetEngine:
    """A loaded Parakeet model that turns PCM into a Transcript."""

    def __init__(self, model: Any, info: ModelInfo, chunking: ChunkingConfig | None = None) -> None:
        self._model = model
        self.info = info
        self._chunking = chunking or ChunkingConfig()
        self._stream_tables: dict[BlockSchedule, dict[str, Any]] = {}
        self._blocks_since_release = 0
        self._spelling = Spelling.of(model.vocabulary)
        self._graphs: OrderedDict[tuple[Phrase, ...], ContextGraph] = OrderedDict()

    @classmethod
    def load(
        cls,
        model_id: str = DEFAULT_MODEL,
        *,
        dtype: str = "auto",
        blas: str | None = None,
        chunking: ChunkingConfig | None = None,
    ) -> ParakeetEngine:
        """Loads `model_id` (a Hugging Face id or a local directory) with parakeet-mlx.

        Raises ModelLoadError with one readable sentence when the model cannot be had.
        """
        blas_choice = use_fast_blas(blas)
        import mlx.core as mx
        from parakeet_mlx.utils import from_pretrained

        device = "gpu" if mx.default_device().type == mx.DeviceType.gpu else "cpu"
        if dtype not in DTYPES:
            raise ModelLoadError(f"dtype must be one of {', '.join(DTYPES)}, not {dtype!r}")
        # bfloat16 matmuls never reach BLAS on CPU and are slower there than float32.
        resolved_dtype = (
            ("bfloat16" if device == "gpu" else "float32") if dtype == "auto" else dtype
        )
        source = _resolve_source(model_id)
        started = time.perf_counter()
        try:
            model = from_pretrained(source, dtype=getattr(mx, resolved_dtype))
            # Weights load lazily and are bound to the loading thread's stream until evaluated.
            mx.eval(model.parameters())
        except Exception as error:  # the hub, the filesystem, safetensors, config parsing
            raise ModelLoadError(_describe_load_failure(model_id, source, error)) from error
        from parakeet_server.engine.fast_encoder import install as install_fast_encoder

        install_fast_encoder(model)  # $PARAKEET_ENCODER=stock keeps parakeet-mlx's forward
        load_seconds = time.perf_counter() - started
        preprocessor = model.preprocessor_config
        # The STFT reflect-pads by n_fft/2 and crashes MLX on shorter input; one encoder
        # frame (hop * subsampling, 80 ms) is the least that gives a meaningful result.
        min_samples = max(
            preprocessor.hop_length * model.encoder_config.subsampling_factor,
            preprocessor.n_fft,
        )
        info = ModelInfo(
            model_id=model_id,
            kind=_kind_of(model),
            sample_rate=preprocessor.sample_rate,
            vocabulary_size=len(model.vocabulary),
            dtype=resolved_dtype,
            device=device,
            blas=blas_choice.name if device == "cpu" else "",
            parameter_count=sum(v.size for _, v in _flatten(model.parameters())),
            min_samples=min_samples,
            frame_seconds=float(model.time_ratio),
            hop_length=preprocessor.hop_length,
            win_length=preprocessor.win_length,
            n_fft=preprocessor.n_fft,
            subsampling=model.encoder_config.subsampling_factor,
            load_seconds=load_seconds,
            matmul_gflops=matmul_gflops() if device == "cpu" else 0.0,
            library_versions=_library_versions(),
        )
        log_blas(blas_choice, info)
        return cls(model, info, chunking)

    def warm_up(self) -> float:
        """Runs one inference on a second of noise so the first request pays no setup cost."""
        started = time.perf_counter()
        noise = np.random.default_rng(0).normal(0.0, 0.05, self.info.sample_rate)
        self.transcribe(noise.astype(np.float32), TranscriptionOptions())
        seconds = time.perf_counter() - started
        self.info = replace(self.info, warmup_seconds=seconds)
        return seconds

    def transcribe(self, samples: np.ndarray, options: TranscriptionOptions) -> Transcript:
        """Transcribes 1-D float32 PCM at the model's sample rate, in chunks when it is long."""
        for step in self.transcribe_steps(samples, options, segments=False):
            if step.transcript is not None:
                return step.transcript
        raise AssertionError("transcribe_steps ended without a transcript")

    def transcribe_batch(
        self, requests: list[tuple[np.ndarray, TranscriptionOptions]]
    ) -> list[Transcript]:
        """Several recordings of at most one chunk each, through the encoder together where
        their options agree; each gets what `transcribe` gives it alone (within float
        tolerance: padded frames are masked). Without the fast encoder, one at a time."""
        from parakeet_mlx.alignment import tokens_to_sentences

        from parakeet_server.engine.fast_encoder import fast_encoder_of

        limit = int(self._chunking.chunk_seconds * self.info.sample_rate)
        for samples, _ in requests:
            if len(samples) > limit:
                raise ValueError("transcribe_batch takes recordings of at most one chunk")
            self._check_length(samples)
        if len(requests) == 1 or fast_encoder_of(self._model) is None:
            return [self.transcribe(samples, options) for samples, options in requests]
        results: list[Transcript | None] = [None] * len(requests)
        groups: dict[TranscriptionOptions, list[int]] = {}
        for index, (_, options) in enumerate(requests):
            groups.setdefault(options, []).append(index)
        try:
            for options, members in groups.items():
                config = self._decoding_config(options)
                graph = self.context_graph(options.phrases)
                hypotheses = self._generate_padded([requests[i][0] for i in members], config, graph)
                for index, tokens in zip(members, hypotheses, strict=True):
                    sentences = tokens_to_sentences(tokens, config.sentence)
                    results[index] = sentences_to_transcript(sentences, options.word_timestamps)
        finally:
            self._release_memory()
        return [result for result in results if result is not None]

    def transcribe_steps(
        self, samples: np.ndarray, options: TranscriptionOptions, *, segments: bool = True
    ) -> Iterator[Progress]:
        """Transcribes in steps of one batch of chunks, yielding what each step settled.

        Each `next()` runs one batch on the model: a caller on another thread can interleave
        other work between steps, and stop early by closing the generator. With `segments`
        false, intermediate steps carry no segments (cheaper when nobody shows progress).
        """
        from parakeet_mlx.alignment import tokens_to_sentences

        self._check_length(samples)
        config = self._decoding_config(options)
        graph = self.context_graph(options.phrases)
        context = ROOT  # the phrases' state where the next chunk starts
        rate = self.info.sample_rate
        chunking = self._chunking
        chunks = plan_chunks(
            len(samples), int(chunking.chunk_seconds * rate), int(chunking.overlap_seconds * rate)
        )
        joiner = ChunkJoiner(chunks, rate)
        total_seconds = len(samples) / rate
        emitted = 0
        for first in range(0, len(chunks), chunking.batch_size):
            batch = chunks[first : first + chunking.batch_size]
            pieces = [samples[c.start : c.end] for c in batch]
            if graph is None:
                hypotheses = self._generate(pieces, config)
            else:
                # Each chunk starts in the state its predecessor had reached where it starts.
                following = [*chunks[first + 1 : first + len(batch) + 1], None]
                offsets = [
                    None if after is None else (after.start - chunk.start) / rate
                    for chunk, after in zip(batch, following, strict=False)
                ]
                hypotheses, context = self._generate_boosted(
                    pieces, config, graph, context, offsets
                )
            for tokens in hypotheses:
                joiner.add(tokens)
            if joiner.done == len(chunks):
                break
            settled: list[Segment] = []
            if segments:
                # Every sentence but the last one of the settled tokens is final: later tokens
                # can only extend the last one.
                sentences = tokens_to_sentences(joiner.tokens[: joiner.settled()], config.sentence)
                settled = list(
                    sentences_to_transcript(sentences[emitted:-1], options.word_timestamps).segments
                )
                emitted += len(settled)
            yield Progress(
                processed_seconds=batch[-1].end / rate,
                total_seconds=total_seconds,
                segments=tuple(settled),
                chunks_done=joiner.done,
                chunks_total=len(chunks),
            )
        sentences = tokens_to_sentences(joiner.tokens, config.sentence)
        transcript = sentences_to_transcript(sentences, options.word_timestamps)
        yield Progress(
            processed_seconds=total_seconds,
            total_seconds=total_seconds,
            segments=transcript.segments[emitted:],
            chunks_done=len(chunks),
            chunks_total=len(chunks),
            transcript=transcript,
        )

    def text(self, tokens: list[Any]) -> str:
        """The text of a token sequence, as the model's tokenizer writes it."""
        from parakeet_mlx.tokenizer import decode

        return str(decode([token.id for token in tokens], self._model.vocabulary)).strip()

    def samples_for_frames(self, frames: int) -> int:
        """Input samples after which the first `frames` encoder frames can be computed."""
        return self.info.samples_for_frames(frames)

    def open_stream(
        self, settings: BlockSchedule, phrases: tuple[Phrase, ...] = ()
    ) -> StreamingSession:
        """A new live stream on this model, boosting `phrases`; the model is not changed."""
        from parakeet_server.engine.streaming import StreamingSession

        shared = self._stream_tables.setdefault(settings, {})
        return StreamingSession(self._model, settings, shared, self.context_graph(phrases))

    def check_phrases(self, phrases: tuple[Phrase, ...]) -> None:
        """Compiles `phrases` for this model (kept for the requests that follow); raises
        InvalidRequest naming a phrase its vocabulary cannot write."""
        self.context_graph(phrases)

    def context_graph(self, phrases: tuple[Phrase, ...]) -> ContextGraph | None:
        """The context graph of `phrases` in this model's vocabulary (None for none)."""
        if not phrases:
            return None
        graph = self._graphs.get(phrases)
        if graph is None:
            try:
                graph = compile_phrases(phrases, self._spelling)
            except Unspellable as error:
                raise InvalidRequest(str(error)) from None
            self._graphs[phrases] = graph
            if len(self._graphs) > GRAPHS_KEPT:
                self._graphs.popitem(last=False)
        self._graphs.move_to_end(phrases)
        return graph

    def stream_block(self, session: StreamingSession, samples: np.ndarray) -> BlockResult:
        """Adds a live stream's new samples and runs its next block if it can."""
        return self.stream_blocks([(session, samples)])[0]

    def stream_blocks(self, blocks: list[tuple[StreamingSession, np.ndarray]]) -> list[BlockResult]:
        """Adds each stream's new samples, then runs the next block of every stream that has
        one, the streams together through the encoder (one block each, as stream_block)."""
        from parakeet_server.engine.streaming import step_streams

        sessions = [session for session, _ in blocks]
        for session, samples in blocks:
            session.accept(samples)
        ready = [session for session in sessions if session.pending_blocks()]
        if ready:
            step_streams(ready)
            self._blocks_since_release += 1
            if self._blocks_since_release >= RELEASE_EVERY_BLOCKS:
                self._release_memory()
        return [self._block_result(session) for session in sessions]

    def stream_finish(
        self, session: StreamingSession, samples: np.ndarray, options: TranscriptionOptions
    ) -> tuple[Transcript, BlockResult]:
        """Ends a live stream with its last samples: its transcript and final texts. Releases
        the memory the stream used."""
        try:
            session.accept(samples)
            session.finish()
            config = self._decoding_config(replace(options, decoding=DecodingMethod.GREEDY))
            transcript = session.transcript(
                config.sentence, word_timestamps=options.word_timestamps
            )
            return transcript, self._block_result(session)
        finally:
            self._release_memory()

    def release(self, handle: object) -> None:
        """Forgets a stream or stepwise transcription that will not be used again (here, in
        process, the garbage collector does it)."""

    def _block_result(self, session: StreamingSession) -> BlockResult:
        return BlockResult(
            next_block_at=session.samples_for_next_block(),
            committed_seconds=session.committed_seconds,
            committed_text=self.text(session.tokens),
            whole_text=self.text(session.tokens + session.draft),
            tokens=_timed(session.new_tokens()),
            draft=_timed(session.draft),
            decoded_seconds=session.decoded_seconds,
        )

    def memory(self) -> MemoryFigures:
        """What this process holds (MLX arrays, MLX's cache, the C heap); safe from any thread."""
        import mlx.core as mx

        in_use, free = heap_figures()
        return MemoryFigures(
            mlx_active=int(mx.get_active_memory()),
            mlx_cache=int(mx.get_cache_memory()),
            mlx_peak=int(mx.get_peak_memory()),
            heap_in_use=in_use,
            heap_free=free,
        )

    def close(self) -> None:
        """Frees the model and this thread's MLX streams; call on the model thread, last."""
        import mlx.core as mx

        del self._model
        mx.clear_cache()

    def _generate(self, pieces: list[np.ndarray], config: Any) -> list[list[Any]]:
        """Tokens of each piece; pieces of equal length run through the encoder as one batch."""
        try:
            return self._generate_batch(pieces, config)
        finally:
            # After every MLX array of the batch is gone (they are the callee's locals).
            self._release_memory()

    def _release_memory(self) -> None:
        """Gives back what MLX keeps for reuse and what glibc keeps of what MLX freed; without
        both, memory climbs with the longest inputs seen (see ops/heap.py)."""
        import mlx.core as mx

        mx.clear_cache()
        release_free_heap()
        self._blocks_since_release = 0

    def _check_length(self, samples: np.ndarray) -> None:
        if len(samples) < self.info.min_samples:
            raise InvalidRequest(
                f"audio is {len(samples) / self.info.sample_rate * 1000:.0f} ms long; "
                f"the model needs at least "
                f"{self.info.min_samples / self.info.sample_rate * 1000:.0f} ms"
            )

    def _mels(self, pieces: list[np.ndarray]) -> list[Any]:
        """Each piece's normalised log-mel features, (1, T, mels)."""
        from parakeet_server.engine.features import log_mel

        preprocessor = self._model.preprocessor_config
        return [log_mel(piece.astype(np.float32, copy=False), preprocessor) for piece in pieces]

    def _generate_padded(
        self, pieces: list[np.ndarray], config: Any, graph: ContextGraph | None
    ) -> list[list[Any]]:
        """Tokens of each piece, pieces of any length in one encoder batch (zero-padded to the
        longest; the fast encoder masks the padding by the lengths)."""
        import mlx.core as mx

        dtype = getattr(mx, self.info.dtype)
        mels = self._mels(pieces)
        lengths = mx.array([mel.shape[1] for mel in mels])
        longest = max(mel.shape[1] for mel in mels)
        batch = mx.concatenate(
            [mx.pad(mel, [(0, 0), (0, longest - mel.shape[1]), (0, 0)]) for mel in mels]
        ).astype(dtype)
        del mels
        features, feature_lengths = self._model.encoder(batch, lengths)
        mx.eval(features, feature_lengths)
        return self._decode_all(features, feature_lengths, config, graph)

    def _generate_batch(self, pieces: list[np.ndarray], config: Any) -> list[list[Any]]:
        import mlx.core as mx

        dtype = getattr(mx, self.info.dtype)
        mels = self._mels(pieces)
        batch = mx.concatenate(mels, axis=0).astype(dtype)
        del mels
        features, lengths = self._model.encoder(batch)
        mx.eval(features, lengths)
        return self._decode_all(features, lengths, config, None)

    def _decode_all(
        self, features: Any, lengths: Any, config: Any, graph: ContextGraph | None
    ) -> list[list[Any]]:
        """Each item's tokens from its encoder output (B, T, d), `lengths` frames each.

        Greedy transducer decoding (and anything boosted) runs `decoding.transducer_greedy`:
        parakeet-mlx's greedy rule, token for token (tested), but with the prediction network
        run once per emitted token instead of once per step (~10x less decoding time)."""
        from parakeet_mlx import Greedy

        if graph is not None or (isinstance(config.decoding, Greedy) and self.info.kind != "ctc"):
            return [
                self._decode_boosted(features[i : i + 1], int(lengths[i]), config, graph)
                for i in range(features.shape[0])
            ]
        decoded = self._model.decode(features, lengths, config=config)
        # Transducers answer (tokens, decoder states), CTC the tokens alone.
        hypotheses = decoded[0] if isinstance(decoded, tuple) else decoded
        return [list(tokens) for tokens in hypotheses]

    def _generate_boosted(
        self,
        pieces: list[np.ndarray],
        config: Any,
        graph: ContextGraph,
        context: int,
        offsets: Sequence[float | None],
    ) -> tuple[list[list[Any]], int]:
        """Tokens of consecutive chunks (equal lengths, one encoder batch), decoded in order
        with the phrases' state carried: each chunk starts in the state the one before had
        reached at its `offsets` seconds, where this one starts. Returns the tokens and the
        state where the chunk after the last starts."""
        import mlx.core as mx

        try:
            dtype = getattr(mx, self.info.dtype)
            batch = mx.concatenate(self._mels(pieces), axis=0).astype(dtype)
            features, lengths = self._model.encoder(batch)
            mx.eval(features, lengths)
            del batch
            hypotheses = []
            for index, offset in enumerate(offsets):
                length = int(lengths[index])
                tokens = self._decode_boosted(
                    features[index : index + 1], length, config, graph, context
                )
                hypotheses.append(tokens)
                if offset is not None:
                    context = graph.replay(context, [t.id for t in tokens if t.start < offset])
            return hypotheses, context
        finally:
            self._release_memory()

    def _decode_boosted(
        self,
        features: Any,
        length: int,
        config: Any,
        graph: ContextGraph | None,
        context: int = ROOT,
    ) -> list[Any]:
        """One recording's tokens from its encoder output (1, >= length, d), the phrases in
        `graph` boosted from state `context` (with no graph: what parakeet-mlx's decoding
        gives, bench/boosting.py's yardstick)."""
        from parakeet_mlx import Beam

        from parakeet_server.engine.decoding import DecoderState, ctc_whole, transducer_greedy

        state = DecoderState(context=context)
        if self.info.kind == "ctc":
            return ctc_whole(self._model, self._model.decoder(features)[0, :length], state, graph)
        if isinstance(config.decoding, Beam):
            if graph is not None:
                booster = self._booster(graph, context, config.decoding)
                config = replace(config, decoding=replace(config.decoding, booster=booster))
            hypotheses, _ = self._model.decode(features[:, :length], config=config)
            return list(hypotheses[0])
        return transducer_greedy(
            self._model, features[:, :length], 0, state, self.info.kind != "rnnt", graph
        )

    def _booster(self, graph: ContextGraph, context: int, beam: Any) -> Any:
        """The graph as parakeet-mlx's beam search takes it (a booster machine starting in
        `context`). Its TDT beam weighs token log-probabilities by 1 - duration_reward: the
        phrases' scores are weighed alike, so a boost means the same as in greedy decoding."""
        from parakeet_mlx.boost import Machine

        weight = 1.0 if self.info.kind == "rnnt" else 1.0 - beam.duration_reward

        def step(state: int, token: int) -> tuple[int, float]:
            following, delta = graph.advance(state, token)
            return following, delta * weight

        def at_end(state: int) -> float:
            return graph.settle(state) * weight

        return Machine(start=context, step=step, at_end=at_end)

    def _decoding_config(self, options: TranscriptionOptions) -> Any:
        from parakeet_mlx import Beam, DecodingConfig, Greedy, SentenceConfig

        sentence = SentenceConfig(
            max_words=options.max_words,
            silence_gap=options.max_silence_seconds,
            max_duration=options.max_segment_seconds,
        )
        if options.decoding is DecodingMethod.GREEDY:
            return DecodingConfig(decoding=Greedy(), sentence=sentence)
        if self.info.kind == "ctc":
            raise InvalidRequest("beam search is not available for CTC models; use greedy")
        beam = Beam(
            beam_size=options.beam_size,
            length_penalty=options.length_penalty,
            patience=options.patience,
            duration_reward=options.duration_reward,
        )
        return DecodingConfig(decoding=beam, sentence=sentence)


def _timed(tokens: list[Any]) -> tuple[TimedToken, ...]:
    """parakeet-mlx's aligned tokens as plain data (they cross the pipe to the server)."""
    return tuple(
        TimedToken(int(t.id), str(t.text), float(t.start), float(t.end), float(t.confidence))
        for t in tokens
    )


def _resolve_source(model_id: str) -> str:
    """A local directory as an absolute path, else the Hugging Face id unchanged.

    parakeet-mlx tries the hub first, so a relative local path that does not exist would be
    retried against the hub for ~24 s offline before failing.
    """
    path = Path(model_id).expanduser()
    looks_local = path.is_absolute() or model_id.startswith((".", "~")) or path.exists()
    if not looks_local:
        return model_id
    if not path.is_dir():
        raise ModelLoadError(f"model directory {path} does not exist")
    missing = [name for name in ("config.json", "model.safetensors") if not (path / name).exists()]
    if missing:
        raise ModelLoadError(
            f"model directory {path} lacks {' and '.join(missing)}; a Parakeet MLX checkpoint "
            "has config.json and model.safetensors"
        )
    return str(path.resolve())


def _describe_load_failure(model_id: str, source: str, error: Exception) -> str:
    if source == model_id and not Path(source).is_absolute():
        # parakeet-mlx falls back to reading the id as a local path when the hub fails, so
        # the FileNotFoundError it raises hides the hub's own error: report that one.
        if isinstance(error, FileNotFoundError) and error.__context__ is not None:
            error = error.__context__  # type: ignore[assignment]
        return (
            f"could not load model {model_id!r} from the Hugging Face hub "
            f"({type(error).__name__}: {error}). Check the id and the network, or pass a "
            "local directory with config.json and model.safetensors to --model"
        )
    return f"could not load model from {source}: {type(error).__name__}: {error}"


def _kind_of(model: Any) -> str:
    from parakeet_mlx import ParakeetCTC, ParakeetRNNT, ParakeetTDT, ParakeetTDTCTC

    if isinstance(model, ParakeetTDTCTC):
        return "tdt_ctc"
    if isinstance(model, ParakeetTDT):
        return "tdt"
    if isinstance(model, ParakeetRNNT):
        return "rnnt"
    if isinstance(model, ParakeetCTC):
        return "ctc"
    return "unknown"


def _flatten(tree: Any) -> list[tuple[str, Any]]:
    from mlx.utils import tree_flatten

    return cast("list[tuple[str, Any]]", tree_flatten(tree))

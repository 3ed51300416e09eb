"""The audio and transcript caches: LRU by bytes, stable keys, threads, and a disk store that
survives restarts and never serves a damaged or foreign file."""

from __future__ import annotations

import dataclasses
import os
import random
import subprocess
import sys
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from numpy.typing import NDArray

from parakeet_client.proto.parakeet.v1 import transcription_pb2 as pb
from parakeet_server.api.convert import cache_stats_to_proto
from parakeet_server.audio.decode import Encoding
from parakeet_server.cache.codec import (
    PCM_CODEC,
    TRANSCRIPT_CODEC,
    pcm_from_bytes,
    pcm_to_bytes,
    transcript_from_bytes,
    transcript_to_bytes,
)
from parakeet_server.cache.disk import FORMAT_VERSION, LOW_WATER, MAGIC, SUFFIX, DiskStore
from parakeet_server.cache.store import (
    Caches,
    CacheStats,
    LruCache,
    audio_key,
    default_cache_dir,
    resolve_cache_dir,
    transcript_key,
)
from parakeet_server.config import MIB, ServerConfig
from parakeet_server.domain import (
    DecodingMethod,
    Phrase,
    Segment,
    Transcript,
    TranscriptionOptions,
    Word,
)

Pcm = NDArray[np.float32]


def pcm(samples: int, seed: int = 0) -> Pcm:
    return np.random.default_rng(seed).standard_normal(samples).astype(np.float32)


def same_pcm(a: Pcm | None, b: Pcm) -> bool:
    return a is not None and a.dtype == b.dtype and a.tobytes() == b.tobytes()


def memory_cache(max_bytes: int) -> LruCache[Pcm]:
    return LruCache("audio", max_bytes, PCM_CODEC)


TRANSCRIPT = Transcript(
    text="héllo wörld — 你好",
    segments=(
        Segment(
            text="héllo wörld",
            start=0.1 + 0.2,
            end=1 / 3,
            confidence=0.987654321012345,
            words=(
                Word("héllo", 0.1 + 0.2, 2 / 3, 5e-324),
                Word("wörld", 2 / 3, 1e16 + 2, 1.0),
            ),
        ),
        Segment(text="你好", start=1e-310, end=123456.789, confidence=0.0),
    ),
    word_count=3,
    token_ids=(1, 2, 1023, 0),
)


# ---- the memory LRU -------------------------------------------------------------------------


def test_least_recently_used_entry_goes_first_to_stay_within_bytes() -> None:
    cache = memory_cache(1000)  # room for two 400-byte arrays
    a, b, c = pcm(100, 1), pcm(100, 2), pcm(100, 3)
    cache.put("a", a)
    cache.put("b", b)
    assert same_pcm(cache.get("a"), a)  # a is now the most recently used
    cache.put("c", c)
    assert cache.get("b") is None
    assert same_pcm(cache.get("a"), a)
    assert same_pcm(cache.get("c"), c)
    stats = cache.stats()
    assert (stats.bytes, stats.entries, stats.evictions) == (800, 2, 1)
    assert (stats.hits, stats.misses) == (3, 1)


def test_one_big_value_evicts_as_many_entries_as_it_needs() -> None:
    cache = memory_cache(1000)
    for index in range(5):
        cache.put(str(index), pcm(50, index))  # 200 bytes each: full
    cache.put("big", pcm(200))  # 800 bytes
    assert [cache.get(str(index)) is not None for index in range(5)] == [False] * 4 + [True]
    stats = cache.stats()
    assert (stats.bytes, stats.entries, stats.evictions) == (1000, 2, 4)


def test_a_value_larger_than_the_budget_is_not_cached_and_evicts_nothing() -> None:
    cache = memory_cache(1000)
    small = pcm(100)
    cache.put("small", small)
    cache.put("huge", pcm(251))  # 1004 bytes
    assert cache.get("huge") is None
    assert same_pcm(cache.get("small"), small)
    assert cache.stats() == CacheStats(max_bytes=1000, bytes=400, entries=1, hits=1, misses=1)


def test_replacing_a_key_with_a_too_big_value_drops_the_old_value() -> None:
    cache = memory_cache(1000)
    cache.put("k", pcm(100, 1))
    cache.put("k", pcm(300, 2))
    assert cache.get("k") is None
    assert (cache.stats().bytes, cache.stats().entries) == (0, 0)


def test_replacing_a_key_counts_its_bytes_once() -> None:
    cache = memory_cache(1000)
    cache.put("k", pcm(100, 1))
    newer = pcm(200, 2)
    cache.put("k", newer)
    assert same_pcm(cache.get("k"), newer)
    assert (cache.stats().bytes, cache.stats().entries, cache.stats().evictions) == (800, 1, 0)


def test_zero_bytes_turns_a_cache_off() -> None:
    cache = memory_cache(0)
    cache.put("k", pcm(10))
    assert cache.get("k") is None
    assert not cache.enabled
    assert cache.stats() == CacheStats()


def test_cached_pcm_is_read_only_so_no_request_can_change_anothers_audio() -> None:
    cache = memory_cache(1000)
    samples = pcm(10)
    cache.put("k", samples)
    cached = cache.get("k")
    assert cached is not None
    with pytest.raises(ValueError, match="read-only"):
        cached[0] = 1.0


def test_many_threads_never_see_a_wrong_value_and_the_books_balance() -> None:
    cache = memory_cache(20_000)
    keys = [f"k{index}" for index in range(64)]
    values = {key: pcm(50 + 37 * index % 400, index) for index, key in enumerate(keys)}
    for value in values.values():
        value.flags.writeable = False  # put() does this too: do it once, before the threads
    wrong: list[str] = []
    gets = 0
    gets_lock = threading.Lock()

    def hammer(seed: int) -> None:
        nonlocal gets
        rng = random.Random(seed)
        mine = 0
        for _ in range(3000):
            key = rng.choice(keys)
            if rng.random() < 0.4:
                cache.put(key, values[key])
            else:
                mine += 1
                found = cache.get(key)
                if found is not None and not same_pcm(found, values[key]):
                    wrong.append(key)
        with gets_lock:
            gets += mine

    threads = [threading.Thread(target=hammer, args=(seed,)) for seed in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert wrong == []
    stats = cache.stats()
    assert stats.hits + stats.misses == gets
    held = {key: found for key in keys if (found := cache.get(key)) is not None}
    assert stats.bytes == sum(value.nbytes for value in held.values()) <= stats.max_bytes
    assert stats.entries == len(held)
    assert stats.evictions > 0


# ---- exact codecs ---------------------------------------------------------------------------


def test_pcm_round_trips_bit_for_bit() -> None:
    special = np.array([0.0, -0.0, np.nan, np.inf, -np.inf, 1e-45, 3.4028235e38], np.float32)
    samples = np.concatenate([pcm(1000), special])
    back = pcm_from_bytes(bytes(pcm_to_bytes(samples)))
    assert same_pcm(back, samples)


def test_pcm_codec_refuses_what_is_not_mono_float32() -> None:
    with pytest.raises(ValueError, match="1-D float32"):
        pcm_to_bytes(np.zeros((2, 3), np.float32))
    with pytest.raises(ValueError, match="whole float32"):
        pcm_from_bytes(b"12345")


def test_transcript_round_trips_exactly() -> None:
    assert transcript_from_bytes(transcript_to_bytes(TRANSCRIPT)) == TRANSCRIPT
    empty = Transcript(text="")
    assert transcript_from_bytes(transcript_to_bytes(empty)) == empty


def test_transcript_codec_keeps_nan_and_numpy_floats() -> None:
    odd = Transcript(
        text="x",
        segments=(Segment("x", np.float32(0.1), 0.5, float("nan")),),  # type: ignore[arg-type]
    )
    back = transcript_from_bytes(transcript_to_bytes(odd))
    assert back.segments[0].start == np.float32(0.1)
    assert np.isnan(back.segments[0].confidence)


@pytest.mark.parametrize(
    "payload",
    [b"", b"[]", b"not json", b'[2,"",0,[],[]]', b'[1,"",0,[1.5],[]]', b'[1,"",0,[],[["a"]]]'],
)
def test_transcript_codec_refuses_foreign_payloads(payload: bytes) -> None:
    with pytest.raises(ValueError, match="not a cached transcript"):
        transcript_from_bytes(payload)


# ---- keys -----------------------------------------------------------------------------------

RAW = {"encoding": Encoding.LINEAR16, "sample_rate": 16000, "channels": 1, "target_rate": 16000}


@pytest.mark.parametrize(
    ("audio", "changes"),
    [
        (b"\x00\x01" * 100 + b"\x00\x02", {}),
        (b"\x00\x01" * 101, {"encoding": Encoding.FLOAT32}),
        (b"\x00\x01" * 101, {"encoding": Encoding.CONTAINER}),
        (b"\x00\x01" * 101, {"sample_rate": 48000}),
        (b"\x00\x01" * 101, {"channels": 2}),
        (b"\x00\x01" * 101, {"target_rate": 8000}),
    ],
)
def test_audio_key_changes_with_the_bytes_and_every_format_field(
    audio: bytes, changes: dict[str, object]
) -> None:
    base = audio_key(b"\x00\x01" * 101, **RAW)  # type: ignore[arg-type]
    assert audio_key(audio, **{**RAW, **changes}) != base  # type: ignore[arg-type]
    assert audio_key(b"\x00\x01" * 101, **RAW) == base  # type: ignore[arg-type]


def test_audio_key_ignores_what_decode_audio_ignores() -> None:
    wav = b"RIFF....WAVE"
    container = {"encoding": Encoding.CONTAINER, "target_rate": 16000}
    assert audio_key(wav, sample_rate=0, channels=0, **container) == audio_key(  # type: ignore[arg-type]
        wav,
        sample_rate=44100,
        channels=2,
        **container,  # type: ignore[arg-type]
    )
    raw = {"encoding": Encoding.LINEAR16, "sample_rate": 16000, "target_rate": 16000}
    assert audio_key(b"ab", channels=0, **raw) == audio_key(b"ab", channels=1, **raw)  # type: ignore[arg-type]


def _transcript_key(**changes: object) -> str:
    arguments: dict[str, object] = {
        "model_id": "mlx-community/parakeet-tdt-0.6b-v3",
        "dtype": "float32",
        "options": TranscriptionOptions(),
        "chunk_seconds": 120.0,
        "chunk_overlap_seconds": 15.0,
        **changes,
    }
    audio = str(arguments.pop("audio", "a" * 64))
    # A heterogeneous dict of transcript_key's keywords: each value has its own type.
    return transcript_key(audio, **arguments)  # type: ignore[arg-type]


# One changed value per option; each option has its own type.
OPTION_CHANGES: dict[str, Any] = {
    "word_timestamps": True,
    "decoding": DecodingMethod.BEAM,
    "beam_size": 6,
    "length_penalty": 1.5,
    "patience": 2.0,
    "duration_reward": 0.5,
    "max_words": 10,
    "max_silence_seconds": 0.5,
    "max_segment_seconds": 10.0,
    "phrases": (Phrase("kubernetes", 5.0),),
}


@pytest.mark.parametrize(
    "changes",
    [
        {"audio": "b" * 64},
        {"model_id": "mlx-community/parakeet-tdt-1.1b"},
        {"dtype": "bfloat16"},
        {"chunk_seconds": 30.0},
        {"chunk_overlap_seconds": 5.0},
        *(
            {"options": dataclasses.replace(TranscriptionOptions(), **{name: value})}
            for name, value in OPTION_CHANGES.items()
        ),
    ],
)
def test_transcript_key_changes_with_everything_that_shapes_the_result(
    changes: dict[str, object],
) -> None:
    assert _transcript_key(**changes) != _transcript_key()
    assert _transcript_key() == _transcript_key(options=TranscriptionOptions())


def test_transcript_key_tells_boosted_phrases_and_boosts_apart() -> None:
    def key(*phrases: Phrase) -> str:
        return _transcript_key(options=TranscriptionOptions(phrases=phrases))

    keys = {
        key(),
        key(Phrase("kubernetes", 5.0)),
        key(Phrase("kubernetes", 6.0)),
        key(Phrase("Kubernetes", 5.0)),
        key(Phrase("kubernetes", 5.0), Phrase("helm", 5.0)),
    }
    assert len(keys) == 5


def test_option_changes_cover_every_option() -> None:
    assert set(OPTION_CHANGES) == {field.name for field in dataclasses.fields(TranscriptionOptions)}


def test_keys_are_the_same_in_another_process() -> None:
    program = """
from parakeet_server.audio.decode import Encoding
from parakeet_server.cache.store import audio_key, transcript_key
from parakeet_server.domain import DecodingMethod, TranscriptionOptions
a = audio_key(b"speech" * 99, encoding=Encoding.FLOAT32, sample_rate=44100, channels=2,
              target_rate=16000)
print(a)
options = TranscriptionOptions(word_timestamps=True, decoding=DecodingMethod.BEAM, patience=1.5)
print(transcript_key(a, model_id="m", dtype="float32", options=options,
                     chunk_seconds=30.0, chunk_overlap_seconds=5.0))
"""
    environ = {**os.environ, "PYTHONHASHSEED": "12345"}
    output = subprocess.run(
        [sys.executable, "-c", program], capture_output=True, text=True, check=True, env=environ
    ).stdout.split()
    local = audio_key(
        b"speech" * 99, encoding=Encoding.FLOAT32, sample_rate=44100, channels=2, target_rate=16000
    )
    remote_options = TranscriptionOptions(
        word_timestamps=True, decoding=DecodingMethod.BEAM, patience=1.5
    )
    assert output == [
        local,
        transcript_key(
            local,
            model_id="m",
            dtype="float32",
            options=remote_options,
            chunk_seconds=30.0,
            chunk_overlap_seconds=5.0,
        ),
    ]


# ---- the disk store -------------------------------------------------------------------------


def disk_caches(root: Path, disk_bytes: int = 64 * MIB) -> Caches:
    config = ServerConfig(cache_dir=str(root), disk_cache_bytes=disk_bytes)
    return Caches.from_config(config)


def only_file(root: Path) -> Path:
    (path,) = [path for path in root.iterdir() if path.suffix == SUFFIX]
    return path


def test_both_levels_survive_a_restart_exactly(tmp_path: Path) -> None:
    samples = pcm(16000)
    before = disk_caches(tmp_path)
    before.audio.put("a" * 64, samples)
    before.transcripts.put("b" * 64, TRANSCRIPT)

    after = disk_caches(tmp_path)  # a new process would build exactly this
    assert same_pcm(after.audio.get("a" * 64), samples)
    assert after.transcripts.get("b" * 64) == TRANSCRIPT
    assert after.audio.get("a" * 64) is not None  # now promoted to memory
    stats = after.audio.stats()
    assert (stats.hits, stats.disk_hits, stats.misses, stats.entries) == (2, 1, 0, 1)
    assert stats.bytes == samples.nbytes
    assert after.transcripts.stats().disk_hits == 1


def test_audio_and_transcripts_under_one_key_stay_apart_on_disk(tmp_path: Path) -> None:
    caches = disk_caches(tmp_path)
    caches.audio.put("c" * 64, pcm(10))
    fresh = disk_caches(tmp_path)
    assert fresh.transcripts.get("c" * 64) is None
    assert fresh.transcripts.stats().disk_rejected == 0


def _flip(offset: int) -> Callable[[bytes], bytes]:
    def flip(data: bytes) -> bytes:
        index = offset % len(data)
        return data[:index] + bytes([data[index] ^ 0x01]) + data[index + 1 :]

    return flip


DAMAGE: dict[str, Callable[[bytes], bytes]] = {
    "payload byte flipped": _flip(-7),
    "checksum byte flipped": _flip(30),
    "length field changed": _flip(12),
    "name byte flipped": _flip(60),
    "truncated by one byte": lambda data: data[:-1],
    "truncated inside the header": lambda data: data[:20],
    "empty": lambda data: b"",
    "one byte appended": lambda data: data + b"\x00",
    "wrong magic": lambda data: b"NOTCACHE" + data[len(MAGIC) :],
    "next format version": lambda data: (
        data[:8] + (FORMAT_VERSION + 1).to_bytes(2, "little") + data[10:]
    ),
    "garbage": lambda data: random.Random(0).randbytes(len(data)),
}


@pytest.mark.parametrize("damage", DAMAGE.values(), ids=DAMAGE.keys())
def test_a_damaged_file_is_a_miss_is_counted_and_is_deleted(
    tmp_path: Path, damage: Callable[[bytes], bytes]
) -> None:
    samples = pcm(1000)
    disk_caches(tmp_path).audio.put("d" * 64, samples)
    path = only_file(tmp_path)
    path.write_bytes(damage(path.read_bytes()))

    cache = disk_caches(tmp_path).audio
    assert cache.get("d" * 64) is None
    assert (cache.stats().misses, cache.stats().disk_rejected, cache.stats().hits) == (1, 1, 0)
    assert not path.exists()
    cache.put("d" * 64, samples)  # and the entry can be stored again
    assert same_pcm(disk_caches(tmp_path).audio.get("d" * 64), samples)


def test_a_whole_file_under_another_entrys_name_is_never_served(tmp_path: Path) -> None:
    caches = disk_caches(tmp_path)
    caches.audio.put("e" * 64, pcm(100, 1))
    caches.audio.put("f" * 64, pcm(100, 2))
    e_path = tmp_path / f"audio-{'e' * 64}{SUFFIX}"
    e_path.write_bytes((tmp_path / f"audio-{'f' * 64}{SUFFIX}").read_bytes())

    cache = disk_caches(tmp_path).audio
    assert cache.get("e" * 64) is None
    assert cache.stats().disk_rejected == 1
    assert not e_path.exists()


def test_a_checksummed_file_that_does_not_decode_is_rejected(tmp_path: Path) -> None:
    DiskStore(tmp_path, MIB).store(f"transcript-{'a' * 64}", b'{"not": "a transcript"}')
    cache = disk_caches(tmp_path).transcripts
    assert cache.get("a" * 64) is None
    assert cache.stats().disk_rejected == 1
    assert list(tmp_path.iterdir()) == []


def test_a_cache_dir_that_cannot_be_made_leaves_memory_caching_working(tmp_path: Path) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_bytes(b"")
    caches = disk_caches(blocker / "cache")  # mkdir fails: the parent is a file
    samples = pcm(100)
    caches.audio.put("a" * 64, samples)  # must not raise
    assert same_pcm(caches.audio.get("a" * 64), samples)
    assert caches.audio.get("b" * 64) is None
    stats = caches.audio.stats()
    assert (stats.disk_errors, stats.disk_rejected, stats.misses, stats.hits) == (2, 0, 1, 1)


def test_a_cache_dir_that_goes_away_costs_misses_not_errors(tmp_path: Path) -> None:
    root = tmp_path / "cache"
    caches = disk_caches(root)
    root.rmdir()
    root.write_bytes(b"now a file")
    caches.transcripts.put("a" * 64, TRANSCRIPT)
    assert disk_caches(root).transcripts.get("a" * 64) is None
    assert caches.transcripts.stats().disk_errors == 1


def test_the_disk_stays_within_its_budget_dropping_the_least_recently_used(
    tmp_path: Path,
) -> None:
    samples = {name: pcm(1000, index) for index, name in enumerate("abcd")}
    disk_caches(tmp_path).audio.put("a" * 64, samples["a"])
    file_size = only_file(tmp_path).stat().st_size
    # Three files fit even after pruning down to the low-water mark; four do not.
    budget = int(3 * file_size / LOW_WATER) + 1
    assert 4 * file_size > budget
    first = disk_caches(tmp_path, disk_bytes=budget)
    for name in "bc":
        first.audio.put(name * 64, samples[name])
    for age, name in enumerate("abc"):
        os.utime(tmp_path / f"audio-{name * 64}{SUFFIX}", (1000 + age, 1000 + age))

    second = disk_caches(tmp_path, disk_bytes=budget)
    assert second.audio.get("a" * 64) is not None  # a disk hit: "a" is now the newest
    second.audio.put("d" * 64, samples["d"])

    third = disk_caches(tmp_path, disk_bytes=budget)
    assert third.audio.get("b" * 64) is None
    for name in "acd":
        assert same_pcm(third.audio.get(name * 64), samples[name])
    assert sum(path.stat().st_size for path in tmp_path.iterdir()) <= budget


def test_memory_hits_keep_the_disk_file_fresh(tmp_path: Path) -> None:
    disk = DiskStore(tmp_path, MIB)
    cache = LruCache("audio", MIB, PCM_CODEC, disk, disk_touch_seconds=0.0)
    cache.put("a" * 64, pcm(10))
    path = only_file(tmp_path)
    os.utime(path, (1000, 1000))
    assert cache.get("a" * 64) is not None
    assert cache.stats().disk_hits == 0  # served from memory...
    assert path.stat().st_mtime > 1000  # ...yet the disk now knows it was used

    lazy = LruCache("audio", MIB, PCM_CODEC, disk)  # the default: at most once a minute
    lazy.put("b" * 64, pcm(10))
    b_path = tmp_path / f"audio-{'b' * 64}{SUFFIX}"
    os.utime(b_path, (1000, 1000))
    assert lazy.get("b" * 64) is not None
    assert b_path.stat().st_mtime == 1000


def test_an_entry_bigger_than_the_disk_budget_is_not_written(tmp_path: Path) -> None:
    caches = disk_caches(tmp_path, disk_bytes=1000)
    caches.audio.put("a" * 64, pcm(1000))
    assert list(tmp_path.iterdir()) == []
    assert caches.audio.stats().disk_errors == 0


def test_temporary_files_are_never_read_and_stale_ones_are_removed(tmp_path: Path) -> None:
    stale = tmp_path / f".tmp-dead{SUFFIX}"
    fresh = tmp_path / f".tmp-live{SUFFIX}"
    for path in (stale, fresh):
        path.write_bytes(b"half a file")
    os.utime(stale, (1000, 1000))
    caches = disk_caches(tmp_path)
    assert not stale.exists()
    assert fresh.exists()  # may be another process's write in progress
    assert caches.audio.get("a" * 64) is None
    assert caches.audio.stats().disk_rejected == 0


def test_two_instances_sharing_a_directory_never_serve_half_or_wrong_files(
    tmp_path: Path,
) -> None:
    keys = [f"{index:064x}" for index in range(24)]
    values = {key: pcm(200 + 50 * index, index) for index, key in enumerate(keys)}
    for value in values.values():
        value.flags.writeable = False
    budget = 40_000  # well under the ~150 kB of all values: pruning runs all along
    instances = [disk_caches(tmp_path, disk_bytes=budget) for _ in range(2)]
    wrong: list[str] = []

    def work(seed: int) -> None:
        rng = random.Random(seed)
        for _ in range(150):
            # a fresh memory level each time, so every get goes to the shared directory
            cache = LruCache("audio", 10 * MIB, PCM_CODEC, instances[seed % 2].disk)
            key = rng.choice(keys)
            if rng.random() < 0.5:
                cache.put(key, values[key])
            else:
                found = cache.get(key)
                if found is not None and not same_pcm(found, values[key]):
                    wrong.append(key)
                if cache.stats().disk_rejected or cache.stats().disk_errors:
                    wrong.append(f"rejected {key}")

    threads = [threading.Thread(target=work, args=(seed,)) for seed in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert wrong == []
    DiskStore(tmp_path, budget)  # one more instance measures and prunes on start
    assert sum(path.stat().st_size for path in tmp_path.iterdir()) <= budget


WRITER = """
import sys
from pathlib import Path
import numpy as np
from parakeet_server.cache.store import LruCache
from parakeet_server.cache.codec import PCM_CODEC
from parakeet_server.cache.disk import DiskStore
disk = DiskStore(Path(sys.argv[1]), int(sys.argv[2]))
for round in range(15):
    for index in range(24):
        samples = np.random.default_rng(index).standard_normal(200 + 50 * index)
        LruCache("audio", 1 << 24, PCM_CODEC, disk).put(f"{index:064x}", samples.astype(np.float32))
    if round == 0:
        print("ready", flush=True)
"""


def test_another_process_writing_the_same_entries_never_disturbs_a_reader(
    tmp_path: Path,
) -> None:
    keys = [f"{index:064x}" for index in range(24)]
    values = {key: pcm(200 + 50 * index, index) for index, key in enumerate(keys)}
    budget = 40_000
    disk = DiskStore(tmp_path, budget)
    wrong: list[str] = []
    hits = 0
    with subprocess.Popen(
        [sys.executable, "-c", WRITER, str(tmp_path), str(budget)],
        stdout=subprocess.PIPE,
        text=True,
    ) as writer:
        assert writer.stdout is not None
        assert writer.stdout.readline() == "ready\n"
        while writer.poll() is None:
            for key in keys:
                cache = LruCache("audio", 10 * MIB, PCM_CODEC, disk)
                found = cache.get(key)
                hits += found is not None
                if found is not None and not same_pcm(found, values[key]):
                    wrong.append(key)
                if cache.stats().disk_rejected or cache.stats().disk_errors:
                    wrong.append(f"rejected {key}")
    assert writer.returncode == 0
    assert wrong == []
    assert hits > 0


# ---- configuration and the proto ------------------------------------------------------------


def test_default_config_caches_in_memory_only() -> None:
    caches = Caches.from_config(ServerConfig())
    assert caches.disk is None
    assert caches.audio.max_bytes == 512 * MIB
    assert caches.transcripts.max_bytes == 64 * MIB


def test_cache_dir_default_means_the_xdg_cache_home(tmp_path: Path) -> None:
    environ = {"XDG_CACHE_HOME": str(tmp_path)}
    caches = Caches.from_config(ServerConfig(cache_dir="default"), environ)
    assert caches.disk is not None
    assert caches.disk.root == tmp_path / "parakeet-server"
    assert caches.disk.root.is_dir()
    assert default_cache_dir({}) == Path.home() / ".cache" / "parakeet-server"
    assert default_cache_dir({"XDG_CACHE_HOME": "relative"}) == default_cache_dir({})
    assert resolve_cache_dir("") is None


def test_zero_bytes_turn_levels_and_the_disk_off(tmp_path: Path) -> None:
    off = ServerConfig(cache_dir=str(tmp_path / "x"), audio_cache_bytes=0, transcript_cache_bytes=0)
    caches = Caches.from_config(off)
    assert caches.disk is None
    assert not caches.audio.enabled
    assert not caches.transcripts.enabled
    assert not (tmp_path / "x").exists()
    no_disk = ServerConfig(cache_dir=str(tmp_path / "y"), disk_cache_bytes=0)
    assert Caches.from_config(no_disk).disk is None


def test_cache_stats_reach_the_proto_field_for_field() -> None:
    stats = CacheStats(1, 2, 3, 4, 5, 6, 7, 8, 9)
    assert cache_stats_to_proto(stats) == pb.CacheStats(
        max_bytes=1,
        bytes=2,
        entries=3,
        hits=4,
        misses=5,
        evictions=6,
        disk_hits=7,
        disk_rejected=8,
        disk_errors=9,
    )
    proto_fields = {field.name for field in pb.CacheStats.DESCRIPTOR.fields}
    assert proto_fields == {field.name for field in dataclasses.fields(CacheStats)}


def test_transcripts_go_through_the_same_lru(tmp_path: Path) -> None:
    size = len(transcript_to_bytes(TRANSCRIPT))
    cache = LruCache("transcript", 2 * size, TRANSCRIPT_CODEC)
    for name in "abc":
        cache.put(name, TRANSCRIPT)
    assert cache.get("a") is None
    assert cache.get("c") == TRANSCRIPT
    assert cache.stats().bytes == 2 * size

"""Real speech for tests: espeak-ng speaks a sentence, ffmpeg turns it into every container."""

from __future__ import annotations

import subprocess
from pathlib import Path

# Container suffix -> ffmpeg output options; "s16le"/"f32le" are headerless raw PCM.
FORMATS: dict[str, list[str]] = {
    "wav": ["-c:a", "pcm_s16le", "-f", "wav"],
    "flac": ["-c:a", "flac", "-f", "flac"],
    "ogg": ["-c:a", "libvorbis", "-f", "ogg"],
    "opus": ["-c:a", "libopus", "-f", "ogg"],
    "mp3": ["-c:a", "libmp3lame", "-f", "mp3"],
    "m4a": ["-c:a", "aac", "-f", "ipod"],
    "s16le": ["-c:a", "pcm_s16le", "-f", "s16le"],
    "f32le": ["-c:a", "pcm_f32le", "-f", "f32le"],
}

# libopus takes only these input rates (with no rate given, ffmpeg picks the nearest).
OPUS_RATES = (8000, 12000, 16000, 24000, 48000)


def speak(text: str, path_wav: str | Path, voice: str = "en-us", speed: int | None = None) -> Path:
    """Write `text` spoken by espeak-ng to a mono 16-bit WAV file at its native 22.05 kHz."""
    cmd = ["espeak-ng", "-v", voice, "-w", str(path_wav)]
    if speed is not None:
        cmd += ["-s", str(speed)]
    subprocess.run([*cmd, text], check=True, capture_output=True)
    return Path(path_wav)


def convert(
    src: str | Path,
    dst: str | Path,
    *,
    rate: int | None = None,
    channels: int | None = None,
) -> Path:
    """Convert `src` to `dst`; the format comes from dst's suffix (a key of FORMATS)."""
    dst = Path(dst)
    fmt = dst.suffix.lstrip(".")
    if fmt not in FORMATS:
        raise ValueError(f"unknown format {fmt!r}; expected one of {sorted(FORMATS)}")
    if fmt == "opus" and rate is not None and rate not in OPUS_RATES:
        raise ValueError(f"Opus encodes at {OPUS_RATES} Hz, not {rate}")
    cmd = ["ffmpeg", "-nostdin", "-hide_banner", "-loglevel", "error", "-y", "-i", str(src)]
    if rate is not None:
        cmd += ["-ar", str(rate)]
    if channels is not None:
        cmd += ["-ac", str(channels)]
    # Source tags would only add noise to tests that look at headers.
    cmd += ["-map_metadata", "-1", *FORMATS[fmt], str(dst)]
    subprocess.run(cmd, check=True, capture_output=True)
    return dst

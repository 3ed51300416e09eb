"""Flags, their PARAKEET_* environment twins, and the defaults."""

from __future__ import annotations

import pytest

from parakeet_server.config import MIB, ServerConfig, parse_config
from parakeet_server.domain import DEFAULT_MODEL


def test_defaults_serve_the_real_model_on_50051() -> None:
    config = parse_config([], environ={})
    assert config == ServerConfig()
    assert config.model == DEFAULT_MODEL == "mlx-community/parakeet-tdt-0.6b-v3"
    assert config.port == 50051
    assert config.dtype == "auto"


def test_environment_sets_and_flags_override() -> None:
    environ = {"PARAKEET_PORT": "6000", "PARAKEET_MODEL": "/models/a", "PARAKEET_DTYPE": "bfloat16"}
    config = parse_config(["--model", "/models/b"], environ=environ)
    assert config.port == 6000
    assert config.model == "/models/b"
    assert config.dtype == "bfloat16"


def test_every_flag_names_its_environment_variable(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        parse_config(["--help"], environ={})
    help_text = capsys.readouterr().out
    for name in ServerConfig.__dataclass_fields__:
        assert f"PARAKEET_{name.upper()}" in help_text


@pytest.mark.parametrize(
    ("argv", "environ", "message"),
    [
        (["--port", "70000"], {}, "port must be"),
        ([], {"PARAKEET_PORT": "abc"}, "PARAKEET_PORT"),
        (["--dtype", "int8"], {}, "invalid choice"),
        ([], {"PARAKEET_LOG_FORMAT": "xml"}, "PARAKEET_LOG_FORMAT must be one of"),
        (["--chunk-overlap-seconds", "100"], {}, "chunk overlap"),
        (["--audio-cache-bytes", "-1"], {}, "cache sizes must not be negative"),
        ([], {"PARAKEET_DISK_CACHE_BYTES": "2G"}, "PARAKEET_DISK_CACHE_BYTES"),
    ],
)
def test_bad_values_are_usage_errors(
    argv: list[str], environ: dict[str, str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exited:
        parse_config(argv, environ=environ)
    assert exited.value.code == 2
    assert message in capsys.readouterr().err


def test_cache_flags_and_their_environment_twins() -> None:
    defaults = parse_config([], environ={})
    assert (defaults.audio_cache_bytes, defaults.transcript_cache_bytes) == (512 * MIB, 64 * MIB)
    assert (defaults.cache_dir, defaults.disk_cache_bytes) == ("", 2048 * MIB)
    environ = {"PARAKEET_CACHE_DIR": "default", "PARAKEET_TRANSCRIPT_CACHE_BYTES": "0"}
    config = parse_config(
        ["--audio-cache-bytes", "1000", "--disk-cache-bytes", "5000"], environ=environ
    )
    assert config.audio_cache_bytes == 1000
    assert config.transcript_cache_bytes == 0
    assert config.cache_dir == "default"
    assert config.disk_cache_bytes == 5000
    assert (
        parse_config(["--cache-dir", "/var/cache/x"], environ=environ).cache_dir == "/var/cache/x"
    )


def test_ipv6_hosts_are_bracketed() -> None:
    assert ServerConfig(host="::1", port=1).address == "[::1]:1"
    assert ServerConfig(host="127.0.0.1", port=1).address == "127.0.0.1:1"


def test_help_shows_real_defaults_and_cites_files_that_exist(
    capsys: pytest.CaptureFixture[str],
) -> None:
    import re
    from pathlib import Path

    with pytest.raises(SystemExit):
        parse_config(["--help"], environ={})
    help_text = " ".join(capsys.readouterr().out.split())
    assert "None" not in help_text
    assert "default 50051" in help_text
    root = Path(__file__).resolve().parents[1]
    cited = re.findall(r"\b(?:bench|tools|deploy)/[\w./-]+\.\w+", help_text)
    assert cited, "the help cites the chunk-batch benchmark"
    assert all((root / path).exists() for path in cited), cited

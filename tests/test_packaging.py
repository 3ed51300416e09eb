"""The client distribution stands alone: its wheel holds `parakeet_client` and the generated stubs
under it (never a top-level `parakeet`, another PyPI project's name) and requires grpcio and
protobuf, never MLX or the server; the server requires the client. The stubs keep the contract's
own names (file, package, services), which reflection and every other client see."""

from __future__ import annotations

import email.parser
import importlib.metadata
import shutil
import subprocess
import sys
import zipfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from google.protobuf import descriptor_pool
from packaging.requirements import Requirement

import parakeet_client
from parakeet_client.proto.parakeet.v1 import transcription_pb2 as pb
from parakeet_client.proto.parakeet.v1 import transcription_pb2_grpc as pb_grpc

CLIENT = Path(__file__).resolve().parent.parent / "client"
STUBS = "parakeet_client/proto/parakeet/v1"
# Distributions only the server may pull in.
SERVER_ONLY = {"mlx", "parakeet-mlx", "parakeet-server", "soxr", "prometheus-client"}
# Modules the bare client (`transcribe`, `info`, `--help`) must not import.
HEAVY_MODULES = (
    "numpy",
    "soundfile",
    "av",
    "sounddevice",
    "mlx",
    "parakeet_mlx",
    "parakeet_server",
    "soxr",
)


@pytest.fixture(scope="module")
def client_wheel(tmp_path_factory: pytest.TempPathFactory) -> Iterator[zipfile.ZipFile]:
    """The client's wheel, built from a copy of client/ (proving it needs nothing outside it)
    without build isolation, so offline, with the setuptools of this environment."""
    source = tmp_path_factory.mktemp("client") / "client"
    skip = shutil.ignore_patterns("go", "build", "__pycache__", "*.egg-info")
    shutil.copytree(CLIENT, source, ignore=skip)
    out = tmp_path_factory.mktemp("wheel")
    pip_wheel = [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q"]
    subprocess.run(
        [*pip_wheel, "--wheel-dir", str(out), str(source)],
        check=True,
        timeout=120,
    )
    [wheel] = out.glob("parakeet_client-*.whl")
    with zipfile.ZipFile(wheel) as archive:
        yield archive


def _requirements(client_wheel: zipfile.ZipFile) -> list[Requirement]:
    [metadata] = [n for n in client_wheel.namelist() if n.endswith(".dist-info/METADATA")]
    message = email.parser.Parser().parsestr(client_wheel.read(metadata).decode())
    return [Requirement(line) for line in message.get_all("Requires-Dist") or []]


def test_client_wheel_holds_only_parakeet_client_with_the_stubs_inside(
    client_wheel: zipfile.ZipFile,
) -> None:
    names = client_wheel.namelist()
    assert {name.split("/")[0] for name in names} == {
        "parakeet_client",
        f"parakeet_client-{parakeet_client.__version__}.dist-info",
    }
    for stub in ("transcription_pb2.py", "transcription_pb2.pyi", "transcription_pb2_grpc.py"):
        assert f"{STUBS}/{stub}" in names
    assert "parakeet_client/py.typed" in names
    assert not [name for name in names if name.startswith("parakeet/")]


def test_client_wheel_requires_grpcio_and_protobuf_and_nothing_of_the_server(
    client_wheel: zipfile.ZipFile,
) -> None:
    requirements = _requirements(client_wheel)
    assert {r.name for r in requirements if r.marker is None} == {"grpcio", "protobuf"}
    assert not {r.name for r in requirements} & SERVER_ONLY
    audio = {r.name for r in requirements if r.marker and r.marker.evaluate({"extra": "audio"})}
    assert {"numpy", "soundfile", "av"} <= audio


def test_the_server_requires_the_client_and_admits_its_version() -> None:
    requirements = [Requirement(r) for r in importlib.metadata.requires("parakeet-server") or []]
    [client] = [r for r in requirements if r.name == "parakeet-client" and r.marker is None]
    assert client.specifier.contains(parakeet_client.__version__)
    client_requires = importlib.metadata.requires("parakeet-client") or []
    assert not {Requirement(r).name for r in client_requires} & SERVER_ONLY


def test_bare_client_cli_imports_nothing_heavy() -> None:
    blocked = "; ".join(f"sys.modules[{name!r}] = None" for name in HEAVY_MODULES)
    code = f"import sys; {blocked}; from parakeet_client import cli; sys.exit(cli.main(['--help']))"
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=False
    )
    assert result.returncode == 0, result.stderr
    assert "transcribe" in result.stdout


def test_stubs_keep_the_contracts_file_package_and_service_names() -> None:
    assert pb.DESCRIPTOR.name == "parakeet/v1/transcription.proto"
    assert pb.DESCRIPTOR.package == "parakeet.v1"
    found = descriptor_pool.Default().FindFileByName("parakeet/v1/transcription.proto")
    assert found.name == pb.DESCRIPTOR.name
    assert pb.DESCRIPTOR.services_by_name["TranscriptionService"].full_name == (
        "parakeet.v1.TranscriptionService"
    )
    assert pb.TranscribeRequest.DESCRIPTOR.full_name == "parakeet.v1.TranscribeRequest"
    # The Python side is ours: classes name their real module, the gRPC stub imports it from there.
    assert pb.TranscribeRequest.__module__ == "parakeet_client.proto.parakeet.v1.transcription_pb2"
    assert vars(pb_grpc)["parakeet_dot_v1_dot_transcription__pb2"] is pb

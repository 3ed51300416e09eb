"""parakeet-client: a command-line client for parakeet-server, and the generated Python stubs of
its contract in `parakeet_client.proto.parakeet.v1`."""

__version__ = "0.1.0"

__all__ = ["__version__"]

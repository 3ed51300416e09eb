"""parakeet-server: a gRPC speech-transcription server for NVIDIA Parakeet models on MLX."""

__version__ = "0.1.0"

__all__ = ["__version__"]

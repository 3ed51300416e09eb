"""parakeet-client: a command-line client for parakeet-server."""

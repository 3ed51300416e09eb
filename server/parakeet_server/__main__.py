"""`parakeet-server` and `python -m parakeet_server`: flags and environment -> serve()."""

from __future__ import annotations

import asyncio
import sys

from parakeet_server.config import parse_config
from parakeet_server.engine.runtime import use_fast_blas
from parakeet_server.ops.logs import configure_logging


def main(argv: list[str] | None = None) -> int:
    config = parse_config(argv)
    # Before anything imports mlx: an optimized BLAS must be loaded first to take effect.
    use_fast_blas(config.blas)
    configure_logging(config.log_level, config.log_format)
    from parakeet_server.api.server import serve

    return asyncio.run(serve(config))


if __name__ == "__main__":
    sys.exit(main())

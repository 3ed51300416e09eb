"""Reading a server's Prometheus endpoint the way Prometheus does: HTTP, then the text format."""

from __future__ import annotations

import re
import time
import urllib.request
from collections.abc import Callable

from prometheus_client.parser import text_string_to_metric_families

from parakeet_server.testing.launcher import RunningServer

_METRICS = re.compile(r"metrics address=(\S+)")

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def scrape(server: RunningServer) -> Samples:
    """Every sample the server's metrics endpoint serves now, by name and labels."""
    address = _METRICS.search(server.log())
    assert address is not None, server.log()
    with urllib.request.urlopen(f"http://{address.group(1)}/metrics", timeout=10) as response:
        text = response.read().decode()
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


def delta(before: Samples, after: Samples, name: str, **labels: str) -> float:
    return value(after, name, **labels) - value(before, name, **labels)


def scrape_until(
    server: RunningServer, ready: Callable[[Samples], bool], timeout: float = 10.0
) -> Samples:
    """Scrapes until `ready` holds (or the timeout passes), and returns that scrape.

    An aborted call's status reaches the client while its handler is still unwinding, so its
    count may land a moment after the client has seen the error.
    """
    deadline = time.monotonic() + timeout
    while True:
        samples = scrape(server)
        if ready(samples) or time.monotonic() > deadline:
            return samples
        time.sleep(0.05)

"""`--phrase TEXT[:BOOST]` and `--phrases-file`: the words and phrases a request boosts."""

from __future__ import annotations

import argparse
import math
from pathlib import Path

from parakeet_client.proto.parakeet.v1 import transcription_pb2 as pb

# What a phrase given without a boost gets: in the range that recovers most misheard words
# while adding almost no unspoken ones (docs/boosting.md has the measurements).
DEFAULT_BOOST = 8.0


def add_phrase_flags(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("phrase boosting")
    group.add_argument(
        "--phrase",
        action="append",
        default=[],
        metavar="TEXT[:BOOST]",
        help="a word or phrase to favour (names, jargon), with an optional boost in (0, 20] "
        f"(default {DEFAULT_BOOST:g}); repeat for more",
    )
    group.add_argument(
        "--phrases-file",
        metavar="PATH",
        help="phrases to favour, one per line as TEXT[:BOOST]; empty lines and lines starting "
        "with # are skipped",
    )


def parse_phrase(value: str) -> pb.Phrase:
    """`TEXT` or `TEXT:BOOST` (a colon not followed by a number belongs to the text)."""
    text, colon, boost = value.rpartition(":")
    if colon:
        try:
            number = float(boost)
        except ValueError:
            pass
        else:
            if not math.isfinite(number) or not 0 < number <= 20:
                raise ValueError(f"phrase {value!r}: the boost must be in (0, 20], not {boost}")
            text = text.strip()
            if not text:
                raise ValueError(f"phrase {value!r} has no text before its boost")
            return pb.Phrase(text=text, boost=number)
    if not value.strip():
        raise ValueError("a phrase is empty")
    return pb.Phrase(text=value.strip(), boost=DEFAULT_BOOST)


def phrases_of(args: argparse.Namespace) -> list[pb.Phrase]:
    """The phrases of --phrase and --phrases-file; raises OSError or ValueError saying why
    they cannot be used."""
    phrases = [parse_phrase(value) for value in args.phrase]
    if args.phrases_file:
        try:
            lines = Path(args.phrases_file).read_text().splitlines()
        except OSError as error:
            raise OSError(f"cannot read {args.phrases_file}: {error.strerror}") from None
        for number, line in enumerate(lines, start=1):
            if not line.strip() or line.lstrip().startswith("#"):
                continue
            try:
                phrases.append(parse_phrase(line))
            except ValueError as error:
                raise ValueError(f"{args.phrases_file}:{number}: {error}") from None
    return phrases

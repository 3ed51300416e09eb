"""Phrase boosting: the phrases' token sequences as a context graph for shallow fusion.

Plain Python and numpy (no MLX), so that it is tested without a model. The decoders
(decoding.py, and parakeet-mlx's beam search through model.py) ask the graph, at each step,
what each token would gain from the state the hypothesis is in:

- the graph is a trie of token sequences with Aho-Corasick failure links, so a match can
  start at any token and a broken match falls back to the longest phrase prefix that still
  ends the text decoded so far (the idea of sherpa-onnx's context graph and NeMo's boosting
  tree);
- every token that extends a match gains its phrase's per-token score (`boost` x
  NATS_PER_BOOST, in nats of log-probability);
- a match that breaks off gives back what it gained since the last phrase it completed
  (`advance`'s delta is negative then), so that only whole phrases keep their credit; a
  hypothesis that ends inside a match gives it back too (`settle`). Beam search ranks its
  hypotheses with these scores;
- greedy decoding keeps no score to take anything back from: it adds each token's gain
  (`gains`) to that token's log-probability when choosing, and follows the same states.

A state is an int (the trie node), so it is carried across the blocks of a stream, the chunks of
a long recording and the hypotheses of a beam for free.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np

from parakeet_server.domain import Phrase

ROOT = 0
# A phrase's boost b gives each of its tokens b * NATS_PER_BOOST nats while it is matched:
# the largest boost, 20, is 5 nats a token, which makes a phrase win against a word the model
# is fairly sure of; the measured trade-off is in docs/boosting.md.
NATS_PER_BOOST = 0.25
# The word-start mark of SentencePiece pieces, which parakeet-mlx's vocabularies keep.
WORD_START = "\u2581"


class ContextGraph:
    """A trie of token sequences, each with a per-token score, and its failure links."""

    def __init__(self, paths: Iterable[tuple[Sequence[int], float]]) -> None:
        self._children: list[dict[int, int]] = [{}]
        self._parent: list[int] = [ROOT]
        self._score: list[float] = [0.0]  # what the token into this node gains
        self._end: list[bool] = [False]
        for tokens, score in paths:
            if not tokens or score <= 0:
                continue
            node = ROOT
            for token in tokens:
                child = self._children[node].get(token)
                if child is None:
                    child = len(self._children)
                    self._children[node][token] = child
                    self._children.append({})
                    self._parent.append(node)
                    self._score.append(score)
                    self._end.append(False)
                else:  # a prefix shared by several phrases gains the most any of them gives
                    self._score[child] = max(self._score[child], score)
                node = child
            self._end[node] = True
        size = len(self._children)
        # credit: what a match up to the node has gained; banked: the part of it that whole
        # phrases ending on the way (or here) keep even when the match breaks off later.
        self._credit = [0.0] * size
        self._banked = [0.0] * size
        self._fail = [ROOT] * size
        queue = deque([ROOT])
        while queue:
            node = queue.popleft()
            for token, child in self._children[node].items():
                self._credit[child] = self._credit[node] + self._score[child]
                self._banked[child] = (
                    self._credit[child] if self._end[child] else self._banked[node]
                )
                if node != ROOT:
                    self._fail[child] = self._goto(self._fail[node], token)
                queue.append(child)
        # A state gains what the first state along its failure links with children gains (a
        # completed phrase with no longer one after it gains what the root does).
        self._gain_state = list(range(size))
        queue = deque([ROOT])
        while queue:
            node = queue.popleft()
            if not self._children[node] and node != ROOT:
                self._gain_state[node] = self._gain_state[self._fail[node]]
            queue.extend(self._children[node].values())
        self._gains: dict[int, tuple[np.ndarray, np.ndarray]] = {}
        # Every token of every phrase, and the most any token gains: a frame where none of
        # them could win even with that gain needs no look at the graph.
        self.tokens = np.array(
            sorted({token for children in self._children for token in children}), dtype=np.int64
        )
        self.largest_gain = max(self._score)

    @property
    def size(self) -> int:
        """Nodes, the root included."""
        return len(self._children)

    def _goto(self, state: int, token: int) -> int:
        while True:
            child = self._children[state].get(token)
            if child is not None:
                return child
            if state == ROOT:
                return ROOT
            state = self._fail[state]

    def next_state(self, state: int, token: int) -> int:
        """The state after `token` (a non-blank token the decoder emitted)."""
        return self._goto(state, token)

    def replay(self, state: int, tokens: Iterable[int]) -> int:
        """The state after emitting `tokens` from `state`."""
        for token in tokens:
            state = self._goto(state, token)
        return state

    def at_risk(self, state: int) -> float:
        """What the match in progress has gained and would give back if it broke off now."""
        return self._credit[state] - self._banked[state]

    def advance(self, state: int, token: int) -> tuple[int, float]:
        """The state after `token` and the score it adds: its gain when it extends the match,
        else what the new match has gained minus what the broken one gives back."""
        following = self._goto(state, token)
        if following != ROOT and self._parent[following] == state:
            return following, self._score[following]
        return following, self._credit[following] - self.at_risk(state)

    def settle(self, state: int) -> float:
        """The score a hypothesis ending in `state` adds: the unfinished match given back."""
        return -self.at_risk(state)

    def gain_state(self, state: int) -> int:
        """The state whose `gains` are those of `state` (to share what is computed from them)."""
        return self._gain_state[state]

    def gains(self, state: int) -> tuple[np.ndarray, np.ndarray]:
        """The tokens that extend or start a match from `state`, and what each gains (for
        greedy decoding; every other token gains nothing)."""
        state = self._gain_state[state]
        found = self._gains.get(state)
        if found is None:
            chain = [state]
            while chain[-1] != ROOT:
                chain.append(self._fail[chain[-1]])
            merged: dict[int, int] = {}
            for node in reversed(chain):  # the deepest match for a token wins
                merged.update(self._children[node])
            ids = np.fromiter(merged.keys(), dtype=np.int64, count=len(merged))
            values = np.array([self._score[n] for n in merged.values()], dtype=np.float32)
            found = self._gains[state] = (ids, values)
        return found


@dataclass(frozen=True)
class Spelling:
    """How a vocabulary of SentencePiece-style pieces writes text."""

    index: dict[str, int]
    longest: int
    cased: bool

    @classmethod
    def of(cls, vocabulary: Sequence[str]) -> Spelling:
        index: dict[str, int] = {}
        for token, piece in enumerate(vocabulary):
            index.setdefault(piece, token)
        return cls(
            index=index,
            longest=max((len(piece) for piece in vocabulary), default=1),
            cased=any(char.isupper() for piece in vocabulary for char in piece),
        )

    def forms(self, text: str) -> list[str]:
        """The ways the model may write `text`: on a cased model as written, lower-cased,
        capitalised (first in a sentence) and in title case; else lower-cased."""
        words = text.split()
        if not self.cased:
            return [" ".join(words).lower()]
        written = " ".join(words)
        forms = [
            written,
            written.lower(),
            written[:1].upper() + written[1:],
            " ".join(word[:1].upper() + word[1:] for word in words),
        ]
        return list(dict.fromkeys(forms))

    def spellings(self, text: str) -> list[tuple[int, ...]]:
        """Token sequences of `text` (each form of it): the fewest pieces, and the longest
        piece first where that differs. Empty when no form can be spelled."""
        out: list[tuple[int, ...]] = []
        for form in self.forms(text):
            for spell in (self._fewest, self._longest_first):
                tokens: list[int] = []
                for word in form.split():
                    pieces = spell(WORD_START + word)
                    if pieces is None:
                        break
                    tokens += pieces
                else:
                    out.append(tuple(tokens))
        return list(dict.fromkeys(out))

    def _fewest(self, word: str) -> list[int] | None:
        best: list[list[int] | None] = [[]] + [None] * len(word)
        for end in range(1, len(word) + 1):
            for start in range(max(0, end - self.longest), end):
                before = best[start]
                token = self.index.get(word[start:end])
                if before is None or token is None:
                    continue
                current = best[end]
                if current is None or len(before) + 1 < len(current):
                    best[end] = [*before, token]
        return best[-1]

    def _longest_first(self, word: str) -> list[int] | None:
        tokens: list[int] = []
        start = 0
        while start < len(word):
            for end in range(min(len(word), start + self.longest), start, -1):
                token = self.index.get(word[start:end])
                if token is not None:
                    tokens.append(token)
                    start = end
                    break
            else:
                return None
        return tokens


class Unspellable(ValueError):
    """A phrase that no sequence of the model's tokens writes."""

    def __init__(self, index: int, text: str) -> None:
        super().__init__(
            f"options.phrases[{index}] {text!r} cannot be written with this model's vocabulary "
            "(the model could never output it); remove it or write it as the model would"
        )


def compile_phrases(phrases: Sequence[Phrase], spelling: Spelling) -> ContextGraph:
    """The context graph of `phrases` in the model's vocabulary; raises Unspellable."""
    paths: list[tuple[tuple[int, ...], float]] = []
    for index, phrase in enumerate(phrases):
        spellings = spelling.spellings(phrase.text)
        if not spellings:
            raise Unspellable(index, phrase.text)
        paths += [(tokens, phrase.boost * NATS_PER_BOOST) for tokens in spellings]
    return ContextGraph(paths)

"""Local search that improves an extractive summary on the real objective: the embedding of its reconstruction.

The greedy stage of :func:`memory.compression.semantic.extractive_summary` ranks sentences by a proxy (the
length-weighted sum of sentence embeddings), which ignores how the encoder reads sentences together in chunks.
:func:`refine_selection` starts from the greedy choice and, for up to ``steps`` rounds, scores every move in one
batch on the real document embedding of the rendered reconstruction (summary in conversation order, then the
entities it lacks) and takes the best: add a sentence that fits, drop one, or swap one chosen sentence for one of
the most relevant unchosen ones that fits. It stops when no move gains. The defaults (4 rounds, 8 additions, 3
swaps) take most of the cosine gain of a longer search at a fraction of its time; the measurements behind them
are in ``docs/benchmarks/design_figures.md``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np

__all__ = ["SearchSpace", "refine_selection"]


class SearchSpace:
    """What a move needs: the sentences, their unit embeddings, the target and how to score and size drafts.

    Args:
        sentences: the candidate sentences, in conversation order.
        vectors: their embeddings ``[n, d]`` (L2-normalised).
        target: the original's document embedding (L2-normalised).
        fits: whether a summary text meets the byte budget.
        score: real cosines to ``target`` of a batch of summary texts (reconstructions rendered inside).
    """

    def __init__(self, sentences: Sequence[str], vectors: np.ndarray, target: np.ndarray,
                 fits: Callable[[str], bool], score: Callable[[list[str]], np.ndarray]) -> None:
        self.sentences = list(sentences)
        self.relevance = np.asarray(vectors, dtype=np.float32) @ np.asarray(target, dtype=np.float32)
        self.fits = fits
        self.score = score

    def text(self, chosen: frozenset[int]) -> str:
        """The summary of ``chosen``: its sentences in conversation order, one per line."""
        return "\n".join(self.sentences[i] for i in sorted(chosen))


def _moves(space: SearchSpace, chosen: frozenset[int], adds: int, swaps: int) -> list[frozenset[int]]:
    outside = [i for i in np.argsort(-space.relevance) if int(i) not in chosen][:adds]
    moves = [chosen | {int(a)} for a in outside]
    for drop in chosen:
        if len(chosen) > 1:
            moves.append(chosen - {drop})
        moves += [(chosen - {drop}) | {int(a)} for a in outside[:swaps]]
    return [m for m in dict.fromkeys(moves) if space.fits(space.text(m))]


def refine_selection(space: SearchSpace, chosen: Sequence[int], *, steps: int = 4, adds: int = 8,
                     swaps: int = 3) -> tuple[frozenset[int], float]:
    """Best-improvement local search from ``chosen``; returns the selection and its real cosine.

    ``adds`` is how many of the most relevant unchosen sentences are tried as additions, ``swaps`` how many of
    them replace each chosen sentence. Every move's draft must satisfy ``space.fits``.
    """
    current = frozenset(int(i) for i in chosen)
    best = float(space.score([space.text(current)])[0]) if current else -2.0
    for _ in range(max(steps, 0)):
        moves = _moves(space, current, adds, swaps)
        if not moves:
            break
        scores = space.score([space.text(m) for m in moves])
        pick = int(np.argmax(scores))
        if float(scores[pick]) <= best + 1e-4:
            break
        current, best = moves[pick], float(scores[pick])
    return current, best

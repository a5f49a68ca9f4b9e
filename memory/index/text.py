"""In-memory BM25 over an inverted index of content tokens, searched exactly with MaxScore pruning.

Tokens: lower-cased runs of letters/digits/underscore (like Lance's ``simple`` tokenizer), at most 40
characters, English stop words removed (NLTK's list: question words and auxiliaries carry no topic), then a
light suffix stemmer (:func:`stem`) maps inflections to one term ("paints", "painted", "painting" -> "paint").
The stemmer runs on the vocabulary, once per distinct word, never per token. Postings are a
term-major CSR of (slot, term frequency) sorted by slot, plus a small delta of rows added since, merged
back when it grows. Scores are BM25 (k1, b) with idf = ln(1 + (N - df + 0.5) / (df + 0.5)) over live rows.

MaxScore: query terms are taken rarest first; each term's contribution is at most idf * (k1 + 1). Once the
n-th best partial score reaches the bound of all terms not yet read, no unseen row can enter the top n, so the
remaining (common) terms are only looked up for the rows already found instead of scanned in full.
"""

from __future__ import annotations

import functools
import re
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from memory.index.rows import GrowArray

__all__ = ["STOP_WORDS", "TextIndex", "stem", "tokenize"]

# NLTK's English stop words (contractions split by the tokenizer: "don't" -> "don", "t")
STOP_WORDS = (
    "i", "me", "my", "myself", "we", "our", "ours", "ourselves", "you", "your", "yours", "yourself", "yourselves",
    "he", "him", "his", "himself", "she", "her", "hers", "herself", "it", "its", "itself", "they", "them", "their",
    "theirs", "themselves", "what", "which", "who", "whom", "this", "that", "these", "those", "am", "is", "are",
    "was", "were", "be", "been", "being", "have", "has", "had", "having", "do", "does", "did", "doing", "a", "an",
    "the", "and", "but", "if", "or", "because", "as", "until", "while", "of", "at", "by", "for", "with", "about",
    "against", "between", "into", "through", "during", "before", "after", "above", "below", "to", "from", "up",
    "down", "in", "out", "on", "off", "over", "under", "again", "further", "then", "once", "here", "there", "when",
    "where", "why", "how", "all", "any", "both", "each", "few", "more", "most", "other", "some", "such", "no", "nor",
    "not", "only", "own", "same", "so", "than", "too", "very", "s", "t", "can", "will", "just", "don", "should",
    "now", "d", "ll", "m", "o", "re", "ve", "y",
)
_STOP_SET = frozenset(STOP_WORDS)
_SPLIT = r"[^\p{L}\p{N}_]+"
_MAX_TOKEN = 40


@functools.lru_cache(maxsize=1 << 16)
def stem(word: str) -> str:
    """A light English suffix stemmer: plural, -ing, -ed, -ly and a final -e removed, doubled consonant undone.

    Deliberately conservative (no Porter rule tables): it only has to map a word's common inflections onto one
    term; the term need not be a word. Digits and short words are left alone.
    """
    if len(word) <= 3 or not word.isalpha():
        return word
    if word.endswith("ies") and len(word) > 4:
        word = word[:-3] + "y"
    elif word.endswith("sses"):
        word = word[:-2]
    elif word.endswith(("ches", "shes", "xes", "zes")):
        word = word[:-2]
    elif word.endswith("s") and not word.endswith(("ss", "us", "is")):
        word = word[:-1]
    for suffix in ("ing", "ed", "ly"):
        if word.endswith(suffix) and len(word) - len(suffix) >= 3:
            word = word[: -len(suffix)]
            if len(word) > 3 and word[-1] == word[-2] and word[-1] not in "aeiouls":
                word = word[:-1]  # running -> run, but keep "fall", "miss"
            break
    if word.endswith("e") and len(word) > 3:
        word = word[:-1]
    return word


def tokenize(texts: pa.Array | list[str]) -> tuple[np.ndarray, pa.Array]:
    """Tokens of every text: (index of the text each token came from, the tokens) in reading order."""
    arr = texts if isinstance(texts, pa.Array | pa.ChunkedArray) else pa.array(texts, pa.string())
    if isinstance(arr, pa.ChunkedArray):
        arr = arr.combine_chunks()
    lists = pc.split_pattern_regex(pc.utf8_lower(pc.fill_null(arr, "")), _SPLIT)
    flat = pc.list_flatten(lists)
    parent = pc.list_parent_indices(lists).to_numpy()
    length = pc.utf8_length(flat)
    keep = pc.and_(pc.and_(pc.greater(length, 0), pc.less_equal(length, _MAX_TOKEN)),
                   pc.invert(pc.is_in(flat, value_set=pa.array(STOP_WORDS))))
    return parent[keep.to_numpy(zero_copy_only=False)], flat.filter(keep)


_WORD = re.compile(r"\w+")  # Python's \w: letters, digits and underscore, as _SPLIT keeps them


def query_tokens(text: str) -> list[str]:
    """:func:`tokenize` for one query string, in plain Python (Arrow's per-call overhead is ~1 ms, this ~10 us)."""
    stop = _STOP_SET
    return [w for w in _WORD.findall(text.lower()) if len(w) <= _MAX_TOKEN and w not in stop]


class TextIndex:
    """BM25 over slots; ``add`` new slots, ``remove`` dead ones, ``search`` for the best allowed slots."""

    def __init__(self, k1: float = 1.2, b: float = 0.75, merge_every: int = 100_000) -> None:
        self.k1, self.b = k1, b
        self._merge_every = merge_every
        self._vocab: dict[str, int] = {}
        self._df = GrowArray(np.int64)  # live rows holding the term
        self._doc_len = GrowArray(np.float32)  # by slot
        self._n_live = 0
        self._total_len = 0.0
        # CSR base: postings of term t are [offsets[t], offsets[t+1]) in (slots, tfs)
        self._offsets = np.zeros(1, dtype=np.int64)
        self._slots = np.zeros(0, dtype=np.int64)
        self._tfs = np.zeros(0, dtype=np.float32)
        self._delta = (GrowArray(np.int32), GrowArray(np.int64), GrowArray(np.float32))  # term, slot, tf

    @property
    def nbytes(self) -> int:
        """Bytes held by postings and per-slot/per-term arrays (the vocabulary dict is not counted)."""
        delta = sum(a.view.nbytes for a in self._delta)
        return self._offsets.nbytes + self._slots.nbytes + self._tfs.nbytes + delta + self._doc_len.view.nbytes

    def snapshot(self) -> tuple[dict[str, np.ndarray], pa.Table, dict[str, Any]]:
        """(arrays, the vocabulary in term-id order, scalars) for :mod:`memory.index.snapshot`; the delta
        postings are merged into the base first, so the copy is one CSR."""
        if len(self._delta[0]):
            self._merge()
        arrays = {"df": self._df.view, "doc_len": self._doc_len.view, "offsets": self._offsets,
                  "slots": self._slots, "tfs": self._tfs}
        vocab = pa.table({"term": pa.array(list(self._vocab), pa.string())})
        meta = {"k1": self.k1, "b": self.b, "merge_every": self._merge_every, "n_live": self._n_live,
                "total_len": self._total_len}
        return arrays, vocab, meta

    @classmethod
    def from_snapshot(cls, arrays: dict[str, np.ndarray], vocab: pa.Table, meta: dict[str, Any]) -> TextIndex:
        """The index :meth:`snapshot` described, over the (mapped) arrays as they are."""
        index = cls(meta["k1"], meta["b"], meta["merge_every"])
        index._vocab = {term: i for i, term in enumerate(vocab.column("term").to_pylist())}
        index._df = GrowArray.wrap(arrays["df"])
        index._doc_len = GrowArray.wrap(arrays["doc_len"])
        index._offsets, index._slots, index._tfs = arrays["offsets"], arrays["slots"], arrays["tfs"]
        index._n_live, index._total_len = int(meta["n_live"]), float(meta["total_len"])
        return index

    def _term_ids(self, tokens: pa.Array, grow: bool) -> np.ndarray:
        enc = pc.dictionary_encode(tokens)
        words = [stem(w) for w in enc.dictionary.to_pylist()]
        if grow:
            for w in words:
                if w not in self._vocab:
                    self._vocab[w] = len(self._vocab)
            if len(self._vocab) > len(self._df):
                self._df.append(np.zeros(len(self._vocab) - len(self._df), np.int64))
        ids = np.array([self._vocab.get(w, -1) for w in words], dtype=np.int64)
        return ids[enc.indices.to_numpy()] if len(words) else np.zeros(0, dtype=np.int64)

    def _counts(self, texts: pa.Array, grow: bool) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """(doc index, term id, tf) triples sorted by (term, doc), and the token count of every text."""
        parent, tokens = tokenize(texts)
        terms = self._term_ids(tokens, grow)
        doc_len = np.bincount(parent, minlength=len(texts)).astype(np.float32)
        known = terms >= 0
        parent, terms = parent[known], terms[known]
        key = terms * (len(texts) + 1) + parent
        uniq, tf = np.unique(key, return_counts=True)
        return uniq % (len(texts) + 1), uniq // (len(texts) + 1), tf.astype(np.float32), doc_len

    def add(self, first_slot: int, texts: pa.Array) -> None:
        """Index ``texts`` as slots ``first_slot, first_slot + 1, ...`` (which must be the next slots)."""
        assert first_slot == len(self._doc_len), "text index slots must be appended in order"
        docs, terms, tfs, doc_len = self._counts(texts, grow=True)
        self._doc_len.append(doc_len)
        self._n_live += len(texts)
        self._total_len += float(doc_len.sum())
        np.add.at(self._df.view, terms, 1)
        if len(self._slots) == 0 and len(self._delta[0]) == 0:
            self._set_base(terms, docs + first_slot, tfs)
            return
        for part, values in zip(self._delta, (terms, docs + first_slot, tfs), strict=True):
            part.append(values)
        if len(self._delta[0]) > max(self._merge_every, len(self._slots) // 10):
            self._merge()

    def remove(self, slots: np.ndarray, texts: pa.Array) -> None:
        """Forget live rows ``slots`` whose content was ``texts`` (their postings stay, masked by the caller)."""
        if len(slots) == 0:
            return
        _, terms, _, doc_len = self._counts(texts, grow=False)
        np.subtract.at(self._df.view, terms, 1)
        self._n_live -= len(slots)
        self._total_len -= float(doc_len.sum())

    def _set_base(self, terms: np.ndarray, slots: np.ndarray, tfs: np.ndarray) -> None:
        order = np.lexsort((slots, terms))
        self._slots, self._tfs = slots[order], tfs[order]
        counts = np.bincount(terms, minlength=len(self._vocab))
        self._offsets = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)

    def _merge(self) -> None:
        base_terms = np.repeat(np.arange(len(self._offsets) - 1), np.diff(self._offsets))
        dt, ds, df = (part.view for part in self._delta)
        self._set_base(np.concatenate([base_terms, dt]), np.concatenate([self._slots, ds]),
                       np.concatenate([self._tfs, df]))
        self._delta = (GrowArray(np.int32), GrowArray(np.int64), GrowArray(np.float32))

    def _postings(self, term: int) -> tuple[np.ndarray, np.ndarray]:
        lo, hi = (int(self._offsets[term]), int(self._offsets[term + 1])) if term < len(self._offsets) - 1 else (0, 0)
        slots, tfs = self._slots[lo:hi], self._tfs[lo:hi]
        if len(self._delta[0]):
            hit = self._delta[0].view == term
            if hit.any():  # delta slots are newer than every base slot: concatenation stays sorted
                slots = np.concatenate([slots, self._delta[1].view[hit]])
                tfs = np.concatenate([tfs, self._delta[2].view[hit]])
        return slots, tfs

    def search(self, text: str, n: int, allowed: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """The ``n`` best allowed slots for ``text`` by BM25 and their scores, best first (empty: no term known)."""
        stems = (stem(w) for w in query_tokens(text))
        terms = sorted({self._vocab[w] for w in stems if w in self._vocab})
        if not terms or self._n_live <= 0:
            return np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.float32)
        df = self._df.view[terms].astype(np.float64)
        idf = np.log1p((self._n_live - df + 0.5) / (df + 0.5))
        order = np.argsort(-idf, kind="stable")
        bounds = idf[order] * (self.k1 + 1)
        rest = np.concatenate([np.cumsum(bounds[::-1])[::-1][1:], [0.0]])  # bound of the terms after each
        avgdl = self._total_len / self._n_live
        doc_len = self._doc_len.view
        cand = np.zeros(0, dtype=np.int64)
        score = np.zeros(0, dtype=np.float64)
        growing = True
        for j, t in enumerate(order.tolist()):
            slots, tfs = self._postings(terms[t])
            if growing:
                keep = allowed[slots]
                slots, tfs = slots[keep], tfs[keep]
                contrib = self._bm25(idf[t], tfs, doc_len[slots], avgdl)
                merged = np.concatenate([cand, slots])
                uniq, inverse = np.unique(merged, return_inverse=True)
                score = np.bincount(inverse, weights=np.concatenate([score, contrib]), minlength=len(uniq))
                cand = uniq
                if len(cand) >= n and np.partition(score, len(score) - n)[len(score) - n] >= rest[j]:
                    growing = False  # no row outside `cand` can reach the top n any more
            else:
                pos = np.minimum(np.searchsorted(slots, cand), max(len(slots) - 1, 0))
                if len(slots):
                    found = slots[pos] == cand
                    score[found] += self._bm25(idf[t], tfs[pos[found]], doc_len[cand[found]], avgdl)
        if len(cand) > n:
            top = np.argpartition(-score, n - 1)[:n]
            cand, score = cand[top], score[top]
        best = np.lexsort((cand, -score))
        return cand[best], score[best].astype(np.float32)

    def _bm25(self, idf: float, tf: np.ndarray, doc_len: np.ndarray, avgdl: float) -> np.ndarray:
        norm = self.k1 * (1.0 - self.b + self.b * doc_len / avgdl)
        return idf * tf * (self.k1 + 1.0) / (tf + norm)

"""The index's row store reads payload and links of many slots at once: the same values as the stored rows."""

from __future__ import annotations

import pyarrow as pa
from hypothesis import given, settings
from hypothesis import strategies as st

from memory.index.rows import PAYLOAD_COLUMNS, RowStore
from memory.schema import LINK_TYPE

_LINKS = st.lists(st.tuples(st.integers(0, 30), st.sampled_from([0.25, 0.5, 0.5, 1.0])), max_size=6)


def _chunk(start: int, links: list[list[tuple[int, float]]]) -> pa.Table:
    n = len(links)
    cells = [[{"target": f"m{t}", "weight": w, "kind": "related"} for t, w in row] for row in links]
    return pa.table({
        "id": [f"m{start + i}" for i in range(n)], "content": [f"text {start + i}" for i in range(n)],
        "modality": ["text"] * n, "session": [None if i % 3 else f"s{i % 2}" for i in range(n)],
        "tier": ["hot"] * n, "metadata": ["{}"] * n,
        "association_links": pa.array(cells, pa.list_(LINK_TYPE)), "_rowid": list(range(start, start + n)),
    }).select([*PAYLOAD_COLUMNS, "_rowid"])


@settings(max_examples=30, deadline=None)
@given(chunks=st.lists(st.lists(_LINKS, min_size=1, max_size=8), min_size=1, max_size=3), data=st.data())
def test_links_many_and_records_equal_the_stored_rows(chunks, data) -> None:
    rows = RowStore()
    stored = []
    for links in chunks:
        rows.append(_chunk(len(stored), links))
        stored.extend(links)
    slots = data.draw(st.lists(st.integers(0, len(stored) - 1), max_size=12))
    got = rows.links_many(slots)
    assert [(targets, weights) for targets, weights in got] == [
        ([f"m{t}" for t, _ in stored[s]], [w for _, w in stored[s]]) for s in slots]
    records = rows.records(slots, ("content", "session"))
    assert [r["content"] for r in records] == [f"text {s}" for s in slots]
    assert rows.links_many([]) == [] and rows.records([], ("content",)) == []

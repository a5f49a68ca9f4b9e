"""One BLAS thread for the store's own products.

numpy's OpenBLAS wakes a worker thread per core for a product of any size, and after the product the workers keep
spinning for a while, waiting for more work. A search is a query embedding in torch (its own OpenMP threads) and
then a few matrix-vector products in numpy; on a 2-core machine the spinning OpenBLAS workers left by one search
take the cores from the next query's embedding: measured on a store of 2,000 real chat messages, search end to end
p50 16.2 / p95 104 ms, and 6.4 / 8.0 ms with one BLAS thread. The price is in the larger products: an IVF probe
at 100k memories is about 1 ms slower on one thread (its products are memory-bound), still a net gain end to end.
The limit is scoped (``threadpoolctl``, about 8 us) and the caller's own setting is restored on exit;
``one_blas_thread()`` also decorates a function (a ``contextlib`` context manager is a ``ContextDecorator``).
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Iterator
from typing import Any

__all__ = ["one_blas_thread"]


@functools.cache
def _controller() -> Any:
    from threadpoolctl import ThreadpoolController

    return ThreadpoolController()


@contextlib.contextmanager
def one_blas_thread() -> Iterator[None]:
    """Run the block (or, as ``@one_blas_thread()``, each call) with numpy's BLAS limited to one thread."""
    with _controller().limit(limits=1, user_api="blas"):
        yield

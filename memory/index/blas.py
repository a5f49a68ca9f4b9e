"""One BLAS thread for the store's own small products.

numpy's OpenBLAS wakes a worker thread per core for a product of any size, and after the product the workers keep
spinning for a while, waiting for more work. A search is a query embedding in torch (its own OpenMP threads) and
then a few matrix-vector products in numpy; on a 2-core machine the spinning OpenBLAS workers left by one search
take the cores from the next query's embedding: measured on a store of 2,000 real chat messages, search end to end
p50 16.2 / p95 104 ms, and 6.4 / 7.9 ms with one BLAS thread. The products here are a few hundred rows each, too
small to gain from a second thread, so the store runs them single-threaded (a scoped limit through
``threadpoolctl``, about 8 us; the caller's own setting is restored on exit).
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Callable, Iterator
from typing import Any, TypeVar

__all__ = ["one_blas_thread", "single_blas_thread"]

F = TypeVar("F", bound=Callable[..., Any])


@functools.cache
def _controller() -> Any:
    from threadpoolctl import ThreadpoolController

    return ThreadpoolController()


@contextlib.contextmanager
def one_blas_thread() -> Iterator[None]:
    """Run the block with numpy's BLAS limited to one thread (restored afterwards)."""
    with _controller().limit(limits=1, user_api="blas"):
        yield


def single_blas_thread(func: F) -> F:
    """Decorator form of :func:`one_blas_thread`."""

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        with one_blas_thread():
            return func(*args, **kwargs)

    return wrapper  # type: ignore[return-value]

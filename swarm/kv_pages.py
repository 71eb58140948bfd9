"""A paged KV cache: one pool of fixed-size pages per span, handed to sessions as they grow.

The pool holds, for every layer of the span, keys and values as
``[pages, page_size, kv_heads, head_dim]``. A session (`PagedCache`) owns a list of pages per
row of its batch; position ``p`` of a row lives in page ``rows[r][p // page_size]`` at offset
``p % page_size``. A batched decode step of many sessions therefore needs no copy of anyone's
past: the step reads each row's pages through a page table and writes one new position per row.
Rolling back is setting the length. Page 0 is scratch: padding rows of a batch point there.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field

import torch

DEFAULT_PAGE_SIZE = 32


class PagePool:
    """Keys and values of every layer of a span, in pages; grows by doubling when it runs out."""

    def __init__(
        self,
        num_layers: int,
        kv_heads: int,
        head_dim: int,
        dtype: torch.dtype,
        device: torch.device,
        pages: int = 64,
        page_size: int = DEFAULT_PAGE_SIZE,
    ) -> None:
        self.num_layers, self.kv_heads, self.head_dim = num_layers, kv_heads, head_dim
        self.dtype, self.device, self.page_size = dtype, device, page_size
        self._lock = threading.Lock()
        self.generation = 0  # bumped when the tensors are reallocated (captured graphs go stale)
        self.keys = self._empty(max(pages, 2))
        self.values = self._empty(max(pages, 2))
        self._zero([0])
        self._free = list(range(self.capacity - 1, 0, -1))  # page 0 is scratch
        self._pending: list[int] = []  # released during the current step: free at the next

    def _empty(self, pages: int) -> torch.Tensor:
        shape = (self.num_layers, pages, self.page_size, self.kv_heads, self.head_dim)
        # torch.empty: on the CPU untouched pages cost no resident memory
        return torch.empty(shape, dtype=self.dtype, device=self.device)

    @property
    def capacity(self) -> int:
        """Pages in the pool, the scratch page included."""
        return int(self.keys.shape[1])

    @property
    def free_pages(self) -> int:
        return len(self._free)

    def pages_for(self, tokens: int) -> int:
        return -(-tokens // self.page_size)

    def reserve(self, tokens: int) -> None:
        """Make sure at least `tokens` tokens' worth of pages exist (grow once, up front)."""
        needed = self.pages_for(tokens) + 1
        if needed > self.capacity:
            with self._lock:
                self._grow(needed)

    def allocate(self, count: int) -> list[int]:
        with self._lock:
            if count > len(self._free):
                self._grow(max(2 * self.capacity, self.capacity + count))
            taken = [self._free.pop() for _ in range(count)]
        # masked positions still enter attention as 0 x value: stale NaN/inf must not be there
        self._zero(taken)
        return taken

    def _zero(self, pages: list[int]) -> None:
        index = torch.tensor(pages, dtype=torch.int64, device=self.device)
        self.keys.index_fill_(1, index, 0)
        self.values.index_fill_(1, index, 0)

    def release(self, pages: list[int]) -> None:
        """Return pages (any thread); they become free when the next step begins."""
        with self._lock:
            self._pending.extend(pages)

    def begin_step(self) -> None:
        """Called by the compute thread before a step: pages released until now are free.

        A page released while a step that uses it is running is not handed to another session
        in that same step.
        """
        with self._lock:
            self._free.extend(self._pending)
            self._pending.clear()

    def _grow(self, capacity: int) -> None:
        old = self.capacity
        keys, values = self._empty(capacity), self._empty(capacity)
        keys[:, :old].copy_(self.keys)
        values[:, :old].copy_(self.values)
        self.keys, self.values = keys, values
        self._free.extend(range(capacity - 1, old - 1, -1))
        self.generation += 1


def page_tables(caches: list[PagedCache], pages: int) -> torch.Tensor:
    """The rows of all `caches`, in order, as one page table of `pages` columns (CPU int64),
    padded with the scratch page: one tensor built from lists (a decode step's host work)."""
    table = []
    for cache in caches:
        for row in cache.rows:
            used = row[:pages]
            table.append(used + [0] * (pages - len(used)))
    return torch.tensor(table, dtype=torch.int64).view(-1, pages)


@dataclass
class PagedCache:
    """One session's KV cache in a `PagePool`: pages per row, and the cached length."""

    pool: PagePool
    batch: int | None = None
    rows: list[list[int]] = field(default_factory=list)
    _length: int = 0
    closed: bool = False

    @property
    def length(self) -> int:
        """Number of positions cached."""
        return self._length

    def rollback(self, position: int) -> None:
        """Keep positions [0, position); the pages stay with the session for reuse."""
        if position < 0:
            raise ValueError(f"cannot roll back to a negative position ({position})")
        self._length = min(self._length, position)

    def prepare(self, batch: int, end: int) -> None:
        """Own enough pages for positions [0, end) in each of `batch` rows."""
        if self.closed:
            raise RuntimeError("the session's cache was released")
        if self.batch is None:
            self.batch = batch
            self.rows = [[] for _ in range(batch)]
        need = self.pool.pages_for(end)
        for row in self.rows:
            if len(row) < need:
                row.extend(self.pool.allocate(need - len(row)))

    def advance(self, end: int) -> None:
        self._length = end

    def page_table(self, pages: int) -> torch.Tensor:
        """Rows' page ids, padded with the scratch page to `pages` columns (CPU int64)."""
        return page_tables([self], pages)

    def shrink(self) -> None:
        """Give back the pages past the cached length (a kept session will not grow)."""
        keep = self.pool.pages_for(self._length)
        for row in self.rows:
            if len(row) > keep:
                self.pool.release(row[keep:])
                del row[keep:]

    def release(self) -> None:
        """Give every page back to the pool; the cache cannot be used afterwards."""
        self.closed = True
        rows, self.rows = self.rows, []
        for row in rows:
            self.pool.release(row)
        self._length = 0

"""Window scheduling per station: blocks, due windows and when stacked samples are final.

SeisBench's ``annotate`` (``strict=False``) cuts each station's data into *blocks*:
maximal runs where at least one component has data; a gap in every component
ends a block. Inside a block, windows start at offsets ``0, step, 2*step, ...``
and, if the last one does not reach the block end, one more window is aligned
to the end. :class:`WindowScheduler` reproduces exactly that on a stream.

Finality: a stacked sample may be turned into picks once no later window can
cover it. Regular windows are known in advance; the end-aligned window is only
known when the block ends. In ``exact`` mode (default) samples within one
window length of the data frontier are held back, so the end-aligned window of
a gap or of the end of data is stacked exactly as SeisBench does; in ``fast``
mode picks come up to one stride earlier and the end-aligned window only adds to
samples that are not yet final (documented difference at gaps and end of data).

Resume: a restarted pipeline may align its first block to the window grid of the
run before the restart (:class:`Resume`), so that re-fed context yields exactly
the windows, stacked values and picks of an uninterrupted run from ``picked_to``.
"""

from __future__ import annotations

import logging
from collections import deque
from dataclasses import dataclass, field

from rtpick.stream.buffers import GroupBuffer

log = logging.getLogger(__name__)


@dataclass(slots=True, eq=False)
class Block:
    """A run of data of one station; ``end`` is exclusive and None while the block is open."""

    start: int
    end: int | None = None
    next_offset: int = 0  # next regular window offset, relative to start
    pending: deque = field(default_factory=deque)  # offsets of scheduled, not yet stacked windows
    picked_to: int = 0  # absolute index up to which stacked values went to the pickers
    stack_floor: int = 0  # windows stack only at or after this absolute index (fast mode end window, resume)
    grid: int = 0  # absolute index regular windows are counted from: start, or a resumed run's anchor
    pick_from: dict[str, int] | None = None  # resumed block: phase -> first index its picker may see

    @property
    def done(self) -> bool:
        return self.end is not None and not self.pending and self.picked_to >= self.end


@dataclass(slots=True, eq=False)
class Window:
    """One model input: ``in_samples`` samples of a group from absolute index ``start``."""

    group: object  # the pipeline's per-station state
    block: Block
    start: int
    queued_at: float = 0.0  # monotonic time the window became due (for max-wait batching)
    arrived: float = 0.0  # wall clock when the station's newest record (completing the window) arrived
    tip: bool = False  # a tip window (preliminary picks, not stacked; rtpick.picking.early)


@dataclass(slots=True, frozen=True)
class Resume:
    """Where a run before a restart stood (see ``Pipeline.resume_points``).

    ``anchor``: an absolute index on its window grid (window starts are anchor + k*step);
    ``picked_to``: no pick may be made below it; ``pick_from``: per phase, where its
    picker restarts (the start of a trigger still open, else the block's picked_to).
    """

    anchor: int
    picked_to: int
    pick_from: dict[str, int]


class WindowScheduler:
    """Finds blocks in a group's coverage and emits due windows in order."""

    def __init__(self, in_samples: int, step: int, exact_block_end: bool = True, name: str = ""):
        if step <= 0:
            raise ValueError(f"window step must be positive (overlap too large): {step}")
        self.in_samples = in_samples
        self.step = step
        self.exact = exact_block_end
        self.name = name  # station key, for log lines
        self.scanned_to: int | None = None
        self.blocks: deque[Block] = deque()
        self.short_blocks = 0
        self.resume: Resume | None = None  # applied to blocks starting below its picked_to, then dropped

    def reset(self) -> None:
        """Forget every block (station restarted after a time jump or a fault); O(1)."""
        self.scanned_to = None
        self.blocks.clear()

    @property
    def open_block(self) -> Block | None:
        if self.blocks and self.blocks[-1].end is None:
            return self.blocks[-1]
        return None

    def next_window_end(self) -> int:
        """Index the data must reach for the open block's next regular window (0 without an open block: nothing to wait for)."""
        block = self.open_block
        return 0 if block is None else block.start + block.next_offset + self.in_samples

    def advance(self, buf: GroupBuffer, ready: int) -> list[tuple[Block, int]]:
        """Scan coverage up to ``ready``; return newly due ``(block, absolute start)`` windows."""
        due: list[tuple[Block, int]] = []
        if self.scanned_to is None:
            firsts = [s.first for s in buf.segments]
            if not firsts:
                return due
            self.scanned_to = min(firsts)
        pos = self.scanned_to
        buf.expire(ready)
        if ready - pos > buf.capacity:
            # Only the newest `capacity` samples are still in the ring (the pipeline restarts a
            # station before a jump this large; this keeps the scan O(capacity) regardless).
            block = self.open_block
            if block is not None:
                self._schedule_regular(block, pos, due)
                self._close(block, pos, due)
            pos = ready - buf.capacity
        while pos < ready:
            block = self.open_block
            pos += buf.first(pos, ready, covered=block is None)  # the block's first hole, or the next block's first sample
            if pos >= ready:
                break
            if block is not None:
                self._schedule_regular(block, pos, due)
                self._close(block, pos, due)
            else:
                self.blocks.append(self._open(pos))
        self.scanned_to = pos
        buf.floor = pos
        block = self.open_block
        if block is not None:
            self._schedule_regular(block, pos, due)
        return due

    def finish(self) -> list[tuple[Block, int]]:
        """End of data: close the open block at the frontier (SeisBench's last window)."""
        due: list[tuple[Block, int]] = []
        block = self.open_block
        if block is not None and self.scanned_to is not None:
            self._close(block, self.scanned_to, due)
        return due

    def _open(self, start: int) -> Block:
        """A new block at ``start``; blocks after a restart that start below the saved ``picked_to`` resume.

        A resumed block keeps the saved window grid and makes no pick below
        ``picked_to`` (blocks of the re-fed context that end before it make none at
        all). Resuming needs ``picked_to >= start + in_samples``: samples closer to the
        block start are covered by fewer windows than in the uninterrupted run; such a
        block starts as usual (logged).
        """
        block = Block(start=start, picked_to=start, stack_floor=start, grid=start)
        resume = self.resume
        if resume is None:
            return block
        if start >= resume.picked_to:
            self.resume = None
            return block
        if start + self.in_samples > resume.picked_to:
            self.resume = None
            log.info("%s: not resuming at index %d: data starts at %d, less than one window before it", self.name, resume.picked_to, start)
            return block
        block.next_offset = (resume.anchor - start) % self.step
        block.grid = start + block.next_offset
        block.picked_to = block.stack_floor = resume.picked_to
        block.pick_from = dict(resume.pick_from)
        return block

    def _schedule_regular(self, block: Block, frontier: int, due: list) -> None:
        while block.start + block.next_offset + self.in_samples <= frontier:
            block.pending.append(block.next_offset)
            due.append((block, block.start + block.next_offset))
            block.next_offset += self.step

    def _close(self, block: Block, end: int, due: list) -> None:
        if not self.exact:
            # samples the regular windows already made final: the end-aligned window adds only
            # above them (computed while the block is still open: with no window pending,
            # final_to of a closed block is its end and the end window would stack nothing)
            floor = self.final_to(block)
        block.end = end
        length = end - block.start
        if length < self.in_samples:
            # SeisBench would try to merge a fragment this short with its neighbours;
            # rtpick skips it (counted), see docs/operations.md.
            self.short_blocks += 1
            block.picked_to = end
            return
        last = block.next_offset - self.step
        if last + self.in_samples < length:
            offset = length - self.in_samples
            if not self.exact:
                block.stack_floor = max(block.stack_floor, floor)
            block.pending.append(offset)
            due.append((block, block.start + offset))

    def final_to(self, block: Block) -> int:
        """Absolute index below which the block's stacked values can no longer change."""
        if block.pending:
            return block.start + block.pending[0]
        if block.end is not None:
            return block.end
        limit = block.start + block.next_offset
        if self.exact and self.scanned_to is not None:
            # a block ending at the frontier would add a window starting at frontier - in_samples
            limit = min(limit, self.scanned_to - self.in_samples)
        return max(limit, block.picked_to)

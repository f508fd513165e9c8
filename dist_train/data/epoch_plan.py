"""Which batches of an epoch each rank trains on, so that a world-size change mid-epoch
neither repeats nor skips rows.

An epoch's rows flow as *streams*: stream ``s`` is what rank ``s`` reads when the epoch
starts with ``stream_world`` ranks (its row groups from ``assign_row_groups``, shuffled with
seed (seed, epoch, s), cut into batches), a deterministic sequence of batches. An
:class:`EpochPlan` gives each current rank a list of segments ``(stream, first, end)``:
batches ``first .. end - 1`` of that stream.

- At the start of an epoch rank ``r`` has the one segment ``(r, 0, steps)``.
- When a checkpoint taken mid-epoch resumes on another number of ranks, :meth:`replan`
  takes every rank's batches not yet trained, in rank order, and cuts them into equal
  contiguous runs, one per new rank. Fewer than ``world`` batches may be left over; they are
  dropped, like the uneven tail of any epoch.

Contiguous runs keep reading cheap: a new rank reads only the few streams its run touches.
Each of those is re-read from its start, because a stream is replayed, not indexed.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

Segment = tuple[int, int, int]  # (stream, first batch, end batch)


@dataclass(frozen=True)
class EpochPlan:
    stream_world: int  # the world size whose row-group assignment defines the streams
    segments: tuple[tuple[Segment, ...], ...]  # per current rank

    @staticmethod
    def fresh(world: int, steps: int) -> EpochPlan:
        """An epoch started by ``world`` ranks, each training ``steps`` batches."""
        return EpochPlan(world, tuple(((r, 0, steps),) for r in range(world)))

    @property
    def world(self) -> int:
        return len(self.segments)

    @property
    def steps(self) -> int:
        """Batches every rank trains in this epoch."""
        return min(sum(end - first for _, first, end in segs) for segs in self.segments)

    def remaining(self, rank: int, done: int) -> list[Segment]:
        """``rank``'s segments after its first ``done`` batches."""
        out: list[Segment] = []
        for stream, first, end in self.segments[rank]:
            if done >= end - first:
                done -= end - first
                continue
            out.append((stream, first + done, end))
            done = 0
        return out

    def replan(self, done: int, world: int) -> EpochPlan:
        """The rest of this epoch, after ``done`` batches on every rank, for ``world`` ranks."""
        left = [seg for rank in range(self.world) for seg in self.remaining(rank, done)]
        per_rank = sum(end - first for _, first, end in left) // world
        out: list[tuple[Segment, ...]] = []
        for _ in range(world):
            run: list[Segment] = []
            need = per_rank
            while need:
                stream, first, end = left[0]
                take = min(need, end - first)
                run.append((stream, first, first + take))
                left[0] = (stream, first + take, end)
                if first + take == end:
                    left.pop(0)
                need -= take
            out.append(tuple(run))
        return EpochPlan(self.stream_world, tuple(out))

    def as_json(self) -> dict[str, Any]:
        return {
            "stream_world": self.stream_world,
            "segments": [list(map(list, s)) for s in self.segments],
        }

    @staticmethod
    def from_json(data: dict[str, Any]) -> EpochPlan:
        return EpochPlan(
            int(data["stream_world"]),
            tuple(tuple((int(a), int(b), int(c)) for a, b, c in segs) for segs in data["segments"]),
        )

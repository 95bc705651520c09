"""The compute-engine interface: events to daily tiles, tiles to window values."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Iterator
from datetime import date
from pathlib import Path

import pyarrow as pa

from leadpilot.features.dictionary import FeatureDictionary

# Long feature values: one row per (dimension, entity key, derived feature id) with a non-zero value.
VALUES_SCHEMA = pa.schema(
    [("dim", pa.int8()), ("k1", pa.int64()), ("k2", pa.int64()), ("feature_id", pa.int32()), ("value", pa.float64())]
)


class EngineUnavailable(RuntimeError):
    """The chosen engine cannot run here (unknown name or a missing extra)."""


class ComputeEngine(ABC):
    """Turns the event lake into tiles and tiles into feature values; the store keeps the results."""

    name: str

    @abstractmethod
    def write_tiles(
        self,
        dictionary: FeatureDictionary,
        *,
        event_files: list[str],
        leads_file: str,
        days: list[date] | None,
        staging: Path,
    ) -> None:
        """Write ``staging/tiles/day=D/`` and ``staging/distinct/day=D/`` Parquet for the given days (None: all)."""

    @abstractmethod
    def window_values(
        self,
        dictionary: FeatureDictionary,
        *,
        tile_files: list[str],
        distinct_files: list[str],
        table_files: dict[str, str],
        day: date,
        groups: pa.Table | None = None,
        partition: tuple[int, int] | None = None,
    ) -> pa.Table:
        """Every derived feature's non-zero value as of the end of ``day`` (``VALUES_SCHEMA``).

        DAYS_SINCE features carry their anchor, the last event's time in epoch seconds (see ``store``).
        ``groups`` (dim, k1, k2, base_id, bucket) or entities (dim, k1, k2), when given, limits the windowed
        features to them (the daily incremental fold, real-time fusion); table-sourced features are always
        computed in full. ``partition`` (p, n) keeps only entities with ``k1 mod n = p`` (for every kind of
        feature), so a large day can be folded in n slices of bounded memory.
        """

    def window_slices(
        self,
        dictionary: FeatureDictionary,
        *,
        tile_files: list[str],
        distinct_files: list[str],
        table_files: dict[str, str],
        day: date,
        slices: int,
    ) -> Iterator[tuple[tuple[int, int] | None, pa.Table]]:
        """Every derived feature's value as of the end of ``day`` (as ``window_values``), in ``slices`` entity
        slices: yields (partition, values) per slice, partition ``(p, n)`` (``None`` when ``slices`` is 1).

        A full fold of a large day goes slice by slice so its memory stays bounded; an engine may share work
        between the slices (the DuckDB engine reads the tiles once for all of them). Each table may be unsorted.
        """
        for p in range(slices):
            part = (p, slices) if slices > 1 else None
            yield (
                part,
                self.window_values(
                    dictionary,
                    tile_files=tile_files,
                    distinct_files=distinct_files,
                    table_files=table_files,
                    day=day,
                    partition=part,
                ),
            )

"""Compute engines behind one interface, chosen by the ``feature_engine`` setting (``duckdb`` or ``spark``)."""

from __future__ import annotations

from leadpilot.features.engines.base import ComputeEngine, EngineUnavailable

ENGINES = ("duckdb", "spark")


def get_engine(name: str, *, memory_limit: str | None = None, temp_directory: str | None = None) -> ComputeEngine:
    """The engine called ``name``; Spark needs the ``spark`` extra (``pip install -e ".[spark]"``).

    ``memory_limit`` (e.g. ``4GB``) and ``temp_directory`` (where it spills beyond that) apply to DuckDB.
    """
    if name == "duckdb":
        from leadpilot.features.engines.duckdb_engine import DuckDBEngine

        return DuckDBEngine(memory_limit=memory_limit or "4GB", temp_directory=temp_directory)
    if name == "spark":
        try:
            from leadpilot.features.engines.spark_engine import SparkEngine
        except ImportError as exc:
            raise EngineUnavailable(f"the Spark engine cannot be loaded here ({exc}); use --engine duckdb") from None
        engine: ComputeEngine = SparkEngine()
        return engine
    raise EngineUnavailable(f"unknown feature engine {name!r} (known: {', '.join(ENGINES)})")


__all__ = ["ENGINES", "ComputeEngine", "EngineUnavailable", "get_engine"]

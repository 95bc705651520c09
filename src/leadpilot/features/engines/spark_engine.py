"""The Apache Spark engine: the same tiles and window values as the DuckDB engine, computed with Spark SQL.

Install the ``spark`` extra (``pip install -e ".[spark]"``; PySpark needs Java 17+) and choose it with
``LEADPILOT_FEATURE_ENGINE=spark`` or ``--engine spark``.  The session is created on first use and reused:
``local[2]`` by default, or the master named by ``LEADPILOT_SPARK_MASTER`` (``spark://host:7077``,
``yarn`` ...), or the session already active in the process (``spark-submit``, a notebook), which is then
left running.  Locally it binds to 127.0.0.1 with the UI off and never downloads anything.

The SQL mirrors ``features.sql`` statement by statement (one pass over the events per tile build; tiles
merged into age bands per window, unpivoted with the DuckDB engine's numpy code) so that both engines give
the same tiles and values; ``tests/integration/test_features_spark.py`` checks it.  Paths are read and
written by the Spark executors: on a cluster the feature directory must be on storage every node sees
under the same path.
"""

from __future__ import annotations

import atexit
import os
import shutil
import uuid
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from datetime import date, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pyarrow as pa
import pyarrow.compute as pc
from pyspark.sql import SparkSession
from pyspark.sql.functions import broadcast

from leadpilot.expressions import Dialect
from leadpilot.features import sql
from leadpilot.features.dictionary import (
    FUNCTION_CODES,
    TABLE_DIMENSION,
    WINDOWS,
    EventSource,
    FeatureDictionary,
    Function,
    TableSource,
)
from leadpilot.features.engines.base import VALUES_SCHEMA, ComputeEngine, EngineUnavailable
from leadpilot.features.engines.duckdb_engine import sort_values, unpivot

if TYPE_CHECKING:
    from pyspark.sql import DataFrame

DEFAULT_MASTER = "local[2]"
MASTER_ENV = "LEADPILOT_SPARK_MASTER"
_DIALECT: Dialect = "spark"
GROUP_KEYS = ["dim", "k1", "k2", "base_id", "bucket"]
GROUPS_SCHEMA = pa.schema(
    [("dim", pa.int8()), ("k1", pa.int64()), ("k2", pa.int64()), ("base_id", pa.int32()), ("bucket", pa.int8())]
)


def _quote(value: str) -> str:
    """A Spark SQL string literal (Spark reads backslash escapes, so both quote and backslash are escaped)."""
    return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"


def _date(day: date) -> str:
    return f"DATE '{day.isoformat()}'"


def java_available() -> bool:
    """Whether a Java runtime PySpark can start is on JAVA_HOME or the PATH."""
    home = os.environ.get("JAVA_HOME")
    if home and (Path(home) / "bin" / "java").exists():
        return True
    return shutil.which("java") is not None


class SparkEngine(ComputeEngine):
    """Tiles and windows as Spark SQL over the lake's Parquet files."""

    name = "spark"

    def __init__(
        self,
        *,
        master: str | None = None,
        shuffle_partitions: int = 4,
        conf: Mapping[str, str] | None = None,
        session: SparkSession | None = None,
    ) -> None:
        """``master``: Spark master URL (default ``LEADPILOT_SPARK_MASTER`` or ``local[2]``); ``conf``: extra
        Spark settings; ``session``: use this session (never stopped by :meth:`close`)."""
        if session is None and not java_available():
            raise EngineUnavailable(
                "the Spark engine needs Java 17+ (set JAVA_HOME or put java on the PATH); use --engine duckdb"
            )
        self.master = master or os.environ.get(MASTER_ENV) or None
        self.shuffle_partitions = shuffle_partitions
        self.conf = dict(conf or {})
        self._session = session
        self._owns_session = False

    # -- session --------------------------------------------------------------------------------------
    @property
    def spark(self) -> SparkSession:
        """The session, created on first use (or again if it was stopped)."""
        if self._session is not None and not _stopped(self._session):
            return self._session
        active = SparkSession.getActiveSession()
        if active is not None and not _stopped(active) and self.master is None:
            self._session, self._owns_session = active, False  # spark-submit, a notebook, another engine
            _set_session_conf(active, self.shuffle_partitions)
            return active
        master = self.master or DEFAULT_MASTER
        builder: Any = SparkSession.builder.master(master).appName("leadpilot-features")
        settings = {
            "spark.sql.session.timeZone": "UTC",
            "spark.sql.shuffle.partitions": str(self.shuffle_partitions),
            "spark.sql.ansi.enabled": "true",  # bad casts fail as in DuckDB (the default from Spark 4)
            "spark.sql.parquet.inferTimestampNTZ.enabled": "true",
            "spark.ui.enabled": "false",
            "spark.ui.showConsoleProgress": "false",
            "spark.hadoop.mapreduce.fileoutputcommitter.marksuccessfuljobs": "false",
        }
        if master.startswith("local"):  # one JVM on this machine: loopback only, its clock in UTC
            settings.update(
                {
                    "spark.driver.host": "127.0.0.1",
                    "spark.driver.bindAddress": "127.0.0.1",
                    "spark.driver.extraJavaOptions": "-Duser.timezone=UTC",
                }
            )
        settings.update(self.conf)
        for key, value in settings.items():
            builder = builder.config(key, value)
        try:
            session: SparkSession = builder.getOrCreate()
        except Exception as exc:  # the JVM did not start (no Java, wrong version, no memory)
            raise EngineUnavailable(f"the Spark session did not start ({exc}); use --engine duckdb") from exc
        _set_session_conf(session, self.shuffle_partitions)
        self._session, self._owns_session = session, True
        atexit.register(self.close)
        return session

    def close(self) -> None:
        """Stop the session if this engine started it (a session it was given or found is left running)."""
        session, self._session = self._session, None
        if session is not None and self._owns_session and not _stopped(session):
            session.stop()
        self._owns_session = False

    def __enter__(self) -> SparkEngine:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- tiles ----------------------------------------------------------------------------------------
    def write_tiles(
        self,
        dictionary: FeatureDictionary,
        *,
        event_files: list[str],
        leads_file: str,
        days: list[date] | None,
        staging: Path,
    ) -> None:
        if not event_files or days == []:
            return
        spark = self.spark
        with _views(spark, events=spark.read.parquet(*event_files), leads=spark.read.parquet(leads_file)) as names:
            rows = spark.sql(event_rows_sql(names["events"], names["leads"], days))
            with _views(spark, rows=rows) as more:
                for kind, distinct in (("tiles", False), ("distinct", True)):
                    query = tiles_sql(dictionary, more["rows"], distinct=distinct)
                    if query is None:
                        continue
                    target = staging / kind
                    (
                        spark.sql(query)
                        .repartition("day")  # one file per day
                        .write.mode("overwrite")
                        .partitionBy("day")
                        .option("compression", "zstd")
                        .parquet(str(target))
                    )
                    _drop_checksums(target)

    # -- windows --------------------------------------------------------------------------------------
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
        spark = self.spark
        parts: list[pa.Table] = []
        sources: dict[str, DataFrame] = {}
        affected = self._groups_frame(groups) if groups is not None else None
        where = f"pmod(k1, {int(partition[1])}) = {int(partition[0])}" if partition else "TRUE"
        if tile_files:
            sources["tiles"] = _restricted(self._read_tiles(tile_files).where(where), affected)
        if distinct_files:
            sources["distinct"] = _restricted(self._read_tiles(distinct_files).where(where), affected)
        tables = {t: spark.read.parquet(f).where(where.replace("k1", "id")) for t, f in table_files.items()}
        with _views(spark, **sources, **tables) as names:
            if "tiles" in names:
                plan = sql.window_plan(dictionary, names["tiles"], day)  # its groups and windows; the SQL is ours
                if plan is not None:
                    parts.append(unpivot(_to_arrow(spark.sql(bands_sql(dictionary, names["tiles"], day))), plan))
            queries: list[str] = []
            if "distinct" in names:
                query = distinct_values_sql(dictionary, names["distinct"], day)
                if query is not None:
                    queries.append(query)
            queries += table_values_sql(dictionary, names, day)
            if queries:
                long = _to_arrow(spark.sql(" UNION ALL ".join(f"({q})" for q in queries))).cast(VALUES_SCHEMA)
                wanted = pa.array([d.id for d in dictionary.derived], pa.int32())
                parts.append(long.filter(pc.is_in(long.column("feature_id"), value_set=wanted)))
        if not parts:
            return VALUES_SCHEMA.empty_table()
        return sort_values(pa.concat_tables([p.cast(VALUES_SCHEMA) for p in parts]))

    def _groups_frame(self, groups: pa.Table) -> DataFrame:
        """The (dim, k1, k2, base_id, bucket) groups of an incremental fold as a Spark DataFrame."""
        groups = groups.select(GROUP_KEYS).cast(GROUPS_SCHEMA)
        try:
            return self.spark.createDataFrame(groups)  # a pyarrow Table: Spark 4
        except (TypeError, ValueError):  # pragma: no cover - Spark 3.5
            schema = "dim TINYINT, k1 BIGINT, k2 BIGINT, base_id INT, bucket TINYINT"
            return self.spark.createDataFrame([tuple(r.values()) for r in groups.to_pylist()], schema)

    def _read_tiles(self, files: list[str]) -> DataFrame:
        """Tile files with their ``day`` taken from the ``day=YYYY-MM-DD`` folder (hive partitioning)."""
        by_base: dict[str, list[str]] = {}
        for f in files:
            by_base.setdefault(str(Path(f).parent.parent), []).append(f)
        frames = [self.spark.read.option("basePath", base).parquet(*group) for base, group in by_base.items()]
        out = frames[0]
        for frame in frames[1:]:
            out = out.unionByName(frame)
        return out


@contextmanager
def _views(spark: SparkSession, **frames: DataFrame) -> Iterator[dict[str, str]]:
    """Register DataFrames as uniquely named temporary views for the length of a block."""
    names = {key: f"leadpilot_{key}_{uuid.uuid4().hex[:12]}" for key in frames}
    for key, frame in frames.items():
        frame.createOrReplaceTempView(names[key])
    try:
        yield names
    finally:
        for name in names.values():
            spark.catalog.dropTempView(name)


def _restricted(tiles: DataFrame, groups: DataFrame | None) -> DataFrame:
    """Tiles of the given groups only (all of them when there are none): a semi join, as the DuckDB engine."""
    if groups is None:
        return tiles
    return tiles.join(broadcast(groups), on=GROUP_KEYS, how="left_semi")


def _stopped(session: SparkSession) -> bool:
    return getattr(session.sparkContext, "_jsc", None) is None


def _set_session_conf(session: SparkSession, shuffle_partitions: int) -> None:
    """Runtime settings the engine relies on, also applied to a session it did not create."""
    session.conf.set("spark.sql.session.timeZone", "UTC")
    session.conf.set("spark.sql.ansi.enabled", "true")
    session.conf.set("spark.sql.parquet.inferTimestampNTZ.enabled", "true")
    session.conf.set("spark.sql.shuffle.partitions", str(shuffle_partitions))


def _drop_checksums(target: Path) -> None:
    """Hadoop's ``.crc`` side files and ``_SUCCESS`` markers: not tiles (local staging only)."""
    if not target.exists():
        return
    for path in [*target.rglob(".*.crc"), *target.rglob("_SUCCESS")]:
        path.unlink(missing_ok=True)


def _to_arrow(frame: DataFrame) -> pa.Table:
    """Collect a (small) result as Arrow (``toArrow`` from Spark 4; Spark 3.5's private equivalent)."""
    if hasattr(frame, "toArrow"):
        table: pa.Table = frame.toArrow()
        return table
    from pyspark.sql.pandas.types import to_arrow_schema  # pragma: no cover

    batches = frame._collect_as_arrow()  # type: ignore[operator]  # pragma: no cover
    return pa.Table.from_batches(batches, schema=to_arrow_schema(frame.schema))  # pragma: no cover


# -- SQL (Spark dialect; mirrors features.sql) ---------------------------------------------------------


def _bucket_case(dictionary: FeatureDictionary) -> str:
    names = dictionary.bucket_names()
    if not names:
        return "CAST(NULL AS INT)"
    whens = " ".join(f"WHEN {_quote(n)} THEN {c}" for n, c in names.items())
    return f"CASE product_line {whens} END"


def _event_entries(dictionary: FeatureDictionary, *, distinct: bool) -> list[str]:
    """One struct per base feature an event can feed (NULL when it does not), as ``sql._event_entries``."""
    entries = []
    for base in dictionary.base_features:
        source = base.source
        if not isinstance(source, EventSource):
            continue
        if distinct and (source.distinct is None or Function.DISTINCT_COUNT not in base.functions):
            continue
        k1, k2 = sql._KEYS[base.dimension]
        conditions = [f"type IN ({', '.join(_quote(t) for t in source.events)})", f"{k1} IS NOT NULL"]
        if k2:
            conditions.append(f"{k2} IS NOT NULL")
        if source.filter is not None:
            conditions.append(f"COALESCE({source.filter.to_sql(sql.EVENT_COLUMNS, dialect=_DIALECT)}, FALSE)")
        if distinct:
            assert source.distinct is not None
            value = f"CAST({source.distinct.to_sql(sql.EVENT_COLUMNS, dialect=_DIALECT)} AS STRING)"
        elif source.value is not None:
            value = f"CAST({source.value.to_sql(sql.EVENT_COLUMNS, dialect=_DIALECT)} AS DOUBLE)"
        else:
            value = "CAST(1.0 AS DOUBLE)"
        struct = (
            f"named_struct('dim', {sql.DIMENSION_CODES[base.dimension]}, 'base_id', {base.id}, "
            f"'by_pl', {'TRUE' if base.by_product_line else 'FALSE'}, "
            f"'k1', CAST({k1} AS BIGINT), 'k2', CAST({k2 or 0} AS BIGINT), 'v', {value})"
        )
        entries.append(f"CASE WHEN {' AND '.join(conditions)} THEN {struct} END")
    return entries


def event_rows_sql(events: str, leads: str, days: list[date] | None) -> str:
    """Events joined with their lead's product line, region, source and account (``sql.event_rows_sql``)."""
    where = ""
    if days is not None:
        where = "WHERE CAST(e.occurred_at AS DATE) IN (" + ", ".join(_date(d) for d in days) + ")"
    return (
        "SELECT e.id, e.type, e.lead_id, e.actor_id, e.occurred_at, e.payload, "
        "CAST(e.occurred_at AS DATE) AS day, l.product_line, l.region, l.source AS lead_source, l.account_id "
        f"FROM {events} e LEFT JOIN {leads} l ON l.id = e.lead_id {where}"
    )


def tiles_sql(dictionary: FeatureDictionary, rows: str, *, distinct: bool = False) -> str | None:
    """Daily tiles (or distinct-value tiles) over the view ``rows`` (see ``sql.tiles_sql``).

    LAST is the value of the latest event (occurred_at, then id) among those with a value, like DuckDB's
    ``arg_max`` (which skips NULL values); the orderings of NULL values are NULL, which ``max_by`` skips.
    """
    entries = _event_entries(dictionary, distinct=distinct)
    if not entries:
        return None
    types = sorted({t for b in dictionary.base_features if isinstance(b.source, EventSource) for t in b.source.events})
    matched = (
        f"SELECT day, occurred_at, id, {_bucket_case(dictionary)} AS pl_code, "
        f"explode(filter(array({', '.join(entries)}), x -> x IS NOT NULL)) AS m "
        f"FROM {rows} ev WHERE type IN ({', '.join(_quote(t) for t in types)})"
    )
    expanded = (
        "SELECT m.dim AS dim, m.k1 AS k1, m.k2 AS k2, m.base_id AS base_id, "
        "explode(CASE WHEN m.by_pl AND pl_code IS NOT NULL THEN array(0, pl_code) ELSE array(0) END) AS bucket, "
        f"day, occurred_at, id, m.v AS v FROM ({matched}) mm"
    )
    if distinct:
        return (
            "SELECT DISTINCT CAST(dim AS TINYINT) AS dim, k1, k2, CAST(base_id AS INT) AS base_id, "
            f"CAST(bucket AS TINYINT) AS bucket, day, v AS dvalue FROM ({expanded}) x WHERE v IS NOT NULL"
        )
    return (
        "SELECT CAST(dim AS TINYINT) AS dim, k1, k2, CAST(base_id AS INT) AS base_id, "
        "CAST(bucket AS TINYINT) AS bucket, day, count(*) AS cnt, sum(v) AS total, sum(v * v) AS sumsq, "
        "min(v) AS vmin, max(v) AS vmax, CAST(max(occurred_at) AS TIMESTAMP_NTZ) AS last_at, "
        "max_by(v, CASE WHEN v IS NOT NULL THEN named_struct('at', occurred_at, 'id', id) END) AS last_value "
        f"FROM ({expanded}) x GROUP BY dim, k1, k2, base_id, bucket, day"
    )


def _window_filter(window: str, day: date) -> str:
    days = WINDOWS[window][1]
    if days is None:
        return "TRUE"
    return f"day > {_date(day - timedelta(days=days))}"


def bands_sql(dictionary: FeatureDictionary, tiles: str, day: date) -> str:
    """The age-band aggregates of ``sql.window_plan`` over the view ``tiles``."""
    used: set[str] = set()
    for base in dictionary.base_features:
        if isinstance(base.source, EventSource) and any(f is not Function.DISTINCT_COUNT for f in base.functions):
            used.update(base.windows)
    ordered = sorted(used, key=lambda w: WINDOWS[w][0])
    band = "CASE " + " ".join(
        f"WHEN {_window_filter(w, day)} THEN {WINDOWS[w][0]}" for w in ordered if WINDOWS[w][1] is not None
    )
    band += f" ELSE {WINDOWS['all'][0] if 'all' in used else 0} END"
    first = sql.earliest_tile_day(dictionary, day)
    lower = f" AND day >= {_date(first)}" if first else ""
    return (
        "SELECT dim, k1, k2, base_id, bucket, band, CAST(sum(cnt) AS DOUBLE) AS c, sum(total) AS s, "
        "min(vmin) AS mn, max(vmax) AS mx, "
        "max_by(last_value, CASE WHEN last_value IS NOT NULL THEN last_at END) AS l, "
        "CAST(unix_micros(CAST(max(last_at) AS TIMESTAMP)) AS DOUBLE) / 1000000.0D AS a FROM ("
        f"SELECT *, {band} AS band FROM {tiles} WHERE day <= {_date(day)}{lower}) t "
        "WHERE band > 0 GROUP BY dim, k1, k2, base_id, bucket, band"
    )


def distinct_values_sql(dictionary: FeatureDictionary, source: str, day: date) -> str | None:
    """Long rows of every DISTINCT_COUNT feature over the view ``source`` (``sql.distinct_values_sql``)."""
    windows = {w for b in dictionary.base_features if Function.DISTINCT_COUNT in b.functions for w in b.windows}
    if not windows:
        return None
    aggregates, entries = [], []
    offset_base = FUNCTION_CODES[Function.DISTINCT_COUNT] * 10
    feature_id = "CAST(base_id AS INT) * 10000 + CAST(bucket AS INT) * 100"
    for window in sorted(windows, key=lambda w: WINDOWS[w][0]):
        code = WINDOWS[window][0]
        aggregates.append(f"count(DISTINCT dvalue) FILTER (WHERE {_window_filter(window, day)}) AS d{code}")
        entries.append(f"named_struct('f', {feature_id} + {offset_base + code}, 'v', CAST(d{code} AS DOUBLE))")
    return (
        "SELECT CAST(dim AS TINYINT) AS dim, CAST(k1 AS BIGINT) AS k1, CAST(k2 AS BIGINT) AS k2, "
        "CAST(x.f AS INT) AS feature_id, x.v AS value FROM ("
        f"SELECT dim, k1, k2, explode(array({', '.join(entries)})) AS x FROM ("
        f"SELECT dim, k1, k2, base_id, bucket, {', '.join(aggregates)} FROM {source} "
        f"WHERE day <= {_date(day)} GROUP BY dim, k1, k2, base_id, bucket) agg) w "
        "WHERE x.v IS NOT NULL AND x.v <> 0"
    )


def table_values_sql(dictionary: FeatureDictionary, views: Mapping[str, str], day: date) -> list[str]:
    """Long rows of table-sourced features (``views``: table -> view): rows created by the end of ``day``."""
    end = f"TIMESTAMP_NTZ '{(day + timedelta(days=1)).isoformat()} 00:00:00'"
    out = []
    for base in dictionary.base_features:
        source = base.source
        if not isinstance(source, TableSource):
            continue
        columns = {c: c for c in source.value.names}
        fid = base.id * 10_000 + FUNCTION_CODES[Function.LAST] * 10 + WINDOWS["all"][0]
        value = f"CAST({source.value.to_sql(columns, dialect=_DIALECT)} AS DOUBLE)"
        dim = sql.DIMENSION_CODES[TABLE_DIMENSION[source.table]]
        out.append(
            f"SELECT CAST({dim} AS TINYINT) AS dim, CAST(id AS BIGINT) AS k1, CAST(0 AS BIGINT) AS k2, "
            f"CAST({fid} AS INT) AS feature_id, v AS value FROM (SELECT id, {value} AS v FROM "
            f"{views[source.table]} WHERE created_at < {end}) t WHERE v IS NOT NULL AND v <> 0"
        )
    return out

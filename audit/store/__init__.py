"""The run directory, and the only code that reads or writes inside one.

``tables.RunStore`` holds the tables (atomic parquet parts, one row per key); ``manifest`` what a
run is and how far it got; ``lock`` and ``shard_record`` let many processes fill one run;
``status`` measures how far it got. Runs, imports and simulations write through it; analyses, the
report and the dashboard read through it.
"""

from audit.store.tables import (
    SCHEMA_VERSION,
    TABLE_KEYS,
    RunStore,
    write_atomic,
    write_json_atomic,
    write_parquet_atomic,
)

__all__ = [
    "SCHEMA_VERSION",
    "TABLE_KEYS",
    "RunStore",
    "write_atomic",
    "write_json_atomic",
    "write_parquet_atomic",
]

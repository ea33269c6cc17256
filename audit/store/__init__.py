"""The run directory, and the only code that reads or writes inside one.

``tables.RunStore`` holds the tables (atomic parquet parts, one row per key); ``manifest`` what a
run is and how far it got; ``lock`` and ``shard_record`` let many processes fill one run;
``status`` measures how far it got. Runs, imports and simulations write through it; analyses, the
report and the dashboard read through it.
"""

from audit.store.lock import LOCK_FILE, LOCK_FOLDER
from audit.store.manifest import SAMPLES_FILE
from audit.store.shard_record import SHARDS_FOLDER
from audit.store.tables import (
    ANALYSIS_FOLDER,
    CARD_JSON,
    CARD_MD,
    MANIFEST,
    MODEL_INDEX,
    REPORT_HTML,
    REPORT_MD,
    SCHEMA_VERSION,
    SUMMARY,
    TABLE_KEYS,
    RunStore,
    write_atomic,
    write_json_atomic,
    write_parquet_atomic,
)

#: Every name the store gives an entry of a run directory; no module outside ``audit.store``
#: joins one of them onto a path (``tests/test_store_layout.py`` checks).
RUN_DIR_ENTRIES = (
    MANIFEST,
    *TABLE_KEYS,
    ANALYSIS_FOLDER,
    SUMMARY,
    SHARDS_FOLDER,
    SAMPLES_FILE,
    LOCK_FILE,
    LOCK_FOLDER,
    REPORT_HTML,
    REPORT_MD,
    CARD_MD,
    CARD_JSON,
    MODEL_INDEX,
)

__all__ = [
    "RUN_DIR_ENTRIES",
    "SCHEMA_VERSION",
    "TABLE_KEYS",
    "RunStore",
    "write_atomic",
    "write_json_atomic",
    "write_parquet_atomic",
]

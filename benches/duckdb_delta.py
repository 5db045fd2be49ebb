"""The DuckDB delta extension from PyPI (`duckdb-extension-delta`, the file matching the
installed DuckDB), loaded by path: DuckDB downloads extensions from its own server, which
this project's machines cannot reach, so nothing is downloaded at run time."""

import glob
from pathlib import Path


def delta_extension() -> str:
    """Path of `delta.duckdb_extension` for the installed DuckDB version."""
    import duckdb
    import duckdb_extension_delta

    hits = glob.glob(str(Path(duckdb_extension_delta.__path__[0]) / "extensions" / f"v{duckdb.__version__}" / "**"
                         / "delta.duckdb_extension"), recursive=True)
    if not hits:
        raise RuntimeError(f"no delta extension for DuckDB {duckdb.__version__}; "
                           "pip install duckdb-extension-delta==" + duckdb.__version__)
    return hits[0]


def connect():
    """A DuckDB connection with the delta extension loaded (`delta_scan` available)."""
    import duckdb

    con = duckdb.connect()
    con.execute(f"LOAD '{delta_extension()}'")
    return con

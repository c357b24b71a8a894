"""What one SQL statement of a turn costs the server: SQLAlchemy Core against plain SQL.

The ledger's grant (``UPDATE ledger ... RETURNING``, ``chucky/server/sql/ledger.py``) on a SQLite
file, CPU time per execution (``time.process_time``), three ways:

* **Core, built per call**: the statement constructed with SQLAlchemy Core at every execution,
  as the store did before it spoke plain SQL (then cache-keyed and compiled, or found in the
  compiled cache);
* **Core, built once**: the same statement built once with bound parameters, executed through
  the SQLAlchemy connection (cache key and execution context per call);
* **plain SQL, sqlite3**: the text the store runs now (``ledger._GRANT``), handed to the
  ``sqlite3`` connection underneath.

    python bench/bench_sql.py [--quick]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from collections.abc import Callable
from typing import Any

from _harness import fmt, machine, ratio, table
from sqlalchemy import BigInteger, and_, bindparam, case, create_engine, literal, update

from chucky.server.sql.ledger import _GRANT
from chucky.server.sql.schema import ledger, metadata

PARAMS: dict[str, Any] = {
    "project_id": "p",
    "user_id": "u",
    "window": "lifetime",
    "kind": "ai",
    "want": 1,
    "limit": 10**12,
    "minimum": 1,
}


def _grant(want: Any, limit: Any, minimum: Any) -> Any:
    available = limit - ledger.c.used - ledger.c.reserved
    granted = case((want <= available, want), else_=available)
    key = and_(
        ledger.c.project_id == "p",
        ledger.c.user_id == "u",
        ledger.c.window == "lifetime",
        ledger.c.kind == "ai",
    )
    return (
        update(ledger)
        .where(key, available >= minimum)
        .values(reserved=ledger.c.reserved + granted, last_grant=granted)
        .returning(ledger.c.used, ledger.c.reserved, ledger.c.last_grant)
    )


def _cpu_us(run: Callable[[], object], n: int) -> float:
    for _ in range(min(n, 200)):
        run()
    started = time.process_time()
    for _ in range(n):
        run()
    return (time.process_time() - started) / n * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--statements", type=int, default=20_000)
    parser.add_argument("--quick", action="store_true", help="a short smoke run")
    args = parser.parse_args()
    n = 300 if args.quick else args.statements
    with tempfile.TemporaryDirectory() as directory:
        engine = create_engine(f"sqlite:///{directory}/bench.db")
        metadata.create_all(engine)
        with engine.begin() as connection:
            connection.exec_driver_sql(
                "INSERT INTO ledger VALUES ('p', 'u', 'lifetime', 'ai', 0, 0, 0)"
            )
        built_once = _grant(
            bindparam("want", type_=BigInteger),
            bindparam("limit", type_=BigInteger),
            bindparam("minimum", type_=BigInteger),
        )
        once_params = {"want": 1, "limit": 10**12, "minimum": 1}
        with engine.connect() as connection:
            driver = connection.connection.driver_connection
            assert driver is not None
            rows = [
                (
                    "Core, built per call",
                    lambda: connection.execute(
                        _grant(
                            literal(1, BigInteger),
                            literal(10**12, BigInteger),
                            literal(1, BigInteger),
                        )
                    ).one(),
                ),
                ("Core, built once", lambda: connection.execute(built_once, once_params).one()),
                ("plain SQL, sqlite3", lambda: driver.execute(_GRANT.text, PARAMS).fetchall()),
            ]
            results = [(label, _cpu_us(run, n)) for label, run in rows]
            connection.rollback()
        engine.dispose()
    base = results[-1][1]
    print(f"{n} executions each, one transaction; {machine()}")
    print(
        table(
            ["the ledger's grant statement", "CPU µs per execution", "vs plain SQL"],
            [[label, fmt(us, 1), ratio(us, base)] for label, us in results],
        )
    )


if __name__ == "__main__":
    main()

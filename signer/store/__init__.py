"""The state store.

``records`` (the values and errors every backend reads and writes) and
``protocols`` (one interface per use case; ``Store`` is their union) are the
package's surface. A backend implements ``protocols.Store`` and persists the audit
records that :func:`paywarden.signer.auditlog.append.append` builds, in the
transaction of the change each describes. The SQLite backend: ``schema`` (DDL and
migrations), ``sqlite_connection`` (connection, locks, health probe),
``sqlite_reads`` (shared queries and the read-only readers offline tools use),
``sqlite_tx`` (writes inside a transaction) and ``sqlite`` (``SqliteStore``).
Offline tools read either backend through ``offline_reads`` (``sqlite_reads`` or
``postgres_reads``); ``sqlite_to_postgres`` copies a SQLite store into PostgreSQL.
"""

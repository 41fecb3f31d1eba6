"""The SQL the two backends share, and the checks that read rows back inside a transaction."""

from __future__ import annotations

from models.position import Position
from store.ports import StaleWriteError, StoreError
from store.sql_rows import Tx, decode_position

POSITION_COLUMNS = ("account", "position_id", "entry_order_no", "segment", "security_id",
                    "side", "status", "version", "created_at", "opened_at", "exited_at",
                    "updated_at", "data", "closed_plain")
"""The account leads, then the position id: the key (a position id is unique per account)."""
UPSERT_POSITION = (
    f"INSERT INTO positions ({', '.join(POSITION_COLUMNS)}) "
    f"VALUES ({', '.join('?' for _ in POSITION_COLUMNS)}) "
    "ON CONFLICT (account, position_id) DO UPDATE SET "
    + ", ".join(f"{c} = excluded.{c}" for c in POSITION_COLUMNS[2:])
    + " WHERE positions.version < excluded.version")
UPDATE_NEWER_POSITION = (
    "UPDATE positions SET "
    + ", ".join(f"{c} = ?" for c in POSITION_COLUMNS[2:])
    + " WHERE account = ? AND position_id = ? AND version < ?")
"""The marks write of one position (``Store.save_marks``): only over an older version."""
INSERT_ORDER_UPDATE = ("INSERT INTO order_updates (account, received_at, order_no, accepted, "
                       "reason, raw) VALUES (?, ?, ?, ?, ?, ?)")


def schema_version_of(tx: Tx) -> int:
    row = tx.one("SELECT COALESCE(MAX(version), 0) FROM schema_version")
    return int(row[0]) if row else 0


def check_not_stale(tx: Tx, account: str, position: Position) -> None:
    """After an upsert that changed nothing: the same write again is fine, anything else is
    a writer that lost the race (an older version, or another content at the same version)."""
    row = tx.one("SELECT version, data FROM positions WHERE account = ? AND position_id = ?",
                 (account, position.position_id))
    if row is None:
        raise StoreError(f"position {position.position_id} was neither inserted nor found")
    stored = int(row[0])
    if stored == position.version and decode_position(row[1]) == position:
        return
    what = "different content at the same version" if stored == position.version else \
        f"version {stored}"
    raise StaleWriteError(f"position {position.position_id}: write of version "
                          f"{position.version} refused, the store holds {what}")

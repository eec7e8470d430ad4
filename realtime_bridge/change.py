"""The domain record every source produces: one captured row change.

A `Change` is what Postgres said happened, numbered by `seq` (gap-free,
commit order). It knows nothing about channels or clients; plugins turn it
into events.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any, Literal

Operation = Literal["INSERT", "UPDATE", "DELETE", "BROADCAST"]
Row = dict[str, Any]


@dataclass(frozen=True, slots=True)
class Change:
    """One row change (or one published event) at position `seq` in the log.

    For INSERT `record` is the new row and `old_record` is None; for UPDATE
    both are set; for DELETE only `old_record`. A BROADCAST carries the
    published payload in `record` and names its `channel` and `event`.
    """

    seq: int
    operation: Operation
    schema: str | None
    table: str | None
    record: Row | None
    old_record: Row | None
    committed_at: datetime
    channel: str | None = None
    event: str | None = None
    outbox_id: int | None = None
    # The writing transaction's 32-bit id (None: unknown), which snapshots compare.
    xid: int | None = None

    @property
    def qualified_table(self) -> str | None:
        if self.table is None:
            return None
        return f"{self.schema or 'public'}.{self.table}"

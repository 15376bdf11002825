"""Reading message bodies back: whole (`read`), or as a file to stream from (`open_to_file`).

Contract. A message up to 1 MiB is one `bodies` bytea; a spooled one is `body_chunks` rows of
256 KiB (`engine.store.postgres.accept`). `read` returns the bytes of either (a large message
whole: the caller asked for bytes). `open_to_file` returns a readable binary file positioned
at the start: a small message as a BytesIO; a large one as an anonymous temporary file in the
node's spool directory (`tempfile.TemporaryFile`: O_TMPFILE, no name, gone when closed or when
the process dies), filled by streaming the chunk rows of ONE statement (one consistent snapshot,
single-row mode: one chunk in memory at a time).

Why a local file and not a reader fetching chunks on demand: `BinaryIO.read` is synchronous,
called from the relay's event loop while it sends to a remote server at that server's pace;
a lazy reader would have to block the loop on the database or hold a pooled connection (and a
snapshot, so that a purge or another node finishing the delivery cannot tear the message
mid-stream) for as long as the slowest remote takes. The copy costs one sequential local write
per large message, and the memory budget of the spooled path still holds (one chunk at a time).
"""

from __future__ import annotations

import io
import tempfile
from pathlib import Path
from typing import BinaryIO

from engine.store.postgres.connection import Conn


async def read(conn: Conn, queue_id: str) -> bytes | None:
    """The raw message, or None when it is not stored."""
    row = await (await conn.execute("SELECT raw FROM bodies WHERE queue_id = %s", (queue_id,))).fetchone()
    if row is not None:
        return bytes(row[0])
    cur = await conn.execute("SELECT data FROM body_chunks WHERE queue_id = %s ORDER BY seq", (queue_id,))
    pieces = [bytes(piece) for (piece,) in await cur.fetchall()]
    return b"".join(pieces) if pieces else None


async def open_to_file(conn: Conn, queue_id: str, spool_dir: Path) -> BinaryIO | None:
    """The raw message as a file positioned at its start (module docstring), or None."""
    row = await (await conn.execute("SELECT raw FROM bodies WHERE queue_id = %s", (queue_id,))).fetchone()
    if row is not None:
        return io.BytesIO(row[0])
    copy: BinaryIO | None = None
    try:
        async with conn.cursor() as cur:
            async for (piece,) in cur.stream("SELECT data FROM body_chunks WHERE queue_id = %s ORDER BY seq",
                                             (queue_id,)):
                if copy is None:
                    copy = tempfile.TemporaryFile(dir=spool_dir)  # noqa: SIM115 (handed to the caller)
                copy.write(piece)
    except BaseException:
        if copy is not None:
            copy.close()
        raise
    if copy is not None:
        copy.seek(0)
    return copy

"""The serve process.

- `service`: listeners, store, relay child, hot reload, shutdown;
- `frontend`: the STARTTLS context, the shared sockets, the SMTP servers of one process;
- `workers`: the pre-fork SMTP processes of `--workers N`;
- `gitsync`: policy releases fetched from git (also `liveprism sync`);
- `privileges`: `--user`, dropping root;
- `aio`, `malloc`: event loop and allocator settings, shared with the relay child.
"""

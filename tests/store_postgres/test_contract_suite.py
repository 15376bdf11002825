"""The existing store contract tests (tests/unit/test_store.py, or tests/store/ once moved), run
unchanged against PostgresStore.

They run on SQLite where they live; here the same functions run with their three helpers
pointed at PostgreSQL: `opened(state)` opens a PostgresStore on a database of its own per state
directory (a node id per role: the owner, or a reviewer for `owner=False`), `db_rows(state, sql)`
runs their SQL (`?` placeholders) through an independent connection to that database, and
`stored_bodies(state)` reads the committed bodies (bytea rows and chunked ones). The schema's
table and column names are those of the embedded store, so their row checks hold as written.

Contract tests that cannot run here, and why (their contract is covered on BOTH backends by
test_store_both.py, or on PostgreSQL by test_cluster.py, as noted):

- test_accept_commits_message_and_every_row_before_returning: asserts SQLite's WAL journal mode
  (`PRAGMA journal_mode`) and the owner's recovery report → test_store_both.py
  test_accept_is_committed_before_it_returns.
- test_a_failing_operation_does_not_undo_its_batch: expects SQLite's error wording ("UNIQUE
  constraint failed"), and a record for an unknown delivery to raise, where PostgreSQL counts it as
  a stale record (the delivery may have been finished by another node) → test_store_both.py
  test_a_duplicate_fails_alone_in_its_batch, test_cluster.py test_a_late_record_...
- test_every_submitted_operation_is_settled: drives the SQLite writer thread's private `_submit`
  with callables on a sqlite3 transaction.
- test_one_owner_at_a_time, test_non_owners_never_run_recovery: the state-directory owner lock
  and the owner's recovery; a cluster has no owner (`lock_fd` is None).
- test_in_flight_deliveries_are_due_again_after_a_crash: expects the owner's `open` to requeue;
  on PostgreSQL the relay's `requeue_inflight` does it for its own node, and leases expire for
  others → test_store_both.py test_in_flight_deliveries_are_due_again_after_a_restart,
  test_cluster.py lease tests.
- test_kill_9_loses_nothing_acknowledged: its child process opens the SQLite store of a state
  directory → test_cluster.py test_kill_9_loses_nothing_acknowledged (the same on PostgreSQL).
- test_store_refuses_a_newer_schema: sets SQLite's `PRAGMA user_version` → test_cluster.py
  test_a_newer_schema_is_refused.
- test_queue_ids_are_unique_time_sortable_and_alphanumeric: no store involved.

Other store test modules: test_loop_store.py runs here too (its `open_store` pointed at
PostgreSQL). test_store_body_files.py checks the `bodies/` directory and `body_files` table of the
embedded store (PostgreSQL keeps large bodies in chunk rows: test_store_both.py covers the
spooled path on both); test_store_queue_cli.py and test_store_quarantine_cli.py go through the
CLI's `--state` directory, which selects SQLite until the CLI is wired to `storage.url`.
"""

from __future__ import annotations

import importlib
import inspect
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

from engine.store.postgres import PostgresStore
from engine.store.postgres.local_cluster import LocalCluster
from tests.store_postgres.conftest import create_database, drop_database, pg_rows

RUN_ON_POSTGRES = (
    "test_message_nothing_references_is_not_stored",
    "test_outbound_copies_are_routed_by_recipient_domain",
    "test_a_released_outbound_copy_goes_to_the_mx_of_each_recipient_domain",
    "test_concurrent_accepts_are_group_committed",
    "test_a_batch_of_accepts_stores_exactly_the_rows_of_one_by_one_accepts",
    "test_write_failure_raises_store_error",
    "test_record_attempt_reschedules_then_finishes_and_deletes_the_file",
    "test_dsn_is_stored_in_the_same_transaction_as_the_bounce",
    "test_quarantine_list_release_delete",
    "test_release_by_another_connection_is_claimed_by_the_owner",
    "test_purge_expired_archive_and_quarantine",
    "test_verdicts_round_trip_as_json",
)
SQLITE_ONLY = (  # the module docstring says why, and where their contract is covered
    "test_accept_commits_message_and_every_row_before_returning",
    "test_a_failing_operation_does_not_undo_its_batch",
    "test_every_submitted_operation_is_settled",
    "test_one_owner_at_a_time",
    "test_non_owners_never_run_recovery",
    "test_in_flight_deliveries_are_due_again_after_a_crash",
    "test_kill_9_loses_nothing_acknowledged",
    "test_store_refuses_a_newer_schema",
    "test_queue_ids_are_unique_time_sortable_and_alphanumeric",
)


def contract_module(name: str) -> ModuleType:
    """The contract test module `name`, wherever the store tests live now."""
    for package in ("tests.store", "tests.unit"):
        try:
            return importlib.import_module(f"{package}.{name}")
        except ModuleNotFoundError as exc:
            if exc.name not in (f"{package}.{name}", package):
                raise
    pytest.skip(f"{name} not found under tests/store or tests/unit")


class PostgresStates:
    """The contract tests' state directories, each mapped to a database of its own."""

    def __init__(self, cluster: LocalCluster) -> None:
        self.cluster = cluster
        self.urls: dict[Path, str] = {}

    def url(self, state: Path) -> str:
        if state not in self.urls:
            self.urls[state] = create_database(self.cluster)
        return self.urls[state]

    async def opened(self, state: Path, *, owner: bool = True) -> PostgresStore:
        store = PostgresStore(self.url(state), node_id="owner" if owner else "reviewer", spool_dir=state / "spool")
        await store.open()
        return store

    def db_rows(self, state: Path, sql: str, *args: Any) -> list[tuple[Any, ...]]:
        return pg_rows(self.url(state), sql, *args)

    def stored_bodies(self, state: Path) -> dict[str, bytes]:
        rows = pg_rows(self.url(state), "SELECT queue_id, raw FROM bodies UNION ALL SELECT queue_id,"
                       " string_agg(data, ''::bytea ORDER BY seq) FROM body_chunks GROUP BY queue_id")
        return {qid: bytes(raw) for qid, raw in rows}

    def drop(self) -> None:
        for url in self.urls.values():
            drop_database(self.cluster, url)


@pytest.fixture
def pg_states(pg_cluster: LocalCluster) -> Any:
    states = PostgresStates(pg_cluster)
    try:
        yield states
    finally:
        states.drop()


def test_every_contract_test_is_accounted_for() -> None:
    """A contract test added later runs here too, or is listed (with its reason) as SQLite-only."""
    module = contract_module("test_store")
    names = {name for name, value in vars(module).items() if name.startswith("test_") and callable(value)}
    assert names - set(RUN_ON_POSTGRES) - set(SQLITE_ONLY) == set()


@pytest.mark.parametrize("name", RUN_ON_POSTGRES)
def test_contract_on_postgres(name: str, pg_states: PostgresStates, tmp_path: Path,
                              monkeypatch: pytest.MonkeyPatch) -> None:
    module = contract_module("test_store")
    test = getattr(module, name, None)
    if test is None:
        pytest.skip(f"{name} is no longer in {module.__name__}")
    for helper in ("opened", "db_rows", "stored_bodies"):
        monkeypatch.setattr(module, helper, getattr(pg_states, helper))
    available = {"tmp_path": tmp_path, "monkeypatch": monkeypatch}
    test(**{arg: available[arg] for arg in inspect.signature(test).parameters})
    assert pg_states.urls, "the test never opened a store: it did not run against PostgreSQL"


def test_loop_store_on_postgres(pg_states: PostgresStates, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    module = contract_module("test_loop_store")

    def open_store(state: Path) -> PostgresStore:
        return PostgresStore(pg_states.url(state), node_id="owner", spool_dir=state / "spool")

    monkeypatch.setattr(module, "open_store", open_store)
    module.test_only_a_copy_back_to_its_own_recipients_in_the_same_direction_is_returned(tmp_path)
    assert pg_states.urls

"""The user-state store on SQLite, and on PostgreSQL when TAPPER_TEST_PG_URL names a server
(scripts/start_postgres.sh starts one and prints the URL)."""

from __future__ import annotations

import threading

import pytest
import torch
from test_serve_support import PG_URL, fresh_store_url

from tapper.store import (
    NewRecord,
    RecordConflict,
    StoreError,
    UserGone,
    UserStateCache,
    UserStore,
    decode_row,
    encode_row,
)

BACKENDS = ["sqlite", pytest.param("postgresql", marks=pytest.mark.skipif(not PG_URL, reason="no TAPPER_TEST_PG_URL"))]


@pytest.fixture(params=BACKENDS)
def db_url(request, tmp_path):
    with fresh_store_url(request.param, tmp_path) as url:
        yield url


@pytest.fixture
def store(db_url):
    s = UserStore(db_url)
    s.bind_row_size(4)
    yield s
    s.close()


def rec(rid: str, text: str = "t", day: float | None = 1.0, **extra) -> NewRecord:
    return NewRecord(rid, {"text": text, **extra}, day)


def test_append_is_idempotent_by_record_id(store):
    first = store.append_records("acme", "u", [rec("a"), rec("b", day=2.0)])
    again = store.append_records("acme", "u", [rec("a"), rec("b", day=2.0), rec("c", day=3.0)])
    assert (first.added, first.duplicates, first.total) == (2, 0, 2)
    assert (again.added, again.duplicates, again.total) == (1, 2, 3)
    head = store.user_head("acme", "u")
    assert head.record_count == 3 and head.history_version == 2


def test_a_changed_record_is_a_conflict_and_nothing_of_the_batch_is_stored(store):
    store.append_records("acme", "u", [rec("a", "first")])
    with pytest.raises(RecordConflict, match="'a'"):
        store.append_records("acme", "u", [rec("new"), rec("a", "second")])
    with pytest.raises(RecordConflict, match="twice"):
        store.append_records("acme", "u", [rec("x", "one"), rec("x", "two")])
    _, history = store.load_history(store.user_head("acme", "u").uid)
    assert [(it.id, it.text) for it in history] == [("a", "first")]


def test_history_is_ordered_by_day_then_posting_order_and_by_posting_order_when_a_date_is_missing(store):
    store.append_records("acme", "dated", [rec("late", day=9.0), rec("early", day=1.0), rec("tie", day=9.0)])
    _, history = store.load_history(store.user_head("acme", "dated").uid)
    assert [it.id for it in history] == ["early", "late", "tie"]
    store.append_records("acme", "mixed", [rec("late", day=9.0), rec("undated", day=None), rec("early", day=1.0)])
    _, history = store.load_history(store.user_head("acme", "mixed").uid)
    assert [it.id for it in history] == ["late", "undated", "early"]
    assert history[0].fields == {"text": "t"} and history[1].day is None


def test_tenants_are_separate_namespaces(store):
    store.append_records("acme", "u", [rec("a")])
    store.append_records("globex", "u", [rec("b"), rec("c")])
    assert store.user_head("acme", "u").record_count == 1
    assert store.user_head("globex", "u").record_count == 2
    assert store.user_head("initech", "u") is None
    assert store.delete_user("acme", "u") and store.user_head("globex", "u").record_count == 2


def test_rows_round_trip_as_float32_with_size_and_version(store):
    store.append_records("acme", "u", [rec("a")])
    head = store.user_head("acme", "u")
    assert store.load_row(head.uid, 4) == (0, None)
    job, _ = store.start_job("acme", "u", head.uid, total=3)
    row = torch.tensor([0.5, -1.25, 3.0, 1e-3], dtype=torch.float64)
    assert store.finish_refresh(job.id, head.uid, row, head.history_version) == 1
    version, loaded = store.load_row(head.uid, 4)
    assert version == 1 and loaded.dtype == torch.float32
    assert torch.equal(loaded, row.float())
    assert store.get_job("acme", job.id).status == "done"
    assert store.user_head("acme", "u").row_history_version == head.history_version


def test_row_size_is_checked(store, db_url):
    with pytest.raises(StoreError, match="another run"):
        store.bind_row_size(5)
    data, size = encode_row(torch.ones(4))
    assert size == 4 and len(data) == 16
    with pytest.raises(StoreError, match="expects 6"):
        decode_row(data, size, 6, "user 'u'")
    with pytest.raises(StoreError, match="corrupt"):
        decode_row(data[:-1], size, 4, "user 'u'")
    with pytest.raises(StoreError, match="NaN"):
        encode_row(torch.tensor([1.0, float("nan")]))


def test_a_refresh_never_writes_into_a_deleted_or_recreated_user(store):
    store.append_records("acme", "u", [rec("a")])
    old = store.user_head("acme", "u")
    job, _ = store.start_job("acme", "u", old.uid, total=1)
    assert store.delete_user("acme", "u")
    store.append_records("acme", "u", [rec("b")])  # same name, new incarnation
    with pytest.raises(UserGone):
        store.finish_refresh(job.id, old.uid, torch.ones(4), old.history_version)
    new = store.user_head("acme", "u")
    assert new.uid != old.uid and store.load_row(new.uid, 4) == (0, None)
    assert store.get_job("acme", job.id) is None  # jobs are forgotten with their user


def test_delete_forgets_everything(store):
    store.append_records("acme", "u", [rec("a"), rec("b")])
    head = store.user_head("acme", "u")
    job, _ = store.start_job("acme", "u", head.uid, total=1)
    store.finish_refresh(job.id, head.uid, torch.ones(4), head.history_version)
    assert store.delete_user("acme", "u")
    assert not store.delete_user("acme", "u")
    assert store.user_head("acme", "u") is None and store.count_users() == 0
    with pytest.raises(UserGone):
        store.load_history(head.uid)
    with store.db.transaction(read_only=True) as cur:
        assert cur.execute("SELECT COUNT(*) FROM records").one()[0] == 0
        assert cur.execute("SELECT COUNT(*) FROM jobs").one()[0] == 0


def test_jobs_are_deduplicated_per_user_and_scoped_to_their_tenant(store):
    store.append_records("acme", "u", [rec("a")])
    uid = store.user_head("acme", "u").uid
    job, created = store.start_job("acme", "u", uid, total=5)
    same, created_again = store.start_job("acme", "u", uid, total=5)
    assert created and not created_again and same.id == job.id
    store.update_job(job.id, status="running", step=2, total=5, loss=0.5)
    seen = store.get_job("acme", job.id)
    assert (seen.status, seen.step, seen.total, seen.loss) == ("running", 2, 5, 0.5)
    assert store.get_job("globex", job.id) is None
    assert store.fail_stale_jobs(3600.0) == 0  # just updated: not stale
    assert store.fail_stale_jobs(0.0) == 1
    failed = store.get_job("acme", job.id)
    assert failed.status == "failed" and "interrupted" in failed.error
    fresh, created = store.start_job("acme", "u", uid, total=5)
    assert created  # a failed job does not block a new one
    assert store.claim_job(fresh.id) and not store.claim_job(fresh.id)  # queued -> running, once
    replaced, created = store.start_job("acme", "u", uid, total=5, stale_after_s=0.0)
    assert created and replaced.id != fresh.id  # a job that stopped moving is taken for dead
    assert store.get_job("acme", fresh.id).status == "failed"


def test_api_keys_map_hashes_to_tenants(store):
    store.add_api_key("acme", "h1")
    assert store.tenant_for_key("h1") == "acme" and store.tenant_for_key("h2") is None


def test_cache_serves_current_state_and_sees_other_replicas_changes(store, db_url):
    cache = UserStateCache(store, max_users=2, row_size=4)
    assert cache.get("acme", "u") is None
    store.append_records("acme", "u", [rec("a")])
    first = cache.get("acme", "u")
    assert [it.id for it in first.history] == ["a"] and first.row is None
    assert cache.get("acme", "u") is first and cache.hits == 1
    replica = UserStore(db_url)  # a second process on the same database
    try:
        replica.append_records("acme", "u", [rec("b", day=2.0)])
        assert [it.id for it in cache.get("acme", "u").history] == ["a", "b"]
        head = replica.user_head("acme", "u")
        job, _ = replica.start_job("acme", "u", head.uid, total=1)
        replica.finish_refresh(job.id, head.uid, torch.full((4,), 2.0), head.history_version)
        assert torch.equal(cache.get("acme", "u").row, torch.full((4,), 2.0))
        replica.delete_user("acme", "u")
    finally:
        replica.close()
    assert cache.get("acme", "u") is None and len(cache) == 0
    for name in ("x", "y", "z"):
        store.append_records("acme", name, [rec("a")])
        cache.get("acme", name)
    assert len(cache) == 2  # bounded


def test_concurrent_appends_to_one_user_get_distinct_positions(store):
    errors: list[BaseException] = []

    def worker(n: int) -> None:
        try:
            for i in range(5):
                store.append_records("acme", "u", [rec(f"w{n}-{i}", day=float(i))])
        except BaseException as e:  # surfaced below
            errors.append(e)

    threads = [threading.Thread(target=worker, args=(n,)) for n in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert not errors
    _, history = store.load_history(store.user_head("acme", "u").uid)
    assert len(history) == 20 and len({it.position for it in history}) == 20


def test_bad_urls_are_refused_with_a_clear_message(tmp_path):
    with pytest.raises(StoreError, match="unsupported store URL"):
        UserStore("mysql://x")
    with pytest.raises(StoreError, match="names no file"):
        UserStore("sqlite:///")


@pytest.mark.skipif(not PG_URL, reason="no TAPPER_TEST_PG_URL")
def test_a_dropped_postgresql_connection_is_replaced_on_the_next_call(tmp_path):
    import psycopg

    with fresh_store_url("postgresql", tmp_path) as url:
        store = UserStore(url)
        try:
            with psycopg.connect(PG_URL, autocommit=True) as admin:
                admin.execute("SELECT pg_terminate_backend(%s)", (store.db._conn().info.backend_pid,))
            with pytest.raises(psycopg.OperationalError):
                store.count_users()  # the request that meets the dead connection fails...
            assert store.count_users() == 0  # ...and the next one reconnects
        finally:
            store.close()


# ---- forgetting leaves nothing on disk (SQLite) ------------------------------------------------------------

MARKER = "zq-forget-marker-7c1e"
ROW_VALUE = 6.71875  # exact in float32: its bytes are searched for


def _store_files(directory) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(directory.iterdir()) if p.name.startswith("forget.db")}


def _holding(files: dict[str, bytes], needles: dict[str, bytes]) -> dict[str, list[str]]:
    """{what: [files holding it]} for every needle found anywhere."""
    found = {what: [name for name, data in files.items() if needle in data] for what, needle in needles.items()}
    return {what: names for what, names in found.items() if names}


def _seed_victim(store: UserStore) -> dict[str, bytes]:
    """A user with the marker in short and long (overflow-page) records and a fitted row; and a bystander."""
    long_text = (MARKER + " ") * 600  # ~13 KB: spills onto overflow pages
    store.append_records("acme", "victim-4b1d", [rec(f"v{i}", f"{MARKER} review {i}", day=float(i)) for i in range(5)])
    store.append_records("acme", "victim-4b1d", [rec("long", long_text, day=9.0)])
    store.append_records("acme", "bystander", [rec("b1", "still here", day=1.0)])
    head = store.user_head("acme", "victim-4b1d")
    job, _ = store.start_job("acme", "victim-4b1d", head.uid, total=1)
    row = torch.full((4,), ROW_VALUE)
    store.finish_refresh(job.id, head.uid, row, head.history_version)
    return {"marker": MARKER.encode(), "user id": b"victim-4b1d", "uid": head.uid.encode(),
            "row bytes": encode_row(row)[0]}


def test_forget_leaves_no_trace_in_any_sqlite_file(tmp_path):
    store = UserStore(f"sqlite:///{tmp_path / 'forget.db'}")
    store.bind_row_size(4)
    try:
        needles = _seed_victim(store)
        assert set(_holding(_store_files(tmp_path), needles)) == set(needles)  # the search finds them before
        assert store.delete_user("acme", "victim-4b1d")
        files = _store_files(tmp_path)
        assert _holding(files, needles) == {}, "a forgotten user's bytes are still on disk"
        assert len(files.get("forget.db-wal", b"")) == 0  # checkpointed and truncated before delete_user returned
        assert any(b"still here" in data for data in files.values())  # and only that user went
        assert [it.id for it in store.load_history(store.user_head("acme", "bystander").uid)[1]] == ["b1"]
    finally:
        store.close()
    assert _holding(_store_files(tmp_path), needles) == {}
    assert set(_store_files(tmp_path)) == {"forget.db"}  # a clean close removes the WAL and shared-memory files


@pytest.mark.parametrize("weakened", ["secure_delete off", "no checkpoint"])
def test_without_secure_delete_or_the_checkpoint_the_text_would_stay(tmp_path, monkeypatch, weakened):
    """The two measures are each needed: the check above fails without either of them."""
    store = UserStore(f"sqlite:///{tmp_path / 'forget.db'}")
    store.bind_row_size(4)
    try:
        needles = _seed_victim(store)
        store.db.checkpoint()  # the victim's pages now live in the main file
        if weakened == "secure_delete off":
            store.db._conn().execute("PRAGMA secure_delete=OFF")  # this thread's connection runs the delete
        else:
            monkeypatch.setattr(store.db, "checkpoint", lambda: True)
        assert store.delete_user("acme", "victim-4b1d")
        assert "marker" in _holding(_store_files(tmp_path), needles)
    finally:
        monkeypatch.undo()
        store.close()


def test_sqlite_store_files_are_private_and_a_closed_store_refuses_calls(tmp_path, caplog):
    store = UserStore(f"sqlite:///{tmp_path / 'forget.db'}")
    store.append_records("acme", "u", [rec("a")])
    modes = {p.name: p.stat().st_mode & 0o777 for p in tmp_path.iterdir()}
    assert modes == {"forget.db": 0o600, "forget.db-wal": 0o600, "forget.db-shm": 0o600}
    store.close()
    with pytest.raises(StoreError, match="closed"):
        store.count_users()
    (tmp_path / "forget.db").chmod(0o644)
    with caplog.at_level("WARNING", logger="tapper.store.dialect"):
        UserStore(f"sqlite:///{tmp_path / 'forget.db'}").close()
    assert "mode 0644: other users can read it" in caplog.text


def test_urls_in_messages_hide_the_password():
    from tapper.store.dialect import Database

    db = Database.__new__(Database)
    db.url = "postgresql://app:s3cret@db.internal:5432/tapper"
    assert db.display_url == "postgresql://app:***@db.internal:5432/tapper"
    db.url = "sqlite:///tmp/x.db"
    assert db.display_url == "sqlite:///tmp/x.db"

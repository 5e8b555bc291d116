"""The private servers of tests/services.py really stop, start, die and come back.

No Django database here (no `db` fixture), and no marker: they run in every suite run, on
SQLite and on PostgreSQL alike, and skip only when the server binaries are not installed.
"""

from __future__ import annotations

import psycopg2
import pytest
import redis


def _connect(url: str):
    return psycopg2.connect(url, connect_timeout=3)


def test_postgres_is_private(private_postgres):
    assert private_postgres.port != 5432
    with _connect(private_postgres.url) as conn, conn.cursor() as cur:
        cur.execute("SELECT current_setting('port')::int, current_setting('fsync')")
        assert cur.fetchone() == (private_postgres.port, "off")


def test_postgres_keeps_data_across_stop_and_start(private_postgres):
    conn = _connect(private_postgres.url)
    with conn, conn.cursor() as cur:
        cur.execute("CREATE TABLE note (body text)")
        cur.execute("INSERT INTO note VALUES ('kept')")
    conn.close()

    private_postgres.stop()
    with pytest.raises(psycopg2.OperationalError):
        _connect(private_postgres.url)

    private_postgres.start()
    with _connect(private_postgres.url) as conn, conn.cursor() as cur:
        cur.execute("SELECT body FROM note")
        assert cur.fetchall() == [("kept",)]


def test_postgres_recovers_from_kill(private_postgres):
    url = private_postgres.createdb("faults")
    conn = _connect(url)
    conn.autocommit = True
    cur = conn.cursor()
    cur.execute("CREATE TABLE note (n int)")
    cur.executemany("INSERT INTO note VALUES (%s)", [(n,) for n in range(100)])

    private_postgres.kill()
    # The open connection is dead, and so is the server.
    with pytest.raises(psycopg2.OperationalError):
        cur.execute("SELECT 1")
    with pytest.raises(psycopg2.OperationalError):
        _connect(url)

    private_postgres.start()  # crash recovery replays the WAL
    with _connect(url) as conn, conn.cursor() as cur:
        cur.execute("SELECT count(*) FROM note")
        assert cur.fetchone() == (100,)  # every committed row
    assert "database system was interrupted" in private_postgres.output()


def test_postgres_immediate_stop_and_restart(private_postgres):
    private_postgres.stop("immediate")
    assert not private_postgres.running
    private_postgres.restart()
    with _connect(private_postgres.url) as conn, conn.cursor() as cur:
        cur.execute("SELECT 1")
        assert cur.fetchone() == (1,)


def test_redis_stop_and_start(private_redis):
    assert private_redis.port != 6379
    client = redis.Redis.from_url(private_redis.url, socket_timeout=2)
    client.set("greeting", "hello")
    assert client.get("greeting") == b"hello"

    private_redis.stop()
    with pytest.raises(redis.ConnectionError):
        client.ping()

    private_redis.start()
    assert client.ping()  # the same client reconnects to the same port
    assert client.get("greeting") is None  # no persistence: a restart is an empty Redis
    client.set("greeting", "again")
    assert client.get("greeting") == b"again"


def test_redis_recovers_from_kill(private_redis):
    client = redis.Redis.from_url(private_redis.url, socket_timeout=2)
    client.set("k", "v")
    private_redis.kill()
    with pytest.raises(redis.ConnectionError):
        client.get("k")
    private_redis.start()
    assert client.set("k", "v2")
    assert client.get("k") == b"v2"

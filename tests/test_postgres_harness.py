"""The test kit's throwaway PostgreSQL (the ground for PostgreSQL storage and the active/standby pair, issue 17):
a real server from Debian's package, on 127.0.0.1 and a Unix socket under the test's tmp dir, removed afterwards."""

from __future__ import annotations

import socket

from bot.testing.postgres import PostgresCluster
from bot.testing.tools import require_tool


def test_a_cluster_starts_serves_survives_a_crash_and_is_removed(tmp_path):
    require_tool(PostgresCluster.available(), "PostgreSQL is not installed (apt-get install postgresql)")
    with PostgresCluster(tmp_path / "pg") as pg:
        base = pg.base_dir
        dsn = pg.create_database("ratchet")
        assert dsn == f"postgresql://ratchet_test@127.0.0.1:{pg.port}/ratchet"
        pg.psql("ratchet", "CREATE TABLE t (n int); INSERT INTO t VALUES (1), (2)")
        assert pg.psql("ratchet", "SELECT sum(n) FROM t") == "3"
        # Only loopback: the server listens on 127.0.0.1 (and its socket), nothing else.
        assert pg.psql("postgres", "SHOW listen_addresses") == "127.0.0.1"
        # A crash (SIGKILL) and a restart on the same port keep what was committed.
        pg.kill()
        with socket.socket() as probe:
            assert probe.connect_ex(("127.0.0.1", pg.port)) != 0
        pg.start()
        assert pg.psql("ratchet", "SELECT count(*) FROM t") == "2"
    assert not base.exists()

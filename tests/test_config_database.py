"""The storage keys of the config: ``database`` (a postgresql:// URL, its password never echoed) and
``database_lease_ttl``; ``open_storage`` picks the engine from them."""

from __future__ import annotations

from pathlib import Path

import pytest

from bot.config import load_config
from bot.errors import ConfigError
from bot.storage.backend import SqliteStorage, open_storage
from bot.storage.postgres import PostgresStorage

BASE = 'homeserver: http://localhost:8008\nuser_id: "@bot:localhost"\npassword: pw\npickle_key: "0123456789abcdef01"\n'


def _load(tmp_path: Path, extra: str, env: dict[str, str] | None = None):
    path = tmp_path / "bot.yaml"
    path.write_text(BASE + extra)
    return load_config(path, environ=env or {})


def test_no_database_means_sqlite_files_under_data_dir(tmp_path):
    config = _load(tmp_path, "")
    assert config.database is None
    storage = open_storage(config)
    assert isinstance(storage, SqliteStorage) and storage.database_url is None


def test_a_postgresql_url_with_the_password_from_the_environment(tmp_path):
    config = _load(
        tmp_path,
        "database: postgresql://ratchet:${DB_PW}@db.example.org:5433/ratchet\ndatabase_lease_ttl: 20s\n",
        {"DB_PW": "s3cret-pw"},
    )
    assert config.database == "postgresql://ratchet:s3cret-pw@db.example.org:5433/ratchet"
    assert "s3cret-pw" not in repr(config)
    storage = open_storage(config)
    assert isinstance(storage, PostgresStorage)
    assert storage.lease.ttl == 20 and storage.lease.poll == 1
    assert "s3cret-pw" not in repr(storage) and "s3cret-pw" not in str(storage)


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("mysql://u:topsecret@h/db", "must be a postgresql:// URL"),
        ("postgresql://u:topsecret@h", "name the database"),
        ("postgresql://u:topsecret@h:notaport/db", "does not parse"),
    ],
)
def test_a_bad_database_is_a_config_error_naming_the_key_without_the_password(tmp_path, value, message):
    with pytest.raises(ConfigError) as error:
        _load(tmp_path, f"database: {value}\n")
    assert "database" in str(error.value) and message in str(error.value)
    assert "topsecret" not in str(error.value)


def test_a_lease_shorter_than_three_seconds_is_refused(tmp_path):
    with pytest.raises(ConfigError, match=r"database_lease_ttl: must be at least 3s"):
        _load(tmp_path, "database: postgresql://h/db\ndatabase_lease_ttl: 1s\n")

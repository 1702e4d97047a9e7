"""The Redis address in messages never carries the password (the trust model: it lives only in
0600 files and the clients' memory)."""

from __future__ import annotations

from pathlib import Path

import pytest

from recstack.settings import Settings


def test_the_display_address_hides_the_password_the_connection_strings_carry(
    tmp_path: Path,
) -> None:
    s = Settings(home=tmp_path, redis={"port": 16999, "password": "s3cret-pw"})
    assert "s3cret-pw" in s.redis.feast_connection_string and "s3cret-pw" in s.redis.url
    assert s.redis.address == "127.0.0.1:16999"


def test_a_materialization_against_a_dead_redis_names_it_without_the_password(
    tmp_path: Path,
) -> None:
    from pipelines import materialize

    s = Settings(home=tmp_path, redis={"port": 1, "password": "s3cret-pw"})

    class DeadStore:
        def apply(self, objects: object) -> None:
            import redis

            raise redis.exceptions.ConnectionError("Connection refused")

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(materialize, "validate_tables", lambda d: {})
        mp.setattr(materialize, "open_store", lambda settings: DeadStore())
        mp.setattr(materialize, "load_definitions", lambda path: [])
        with pytest.raises(materialize.MaterializeError) as err:
            materialize.apply_and_materialize(s)
    assert "127.0.0.1:1" in str(err.value) and "s3cret-pw" not in str(err.value)

"""Schema fuzzing: schemathesis generates requests from the app's own OpenAPI document, valid
and invalid, for every operation, and sends them over HTTP with a valid key: an admin key to the
admin API (`/admin/v1/...`, whose bodies are in the document too), an ordinary one elsewhere.
No answer may be a 5xx, and every answer must be one the document describes (status, content
type, body schema).

The run is seeded and bounded so CI stays fast. A longer run is one variable away:

    REF2VIDEO_FUZZ_EXAMPLES=600 python -m pytest tests/api/test_fuzz.py -p no:cacheprovider -s

(about 15,000 requests to 26 operations in 5 minutes; the figures of the last one are in
docs/reliability.md). The summary printed at the end counts the requests, the operations and
the statuses answered.
"""

from __future__ import annotations

import collections
import os
from collections.abc import Iterator


import pytest
import schemathesis
from hypothesis import HealthCheck, settings
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from ref2video.app import keys
from tests.live import LiveServer, settings_for, start_server

EXAMPLES = int(os.environ.get("REF2VIDEO_FUZZ_EXAMPLES", "25"))
CHECKS = [not_a_server_error, status_code_conformance, content_type_conformance, response_schema_conformance]
STATUSES: collections.Counter[int] = collections.Counter()
OPERATIONS: set[str] = set()
ADMIN_KEY: dict[str, str] = {}  # by server URL
# All operations run inside one test item: its time limit grows with the examples asked for.
pytestmark = pytest.mark.timeout(max(300, EXAMPLES * 2))


@pytest.fixture(scope="module")
def fuzzed(tmp_path_factory: pytest.TempPathFactory, request: pytest.FixtureRequest) -> Iterator[LiveServer]:
    """One server for the whole run, on PostgreSQL where there is one (NUL characters and
    lengths that SQLite forgives are errors there), with no workers: nothing is fetched."""
    root = tmp_path_factory.mktemp("fuzz")
    url = f"sqlite:///{root / 'db.sqlite'}"
    if _pg_here():
        url = request.getfixturevalue("pg_module_url")
    server = start_server(settings_for(root / "data", url, workers=0))
    ADMIN_KEY[server.url] = keys.create_key(server.service.db, owner="operator", role="admin")[0]
    yield server
    server.stop()
    total = sum(STATUSES.values())
    print(f"\nfuzzing: {total} requests to {len(OPERATIONS)} operations; "
          f"answers by status: {dict(sorted(STATUSES.items()))}")


@pytest.fixture(scope="module")
def fuzz_schema(fuzzed: LiveServer) -> schemathesis.BaseSchema:
    return schemathesis.openapi.from_url(f"{fuzzed.url}/openapi.json")


schema = schemathesis.pytest.from_fixture("fuzz_schema")


@schema.parametrize()
@settings(max_examples=EXAMPLES, derandomize=True, deadline=None,
          suppress_health_check=list(HealthCheck))
def test_no_answer_breaks_the_document(case: schemathesis.Case, fuzzed: LiveServer) -> None:
    admin = case.operation.path.startswith("/admin/")
    headers = {"Authorization": f"Bearer {ADMIN_KEY[fuzzed.url] if admin else fuzzed.key}"}
    response = case.call(base_url=fuzzed.url, headers=headers, timeout=30)
    STATUSES[response.status_code] += 1
    OPERATIONS.add(f"{case.operation.method.upper()} {case.operation.path}")
    assert response.status_code < 500, response.text  # never a server error, whatever was sent
    case.validate_response(response, checks=CHECKS)


def _pg_here() -> bool:
    from tests.conftest import _pg_available

    return _pg_available()


@pytest.fixture(scope="module")
def pg_module_url(pg_admin_url: str) -> Iterator[str]:
    import uuid

    import psycopg

    name = f"r2v_fuzz_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(pg_admin_url, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    yield f"{pg_admin_url.rsplit('/', 1)[0]}/{name}"
    with psycopg.connect(pg_admin_url, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


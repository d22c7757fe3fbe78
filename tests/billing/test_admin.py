"""The admin API over real HTTP: admin keys only; accounts, credit, limits, statements, usage
(JSON and CSV) and keys."""

from __future__ import annotations

import csv
import io
from decimal import Decimal
from typing import Any

from ref2video.app import keys as key_admin
from tests.live import LiveServer, make_body

ROUTES = [("POST", "/admin/v1/accounts", {"owner": "x"}), ("GET", "/admin/v1/accounts/x", None),
          ("POST", "/admin/v1/accounts/x/credit", {"amount": 1}), ("PUT", "/admin/v1/accounts/x/limits", {}),
          ("GET", "/admin/v1/accounts/x/statement", None), ("GET", "/admin/v1/usage", None),
          ("POST", "/admin/v1/keys", {"owner": "x"}), ("GET", "/admin/v1/keys", None),
          ("DELETE", "/admin/v1/keys/abc", None), ("PUT", "/admin/v1/keys/abc/limits", {"rate_query_per_second": 0}),
          ("POST", "/admin/v1/webhooks", {"owner": "x"}),
          ("GET", "/admin/v1/webhooks?owner=x", None), ("DELETE", "/admin/v1/webhooks/ep?owner=x", None)]


def admin_client(server: LiveServer) -> Any:
    key, _ = key_admin.create_key(server.service.db, owner="operator", role="admin")
    return server.client(key)


def test_ordinary_keys_never_reach_the_admin_api(server: LiveServer) -> None:
    client = server.client()
    for method, path, body in ROUTES:
        r = client.request(method, path, json=body)
        assert r.status_code == 403 and r.json()["code"] == "AccessDenied", (method, path, r.text)
    bare = server.client("r2v-nope-nope")
    assert bare.get("/admin/v1/keys").status_code == 401


def test_an_operator_runs_accounts_and_keys_over_http(make_server: Any) -> None:
    server: LiveServer = make_server(billing=True)
    admin = admin_client(server)
    r = admin.post("/admin/v1/accounts", json={"owner": "acme", "credit": "10", "daily_limit": "5"})
    assert r.status_code == 200, r.text
    assert r.json()["account"]["balance"] == "10" and r.json()["account"]["daily_limit"] == "5"
    assert admin.post("/admin/v1/accounts", json={"owner": "acme"}).status_code == 400  # exists
    topped = admin.post("/admin/v1/accounts/acme/credit", json={"amount": 2.5, "note": "gift"})
    assert topped.json()["balance"] == "12.5"
    assert admin.post("/admin/v1/accounts/nobody/credit", json={"amount": 1}).status_code == 404
    bad = admin.post("/admin/v1/accounts/acme/credit", json={"amount": "lots"})
    assert bad.status_code == 400 and bad.json()["code"] == "InvalidParameter"
    limits = admin.put("/admin/v1/accounts/acme/limits", json={"daily_limit": None, "monthly_limit": "100"})
    assert limits.json()["account"]["daily_limit"] is None and limits.json()["account"]["monthly_limit"] == "100"

    made = admin.post("/admin/v1/keys", json={"owner": "acme", "name": "ci"}).json()
    key = made["key"]
    assert made["role"] == "user" and any(k["id"] == made["id"] for k in admin.get("/admin/v1/keys").json()["keys"])
    task_id = server.create(make_body(size="1280*720", duration=5), key=key)
    assert server.wait(task_id, key=key)["usage"]["cost"] == "1.5"
    account = admin.get("/admin/v1/accounts/acme").json()["account"]
    assert Decimal(account["balance"]) == Decimal("11") and account["held"] == "0"

    kinds = [e["kind"] for e in admin.get("/admin/v1/accounts/acme/statement").json()["entries"]]
    assert kinds == ["topup", "topup", "hold", "release", "charge"]
    sheet = list(csv.DictReader(io.StringIO(admin.get("/admin/v1/accounts/acme/statement?format=csv").text)))
    assert [row["amount"] for row in sheet] == ["10", "2.5", "-1.5", "1.5", "-1.5"]
    usage = list(csv.DictReader(io.StringIO(admin.get("/admin/v1/usage", params={"format": "csv"}).text)))
    assert [(u["owner"], u["model"], u["tasks"], u["seconds"], u["cost"]) for u in usage] == [
        ("acme", "wan2.6-r2v-flash", "1", "5", "1.5")]

    assert admin.delete(f"/admin/v1/keys/{made['id']}").status_code == 200
    assert server.client(key).get("/api/v1/tasks").status_code == 401  # this server forgets it at once


def test_an_operator_registers_webhooks_for_an_owner(server: LiveServer) -> None:
    admin = admin_client(server)
    made = admin.post("/admin/v1/webhooks", json={"owner": "acme", "url": "https://hooks.example/r2v",
                                                   "events": ["task.succeeded"]})
    assert made.status_code == 200, made.text
    endpoint = made.json()["endpoint"]
    assert endpoint["events"] == ["task.succeeded"] and made.json()["secret"].startswith("whsec_")
    listed = admin.get("/admin/v1/webhooks", params={"owner": "acme"}).json()
    assert [e["id"] for e in listed["endpoints"]] == [endpoint["id"]] and listed["callback_secret"]
    bad = admin.post("/admin/v1/webhooks", json={"owner": "acme", "url": "ftp://nope"})
    assert bad.status_code == 400 and bad.json()["code"] == "InvalidParameter"
    assert admin.delete(f"/admin/v1/webhooks/{endpoint['id']}", params={"owner": "acme"}).status_code == 200
    assert admin.delete(f"/admin/v1/webhooks/{endpoint['id']}", params={"owner": "acme"}).status_code == 404
    assert admin.get("/admin/v1/webhooks", params={"owner": "acme"}).json()["endpoints"] == []


def test_amounts_past_any_balance_are_refused_naming_the_field(make_server: Any) -> None:
    """Thousands of digits, infinities, NaN and 1e308 were 500s (an OverflowError, or a
    number past the 64-bit column); the largest amount is MAX_CREDITS either way."""
    from ref2video.app.ledger import MAX_CREDITS

    server: LiveServer = make_server(workers=0)
    admin = admin_client(server)
    assert admin.post("/admin/v1/accounts", json={"owner": "acme", "credit": "10"}).status_code == 200
    huge = ["9" * 5000, "1e30", "Infinity", "-Infinity", "NaN", "1e999999999", 1e308, MAX_CREDITS + 1]
    for value in huge:
        for method, path, field in (("POST", "/admin/v1/accounts", "credit"),
                                    ("POST", "/admin/v1/accounts/acme/credit", "amount"),
                                    ("PUT", "/admin/v1/accounts/acme/limits", "daily_limit")):
            body = {field: value, "owner": "new"} if path == "/admin/v1/accounts" else {field: value}
            r = admin.request(method, path, json=body)
            assert r.status_code == 400 and r.json()["code"] == "InvalidParameter", (value, path, r.text)
            assert r.json()["message"].startswith(field) and len(r.json()["message"]) < 300
    # The largest amount is taken; a balance past it either way is refused, and nothing moves.
    top = admin.post("/admin/v1/accounts/acme/credit", json={"amount": str(MAX_CREDITS - 10)})
    assert top.status_code == 200 and top.json()["balance"] == str(MAX_CREDITS)
    over = admin.post("/admin/v1/accounts/acme/credit", json={"amount": "0.000001"})
    assert over.status_code == 400 and over.json()["message"].startswith("amount"), over.text
    assert admin.put("/admin/v1/accounts/acme/limits", json={"daily_limit": MAX_CREDITS}).status_code == 200
    account = admin.get("/admin/v1/accounts/acme").json()["account"]
    assert (account["balance"], account["daily_limit"]) == (str(MAX_CREDITS), str(MAX_CREDITS))
    assert len(admin.get("/admin/v1/accounts/acme/statement").json()["entries"]) == 2
    assert admin.post("/admin/v1/accounts", json={"owner": "gone", "credit": "Infinity"}).status_code == 400
    assert admin.get("/admin/v1/accounts/gone").status_code == 404  # nothing was made


NOT_TEXT = [("GET", "/admin/v1/accounts/a%00b", None), ("GET", "/admin/v1/accounts/a%ED%A0%80b", None),
            ("POST", "/admin/v1/accounts/a%00b/credit", {"amount": "1"}),
            ("PUT", "/admin/v1/accounts/a%00b/limits", {"daily_limit": None}),
            ("GET", "/admin/v1/accounts/a%00b/statement", None), ("GET", "/admin/v1/usage?owner=a%00", None),
            ("PUT", "/admin/v1/keys/a%00b/limits", {}), ("DELETE", "/admin/v1/keys/a%00b", None),
            ("GET", "/admin/v1/webhooks?owner=a%00", None), ("DELETE", "/admin/v1/webhooks/a%00b?owner=x", None),
            ("DELETE", "/admin/v1/webhooks/ep?owner=a%00", None)]


def test_owners_and_ids_that_are_not_text_are_refused_before_any_query(make_server: Any) -> None:
    """A NUL in an admin path or query value reached PostgreSQL, which cannot compare with it: 500s."""
    server: LiveServer = make_server(workers=0)
    admin = admin_client(server)
    for method, path, body in NOT_TEXT:
        r = admin.request(method, path, json=body)
        assert r.status_code in (400, 404), (method, path, r.text)
        assert r.json()["code"] in ("InvalidParameter", "NotFound"), (method, path, r.text)


def test_a_csv_of_any_owners_statement_is_served(make_server: Any) -> None:
    """The owner's name goes into the CSV's file name, a header: a quote or a letter outside
    Latin-1 (which a header cannot encode) in it was a 500."""
    server: LiveServer = make_server(workers=0)
    admin = admin_client(server)
    owner = 'acme "中" co'
    assert admin.post("/admin/v1/accounts", json={"owner": owner, "credit": "3"}).status_code == 200
    r = admin.get(f"/admin/v1/accounts/{owner}/statement", params={"format": "csv"})
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/csv"), r.text
    assert r.headers["content-disposition"] == 'attachment; filename="statement-acme_____co.csv"'
    assert list(csv.reader(io.StringIO(r.text)))[1][2:4] == ["topup", "3"]


def test_an_admin_body_over_16_kb_is_a_413_the_document_gives(make_server: Any) -> None:
    """The long fuzz run found this answer missing from the document."""
    server: LiveServer = make_server(workers=0)
    admin = admin_client(server)
    responses = admin.get("/openapi.json").json()["paths"]["/admin/v1/webhooks"]["post"]["responses"]
    r = admin.post("/admin/v1/webhooks", json={"owner": "x", "url": "https://example.com/" + "x" * 20_000})
    assert r.status_code == 413 and r.json()["code"] == "RequestTooLarge" and "413" in responses

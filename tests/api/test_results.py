"""Results: signed, expiring URLs with Range support, and the retention sweep."""

from __future__ import annotations

import io
import time
from urllib.parse import parse_qs, urlsplit

import av
import httpx
from sqlalchemy import update

from ref2video.store.models import Task
from tests.live import API_LINKS, LiveServer


def finished(server: LiveServer) -> tuple[str, str]:
    task_id = server.create()
    out = server.wait(task_id)["output"]
    assert out["task_status"] == "SUCCEEDED"
    return task_id, out["video_url"]


def test_the_video_url_serves_a_real_mp4_without_a_key(server: LiveServer) -> None:
    _, url = finished(server)
    r = httpx.get(url)
    assert r.status_code == 200 and r.headers["content-type"] == "video/mp4"
    with av.open(io.BytesIO(r.content)) as container:
        assert container.streams.video[0].codec_context.name == "h264"


def test_range_requests_let_players_seek(server: LiveServer) -> None:
    _, url = finished(server)
    whole = httpx.get(url).content
    part = httpx.get(url, headers={"Range": "bytes=100-199"})
    assert part.status_code == 206
    assert part.headers["content-range"] == f"bytes 100-199/{len(whole)}"
    assert part.content == whole[100:200]
    tail = httpx.get(url, headers={"Range": "bytes=-50"})
    assert tail.status_code == 206 and tail.content == whole[-50:]
    head = httpx.head(url)
    assert head.status_code == 200 and int(head.headers["content-length"]) == len(whole)


def test_tampered_or_expired_links_are_refused(make_server) -> None:  # type: ignore[no-untyped-def]
    server = make_server(**API_LINKS)
    _, url = finished(server)
    parts = urlsplit(url)
    query = {k: v[0] for k, v in parse_qs(parts.query).items()}
    base = f"{parts.scheme}://{parts.netloc}{parts.path}"
    bad_sig = httpx.get(base, params={**query, "sig": "0" * 64})
    assert bad_sig.status_code == 403 and bad_sig.json()["code"] == "AccessDenied"
    later = httpx.get(base, params={**query, "expires": str(int(query["expires"]) + 1)})
    assert later.status_code == 403
    other = httpx.get(base.replace(".mp4", "x.mp4"), params=query)
    assert other.status_code == 403
    assert httpx.get(base).status_code == 403
    # A link that was signed to expire a second ago.
    signer = server.service.signer
    assert signer is not None
    key = parts.path.rsplit("/", 1)[1]
    old = signer.sign(server.url, key, now=time.time() - signer.ttl_seconds - 1)
    assert httpx.get(old).status_code == 403


def test_links_expire_after_the_configured_lifetime(make_server) -> None:  # type: ignore[no-untyped-def]
    # Three seconds: room for a loaded machine between signing and the first GET.
    server = make_server(url_ttl_seconds=3, **API_LINKS)
    task_id, _ = finished(server)
    signed_after = time.time()
    url = server.get(task_id)["output"]["video_url"]  # signed now, for 3 s
    expires = int(parse_qs(urlsplit(url).query)["expires"][0])
    assert signed_after + 2 <= expires <= time.time() + 4
    assert httpx.get(url).status_code == 200
    while time.time() <= expires:  # wait for the moment itself, not a guess at it
        time.sleep(0.05)
    assert httpx.get(url).status_code == 403


def test_the_sweeper_removes_tasks_and_files_past_retention(server: LiveServer) -> None:
    task_id, url = finished(server)
    kept_id, kept_url = finished(server)
    day_ago = int((time.time() - 25 * 3600) * 1000)
    with server.service.db.begin() as conn:
        conn.execute(update(Task).where(Task.id == task_id).values(submitted_at=day_ago))
    # Past retention it answers UNKNOWN at once, even before the sweep.
    assert server.get(task_id)["output"]["task_status"] == "UNKNOWN"
    assert server.service.sweeper.sweep() == 1
    assert httpx.get(url).status_code == 404
    assert server.get(task_id)["output"]["task_status"] == "UNKNOWN"
    assert server.get(kept_id)["output"]["task_status"] == "SUCCEEDED"
    assert httpx.get(kept_url).status_code == 200
    assert [d["task_id"] for d in server.client().get("/api/v1/tasks").json()["data"]] == [kept_id]

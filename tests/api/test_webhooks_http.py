"""The gateway takes ``webhook`` in a submit body: kept in the job, pending for the notifier;
a bad URL is a 422 (the delivery itself is tested in tests/test_webhooks.py)."""

from __future__ import annotations

import httpx
import redis

from queueing.keys import Keys

KEYS = Keys()


def test_a_submit_with_a_webhook_is_pending_for_the_notifier(
    http: httpx.Client, redis_client: redis.Redis
) -> None:
    hook = "https://example.com/hook?x=1"
    answer = http.post("/v1/pipelines/echo/jobs", json={"input": {"a": 1}, "webhook": hook})
    assert answer.status_code == 202, answer.text
    job_id = answer.json()["id"]
    assert redis_client.hget(KEYS.job(job_id), "webhook") == hook.encode()
    assert redis_client.smembers(KEYS.webhooks_pending(0)) == {job_id.encode()}
    doc = http.get(f"/v1/jobs/{job_id}").json()
    assert doc["webhook"] == {
        "url": hook,
        "attempts": 0,
        "last_status": None,
        "last_error": None,
        "final": False,
    }
    plain = http.post("/v1/pipelines/echo/jobs", json={"inputs": [1, 2]}).json()
    for job in plain:
        assert not redis_client.hexists(KEYS.job(job["id"]), "webhook")
    assert redis_client.scard(KEYS.webhooks_pending(0)) == 1

    for bad in ("ftp://example.com/x", "not a url", 12):
        answer = http.post("/v1/pipelines/echo/jobs", json={"input": 1, "webhook": bad})
        assert answer.status_code == 422, bad
        assert answer.json()["errors"][0]["where"] == "body.webhook"

"""A job as stored (Snapshot): its notice encoding, its record, and the document the gateway
renders from it without parsing the result."""

from __future__ import annotations

import orjson
import pytest

from queueing.errors import JobFailed
from queueing.jobs import JobStatus, Snapshot

TIMING = b'{"stage":"p.s","queue_wait_s":0.5,"batch_size":4,"compute_s":0.25,"started_at":12.0}'


def notice(
    job_id: str, status: str, stage: str, value: bytes, timings: bytes = TIMING, lane: str = "low"
) -> bytes:
    head = f"{job_id} {status} {stage} p 10.0 12.0 13.5 {len(timings)} {len(value)} {lane}\n"
    return head.encode() + timings + value


def test_one_message_carries_several_notices_each_decoded_whole() -> None:
    result = orjson.dumps({"x": [1, 2.5, "a b\nc"], "n": None})
    message = notice("0-" + "a" * 32, "done", "p.s", result) + notice(
        "0-" + "b" * 32, "failed", "p.s", b"ValueError: no", b""
    )
    done, failed = Snapshot.decode_all(message)
    assert done.status is JobStatus.DONE
    assert done.outcome() == {"x": [1, 2.5, "a b\nc"], "n": None}
    record = done.record()
    assert (record.created_at, record.started_at, record.finished_at) == (10.0, 12.0, 13.5)
    assert [t.batch_size for t in record.timings] == [4]
    with pytest.raises(JobFailed, match="ValueError: no"):
        failed.outcome()
    assert failed.record().timings == []
    assert (done.lane, done.record().priority) == ("low", "low")
    assert orjson.loads(done.document("/v1/jobs/x"))["priority"] == "low"


def test_a_notice_without_its_lane_is_of_the_normal_lane_and_one_with_more_is_refused() -> None:
    """(A worker of before notices carried the lane writes none: a rolling upgrade.)"""
    (old,) = Snapshot.decode_all(
        notice("0-" + "a" * 32, "done", "p.s", b"1", lane="").replace(b" \n", b"\n", 1)
    )
    assert (old.lane, old.outcome()) == ("normal", 1)
    with pytest.raises(ValueError, match="too many fields"):
        Snapshot.decode_all(notice("0-" + "a" * 32, "done", "p.s", b"1", lane="low extra"))


def test_a_truncated_notice_is_refused() -> None:
    with pytest.raises(ValueError, match="truncated"):
        Snapshot.decode_all(notice("0-" + "a" * 32, "done", "p.s", b"[1,2,3]")[:-2])


@pytest.mark.parametrize("status", ["done", "failed", "expired", "cancelled", "queued", "running"])
def test_the_document_is_the_record_in_json(status: str) -> None:
    job_id = "0-" + "c" * 32
    raw = {
        b"status": status.encode(),
        b"pipeline": b"p",
        b"stage": b"p.s",
        b"created_at": b"10.0",
        b"lane": b"high",
    }
    if status != "queued":
        raw[b"started_at"] = b"12.0"
    finished = status not in ("queued", "running")
    if finished:
        raw |= {b"finished_at": b"13.5", b"final_stage": b"p.s", b"timings": TIMING + b"," + TIMING}
        raw[b"result" if status == "done" else b"error"] = (
            b'{"deep":{"list":[1,{"a":"\\u00e9"}]}}' if status == "done" else b"it broke"
        )
    snapshot = Snapshot.from_hash(job_id, raw)
    doc = orjson.loads(snapshot.document(f"/v1/jobs/{job_id}"))
    record = snapshot.record()
    assert doc["id"] == job_id
    assert doc["url"] == f"/v1/jobs/{job_id}"
    assert doc["status"] == status
    assert doc["pipeline"] == "p"
    assert doc["priority"] == record.priority == "high"
    assert (doc["created_at"], doc["started_at"], doc["finished_at"]) == (
        record.created_at,
        record.started_at,
        record.finished_at,
    )
    assert doc["timings"] == [t.to_dict() for t in record.timings]
    if status == "done":
        assert doc["result"] == {"deep": {"list": [1, {"a": "é"}]}}
    elif finished:
        assert doc["error"] == str(record.error_for())
        assert "result" not in doc
    else:
        assert "result" not in doc
        assert "error" not in doc

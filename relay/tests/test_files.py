"""Files through the proxy (official SDK → proxy → fake): every user shares one upstream
account, so a file is its uploader's alone: anyone else gets OpenAI's 404 and lists show a
user only their own files."""

from __future__ import annotations

import openai
import pytest

from tests.e2e import records_for

LINE = b'{"custom_id": "a", "method": "POST", "url": "/v1/embeddings", "body": {"model": "text-embedding-3-small", "input": "x"}}\n'


def test_a_file_is_its_uploaders_alone(e2e):
    alice, bob = e2e.key("alice"), e2e.key("bob")
    mine, theirs = e2e.client(alice), e2e.client(bob)
    uploaded = mine.files.create(file=("tasks.jsonl", LINE * 3), purpose="batch")
    assert uploaded.id.startswith("file-") and uploaded.bytes == len(LINE) * 3
    assert mine.files.retrieve(uploaded.id).filename == "tasks.jsonl"
    assert mine.files.content(uploaded.id).read() == LINE * 3
    assert [f.id for f in mine.files.list()] == [uploaded.id]
    # Bob shares the upstream account, and sees none of it.
    assert list(theirs.files.list()) == []
    for call in (
        lambda: theirs.files.retrieve(uploaded.id),
        lambda: theirs.files.content(uploaded.id),
        lambda: theirs.files.delete(uploaded.id),
    ):
        with pytest.raises(openai.NotFoundError) as missing:
            call()
        assert uploaded.id in missing.value.message
    assert mine.files.delete(uploaded.id).deleted
    assert list(mine.files.list()) == []
    with pytest.raises(openai.NotFoundError):
        mine.files.retrieve(uploaded.id)
    assert len(records_for(alice, 7)) == 7 and len(records_for(bob, 4)) == 4
    # Only the owner's calls reached the account: Bob's were answered by the proxy.
    paths = [b["path"] for b in e2e.upstream.bills()["bills"]]
    assert paths.count(f"/v1/files/{uploaded.id}") == 2  # alice's retrieve and delete


def test_a_users_list_pages_through_their_own_files(e2e):
    alice, bob = e2e.key("alice"), e2e.key("bob")
    mine = e2e.client(alice)
    made = [
        mine.files.create(file=(f"{i}.txt", b"x" * i), purpose="user_data").id for i in range(1, 6)
    ]
    e2e.client(bob).files.create(file=("b.txt", b"b"), purpose="user_data")
    assert [f.id for f in mine.files.list(limit=2)] == made[::-1]  # newest first, every page
    assert [f.id for f in mine.files.list(order="asc", limit=3)] == made
    assert list(mine.files.list(purpose="batch")) == []


def test_a_revoked_key_or_a_bad_purpose_uploads_nothing(e2e):
    secret = e2e.key()
    client = e2e.client(secret)
    with pytest.raises(openai.BadRequestError) as bad:
        client.files.create(file=("a.txt", b"a"), purpose="nonsense")
    assert bad.value.param == "purpose"
    from keys.models import ApiKey, key_hash
    from keys.services import key_revoke

    key_revoke(api_key=ApiKey.objects.get(key_hash=key_hash(secret)))
    with pytest.raises(openai.AuthenticationError):
        client.files.create(file=("a.txt", b"a"), purpose="user_data")
    assert [b["path"] for b in e2e.upstream.bills()["bills"]] == []


def test_a_files_content_is_passed_on_as_it_arrives_and_recorded_once(e2e):
    import hashlib

    import httpx2 as httpx

    secret = e2e.key()
    client = e2e.client(secret)
    blob = hashlib.sha256(b"seed").digest() * (19 * 1024 * 1024 // 32)  # 19 MiB
    file_id = client.files.create(file=("big.bin", blob), purpose="user_data").id
    assert client.files.content(file_id).read() == blob
    # A client that hangs up after the first chunk: one record, marked so, nothing held.
    url = f"{e2e.proxy.v1}/files/{file_id}/content"
    with httpx.stream("GET", url, headers={"Authorization": f"Bearer {secret}"}) as resp:
        assert resp.status_code == 200 and int(resp.headers["content-length"]) == len(blob)
        next(resp.iter_raw(64 * 1024))
    _upload, whole, cut = records_for(secret, 3)
    assert (whole.status_code, whole.client_disconnected) == (200, False)
    assert (cut.status_code, cut.error_code, cut.client_disconnected) == (
        499,
        "client_disconnected",
        True,
    )

"""The Files API in OpenAI's shapes, through the official SDK: uploads kept byte for byte,
read back, listed page by page and deleted; refusals as OpenAI answers them; a bounded store
a reset empties; and no bill for any of it."""

from __future__ import annotations

import asyncio
import os
import re
import time

import aiohttp
import openai
import pytest
from openai.types import FileDeleted, FileObject

from fakeopenai import state as state_module
from fakeopenai.file_api import BATCH_FILE_SECONDS
from fakeopenai.state import FakeState, StoredFile
from fakeopenai.tests.calls import AUTH, bills, stats

FILE_FIELDS = {
    "id",
    "object",
    "bytes",
    "created_at",
    "expires_at",
    "filename",
    "purpose",
    "status",
    "status_details",
}


def reset(fake) -> None:
    async def run() -> None:
        async with aiohttp.ClientSession() as session:
            await session.post(f"{fake.origin}/_fake/reset")

    asyncio.run(run())


def post_raw(fake, path: str, **kwargs: object) -> tuple[int, dict]:
    async def run() -> tuple[int, dict]:
        async with (
            aiohttp.ClientSession(headers=AUTH) as session,
            session.post(f"{fake.base_url}{path}", **kwargs) as r,
        ):
            return r.status, await r.json()

    return asyncio.run(run())


def test_an_upload_is_kept_byte_for_byte_read_back_and_deleted(client, fake):
    # Bytes a careless multipart parser would mangle: CRLFs, a fake boundary, no UTF-8.
    content = b"\x00\x01\xff\r\n--boundary\r\n\r\nend\n"
    raw = client.files.with_raw_response.create(file=("notes.bin", content), purpose="user_data")
    assert set(raw.http_response.json()) == FILE_FIELDS
    created = raw.parse()
    assert re.fullmatch(r"file-[A-Za-z0-9]{24}", created.id)
    assert (created.object, created.bytes, created.filename, created.purpose) == (
        "file",
        len(content),
        "notes.bin",
        "user_data",
    )
    assert (created.status, created.status_details, created.expires_at) == ("processed", None, None)
    assert abs(created.created_at - time.time()) < 5
    assert client.files.retrieve(created.id) == created
    download = client.files.with_raw_response.content(created.id)
    assert download.headers["content-type"] == "application/octet-stream"
    assert download.content == content
    assert client.files.delete(created.id) == FileDeleted(
        id=created.id, object="file", deleted=True
    )
    for call in (client.files.retrieve, client.files.content, client.files.delete):
        with pytest.raises(openai.NotFoundError) as missing:
            call(created.id)
        assert missing.value.body == {
            "message": f"No such File object: {created.id}",
            "type": "invalid_request_error",
            "param": "id",
            "code": None,
        }


def test_a_large_binary_upload_survives_the_multipart_parse(client):
    content = os.urandom(3 * 1024**2)
    stored = client.files.create(file=("blob.bin", content), purpose="user_data")
    assert stored.bytes == len(content)
    assert client.files.content(stored.id).read() == content


def test_a_stored_file_is_not_read_into_a_prompt(client):
    # The fake keeps files but bills none by id: a prompt naming one is answered as before.
    stored = client.files.create(file=("doc.pdf", b"%PDF-1.4"), purpose="user_data")
    with pytest.raises(openai.NotFoundError) as missing:
        client.responses.create(
            model="gpt-4.1",
            input=[
                {
                    "role": "user",
                    "content": [
                        {"type": "input_text", "text": "Summarise"},
                        {"type": "input_file", "file_id": stored.id},
                    ],
                }
            ],
        )
    assert missing.value.body["message"] == f"No such File object: {stored.id}"


def test_expiry_follows_expires_after_and_batch_files_expire_in_30_days(client):
    kept = client.files.create(
        file=("a.txt", b"a"),
        purpose="user_data",
        expires_after={"anchor": "created_at", "seconds": 3600},
    )
    assert kept.expires_at == kept.created_at + 3600
    batch = client.files.create(file=("in.jsonl", b"{}\n"), purpose="batch")
    assert batch.expires_at == batch.created_at + BATCH_FILE_SECONDS == batch.created_at + 2592000
    for seconds, code in ((3599, "integer_below_min_value"), (2592001, "integer_above_max_value")):
        with pytest.raises(openai.BadRequestError) as refused:
            client.files.create(
                file=("a.txt", b"a"),
                purpose="user_data",
                expires_after={"anchor": "created_at", "seconds": seconds},
            )
        assert (refused.value.param, refused.value.code) == ("expires_after.seconds", code)
    with pytest.raises(openai.BadRequestError) as refused:
        client.files.create(
            file=("a.txt", b"a"),
            purpose="user_data",
            expires_after={"anchor": "last_active_at", "seconds": 3600},  # type: ignore[typeddict-item]
        )
    assert refused.value.param == "expires_after.anchor"


def test_uploads_openai_refuses_are_refused(client, fake):
    with pytest.raises(openai.BadRequestError) as refused:
        client.files.create(file=("a.txt", b"a"), purpose="fine_tune")  # type: ignore[arg-type]
    assert refused.value.param == "purpose"
    assert refused.value.body["message"] == (
        "'fine_tune' is not one of ['assistants', 'batch', 'fine-tune', 'vision', 'user_data', "
        "'evals'] - 'purpose'"
    )
    # A batch file must be JSONL by its name; its lines are read by the batch, not here.
    with pytest.raises(openai.BadRequestError) as refused:
        client.files.create(file=("in.json", b"{}"), purpose="batch")
    assert refused.value.body["message"] == "Invalid file format for Batch API. Must be .jsonl"
    assert client.files.create(file=("in.jsonl", b"not json\n"), purpose="batch").bytes == 9

    form = aiohttp.FormData(default_to_multipart=True)
    form.add_field("purpose", "user_data")
    status, body = post_raw(fake, "/files", data=form)
    assert status == 400
    assert body["error"]["param"] == "file"
    assert body["error"]["code"] == "missing_required_parameter"
    form = aiohttp.FormData(default_to_multipart=True)
    form.add_field("file", b"abc", filename="a.txt")
    assert post_raw(fake, "/files", data=form)[1]["error"]["param"] == "purpose"
    status, body = post_raw(fake, "/files", json={"purpose": "user_data"})
    assert status == 400
    assert body["error"]["message"].startswith(
        "Invalid Content-Type header (application/json), expected multipart/form-data."
    )


def test_an_assistants_file_cannot_be_downloaded(client):
    stored = client.files.create(file=("doc.txt", b"words"), purpose="assistants")
    with pytest.raises(openai.BadRequestError) as refused:
        client.files.content(stored.id)
    assert refused.value.body["message"] == "Not allowed to download files of purpose: assistants"


def test_the_list_pages_newest_first_and_the_sdk_walks_every_page(client, fake):
    reset(fake)
    made = [
        client.files.create(file=(f"f{i}.txt", b"x" * i), purpose="user_data").id for i in range(5)
    ]
    vision = client.files.create(file=("v.png", b"png"), purpose="vision").id
    newest_first = [vision, *reversed(made)]
    assert [f.id for f in client.files.list()] == newest_first

    page = client.files.list(limit=2)
    assert [f.id for f in page.data] == newest_first[:2]
    assert page.has_more is True
    raw = client.files.with_raw_response.list(limit=2).http_response.json()
    assert set(raw) == {"object", "data", "first_id", "last_id", "has_more"}
    assert (raw["object"], raw["first_id"], raw["last_id"]) == ("list", *newest_first[:2])
    # The SDK's auto-pagination asks again with after=<last id> until has_more is false.
    walked = list(client.files.list(limit=2))
    assert all(isinstance(f, FileObject) for f in walked)
    assert [f.id for f in walked] == newest_first
    assert [f.id for f in client.files.list(limit=4, order="asc")] == list(reversed(newest_first))
    assert [f.id for f in client.files.list(purpose="vision")] == [vision]
    last = client.files.list(after=newest_first[3])
    assert ([f.id for f in last.data], last.has_more) == (newest_first[4:], False)
    assert client.files.list(purpose="batch").data == []

    for params, param in (({"limit": 0}, "limit"), ({"limit": 10_001}, "limit")):
        with pytest.raises(openai.BadRequestError) as refused:
            client.files.list(**params)
        assert refused.value.param == param
    with pytest.raises(openai.BadRequestError) as refused:
        client.files.list(order="sideways")  # type: ignore[arg-type]
    assert refused.value.param == "order"


def test_file_calls_bill_nothing_and_a_reset_forgets_the_files(client, fake):
    reset(fake)
    stored = client.files.create(file=("a.txt", b"abc"), purpose="user_data")
    client.files.retrieve(stored.id)
    client.files.content(stored.id).read()
    list(client.files.list())
    assert (stats(fake)["stored_files"], stats(fake)["stored_file_bytes"]) == (1, 3)
    seen = bills(fake)
    assert {b["path"] for b in seen["bills"]} == {
        "/v1/files",
        f"/v1/files/{stored.id}",
        f"/v1/files/{stored.id}/content",
    }
    assert all(b["prompt_tokens"] == b["completion_tokens"] == 0 for b in seen["bills"])
    assert not any("batch_id" in b or "custom_id" in b for b in seen["bills"])
    reset(fake)
    assert (stats(fake)["stored_files"], stats(fake)["stored_file_bytes"]) == (0, 0)
    with pytest.raises(openai.NotFoundError):
        client.files.retrieve(stored.id)


def test_the_store_is_bounded_by_count_and_by_bytes(monkeypatch):
    monkeypatch.setattr(state_module, "MAX_STORED_FILES", 3)
    monkeypatch.setattr(state_module, "MAX_STORED_FILE_BYTES", 10)
    state = FakeState(key="k")

    def put(name: str, size: int) -> None:
        state.store_file(StoredFile({"id": name}, b"x" * size))

    for name in "abcd":
        put(name, 1)
    assert list(state.files) == ["b", "c", "d"]  # the oldest went first
    put("e", 8)
    assert list(state.files) == ["c", "d", "e"]  # 11 bytes were too many: the oldest went
    assert state.file_bytes == 10
    put("f", 20)  # bigger than the bound alone: kept, the newest always is
    assert (list(state.files), state.file_bytes) == (["f"], 20)
    assert state.drop_file("f") is not None
    assert (state.files, state.file_bytes) == ({}, 0)

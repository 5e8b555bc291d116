"""Files inside a prompt: a file sent as data costs a token for every 3 bytes; a file id the
fake does not know is answered 404."""

from __future__ import annotations

import openai
import pytest

from fakeopenai.tests.calls import bill_of
from fakeopenai.tests.media import data_url

QUESTION = {"type": "input_text", "text": "Summarise this"}


def test_an_input_file_costs_a_token_for_every_3_bytes(client, fake):
    def input_tokens(content: list[dict]) -> tuple[int, dict]:
        raw = client.responses.with_raw_response.create(
            model="gpt-4.1", input=[{"role": "user", "content": content}]
        )
        return raw.parse().usage.input_tokens, bill_of(fake, raw.headers)

    pdf = {
        "type": "input_file",
        "filename": "report.pdf",
        "file_data": data_url("application/pdf", b"%PDF" + bytes(2996)),
    }
    alone, _ = input_tokens([QUESTION])
    with_file, bill = input_tokens([QUESTION, pdf])
    assert with_file == alone + 1000 == bill["prompt_tokens"]
    pdf["file_data"] = data_url("application/pdf", bytes(3001))
    assert input_tokens([QUESTION, pdf])[0] == alone + 1001  # rounded up


def test_a_chat_file_part_is_billed_the_same(client):
    def prompt_tokens(content: list[dict]) -> int:
        return client.chat.completions.create(
            model="gpt-4o", messages=[{"role": "user", "content": content}]
        ).usage.prompt_tokens

    text = {"type": "text", "text": "Summarise this"}
    part = {
        "type": "file",
        "file": {"filename": "a.pdf", "file_data": data_url("application/pdf", bytes(300))},
    }
    assert prompt_tokens([text, part]) == prompt_tokens([text]) + 100


def test_a_file_id_the_fake_does_not_know_is_not_found(client):
    with pytest.raises(openai.NotFoundError) as missing:
        client.responses.create(
            model="gpt-4.1",
            input=[
                {"role": "user", "content": [QUESTION, {"type": "input_file", "file_id": "file-x"}]}
            ],
        )
    assert "file-x" in missing.value.message

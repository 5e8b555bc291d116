"""The reservation's bound on what a request can be billed for (relay.metering, relay.media):
pure functions, checked against OpenAI's published rules worked out by hand."""

from __future__ import annotations

import base64
import struct
import zlib

import pytest

from relay import media
from relay.metering import Refused, size_request

MODEL = "gpt-4o"


def png(width: int, height: int) -> bytes:
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    chunk = b"IHDR" + ihdr
    return (
        b"\x89PNG\r\n\x1a\n"
        + struct.pack(">I", len(ihdr))
        + chunk
        + struct.pack(">I", zlib.crc32(chunk))
    )


def wav(seconds: float, rate: int = 16000) -> bytes:
    frames = int(seconds * rate)
    data = b"\x00\x00" * frames
    fmt = struct.pack("<HHIIHH", 1, 1, rate, rate * 2, 2, 16)
    body = b"WAVE" + b"fmt " + struct.pack("<I", len(fmt)) + fmt + b"data"
    body += struct.pack("<I", len(data)) + data
    return b"RIFF" + struct.pack("<I", len(body)) + body


def data_url(raw: bytes, mime: str = "image/png") -> str:
    return f"data:{mime};base64,{base64.b64encode(raw).decode()}"


def chat(*content: dict, **extra: object) -> dict:
    return {
        "model": MODEL,
        "messages": [{"role": "user", "content": list(content)}],
        "max_completion_tokens": 100,
        **extra,
    }


def size(body: dict, kind: str = "chat", *, strict: bool = True, **options):
    from relay.metering import output_maximum

    max_out, bad = output_maximum(kind, body)
    assert bad is None
    return size_request(kind, body, body["model"], max_out=max_out, strict=strict, **options)


# -- images: OpenAI's rules ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("model", "dims", "detail", "tokens"),
    [
        ("gpt-4o", (512, 512), "high", 85 + 170 * 1),
        ("gpt-4o", (1024, 1024), "high", 85 + 170 * 4),  # scaled to 768 × 768: 2 × 2 tiles
        ("gpt-4o", (2048, 4096), "auto", 85 + 170 * 6),  # → 1024 × 2048 → 768 × 1536: 2 × 3
        ("gpt-4o", (4096, 4096), "low", 85),
        ("gpt-4o", None, "high", 85 + 170 * 8),  # unknown size: the most tiles possible
        ("gpt-4o-mini", (512, 512), "high", 2833 + 5667),
        ("o1", (512, 512), "high", 75 + 150),
        ("gpt-4.1-mini", (1024, 1024), "high", 1659),  # 32 × 32 patches = 1024 × 1.62
        ("gpt-4.1-nano", (4096, 4096), "high", 3779),  # capped at 1536 patches × 2.46
        ("gpt-5-mini", None, "low", 3779),  # a family the rules do not name: both maxima
    ],
)
def test_image_tokens_follow_openais_rules(model, dims, detail, tokens):
    assert media.image_tokens(model, dims, detail) == tokens


@pytest.mark.parametrize(
    ("raw", "dims"),
    [
        (png(640, 480), (640, 480)),
        (b"GIF89a" + struct.pack("<HH", 300, 200) + b"\x00" * 8, (300, 200)),
        (
            b"\xff\xd8\xff\xe0\x00\x10JFIF\x00\x01\x01\x00\x00\x01\x00\x01\x00\x00"
            b"\xff\xc0\x00\x11\x08" + struct.pack(">HH", 1080, 1920) + b"\x03" + b"\x00" * 9,
            (1920, 1080),
        ),
        (b"not an image at all", None),
    ],
)
def test_image_sizes_are_read_from_their_headers(raw, dims):
    assert media.image_size(raw) == dims


def test_an_image_in_a_chat_message_is_reserved_at_its_tokens():
    text_only = size(chat({"type": "text", "text": "What is this?"}))
    with_image = size(
        chat(
            {"type": "text", "text": "What is this?"},
            {"type": "image_url", "image_url": {"url": data_url(png(1024, 1024))}},
        )
    )
    assert with_image.ceiling.input - text_only.ceiling.input == 765


def test_an_image_by_url_is_reserved_at_the_largest_image():
    body = chat({"type": "image_url", "image_url": {"url": "https://example.com/cat.png"}})
    assert size(body).ceiling.input >= 1445


# -- audio ----------------------------------------------------------------------------------


def b64(raw: bytes) -> str:
    return base64.b64encode(raw).decode()


def test_a_wav_clip_is_bounded_by_its_length_at_ten_tokens_a_second():
    clip = wav(2.5)
    assert media.wav_seconds(clip, len(clip)) == 2.5
    assert media.audio_input_tokens(b64(clip)) == 26  # 25, and one for rounding


def test_a_wav_header_lying_about_its_byte_rate_is_not_believed():
    clip = bytearray(wav(60))  # 60 s at 16 kHz, 16 bit, mono
    clip[28:32] = (0xFFFFFFFF).to_bytes(4, "little")  # the header's byte rate
    clip[40:44] = (100).to_bytes(4, "little")  # and a data chunk "of 100 bytes"
    assert media.audio_input_tokens(b64(bytes(clip))) == 601


def test_a_compressed_clip_is_bounded_by_its_size_at_the_lowest_bitrate():
    clip = b"\xff\xfb" + b"\x00" * 9998  # 10 kB of "mp3": at most 10 s at 8 kbit/s
    assert media.audio_input_tokens(b64(clip)) == 101


def test_audio_input_is_reserved_apart_so_it_is_priced_at_audio_rates():
    body = chat(
        {
            "type": "input_audio",
            "input_audio": {"data": base64.b64encode(wav(3)).decode(), "format": "wav"},
        }
    )
    assert size(body).ceiling.audio_input == 31


def test_audio_output_makes_every_output_token_an_audio_one():
    body = chat({"type": "text", "text": "Read this aloud"}, modalities=["text", "audio"])
    sized = size(body)
    assert sized.ceiling.audio_output and sized.ceiling.output == 100


# -- files ----------------------------------------------------------------------------------


def test_a_pdf_is_bounded_by_the_models_context_it_is_billed_an_image_per_page():
    pdf = b"%PDF-1.4\n" + b"x" * 991
    body = {
        "model": MODEL,
        "input": [
            {
                "role": "user",
                "content": [
                    {
                        "type": "input_file",
                        "filename": "a.pdf",
                        "file_data": data_url(pdf, "application/pdf"),
                    }
                ],
            }
        ],
        "max_output_tokens": 10,
    }
    assert size(body, "responses", max_input=128_000).ceiling.input == 128_000


def test_an_inline_file_is_bounded_by_its_size():
    pdf = b"plain text notes " + b"x" * 983
    body = {
        "model": MODEL,
        "input": [
            {
                "role": "user",
                "content": [
                    {
                        "type": "input_file",
                        "filename": "notes.txt",
                        "file_data": data_url(pdf, "text/plain"),
                    }
                ],
            }
        ],
        "max_output_tokens": 10,
    }
    assert size(body, "responses").ceiling.input >= 1000


def test_a_file_by_id_is_refused_it_belongs_to_the_shared_account():
    body = chat({"type": "file", "file": {"file_id": "file-abc"}})
    with pytest.raises(Refused) as refused:
        size(body)
    assert refused.value.param == "file_id" and "inline" in refused.value.message


def test_input_the_proxy_cannot_see_is_bounded_by_the_models_context():
    body = {
        "model": MODEL,
        "input": [{"type": "item_reference", "id": "msg_123"}],
        "max_output_tokens": 10,
    }
    assert size(body, "responses", max_input=128_000).ceiling.input == 128_000
    with pytest.raises(Refused) as refused:
        size(body, "responses", max_input=None)
    assert "item_reference" in refused.value.message


# -- history, tools, output ----------------------------------------------------------------


def test_the_history_behind_previous_response_id_is_reserved():
    body = {"model": MODEL, "input": "and then?", "max_output_tokens": 10}
    assert size(body, "responses", history=5000).ceiling.input == (
        size(body, "responses").ceiling.input + 5000
    )


def test_built_in_tools_need_max_tool_calls_on_a_strict_budget():
    body = {
        "model": MODEL,
        "input": "news?",
        "max_output_tokens": 10,
        "tools": [{"type": "web_search"}],
    }
    with pytest.raises(Refused) as refused:
        size(body, "responses", max_input=128_000)
    assert refused.value.param == "max_tool_calls"
    sized = size({**body, "max_tool_calls": 3}, "responses", max_input=128_000)
    # Each call may start another turn that reads the whole context again.
    first_turn = size({**body, "max_tool_calls": 0}, "responses", max_input=128_000)
    assert sized.ceiling.input == first_turn.ceiling.input + 3 * 128_000
    assert sized.ceiling.tool_calls == {"web_search": 3}


def test_an_estimate_budget_reserves_the_documented_defaults_and_says_so(settings):
    settings.PROXY_DEFAULT_OUTPUT_TOKENS = 777
    settings.PROXY_DEFAULT_TOOL_CALLS = 2
    body = {
        "model": MODEL,
        "input": "hi",
        "tools": [{"type": "file_search", "vector_store_ids": ["vs_1"]}],
    }
    sized = size(body, "responses", strict=False, max_input=128_000)
    assert sized.ceiling.output == 777 and sized.ceiling.tool_calls == {"file_search": 2}
    assert any("PROXY_DEFAULT_OUTPUT_TOKENS" in a for a in sized.assumed)


def test_no_output_maximum_is_refused_on_a_strict_budget_naming_the_parameter():
    with pytest.raises(Refused) as refused:
        size({"model": MODEL, "messages": [{"role": "user", "content": "hi"}]})
    assert refused.value.param == "max_completion_tokens"
    assert "set 'max_completion_tokens'" in refused.value.message


def test_every_choice_is_reserved():
    body = {
        "model": MODEL,
        "messages": [{"role": "user", "content": "hi"}],
        "max_tokens": 50,
        "n": 4,
    }
    assert size(body).ceiling.output == 200


def test_images_from_the_image_generation_tool_are_reserved_at_their_dearest():
    body = {
        "model": MODEL,
        "input": "draw a cat",
        "max_output_tokens": 10,
        "max_tool_calls": 2,
        "tools": [{"type": "image_generation", "quality": "high", "partial_images": 2}],
    }
    fees = size(body, "responses", max_input=128_000).ceiling.tool_calls
    assert fees == {"image_generation:gpt-image-1:high:*": 2, "image_partial:gpt-image-1": 4}


@pytest.mark.parametrize(
    ("field", "value"),
    [("n", 10**12), ("max_tokens", 10**15), ("max_completion_tokens", 2**63)],
)
def test_huge_numbers_are_a_400_never_an_overflow(field, value):
    from relay.metering import bad_integer, output_maximum

    body = {
        "model": MODEL,
        "messages": [{"role": "user", "content": "hi"}],
        "max_tokens": 5,
        field: value,
    }
    max_out, bad = output_maximum("chat", body)
    if bad is not None:
        assert "integer above maximum value" in bad_integer(body, bad).message
        return
    with pytest.raises(Refused) as refused:
        size_request("chat", body, MODEL, max_out=max_out, strict=True)
    assert refused.value.param == field and "at most" not in refused.value.message


def test_nesting_a_body_deeply_does_not_exhaust_the_stack():
    deep: object = {"type": "text", "text": "x"}
    for _ in range(5000):
        deep = [deep]
    body = {"model": MODEL, "messages": [{"role": "user", "content": deep}], "max_tokens": 5}
    assert size(body).ceiling.output == 5


@pytest.mark.parametrize(
    "item",
    [
        {"type": "function_call_output", "call_id": "c1", "output": "lorem ipsum " * 2000},
        {"type": "function_call", "call_id": "c1", "name": "f", "arguments": "lorem ipsum " * 2000},
        {
            "type": "function_call_output",
            "call_id": "c1",
            "output": [{"type": "input_text", "text": "lorem ipsum " * 2000}],
        },
        {"type": "reasoning", "summary": [{"type": "summary_text", "text": "lorem ipsum " * 2000}]},
    ],
    ids=["tool output", "tool call", "tool output parts", "reasoning summary"],
)
def test_every_text_a_responses_input_carries_is_reserved(item):
    body = {"model": MODEL, "input": [item], "max_output_tokens": 10}
    assert size(body, "responses").ceiling.input >= 4000


def test_a_legacy_function_call_in_chat_is_reserved():
    body = {
        "model": MODEL,
        "messages": [
            {
                "role": "assistant",
                "content": None,
                "function_call": {"name": "f", "arguments": "lorem ipsum " * 2000},
            },
            {"role": "function", "name": "f", "content": "ok"},
        ],
        "max_tokens": 5,
    }
    assert size(body).ceiling.input >= 4000


@pytest.mark.parametrize(
    "item",
    [
        {"type": "reasoning", "summary": [], "encrypted_content": "gAAAAB" + "x" * 400},
        {"type": "image_generation_call", "id": "ig_1", "result": "iVBORw0KGgo" + "A" * 400},
        {"type": "item_reference", "id": "msg_1"},
    ],
)
def test_input_whose_size_the_proxy_cannot_see_is_bounded_by_the_context(item):
    body = {"model": MODEL, "input": [item], "max_output_tokens": 10}
    assert size(body, "responses", max_input=128_000).ceiling.input == 128_000


def test_an_earlier_answers_audio_is_bounded_by_the_context():
    body = {
        "model": "gpt-4o-audio-preview",
        "messages": [
            {"role": "assistant", "audio": {"id": "audio_abc"}},
            {"role": "user", "content": "and again"},
        ],
        "max_tokens": 5,
    }
    assert size(body, max_input=128_000).ceiling.input == 128_000


def test_the_nesting_check_finds_deep_bodies_without_recursion():
    from relay.metering import MAX_NESTING, too_deep

    deep: object = "x"
    for _ in range(100_000):
        deep = [deep]
    assert too_deep({"a": deep})
    shallow: object = "x"
    for _ in range(MAX_NESTING - 1):
        shallow = {"k": shallow}
    assert not too_deep(shallow)


def test_a_bound_past_the_most_the_proxy_reserves_is_refused():
    # Each number within OpenAI's limits, their product not: 1,000 prompts × best_of 20 ×
    # the largest maximum is 4.3 × 10¹⁶ tokens.
    from relay.metering import MAX_INT

    body = {"model": "gpt-3.5-turbo-instruct", "prompt": ["hi"] * 1000, "best_of": 20}
    with pytest.raises(Refused) as refused:
        size_request("completion", body, body["model"], max_out=MAX_INT, strict=True)
    assert refused.value.code == "request_too_large"

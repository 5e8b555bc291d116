"""Audio in chat completions: heard audio is billed by its length, a spoken reply by its
transcript's length, both inside the usual totals and never past the request's max."""

from __future__ import annotations

import base64

import openai
import orjson
import pytest
from openai.types.chat import ChatCompletion, ChatCompletionChunk

from fakeopenai.audio import wav_seconds
from fakeopenai.tests.calls import bill_of, bills_where, n_tokens, openai_chat_count, post
from fakeopenai.tests.media import b64, wav

SPEAK = {"modalities": ["text", "audio"], "audio": {"voice": "alloy", "format": "wav"}}
HELLO = [{"role": "user", "content": "Say hello"}]


def heard(data: bytes, fmt: str = "wav") -> list[dict]:
    return [
        {
            "role": "user",
            "content": [
                {"type": "text", "text": "Transcribe"},
                {"type": "input_audio", "input_audio": {"data": b64(data), "format": fmt}},
            ],
        }
    ]


def text_only() -> int:
    return openai_chat_count([{"role": "user", "content": "Transcribe"}])


def test_a_one_second_wav_is_10_audio_tokens_inside_the_prompt(client, fake):
    raw = client.chat.completions.with_raw_response.create(
        model="gpt-4o-audio-preview", messages=heard(wav(1.0))
    )
    usage = raw.parse().usage
    assert usage.prompt_tokens_details.audio_tokens == 10
    assert usage.prompt_tokens == text_only() + 10
    bill = bill_of(fake, raw.headers)
    assert (bill["prompt_tokens"], bill["audio_input_tokens"]) == (text_only() + 10, 10)


@pytest.mark.parametrize(
    ("data", "fmt", "tokens"),
    [
        (wav(2.05), "wav", 21),  # rounded up
        (wav(1.0, rate=44_100, channels=2), "wav", 10),  # the byte rate, not the sample rate
        (bytes(16_000), "mp3", 10),  # 16 kB at 128 kbit/s is one second
        (bytes(40_000), "mp3", 25),
    ],
)
def test_audio_length_comes_from_the_wav_header_or_the_mp3_bitrate(client, data, fmt, tokens):
    usage = client.chat.completions.create(
        model="gpt-4o-audio-preview", messages=heard(data, fmt)
    ).usage
    assert usage.prompt_tokens_details.audio_tokens == tokens
    assert usage.prompt_tokens == text_only() + tokens


def test_the_audio_input_knob_replaces_the_count(client, fake):
    raw = client.chat.completions.with_raw_response.create(
        model="gpt-4o-audio-preview",
        messages=heard(wav(1.0)),
        extra_body={"fake": {"audio_input_tokens": 500}},
    )
    usage = raw.parse().usage
    assert (usage.prompt_tokens, usage.prompt_tokens_details.audio_tokens) == (
        text_only() + 500,
        500,
    )
    assert bill_of(fake, raw.headers)["audio_input_tokens"] == 500


def test_broken_audio_is_refused_and_costs_nothing(fake):
    for data, fmt in ((b"RIFF....", "wav"), (wav(1.0), "ogg")):
        status, headers, body = post(
            fake,
            "/chat/completions",
            {"model": "gpt-4o-audio-preview", "messages": heard(data, fmt)},
        )
        assert status == 400 and orjson.loads(body)["error"]["type"] == "invalid_request_error"
        assert bill_of(fake, headers)["prompt_tokens"] == 0


def test_a_spoken_reply_carries_audio_and_bills_it_as_completion_tokens(client, fake):
    raw = client.chat.completions.with_raw_response.create(
        model="gpt-4o-audio-preview", messages=HELLO, extra_body=SPEAK
    )
    completion = ChatCompletion.model_validate(raw.parse().model_dump())
    message = completion.choices[0].message
    assert message.content is None and message.audio.id.startswith("audio_")
    assert wav_seconds(base64.b64decode(message.audio.data)) > 0  # a playable WAV
    assert message.audio.expires_at > completion.created
    transcript = message.audio.transcript
    assert n_tokens(transcript) == 12
    # 20 tokens a second, 2.5 words a second: 8 a word.
    spoken = 8 * len(transcript.split())
    usage = completion.usage
    assert usage.completion_tokens_details.audio_tokens == spoken
    assert usage.completion_tokens == 12 + spoken
    bill = bill_of(fake, raw.headers)
    assert (bill["completion_tokens"], bill["audio_output_tokens"]) == (12 + spoken, spoken)


@pytest.mark.parametrize(
    ("fake_knobs", "limit"),
    [({"completion_tokens": 10_000}, 50), ({"audio_output_tokens": 5000}, 300), ({}, 7)],
)
def test_a_spoken_reply_never_passes_the_max(client, fake_knobs, limit):
    completion = client.chat.completions.create(
        model="gpt-4o-audio-preview",
        messages=HELLO,
        max_completion_tokens=limit,
        extra_body={**SPEAK, "fake": fake_knobs},
    )
    usage = completion.usage
    audio = usage.completion_tokens_details.audio_tokens
    assert usage.completion_tokens == limit and completion.choices[0].finish_reason == "length"
    assert 0 < audio <= limit
    assert n_tokens(completion.choices[0].message.audio.transcript) == limit - audio


def test_the_audio_output_knob_sets_the_spoken_part(client):
    usage = client.chat.completions.create(
        model="gpt-4o-audio-preview",
        messages=HELLO,
        extra_body={**SPEAK, "fake": {"audio_output_tokens": 900}},
    ).usage
    assert (usage.completion_tokens, usage.completion_tokens_details.audio_tokens) == (912, 900)


def test_audio_output_without_its_parameters_is_refused(client):
    with pytest.raises(openai.BadRequestError) as refused:
        client.chat.completions.create(
            model="gpt-4o-audio-preview", messages=HELLO, modalities=["audio"]
        )
    assert refused.value.param == "audio"


def test_a_spoken_stream_carries_transcript_and_audio_in_its_deltas(client, fake):
    stream = client.chat.completions.with_raw_response.create(
        model="gpt-4o-audio-preview",
        messages=HELLO,
        stream=True,
        stream_options={"include_usage": True},
        extra_body={**SPEAK, "fake": {"chunks": 4}},
    )
    chunks = [ChatCompletionChunk.model_validate(c.model_dump()) for c in stream.parse()]
    audio = [c.choices[0].delta.audio for c in chunks if c.choices and c.choices[0].delta.audio]
    transcript = "".join(a.transcript or "" for a in audio)
    data = base64.b64decode("".join(a.data or "" for a in audio))
    assert n_tokens(transcript) == 12 and wav_seconds(data) > 0
    assert audio[-1].expires_at and audio[-1].transcript is None
    usage = chunks[-1].usage
    assert usage.completion_tokens == 12 + usage.completion_tokens_details.audio_tokens
    bill = bill_of(fake, stream.headers)
    assert bill["audio_output_tokens"] == usage.completion_tokens_details.audio_tokens > 0


def test_a_cut_spoken_stream_bills_the_audio_that_went_out(fake):
    body = {
        "model": "gpt-4o-audio-preview",
        "messages": HELLO,
        "stream": True,
        **SPEAK,
        "fake": {"chunks": 4, "end_early_after": 2, "audio_output_tokens": 400},
    }
    status, headers, _ = post(fake, "/chat/completions", body)
    assert status == 200
    [bill] = bills_where(fake, request_id=headers["x-request-id"])
    assert bill["outcome"] == "ended_early" and bill["audio_output_tokens"] == 200
    assert 200 < bill["completion_tokens"] < 212

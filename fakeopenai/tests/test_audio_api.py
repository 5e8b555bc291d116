"""The Audio endpoints answer in the shapes the SDK parses, and bill as the fake's rules say:
tts-1 by characters, gpt-4o-mini-tts and the GPT-4o transcribers by tokens the test counts
itself, whisper-1 by the second."""

from __future__ import annotations

import asyncio
import base64
import io
import math
import wave

import aiohttp
import openai
import orjson
import pytest
from openai.types.audio import (
    Transcription,
    TranscriptionDiarized,
    TranscriptionTextDeltaEvent,
    TranscriptionTextDoneEvent,
    TranscriptionVerbose,
    TranslationVerbose,
)

from fakeopenai.tests.calls import AUTH, bill_of, bills_where, n_tokens, post

SAYING = "The quick brown fox jumps over the lazy dog near the riverbank"  # 12 words
MP3_FRAME = 417  # 128 kbit/s at 44.1 kHz
deprecated = pytest.mark.filterwarnings("ignore:deprecated:DeprecationWarning")


def wav(seconds: float, rate: int = 16_000) -> bytes:
    """Silence, written by the standard library."""
    out = io.BytesIO()
    with wave.open(out, "wb") as writer:
        writer.setnchannels(1)
        writer.setsampwidth(2)
        writer.setframerate(rate)
        writer.writeframes(bytes(2 * round(seconds * rate)))
    return out.getvalue()


def spoken_seconds(text: str, speed: float = 1.0) -> float:
    return max(1.0, len(text.split()) / 2.5 / speed)


def read_wav(data: bytes) -> tuple[int, int, int, int]:
    with wave.open(io.BytesIO(data)) as reader:
        return (
            reader.getnchannels(),
            reader.getsampwidth(),
            reader.getframerate(),
            reader.getnframes(),
        )


def post_form(fake, path: str, fields: dict, file: tuple[str, bytes] | None) -> tuple[int, dict]:
    async def run() -> tuple[int, dict]:
        form = aiohttp.FormData(default_to_multipart=True)
        for name, value in fields.items():
            form.add_field(name, value)
        if file is not None:
            form.add_field("file", file[1], filename=file[0])
        async with (
            aiohttp.ClientSession(headers=AUTH) as session,
            session.post(f"{fake.base_url}{path}", data=form) as r,
        ):
            return r.status, {"headers": r.headers.copy(), "body": await r.read()}

    return asyncio.run(run())


# -- speech -----------------------------------------------------------------------------------


def test_tts_1_speaks_mp3_frames_and_bills_the_characters(client, fake):
    with client.audio.speech.with_streaming_response.create(
        model="tts-1", voice="alloy", input=SAYING
    ) as response:
        assert response.headers["content-type"] == "audio/mpeg"
        pieces = list(response.iter_bytes())
        request_id = response.headers["x-request-id"]
    data = b"".join(pieces)
    frames = math.ceil(spoken_seconds(SAYING) * 44_100 / 1152)
    assert len(data) == frames * MP3_FRAME and data[:4] == b"\xff\xfb\x90\xc0"
    [bill] = bills_where(fake, request_id=request_id)
    assert (bill["characters"], bill["prompt_tokens"], bill["completion_tokens"]) == (
        len(SAYING),
        0,
        0,
    )
    assert bill["model"] == "tts-1" and not bill["usage_reported"]


@pytest.mark.parametrize("speed", [1.0, 2.0, 0.5, 4.0])
def test_a_wav_is_24_khz_mono_silence_as_long_as_the_speech(client, speed):
    audio = client.audio.speech.create(
        model="tts-1-hd", voice="nova", input=SAYING, response_format="wav", speed=speed
    )
    assert audio.response.headers["content-type"] == "audio/wav"
    assert read_wav(audio.content) == (
        1,
        2,
        24_000,
        math.ceil(spoken_seconds(SAYING, speed) * 24_000),
    )


def test_pcm_is_the_raw_samples_and_the_other_formats_their_own_type(client):
    pcm = client.audio.speech.create(
        model="tts-1", voice="echo", input=SAYING, response_format="pcm"
    )
    assert len(pcm.content) == 2 * math.ceil(spoken_seconds(SAYING) * 24_000)
    assert set(pcm.content) == {0}
    for fmt, kind, magic in (
        ("opus", "audio/opus", b"OggS"),
        ("aac", "audio/aac", b"\xff\xf1"),
        ("flac", "audio/flac", b"fLaC"),
    ):
        audio = client.audio.speech.create(
            model="tts-1", voice="echo", input="Hi", response_format=fmt
        )
        assert audio.response.headers["content-type"] == kind
        assert audio.content.startswith(magic)


def test_gpt_4o_mini_tts_streams_sse_audio_and_bills_tokens(client, fake):
    instructions = "Speak like a calm radio host."
    with client.audio.speech.with_streaming_response.create(
        model="gpt-4o-mini-tts",
        voice="marin",
        input=SAYING,
        instructions=instructions,
        response_format="wav",
        stream_format="sse",
    ) as response:
        assert response.headers["content-type"].startswith("text/event-stream")
        events = [
            orjson.loads(line[6:]) for line in response.iter_lines() if line.startswith("data: ")
        ]
        request_id = response.headers["x-request-id"]
    deltas, done = events[:-1], events[-1]
    assert len(deltas) > 1 and {e["type"] for e in deltas} == {"speech.audio.delta"}
    audio = b"".join(base64.b64decode(e["audio"]) for e in deltas)
    assert read_wav(audio)[3] == math.ceil(spoken_seconds(SAYING) * 24_000)
    prompt = n_tokens(SAYING) + n_tokens(instructions)
    output = math.ceil(20 * spoken_seconds(SAYING))
    assert done == {
        "type": "speech.audio.done",
        "usage": {"input_tokens": prompt, "output_tokens": output, "total_tokens": prompt + output},
    }
    [bill] = bills_where(fake, request_id=request_id)
    assert (bill["prompt_tokens"], bill["completion_tokens"], bill["audio_output_tokens"]) == (
        prompt,
        output,
        output,
    )
    assert bill["text_input_tokens"] == prompt and bill["characters"] == 0
    assert bill["stream"] and bill["usage_reported"]


def test_a_binary_speech_stream_ended_early_bills_the_audio_that_went_out(fake):
    body = {
        "model": "gpt-4o-mini-tts-2025-12-15",
        "voice": "alloy",
        "input": SAYING,
        "fake": {"chunks": 4, "end_early_after": 1},
    }
    status, headers, data = post(fake, "/audio/speech", body)
    assert status == 200 and headers["content-type"] == "audio/mpeg"
    frames = math.ceil(spoken_seconds(SAYING) * 44_100 / 1152)
    assert len(data) == frames // 4 * MP3_FRAME  # the first of 4 pieces
    [bill] = bills_where(fake, request_id=headers["x-request-id"])
    output = math.ceil(20 * spoken_seconds(SAYING))
    assert bill["outcome"] == "ended_early"
    assert bill["completion_tokens"] == bill["audio_output_tokens"] == output // 4
    assert bill["prompt_tokens"] == n_tokens(SAYING)


@pytest.mark.parametrize(
    ("options", "param"),
    [
        ({"model": "tts-1", "instructions": "Whisper."}, "instructions"),
        ({"model": "tts-1-hd", "stream_format": "sse"}, "stream_format"),
        ({"model": "tts-1", "voice": "ballad"}, "voice"),  # a gpt-4o-mini-tts voice
        ({"voice": "nobody"}, "voice"),
        ({"speed": 5}, "speed"),
        ({"speed": 0.1}, "speed"),
        ({"response_format": "ogg"}, "response_format"),
        ({"input": "x" * 4097}, "input"),
        ({"input": ""}, "input"),
        ({"model": "gpt-4o"}, "model"),
    ],
)
def test_bad_speech_parameters_are_refused_naming_the_parameter(fake, options, param):
    body = {"model": "gpt-4o-mini-tts", "voice": "alloy", "input": SAYING, **options}
    status, headers, answer = post(fake, "/audio/speech", body)
    assert status == 400 and orjson.loads(answer)["error"]["param"] == param
    bill = bill_of(fake, headers)
    assert bill["outcome"] == "error" and bill["characters"] == bill["prompt_tokens"] == 0


# -- transcriptions -----------------------------------------------------------------------------


def test_whisper_bills_the_seconds_rounded_up(client, fake):
    raw = client.audio.transcriptions.with_raw_response.create(
        model="whisper-1", file=("note.wav", wav(3.3))
    )
    answer = raw.parse()
    assert isinstance(answer, Transcription)
    assert answer.usage.type == "duration" and answer.usage.seconds == 4
    assert len(answer.text.split()) == 8  # 2.5 words a second, rounded down
    bill = bill_of(fake, raw.headers)
    assert (bill["audio_seconds"], bill["prompt_tokens"], bill["completion_tokens"]) == (4, 0, 0)
    assert bill["model"] == "whisper-1" and bill["usage_reported"]


def test_whisper_verbose_json_has_segments_and_words(client):
    answer = client.audio.transcriptions.create(
        model="whisper-1",
        file=("talk.wav", wav(9.0)),
        response_format="verbose_json",
        timestamp_granularities=["word", "segment"],
        language="de",
        temperature=0.2,
    )
    assert isinstance(answer, TranscriptionVerbose)
    assert (answer.duration, answer.language, answer.usage.seconds) == (9.0, "german", 9)
    words = answer.text.split()
    assert len(words) == 22 and [w.word for w in answer.words] == words
    assert answer.words[-1].end <= 9.0
    assert [len(s.text.split()) for s in answer.segments] == [10, 10, 2]
    assert answer.segments[0].temperature == 0.2 and answer.segments[0].tokens


def test_whisper_text_srt_and_vtt_are_plain_text_billed_the_same(client, fake):
    for fmt, start in (("text", "This is"), ("srt", "1\n00:00:00,000 --> "), ("vtt", "WEBVTT")):
        raw = client.audio.transcriptions.with_raw_response.create(
            model="whisper-1", file=("a.wav", wav(2.0)), response_format=fmt
        )
        assert raw.headers["content-type"].startswith("text/plain")
        assert raw.parse().startswith(start)
        bill = bill_of(fake, raw.headers)
        assert bill["audio_seconds"] == 2 and not bill["usage_reported"]


def test_a_gpt_4o_transcription_bills_audio_prompt_and_transcript_tokens(client, fake):
    prompt = "A call about the quarterly figures"
    raw = client.audio.transcriptions.with_raw_response.create(
        model="gpt-4o-transcribe", file=("a.wav", wav(4.25)), prompt=prompt
    )
    answer = raw.parse()
    audio, text, output = 43, n_tokens(prompt), n_tokens(answer.text)
    usage = answer.usage
    assert usage.type == "tokens"
    assert (usage.input_token_details.audio_tokens, usage.input_token_details.text_tokens) == (
        audio,
        text,
    )
    assert (usage.input_tokens, usage.output_tokens) == (audio + text, output)
    assert usage.total_tokens == audio + text + output
    bill = bill_of(fake, raw.headers)
    assert (bill["prompt_tokens"], bill["completion_tokens"]) == (audio + text, output)
    assert (bill["audio_input_tokens"], bill["text_input_tokens"], bill["audio_seconds"]) == (
        audio,
        text,
        0,
    )

    raw = client.audio.transcriptions.with_raw_response.create(
        model="gpt-4o-mini-transcribe", file=("a.wav", wav(4.25)), response_format="text"
    )
    assert raw.parse().strip() == answer.text
    bill = bill_of(fake, raw.headers)
    assert (bill["prompt_tokens"], bill["completion_tokens"]) == (audio, output)


def test_other_files_are_timed_at_128_kbit_per_second(client):
    mp3 = b"ID3" + bytes(47_997)  # 48 kB: 3 seconds
    usage = client.audio.transcriptions.create(
        model="gpt-4o-mini-transcribe", file=("a.mp3", mp3)
    ).usage
    assert usage.input_token_details.audio_tokens == 30


def test_a_gpt_4o_transcription_streams_deltas_then_done_with_usage(client, fake):
    raw = client.audio.transcriptions.with_raw_response.create(
        model="gpt-4o-mini-transcribe", file=("a.wav", wav(2.0)), stream=True
    )
    events = list(raw.parse())
    deltas, done = events[:-1], events[-1]
    assert all(isinstance(e, TranscriptionTextDeltaEvent) for e in deltas)
    assert isinstance(done, TranscriptionTextDoneEvent)
    assert "".join(e.delta for e in deltas) == done.text and len(done.text.split()) == 5
    assert done.usage.input_tokens == 20 and done.usage.output_tokens == n_tokens(done.text)
    bill = bill_of(fake, raw.headers)
    assert bill["stream"] and bill["usage_reported"] and bill["outcome"] == "completed"
    assert bill["completion_tokens"] == n_tokens(done.text)


def test_diarized_json_labels_its_speakers(client):
    answer = client.audio.transcriptions.create(
        model="gpt-4o-transcribe-diarize",
        file=("a.wav", wav(6.0)),
        response_format="diarized_json",
    )
    assert isinstance(answer, TranscriptionDiarized)
    assert [s.speaker for s in answer.segments] == ["A", "B"]
    assert answer.usage.type == "tokens" and answer.usage.input_token_details.audio_tokens == 60
    with pytest.raises(openai.BadRequestError) as error:
        client.audio.transcriptions.create(
            model="gpt-4o-transcribe-diarize", file=("a.wav", wav(1.0)), prompt="Hi"
        )
    assert error.value.param == "prompt"


def test_whisper_ignores_stream_and_answers_plainly(fake):
    status, answer = post_form(
        fake,
        "/audio/transcriptions",
        {"model": "whisper-1", "stream": "true"},
        ("a.wav", wav(1.0)),
    )
    assert status == 200 and orjson.loads(answer["body"])["usage"]["seconds"] == 1
    bill = bill_of(fake, answer["headers"])
    assert not bill["stream"] and bill["audio_seconds"] == 1


@pytest.mark.parametrize(
    ("fields", "file", "status", "param"),
    [
        ({"model": "whisper-1"}, ("a.mp3", b"not audio at all"), 400, "file"),
        ({"model": "whisper-1"}, ("a.txt", wav(1.0)), 400, "file"),
        ({"model": "whisper-1"}, ("a.wav", wav(0.05)), 400, "file"),
        ({"model": "whisper-1"}, ("a.wav", b"RIFF\x00\x00\x00\x00WAVEjunk"), 400, "file"),
        ({"model": "whisper-1"}, None, 400, "file"),
        (
            {"model": "whisper-1", "response_format": "diarized_json"},
            ("a.wav", wav(1)),
            400,
            "response_format",
        ),
        (
            {"model": "gpt-4o-transcribe", "response_format": "srt"},
            ("a.wav", wav(1)),
            400,
            "response_format",
        ),
        ({"model": "gpt-4o-transcribe", "temperature": "2"}, ("a.wav", wav(1)), 400, "temperature"),
        ({"model": "tts-1"}, ("a.wav", wav(1)), 400, "model"),
        ({}, ("a.wav", wav(1)), 400, "model"),
    ],
)
def test_bad_transcriptions_are_refused_as_openai_refuses_them(fake, fields, file, status, param):
    got, answer = post_form(fake, "/audio/transcriptions", fields, file)
    error = orjson.loads(answer["body"])["error"]
    assert got == status and error["param"] == param
    bill = bill_of(fake, answer["headers"])
    assert bill["outcome"] == "error" and bill["audio_seconds"] == bill["prompt_tokens"] == 0


def test_a_file_over_25_mb_is_too_large(fake):
    big = b"ID3" + bytes(25 * 1024 * 1024)
    got, answer = post_form(fake, "/audio/transcriptions", {"model": "whisper-1"}, ("a.mp3", big))
    assert got == 413 and "26214400" in orjson.loads(answer["body"])["error"]["message"]


# -- translations ------------------------------------------------------------------------------


@deprecated
def test_translations_are_whisper_only_in_english_and_billed_by_the_second(client, fake):
    raw = client.audio.translations.with_raw_response.create(
        model="whisper-1", file=("a.wav", wav(2.5)), response_format="verbose_json"
    )
    answer = raw.parse()
    assert isinstance(answer, TranslationVerbose)
    assert (answer.language, answer.duration) == ("english", 2.5)
    assert answer.segments and answer.text
    bill = bill_of(fake, raw.headers)
    assert (bill["audio_seconds"], bill["path"]) == (3, "/v1/audio/translations")
    plain = client.audio.translations.create(model="whisper-1", file=("a.wav", wav(1.0)))
    assert plain.text and "usage" not in (plain.model_extra or {})  # a translation reports none
    with pytest.raises(openai.BadRequestError) as error:
        client.audio.translations.create(model="gpt-4o-transcribe", file=("a.wav", wav(1.0)))
    assert error.value.param == "model"


def test_a_multipart_client_gone_before_the_headers_is_billed_its_input(fake):
    async def leave() -> None:
        form = aiohttp.FormData()
        form.add_field("model", "whisper-1")
        form.add_field("fake[latency_ms]", "2000")
        form.add_field("file", wav(2.0), filename="a.wav")
        async with aiohttp.ClientSession(headers=AUTH) as session:
            try:
                async with session.post(
                    f"{fake.base_url}/audio/transcriptions",
                    data=form,
                    timeout=aiohttp.ClientTimeout(total=0.3),
                ):
                    pass
            except TimeoutError:
                pass

    asyncio.run(leave())
    [bill] = bills_where(fake, path="/v1/audio/transcriptions", outcome="client_gone")
    assert bill["audio_seconds"] == 2 and bill["status"] is None

"""Images and audio through the proxy, end to end (official SDK → proxy → fake upstream): one
record each at the official price, computed here from the price rows and the fake's own bill
(the fake counts what it billed by its own rules, fakeopenai.image_api / audio_api)."""

from __future__ import annotations

import io
import math
from concurrent.futures import ThreadPoolExecutor
from decimal import Decimal

import httpx2 as httpx
import openai
import pytest

from tests.attacks import png, wav
from tests.e2e import records_for

MILLION = Decimal(1_000_000)


def row(model: str):
    from usage.models import ModelPrice

    return ModelPrice.objects.filter(model=model).latest("effective_from")


def image_fee(model: str, variant: str) -> Decimal:
    from usage.models import ToolPrice

    return ToolPrice.objects.get(tool="image", model_patterns=model, variant=variant).usd_per_call


def bill_of(e2e, record) -> dict:
    [bill] = [
        b for b in e2e.upstream.bills()["bills"] if b["request_id"] == record.upstream_request_id
    ]
    return bill


def test_a_gpt_image_generation_is_billed_its_text_and_image_tokens(e2e):
    secret = e2e.key(budget_usd="2")
    result = e2e.client(secret).images.generate(
        model="gpt-image-1", prompt="A lighthouse at dusk", quality="low", size="1024x1536", n=2
    )
    assert len(result.data) == 2 and result.data[0].b64_json
    [record] = records_for(secret, 1)
    bill = bill_of(e2e, record)
    r = row("gpt-image-1")
    assert bill["image_output_tokens"] == 2 * 408
    expected = (
        bill["text_input_tokens"] * r.input_per_1m
        + bill["image_output_tokens"] * r.image_output_per_1m
    ) / MILLION
    assert record.cost_usd == expected
    assert (record.prompt_tokens, record.completion_tokens) == (
        result.usage.input_tokens,
        result.usage.output_tokens,
    )
    assert record.image_output_tokens == 816 and record.endpoint == "images/generations"
    assert record.status_code == 200 and not record.estimated


def test_dall_e_is_billed_per_image_by_quality_and_size(e2e):
    secret = e2e.key(budget_usd="1")
    client = e2e.client(secret)
    client.images.generate(model="dall-e-3", prompt="A fox", quality="hd", size="1024x1792")
    client.images.create_variation(image=("fox.png", png(256, 256)), n=2, size="256x256")
    first, second = records_for(secret, 2)
    assert first.cost_usd == image_fee("dall-e-3", "hd:1024x1792") == Decimal("0.12")
    assert first.tool_calls == {"image:hd:1024x1792": 1}
    assert second.model == "dall-e-2" and second.endpoint == "images/variations"
    assert second.cost_usd == 2 * image_fee("dall-e-2", "standard:256x256")


def test_an_edit_relays_the_upload_intact_and_bills_its_input_image(e2e):
    secret = e2e.key(budget_usd="2")
    result = e2e.client(secret).images.edit(
        model="gpt-image-1",
        image=[("a.png", png(1024, 1024)), ("b.png", png(512, 768))],
        prompt="Put them side by side",
        input_fidelity="high",
        quality="medium",
        size="1024x1024",
    )
    [record] = records_for(secret, 1)
    bill = bill_of(e2e, record)
    assert bill["image_input_tokens"] > 8000  # both images at high fidelity, as the fake read them
    r = row("gpt-image-1")
    expected = (
        bill["text_input_tokens"] * r.input_per_1m
        + bill["image_input_tokens"] * r.image_input_per_1m
        + bill["image_output_tokens"] * r.image_output_per_1m
    ) / MILLION
    assert record.cost_usd == expected
    assert record.image_input_tokens == result.usage.input_tokens_details.image_tokens


def test_speech_per_character_and_per_token(e2e):
    secret = e2e.key(budget_usd="1")
    client = e2e.client(secret)
    text = "The quick brown fox jumps over the lazy dog, twice over."
    audio = client.audio.speech.create(model="tts-1", voice="alloy", input=text)
    assert audio.read()[:2] in (b"ID", b"\xff\xfb", b"\xff\xf3")
    wav_reply = client.audio.speech.create(
        model="gpt-4o-mini-tts", voice="coral", input=text, response_format="wav"
    )
    assert wav_reply.read()[:4] == b"RIFF"
    with client.audio.speech.with_streaming_response.create(
        model="gpt-4o-mini-tts", voice="coral", input=text, stream_format="sse"
    ) as response:
        events = response.read()
    assert b"speech.audio.done" in events
    chars, tokens_wav, tokens_sse = records_for(secret, 3)
    assert chars.characters == len(text)
    assert chars.cost_usd == len(text) * row("tts-1").characters_per_1m / MILLION
    r = row("gpt-4o-mini-tts")
    for record in (tokens_wav, tokens_sse):
        bill = bill_of(e2e, record)
        assert record.audio_output_tokens == bill["audio_output_tokens"] > 0
        assert record.prompt_tokens >= bill["prompt_tokens"]
        expected = (
            record.prompt_tokens * r.input_per_1m
            + record.audio_output_tokens * r.audio_output_per_1m
        ) / MILLION
        assert record.cost_usd == expected
    # A binary answer carries no usage: the proxy measured its audio; the SSE one reported it.
    assert tokens_wav.estimated and not tokens_sse.estimated
    assert tokens_sse.prompt_tokens == bill_of(e2e, tokens_sse)["prompt_tokens"]


def test_a_transcription_of_a_generated_wav_is_billed_per_second(e2e):
    secret = e2e.key(budget_usd="1")
    client = e2e.client(secret)
    clip = wav(7.2)
    text = client.audio.transcriptions.create(model="whisper-1", file=("clip.wav", clip))
    assert text.text
    plain = client.audio.transcriptions.create(
        model="whisper-1", file=("clip.wav", clip), response_format="text"
    )
    assert isinstance(plain, str) and plain
    client.audio.translations.create(model="whisper-1", file=("clip.wav", clip))
    records = records_for(secret, 3)
    per_minute = row("whisper-1").audio_per_minute
    for record in records:
        assert record.audio_seconds == math.ceil(7.2) == bill_of(e2e, record)["audio_seconds"]
        assert record.cost_usd == 8 * per_minute / 60
    # text answers and translations carry no usage: billed by the file's length.
    assert [r.estimated for r in records] == [False, True, True]
    assert records[2].endpoint == "audio/translations"


def test_a_gpt_4o_transcription_is_billed_its_audio_and_text_tokens(e2e):
    secret = e2e.key(budget_usd="1")
    result = e2e.client(secret).audio.transcriptions.create(
        model="gpt-4o-transcribe", file=("clip.wav", wav(3.0))
    )
    [record] = records_for(secret, 1)
    r = row("gpt-4o-transcribe")
    usage = result.usage
    assert record.audio_input_tokens == usage.input_token_details.audio_tokens == 30
    expected = (
        usage.input_token_details.text_tokens * r.input_per_1m
        + usage.input_token_details.audio_tokens * r.audio_input_per_1m
        + usage.output_tokens * r.output_per_1m
    ) / MILLION
    assert record.cost_usd == expected


def test_ten_concurrent_generations_on_a_budget_for_two_spend_at_most_the_budget(e2e):
    budget = Decimal("0.34")  # one high 1024x1024 image reserves about $0.1665
    secret = e2e.key(budget_usd=str(budget))
    client = e2e.client(secret)

    def generate(_: int) -> str:
        try:
            client.images.generate(
                model="gpt-image-1", prompt="A red kite", quality="high", size="1024x1024"
            )
        except openai.RateLimitError as exc:
            assert exc.code == "insufficient_quota"
            return "refused"
        return "made"

    with ThreadPoolExecutor(10) as pool:
        outcomes = list(pool.map(generate, range(10)))
    records = records_for(secret, 10)
    assert 1 <= outcomes.count("made") <= 2
    assert sum(r.cost_usd for r in records) <= budget
    made = [b for b in e2e.upstream.bills()["bills"] if b["path"] == "/v1/images/generations"]
    assert len(made) == outcomes.count("made")  # a refused one never reached upstream


def test_a_spent_budget_refuses_every_media_route(e2e):
    secret = e2e.key(budget_usd="0.000001")
    client = e2e.client(secret)
    calls = [
        lambda: client.images.generate(model="gpt-image-1", prompt="x", quality="low"),
        lambda: client.images.generate(model="dall-e-2", prompt="x", size="256x256"),
        lambda: client.images.edit(model="gpt-image-1", image=("a.png", png(64, 64)), prompt="x"),
        lambda: client.images.create_variation(image=("a.png", png(64, 64))),
        lambda: client.audio.speech.create(model="tts-1", voice="alloy", input="Hello there"),
        lambda: client.audio.speech.create(model="gpt-4o-mini-tts", voice="alloy", input="Hi"),
        lambda: client.audio.transcriptions.create(model="whisper-1", file=("a.wav", wav(1))),
        lambda: client.audio.transcriptions.create(
            model="gpt-4o-mini-transcribe", file=("a.wav", wav(1))
        ),
        lambda: client.audio.translations.create(model="whisper-1", file=("a.wav", wav(1))),
    ]
    for call in calls:
        with pytest.raises(openai.RateLimitError) as refused:
            call()
        assert refused.value.code == "insufficient_quota"
    records = records_for(secret, len(calls))
    assert {r.status_code for r in records} == {429}
    assert e2e.upstream.bills()["bills"] == []


def test_bad_uploads_get_openais_400_not_a_500(e2e):
    secret = e2e.key(budget_usd="1")
    url = f"{e2e.proxy.v1}/audio/transcriptions"
    auth = {"Authorization": f"Bearer {secret}"}
    cases = [
        ({"Content-Type": "multipart/form-data; boundary=xyz"}, b"--xyz\r\nno headers here"),
        ({"Content-Type": "application/json"}, b'{"model": "whisper-1"}'),
        (
            {"Content-Type": "multipart/form-data; boundary=b"},
            b'--b\r\nContent-Disposition: form-data; name="model"\r\n\r\nwhisper-1\r\n--b--\r\n',
        ),
    ]
    for headers, body in cases:
        answer = httpx.post(url, headers={**auth, **headers}, content=body, timeout=10)
        assert answer.status_code == 400, answer.text
        assert answer.json()["error"]["message"]
    missing = httpx.post(
        f"{e2e.proxy.v1}/images/generations", headers=auth, json={"model": "dall-e-3"}, timeout=10
    )
    assert missing.status_code == 400 and missing.json()["error"]["param"] == "prompt"
    records_for(secret, len(cases) + 1)


def test_a_dall_e_size_with_no_fee_is_named_on_a_budgeted_key(e2e):
    secret = e2e.key(budget_usd="1")
    with pytest.raises(openai.BadRequestError) as refused:
        e2e.client(secret).images.generate(model="dall-e-3", prompt="x", size="512x512")
    assert refused.value.code == "model_not_priced"
    assert "512x512" in refused.value.message
    assert e2e.upstream.bills()["bills"] == []
    records_for(secret, 1)


def test_an_upload_keeps_its_bytes(e2e):
    # The fake answers an edit by the image sizes it read from the bytes it got.
    secret = e2e.key()
    data = png(1536, 1024) + b"\x00" * 200_000  # past the inline limit: sized off the loop
    e2e.client(secret).images.edit(
        model="gpt-image-1", image=("wide.png", io.BytesIO(data)), prompt="wider", size="auto"
    )
    [record] = records_for(secret, 1)
    assert bill_of(e2e, record)["image_input_tokens"] == record.image_input_tokens > 0


def test_streamed_images_and_transcriptions_are_billed_from_their_terminal_event(e2e):
    secret = e2e.key(budget_usd="2")
    client = e2e.client(secret)
    events = list(
        client.images.generate(
            model="gpt-image-1", prompt="A kite", quality="low", stream=True, partial_images=1
        )
    )
    assert events[-1].type == "image_generation.completed"
    done = list(
        client.audio.transcriptions.create(
            model="gpt-4o-mini-transcribe", file=("a.wav", wav(2.0)), stream=True
        )
    )[-1]
    assert done.type == "transcript.text.done"
    image, heard = records_for(secret, 2)
    assert image.stream and not image.estimated
    assert image.completion_tokens == events[-1].usage.output_tokens
    r = row("gpt-image-1")
    bill = bill_of(e2e, image)
    assert (
        image.cost_usd
        == (
            bill["text_input_tokens"] * r.input_per_1m
            + bill["image_output_tokens"] * r.image_output_per_1m
        )
        / MILLION
    )
    assert heard.audio_input_tokens == done.usage.input_token_details.audio_tokens == 20
    assert heard.completion_tokens == done.usage.output_tokens and not heard.estimated


def test_the_legacy_028_sdk_makes_images_and_transcribes(e2e, tmp_path):
    import subprocess
    from pathlib import Path

    legacy = Path(__file__).resolve().parents[2] / ".venv-legacy" / "bin" / "python"
    if not legacy.exists():
        pytest.skip("the legacy SDK venv is missing: `make test` installs it")
    secret = e2e.key(budget_usd="1")
    clip = tmp_path / "clip.wav"
    clip.write_bytes(wav(4.0))
    script = (
        "import openai\n"
        f"openai.api_key = {secret!r}\n"
        f"openai.api_base = {e2e.proxy.v1!r}\n"
        "r = openai.Image.create(prompt='a fox', n=2, size='256x256')\n"
        "assert len(r['data']) == 2, r\n"
        f"t = openai.Audio.transcribe('whisper-1', open({str(clip)!r}, 'rb'))\n"
        "assert t['text'], t\n"
    )
    done = subprocess.run(
        [str(legacy), "-c", script], capture_output=True, text=True, timeout=60, check=False
    )
    assert done.returncode == 0, done.stderr
    images, heard = records_for(secret, 2)
    assert images.cost_usd == 2 * image_fee("dall-e-2", "standard:256x256")
    assert heard.audio_seconds == 4 and heard.cost_usd == 4 * row("whisper-1").audio_per_minute / 60

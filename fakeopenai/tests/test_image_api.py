"""The Images endpoints answer in the shapes the SDK parses, and bill as the fake's rules say:
DALL·E per image, the GPT image models by tokens the test counts itself (the prompt with
tiktoken, the input images by OpenAI's tile rule, the output by the gpt-image-1 table)."""

from __future__ import annotations

import asyncio
import base64
import math
import struct

import aiohttp
import openai
import orjson
import pytest
from openai.types import ImageGenCompletedEvent, ImageGenPartialImageEvent

from fakeopenai.tests.calls import AUTH, bill_of, bills_where, n_tokens, post
from fakeopenai.tests.media import gif, jpeg, png, webp

PROMPT = "A watercolour lighthouse at dusk"
# The gpt-image-1 guide's output tokens for one image.
TABLE = {
    ("low", "1024x1024"): 272,
    ("low", "1024x1536"): 408,
    ("low", "1536x1024"): 400,
    ("medium", "1024x1024"): 1056,
    ("medium", "1024x1536"): 1584,
    ("medium", "1536x1024"): 1568,
    ("high", "1024x1024"): 4160,
    ("high", "1024x1536"): 6240,
    ("high", "1536x1024"): 6208,
}


def png_size(b64: str) -> tuple[int, int]:
    data = base64.b64decode(b64)
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and data[12:16] == b"IHDR"
    return struct.unpack(">II", data[16:24])


def tiles(width: int, height: int) -> int:
    """The vision guide's rule, written again here: fit 2048, shorter side 768, 512-px tiles."""
    scale = min(1, 2048 / max(width, height))
    width, height = int(width * scale), int(height * scale)
    scale = min(1, 768 / min(width, height))
    width, height = int(width * scale), int(height * scale)
    return 85 + 170 * math.ceil(width / 512) * math.ceil(height / 512)


def upload(name: str, data: bytes) -> tuple[str, bytes, str]:
    return (
        name,
        data,
        {"png": "image/png", "jpg": "image/jpeg", "webp": "image/webp"}.get(
            name.rsplit(".", 1)[-1], "application/octet-stream"
        ),
    )


@pytest.mark.parametrize(
    ("quality", "size", "billed_as"),
    [
        ("low", "1024x1536", ("low", "1024x1536")),
        ("high", "1536x1024", ("high", "1536x1024")),
        (None, None, ("medium", "1024x1024")),  # auto is medium, 1024x1024
        ("auto", "auto", ("medium", "1024x1024")),
    ],
)
def test_a_gpt_image_generation_bills_its_prompt_and_the_tables_output(
    client, fake, quality, size, billed_as
):
    options = {k: v for k, v in (("quality", quality), ("size", size)) if v is not None}
    raw = client.images.with_raw_response.generate(
        model="gpt-image-1", prompt=PROMPT, n=2, **options
    )
    answer = raw.parse()
    output = 2 * TABLE[billed_as]
    text = n_tokens(PROMPT)
    assert (answer.quality, answer.size) == billed_as
    assert (answer.background, answer.output_format) == ("opaque", "png")
    assert [png_size(image.b64_json) for image in answer.data] == [
        tuple(map(int, billed_as[1].split("x")))
    ] * 2
    assert answer.data[0].url is None and answer.data[0].revised_prompt is None
    usage = answer.usage
    assert (usage.input_tokens, usage.output_tokens, usage.total_tokens) == (
        text,
        output,
        text + output,
    )
    assert (usage.input_tokens_details.text_tokens, usage.input_tokens_details.image_tokens) == (
        text,
        0,
    )
    assert usage.output_tokens_details is None  # gpt-image-1 reports none
    bill = bill_of(fake, raw.headers)
    assert bill["model"] == "gpt-image-1" and bill["usage_reported"]
    assert (bill["prompt_tokens"], bill["completion_tokens"]) == (text, output)
    assert (bill["text_input_tokens"], bill["image_input_tokens"], bill["image_output_tokens"]) == (
        text,
        0,
        output,
    )
    assert (bill["images"], bill["image_quality"], bill["image_size"]) == (2, *billed_as)


@pytest.mark.parametrize("model", ["gpt-image-1.5", "chatgpt-image-latest"])
def test_newer_gpt_image_models_detail_their_output(client, model):
    usage = client.images.generate(model=model, prompt=PROMPT, quality="low").usage
    assert usage.output_tokens == 272
    assert usage.output_tokens_details.model_dump() == {"image_tokens": 272, "text_tokens": 0}


def test_dall_e_answers_urls_or_base64_without_usage_and_bills_per_image(client, fake):
    raw = client.images.with_raw_response.generate(
        model="dall-e-3", prompt=PROMPT, size="1792x1024", quality="hd", style="natural"
    )
    answer = raw.parse()
    assert answer.usage is None and answer.size is None
    [image] = answer.data
    assert image.url.startswith("https://fake-openai.invalid/images/") and image.b64_json is None
    assert image.revised_prompt
    bill = bill_of(fake, raw.headers)
    assert (bill["images"], bill["image_size"], bill["image_quality"]) == (1, "1792x1024", "hd")
    assert (bill["prompt_tokens"], bill["completion_tokens"], bill["usage_reported"]) == (
        0,
        0,
        False,
    )

    # No model is dall-e-2.
    raw = client.images.with_raw_response.generate(
        prompt=PROMPT, n=3, size="512x512", response_format="b64_json"
    )
    assert [png_size(image.b64_json) for image in raw.parse().data] == [(512, 512)] * 3
    bill = bill_of(fake, raw.headers)
    assert (bill["model"], bill["images"], bill["image_quality"]) == ("dall-e-2", 3, "standard")


def test_a_gpt_image_only_parameter_without_a_model_selects_gpt_image_1(client, fake):
    raw = client.images.with_raw_response.generate(prompt=PROMPT, output_format="webp")
    answer = raw.parse()
    assert answer.output_format == "webp" and answer.usage.output_tokens == 1056
    assert base64.b64decode(answer.data[0].b64_json)[8:12] == b"WEBP"
    assert bill_of(fake, raw.headers)["model"] == "gpt-image-1"


@pytest.mark.parametrize(
    ("options", "param"),
    [
        ({"model": "dall-e-2", "size": "1024x1536"}, "size"),
        ({"model": "dall-e-3", "n": 2}, "n"),
        ({"model": "gpt-image-1", "n": 11}, "n"),
        ({"model": "dall-e-2", "prompt": "x" * 1001}, "prompt"),
        ({"model": "dall-e-3", "prompt": "x" * 4001}, "prompt"),
        ({"model": "gpt-image-1", "response_format": "url"}, "response_format"),
        ({"model": "gpt-image-1", "quality": "hd"}, "quality"),
        ({"model": "gpt-image-1", "size": "256x256"}, "size"),
        ({"model": "dall-e-2", "output_format": "png"}, "output_format"),
        (
            {"model": "gpt-image-1", "background": "transparent", "output_format": "jpeg"},
            "background",
        ),
        ({"model": "gpt-image-1", "output_compression": 50}, "output_compression"),
        ({"model": "gpt-4o"}, "model"),
    ],
)
def test_bad_generation_parameters_are_refused_naming_the_parameter(fake, options, param):
    status, headers, body = post(fake, "/images/generations", {"prompt": PROMPT, **options})
    error = orjson.loads(body)["error"]
    assert status == 400 and error["param"] == param and error["type"] == "invalid_request_error"
    bill = bill_of(fake, headers)
    assert bill["outcome"] == "error" and bill["images"] == 0 and bill["prompt_tokens"] == 0


def test_a_gpt_image_edit_bills_each_input_image_by_its_tiles(client, fake):
    images = [
        upload("a.png", png(1024, 1024)),
        upload("b.jpg", jpeg(3000, 1500)),
        upload("c.webp", webp(600, 400)),
    ]
    raw = client.images.with_raw_response.edit(
        model="gpt-image-1", image=images, prompt=PROMPT, quality="low", size="1536x1024"
    )
    answer = raw.parse()
    image_tokens = tiles(1024, 1024) + tiles(3000, 1500) + tiles(600, 400)
    assert image_tokens == 765 + 1105 + 425
    text = n_tokens(PROMPT)
    usage = answer.usage
    assert usage.input_tokens_details.image_tokens == image_tokens
    assert usage.input_tokens == text + image_tokens and usage.output_tokens == 400
    assert png_size(answer.data[0].b64_json) == (1536, 1024)
    bill = bill_of(fake, raw.headers)
    assert (bill["prompt_tokens"], bill["image_input_tokens"], bill["completion_tokens"]) == (
        text + image_tokens,
        image_tokens,
        400,
    )
    assert bill["model"] == "gpt-image-1" and bill["path"] == "/v1/images/edits"


def test_high_input_fidelity_adds_its_tokens_per_image(client):
    def image_tokens(fidelity: str) -> int:
        return client.images.edit(
            model="gpt-image-1.5",
            image=[upload("a.png", png(512, 512)), upload("b.png", png(1024, 768))],
            mask=upload("m.png", png(512, 512)),
            prompt=PROMPT,
            input_fidelity=fidelity,
        ).usage.input_tokens_details.image_tokens

    low = image_tokens("low")
    assert low == tiles(512, 512) + tiles(1024, 768)
    assert image_tokens("high") == low + 4160 + 6240  # square, then not


def test_a_dall_e_2_edit_takes_one_square_png(client, fake):
    raw = client.images.with_raw_response.edit(
        image=upload("a.png", png(256, 256)), prompt=PROMPT, n=2, size="256x256"
    )
    answer = raw.parse()
    assert len(answer.data) == 2 and answer.usage is None
    bill = bill_of(fake, raw.headers)
    assert (bill["model"], bill["images"], bill["image_size"]) == ("dall-e-2", 2, "256x256")
    refused = [
        {"image": upload("a.png", png(300, 200))},
        {"image": upload("a.jpg", jpeg(256, 256))},
        {"image": [upload("a.png", png(256, 256)), upload("b.png", png(256, 256))]},
        {"image": upload("a.png", png(256, 256)), "mask": upload("m.png", png(128, 128))},
        {"image": upload("a.png", png(256, 256)), "input_fidelity": "high"},
    ]
    for options in refused:
        with pytest.raises(openai.BadRequestError) as error:
            client.images.edit(prompt=PROMPT, model="dall-e-2", **options)
        assert error.value.param in ("image", "mask", "input_fidelity")


def test_a_gpt_image_edit_refuses_what_it_cannot_read(client):
    with pytest.raises(openai.BadRequestError) as error:
        client.images.edit(model="gpt-image-1", image=upload("a.gif", gif(64, 64)), prompt=PROMPT)
    assert error.value.param == "image"
    with pytest.raises(openai.BadRequestError) as error:
        client.images.edit(
            model="gpt-image-1-mini",
            image=upload("a.png", png(64, 64)),
            prompt=PROMPT,
            input_fidelity="high",
        )
    assert error.value.param == "input_fidelity"


@pytest.mark.filterwarnings("ignore:deprecated:DeprecationWarning")
def test_variations_are_dall_e_2_only(client, fake):
    raw = client.images.with_raw_response.create_variation(
        image=upload("a.png", png(512, 512)), n=2, size="512x512", response_format="b64_json"
    )
    assert [png_size(image.b64_json) for image in raw.parse().data] == [(512, 512)] * 2
    bill = bill_of(fake, raw.headers)
    assert (bill["model"], bill["images"], bill["path"]) == ("dall-e-2", 2, "/v1/images/variations")
    with pytest.raises(openai.BadRequestError) as error:
        client.images.create_variation(image=upload("a.png", png(512, 512)), model="gpt-image-1")
    assert error.value.param == "model"
    with pytest.raises(openai.BadRequestError):
        client.images.create_variation(image=upload("a.png", png(512, 256)))


def test_a_streamed_generation_sends_partial_images_then_the_completed_one(client, fake):
    raw = client.images.with_raw_response.generate(
        model="gpt-image-1", prompt=PROMPT, quality="low", stream=True, partial_images=2
    )
    events = list(raw.parse())
    assert [type(e) for e in events] == [ImageGenPartialImageEvent] * 2 + [ImageGenCompletedEvent]
    assert [e.partial_image_index for e in events[:2]] == [0, 1]
    assert png_size(events[-1].b64_json) == (1024, 1024)
    text, output = n_tokens(PROMPT), 272 + 2 * 100  # a partial image is 100 tokens more
    assert (events[-1].usage.input_tokens, events[-1].usage.output_tokens) == (text, output)
    bill = bill_of(fake, raw.headers)
    assert bill["stream"] and bill["outcome"] == "completed" and bill["usage_reported"]
    assert (bill["completion_tokens"], bill["images"]) == (output, 1)


def test_a_stream_ended_early_bills_the_partial_images_that_went_out(fake):
    status, headers, _ = post(
        fake,
        "/images/generations",
        {
            "model": "gpt-image-1",
            "prompt": PROMPT,
            "stream": True,
            "partial_images": 3,
            "fake": {"end_early_after": 2},
        },
    )
    assert status == 200
    [bill] = bills_where(fake, request_id=headers["x-request-id"])
    assert bill["outcome"] == "ended_early" and not bill["usage_reported"]
    assert (bill["completion_tokens"], bill["image_output_tokens"], bill["images"]) == (200, 200, 0)
    assert bill["prompt_tokens"] == n_tokens(PROMPT)


def test_a_multipart_request_carries_its_knobs_in_fake_fields(client, fake):
    with pytest.raises(openai.RateLimitError):
        client.images.edit(
            model="gpt-image-1",
            image=upload("a.png", png(64, 64)),
            prompt=PROMPT,
            extra_body={"fake": {"fail_status": 429}},
        )
    [bill] = bills_where(fake, path="/v1/images/edits", status=429)
    assert bill["outcome"] == "error" and bill["prompt_tokens"] == 0
    answer = client.images.edit(
        model="gpt-image-1",
        image=upload("a.png", png(64, 64)),
        prompt=PROMPT,
        extra_body={"fake": {"no_usage": True}},
    )
    assert answer.usage is None and answer.data


def test_an_edit_that_is_not_multipart_is_refused(fake):
    async def run() -> tuple[int, dict]:
        async with (
            aiohttp.ClientSession(headers=AUTH) as session,
            session.post(f"{fake.base_url}/images/edits", json={"prompt": PROMPT}) as r,
        ):
            return r.status, await r.json()

    status, body = asyncio.run(run())
    assert status == 400 and "multipart/form-data" in body["error"]["message"]

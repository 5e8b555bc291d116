"""Images in a prompt are billed as OpenAI bills them: sized from the data URL's header, then
by tiles (gpt-4o family) or patches (gpt-4.1-mini, gpt-4.1-nano, o4-mini)."""

from __future__ import annotations

import openai
import orjson
import pytest

from fakeopenai.images import image_dimensions, patch_tokens, tile_tokens
from fakeopenai.tests.calls import bill_of, n_tokens, openai_chat_count, post
from fakeopenai.tests.media import data_url, gif, jpeg, png, webp

QUESTION = "What is in this picture?"


def chat_image(url: str, detail: str | None = None) -> list[dict]:
    image = {"url": url} if detail is None else {"url": url, "detail": detail}
    return [
        {
            "role": "user",
            "content": [
                {"type": "text", "text": QUESTION},
                {"type": "image_url", "image_url": image},
            ],
        }
    ]


def text_only() -> int:
    """The chat prompt without its image: the recipe over the text alone."""
    return openai_chat_count([{"role": "user", "content": QUESTION}])


def image_tokens_billed(client, model: str, url: str, detail: str | None = None, **fake) -> int:
    completion = client.chat.completions.create(
        model=model, messages=chat_image(url, detail), extra_body={"fake": fake} if fake else None
    )
    return completion.usage.prompt_tokens - text_only()


def test_a_512_png_at_high_detail_on_gpt_4o_costs_255_tokens(client, fake):
    raw = client.chat.completions.with_raw_response.create(
        model="gpt-4o", messages=chat_image(data_url("image/png", png(512, 512)), "high")
    )
    assert raw.parse().usage.prompt_tokens == text_only() + 255
    assert bill_of(fake, raw.headers)["prompt_tokens"] == text_only() + 255


@pytest.mark.parametrize(
    ("image", "detail", "tokens"),
    [
        # The vision guide's examples: 1024² → 768² → 4 tiles; 2048×4096 → 768×1536 → 6 tiles.
        (png(1024, 1024), "high", 765),
        (jpeg(2048, 4096), "auto", 1105),
        (gif(4096, 8192), "low", 85),
        (webp(300, 1000), None, 85 + 170 * 2),  # no detail is auto: 300×1000 is 1×2 tiles
    ],
)
def test_every_format_is_sized_from_its_header_and_tiled(client, image, detail, tokens):
    mime = {b"\x89P": "image/png", b"\xff\xd8": "image/jpeg", b"GI": "image/gif"}.get(
        image[:2], "image/webp"
    )
    assert image_tokens_billed(client, "gpt-4o", data_url(mime, image), detail) == tokens


def test_the_families_bill_their_own_rates(client):
    square = data_url("image/png", png(1024, 1024))
    assert image_tokens_billed(client, "gpt-4.1", square, "high") == 765
    # gpt-4o-mini: a low per-token price, many tokens per image.
    assert image_tokens_billed(client, "gpt-4o-mini", square, "low") == 2833
    assert image_tokens_billed(client, "gpt-4o-mini", square, "high") == 2833 + 5667 * 4
    assert image_tokens_billed(client, "gpt-5", square, "high") == 70 + 140 * 4
    assert image_tokens_billed(client, "o3", square, "high") == 75 + 150 * 4
    # Patches: 32×32 of them, times the model's multiplier, whatever the detail.
    assert image_tokens_billed(client, "gpt-4.1-mini", square, "low") == round(1024 * 1.62)
    assert image_tokens_billed(client, "gpt-4.1-nano", square) == round(1024 * 2.46)
    tall = data_url("image/png", png(1800, 2400))  # over 1536 patches: scaled to 33×44
    assert image_tokens_billed(client, "o4-mini", tall) == round(1452 * 1.72)


def test_an_image_behind_a_url_is_not_fetched_and_taken_as_2048_square(client):
    url = "https://example.com/cat.png"
    assert image_tokens_billed(client, "gpt-4o", url, "high") == 765
    assert image_tokens_billed(client, "gpt-4o", url, "high", image_size="512x512") == 255
    assert image_tokens_billed(client, "gpt-4.1-mini", url) == round(1521 * 1.62)


def test_responses_input_image_is_billed_like_a_chat_image(client):
    def input_tokens(content: list[dict]) -> int:
        reply = client.responses.create(
            model="gpt-4o", input=[{"role": "user", "content": content}]
        )
        return reply.usage.input_tokens

    text = {"type": "input_text", "text": QUESTION}
    image = {
        "type": "input_image",
        "image_url": data_url("image/png", png(512, 512)),
        "detail": "high",
    }
    assert input_tokens([text, image]) == input_tokens([text]) + 255
    assert input_tokens([text]) == 3 + n_tokens("user") + n_tokens(QUESTION)


def test_an_undecodable_image_is_refused_and_costs_nothing(fake):
    body = {"model": "gpt-4o", "messages": chat_image("data:image/png;base64,AAAA")}
    status, headers, answer = post(fake, "/chat/completions", body)
    assert status == 400
    assert orjson.loads(answer)["error"]["code"] == "invalid_image_format"
    assert bill_of(fake, headers)["prompt_tokens"] == 0


def test_an_image_by_file_id_is_unknown_to_the_fake(client):
    with pytest.raises(openai.NotFoundError):
        client.responses.create(
            model="gpt-4o",
            input=[{"role": "user", "content": [{"type": "input_image", "file_id": "file-x"}]}],
        )


def test_header_parsers_and_the_guides_arithmetic():
    assert image_dimensions(png(7, 3)) == (7, 3)
    assert image_dimensions(jpeg(640, 480)) == (640, 480)
    assert image_dimensions(gif(1, 65535)) == (1, 65535)
    assert image_dimensions(webp(16383, 2)) == (16383, 2)
    assert image_dimensions(b"not an image") is None
    assert tile_tokens(512, 512) == 255
    assert tile_tokens(4096, 8192) == 1105  # 2048×4096 first, then 768×1536
    assert patch_tokens(1024, 1024, 1) == 1024
    assert patch_tokens(1800, 2400, 1) == 1452  # the guide's example
    assert patch_tokens(2048, 2048, 1) == 1521

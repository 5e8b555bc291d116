"""Continuing a stored response bills its history again: the previous response's input
(its own history included) and output, then this call's own input."""

from __future__ import annotations

import openai
import pytest

from fakeopenai.tests.calls import bill_of, n_tokens


def test_a_chain_of_two_continuations_bills_the_whole_history(client, fake):
    first = client.responses.create(model="gpt-4o-mini", input="Remember the number 7")
    assert first.usage.input_tokens == n_tokens("Remember the number 7")
    raw = client.responses.with_raw_response.create(
        model="gpt-4o-mini", input="Which number?", previous_response_id=first.id
    )
    second = raw.parse()
    history = first.usage.input_tokens + first.usage.output_tokens
    assert second.usage.input_tokens == history + n_tokens("Which number?")
    assert bill_of(fake, raw.headers)["prompt_tokens"] == second.usage.input_tokens

    third = client.responses.create(
        model="gpt-4o-mini",
        input="Add one",
        previous_response_id=second.id,
        extra_body={"fake": {"completion_tokens": 30}},
    )
    assert third.usage.input_tokens == (
        second.usage.input_tokens + second.usage.output_tokens + n_tokens("Add one")
    )
    assert third.usage.output_tokens == 30
    assert client.responses.retrieve(second.id).usage.input_tokens == second.usage.input_tokens


def test_a_streamed_response_is_continued_with_what_it_billed(client):
    with client.responses.stream(
        model="gpt-4o-mini", input="Hello", extra_body={"fake": {"completion_tokens": 40}}
    ) as stream:
        streamed = stream.get_final_response()
    follow = client.responses.create(
        model="gpt-4o-mini", input="Go on", previous_response_id=streamed.id
    )
    assert follow.usage.input_tokens == n_tokens("Hello") + 40 + n_tokens("Go on")


def test_knobs_that_change_the_bill_carry_into_the_history(client):
    first = client.responses.create(
        model="gpt-4o-mini",
        input="Hello",
        extra_body={"fake": {"usage_prompt_tokens": 1000, "usage_completion_tokens": 500}},
    )
    follow = client.responses.create(
        model="gpt-4o-mini", input="Go on", previous_response_id=first.id
    )
    assert follow.usage.input_tokens == 1500 + n_tokens("Go on")


@pytest.mark.parametrize("stored", [False, None])
def test_an_unknown_or_unstored_previous_response_is_refused_as_openai_does(client, fake, stored):
    previous = "resp_unknown"
    if stored is False:
        previous = client.responses.create(model="gpt-4o-mini", input="Hi", store=False).id
    with pytest.raises(openai.BadRequestError) as refused:
        client.responses.create(model="gpt-4o-mini", input="Hi", previous_response_id=previous)
    error = refused.value
    assert error.body["message"] == f"Previous response with id '{previous}' not found."
    assert (error.param, error.code) == ("previous_response_id", "previous_response_not_found")
    assert bill_of(fake, error.response.headers)["prompt_tokens"] == 0

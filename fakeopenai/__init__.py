"""A fake OpenAI upstream for tests, benchmarks and the demo: an aiohttp.web application.

It answers chat completions, legacy completions, embeddings, Responses, moderations and
models in the shapes the official SDK parses, plain and streamed, with deterministic text.
It counts tokens on its own (`fakeopenai.counting`, tiktoken directly, never `relay.tokens`),
so what it bills can disagree with the proxy's estimate, and a request can make it disagree
on purpose through knobs (`fakeopenai.knobs`) in an optional `fake` object in its JSON body.
Every /v1 request leaves one bill (`fakeopenai.state.Tab`): what "OpenAI" charged, read at
`GET /_fake/bills`, to compare with what the proxy recorded.

What the fake assumes OpenAI bills is written at the top of the module that bills it: text
(`counting`), images (`images`), audio in and out (`audio`, `content`), files (`files`), tool
and schema definitions (`tools`), built-in tool calls (`tool_calls`), continued responses
(`responses`), replies and their max (`content`), and requests that end badly (`state`).

Serve it with `python manage.py fake_openai --port N`, or in-process with
`fakeopenai.server.FakeOpenAIThread`. Nothing here is imported by the proxy itself.
"""

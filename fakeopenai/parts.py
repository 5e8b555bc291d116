"""The content parts of a prompt that are not text (images, audio, files), counted for one
request. The rules are in `fakeopenai.images`, `fakeopenai.audio` and `fakeopenai.files`."""

from __future__ import annotations

from fakeopenai.audio import input_audio_tokens
from fakeopenai.files import file_tokens, unknown_file
from fakeopenai.images import url_image_tokens
from fakeopenai.knobs import NO_KNOBS, Knobs

_IMAGE_PARTS = ("image_url", "input_image")
_FILE_PARTS = ("file", "input_file")


class PartCounter:
    """What one request's non-text parts cost, with its knobs; keeps the audio share apart,
    since usage reports it again in `prompt_tokens_details.audio_tokens`."""

    def __init__(self, model: str, knobs: Knobs = NO_KNOBS) -> None:
        self.model = model
        self.knobs = knobs
        self.counted_audio_tokens = 0

    def tokens(self, part: dict[str, object]) -> int | None:
        """The part's input tokens, or None when it is not an image, audio or file part."""
        kind = part.get("type")
        if kind in _IMAGE_PARTS:
            return self._image(part)
        if kind == "input_audio":
            audio = input_audio_tokens(part)
            self.counted_audio_tokens += audio
            return audio
        if kind in _FILE_PARTS:
            return file_tokens(part)
        return None

    def _image(self, part: dict[str, object]) -> int:
        image = part.get("image_url")
        if isinstance(image, dict):  # chat: {"image_url": {"url": ..., "detail": ...}}
            url, detail = image.get("url"), image.get("detail")
        else:  # Responses: {"image_url": ..., "detail": ..., "file_id": ...}
            url, detail = image, part.get("detail")
            if url is None and part.get("file_id") is not None:
                raise unknown_file(part["file_id"])
        return url_image_tokens(self.model, url, detail, self.knobs.image_size)

    @property
    def audio_tokens(self) -> int:
        """The audio input tokens billed: the `audio_input_tokens` knob, else the count."""
        if self.knobs.audio_input_tokens is not None:
            return self.knobs.audio_input_tokens
        return self.counted_audio_tokens

    def with_audio_knob(self, counted: int) -> int:
        """A prompt count that included the counted audio, with the knob's audio instead."""
        return counted - self.counted_audio_tokens + self.audio_tokens

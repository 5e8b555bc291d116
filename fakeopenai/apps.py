from __future__ import annotations

from django.apps import AppConfig


class FakeOpenAIConfig(AppConfig):
    # An app only so that `manage.py fake_openai` and `manage.py demo` are found; it has no
    # models and no URLs.
    name = "fakeopenai"
    verbose_name = "Fake OpenAI upstream"

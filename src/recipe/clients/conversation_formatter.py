"""The formatter interface of NeMo Curator's ``services.conversation_formatter``."""

from __future__ import annotations

from abc import ABC, abstractmethod


class ConversationFormatter(ABC):
    """Turns chat turns into one raw prompt, for servers that only offer text completions."""

    @abstractmethod
    def format_conversation(self, conv: list[dict]) -> str:
        """Render ``conv`` (a list of ``{"role", "content"}`` dicts) as a prompt string."""

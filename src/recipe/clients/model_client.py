"""The client interfaces of NeMo Curator's ``services.model_client``, signature for signature."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Iterable

from recipe.clients.conversation_formatter import ConversationFormatter


class LLMClient(ABC):
    """A synchronous client for an LLM inference endpoint."""

    @abstractmethod
    def query_model(
        self,
        *,
        messages: Iterable,
        model: str,
        conversation_formatter: ConversationFormatter | None = None,
        max_tokens: int | None = None,
        n: int | None = 1,
        seed: int | None = None,
        stop: str | None | list[str] = None,
        stream: bool = False,
        temperature: float | None = None,
        top_k: int | None = None,
        top_p: float | None = None,
    ) -> list[str]:
        """Return one string per requested choice."""

    @abstractmethod
    def query_reward_model(
        self,
        *,
        messages: Iterable,
        model: str,
        conversation_formatter: ConversationFormatter | None = None,
    ) -> dict:
        """Return the reward model's scores as ``{name: score}``."""


class AsyncLLMClient(ABC):
    """An asynchronous client for an LLM inference endpoint."""

    @abstractmethod
    async def query_model(
        self,
        *,
        messages: Iterable,
        model: str,
        conversation_formatter: ConversationFormatter | None = None,
        max_tokens: int | None = None,
        n: int | None = 1,
        seed: int | None = None,
        stop: str | None | list[str] = None,
        stream: bool = False,
        temperature: float | None = None,
        top_k: int | None = None,
        top_p: float | None = None,
    ) -> list[str]:
        """Return one string per requested choice."""

    @abstractmethod
    async def query_reward_model(
        self,
        *,
        messages: Iterable,
        model: str,
        conversation_formatter: ConversationFormatter | None = None,
    ) -> dict:
        """Return the reward model's scores as ``{name: score}``."""

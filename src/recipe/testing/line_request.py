"""A batch line handed to the stub's live-request code: OpenAI's and Anthropic's batch stubs share it."""

from __future__ import annotations


class LineRequest:
    """One line of a batch, handed to the same code as a live request (no transport, never streamed)."""

    transport = None

    def __init__(self, body: dict) -> None:
        self.body = {**body, "stream": False}

    async def json(self) -> dict:
        return self.body

"""Multi-turn dialogues in which the model also plays the user.

From an opening line, the assistant answers; then the model, prompted with the conversation
so far and a user style, writes the user's next turn; and so on for ``n_user_turns`` turns.
"""

from __future__ import annotations

from dataclasses import dataclass

from recipe.errors import InputError
from recipe.stages.base import LLMStage
from recipe.stages.templates import render

USER_TURN_PROMPT = (
    "Here is a conversation between a user and an AI assistant.\n\n{{ history }}\n\n"
    "Write the user's next message: a follow-up request or question{{ ' ' ~ style if style }}. "
    "Reply with the message only, without any preamble."
)

STYLES = {
    "normal": "",
    "complex": "that is detailed and demanding, in the tone of an expert user",
    "concise": "that is short and to the point",
}


def format_history(conversation: list[dict]) -> str:
    return "\n\n".join(f"{turn['role'].capitalize()}: {turn['content']}" for turn in conversation)


@dataclass
class DialogueStage(LLMStage):
    """``record[output_field]`` = ``[{role, content}, ...]`` starting with the opening line."""

    openline_field: str = "openline"
    output_field: str = "conversation"
    n_user_turns: int = 2
    style: str = "normal"
    user_turn_prompt: str = USER_TURN_PROMPT

    async def aprocess(self, llm, record: dict) -> list[dict]:
        if self.openline_field not in record:
            raise InputError(f"record has no field {self.openline_field!r} to open the dialogue")
        style = STYLES.get(self.style, self.style)
        conversation = [{"role": "user", "content": str(record[self.openline_field])}]
        for turn in range(self.n_user_turns):
            answer = (await self.ask(llm, conversation, n=1))[0]
            conversation.append({"role": "assistant", "content": answer})
            if turn == self.n_user_turns - 1:
                break
            prompt = render(self.user_turn_prompt, {"history": format_history(conversation), "style": style},
                            may_be_blank=("style", "history"))
            user = (await self.ask(llm, [{"role": "user", "content": prompt}], n=1))[0]
            conversation.append({"role": "user", "content": user.strip()})
        record = dict(record)
        record[self.output_field] = conversation
        return [record]

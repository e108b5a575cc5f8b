"""Multi-turn dialogues in which the model also plays the user.

From an opening line, the assistant answers; then the model, prompted with the conversation
so far and a user style, writes the user's next turn; and so on for ``n_user_turns`` turns.
The user-turn template and the styles live in one place, ``recipes/dialogue.yaml`` (the
two-turn recipe reuses them through its defaults list): the stage takes them as parameters.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Annotated

from pydantic import Field

from recipe.errors import ParseError
from recipe.stages.base import LLMStage
from recipe.stages.records import require_fields
from recipe.stages.templates import fields_required, render

#: What the stage itself puts into the user-turn template, beside the record's fields.
TEMPLATE_FIELDS = ("history", "style")


def format_history(conversation: list[dict]) -> str:
    return "\n\n".join(f"{turn['role'].capitalize()}: {turn['content']}" for turn in conversation)


@dataclass
class DialogueStage(LLMStage):
    """``record[output_field]`` = ``[{role, content}, ...]`` starting with the opening line.

    Input columns: ``openline_field``, ``style_field`` (optional), the template's other fields.
    Output columns: ``output_field``.

    Args:
        user_turn_prompt: Jinja template for the simulated user's next turn, over the record,
            ``history`` (the conversation so far) and ``style`` (the style's description).
        styles: style name -> description; an unknown name is its own description.
        style: the style of records without ``style_field``.
        end_with_user: add one last user turn, so the conversation ends with a request still to
            answer (the two-turn recipe).
    """

    user_turn_prompt: str = ""
    openline_field: str = "openline"
    output_field: str = "conversation"
    n_user_turns: Annotated[int, Field(ge=1)] = 2
    style: str = ""
    style_field: str | None = "style"
    styles: dict[str, str] = field(default_factory=dict)
    end_with_user: bool = False

    def rules(self):
        if not self.user_turn_prompt.strip():
            yield "user_turn_prompt", "user_turn_prompt is empty: give the template of the user's turns"

    @property
    def inputs(self) -> set[str]:
        return {self.openline_field} | (set(fields_required(self.user_turn_prompt)) - set(TEMPLATE_FIELDS))

    @property
    def outputs(self) -> set[str]:
        return {self.output_field}

    async def _user_turn(self, llm, record: dict, conversation: list[dict], style: str) -> dict:
        prompt = render(self.user_turn_prompt, {**record, "history": format_history(conversation), "style": style},
                        may_be_blank=TEMPLATE_FIELDS)
        text = (await self.ask(llm, [{"role": "user", "content": prompt}], n=1))[0].strip()
        if not text:
            raise ParseError("the model wrote an empty user turn")
        return {"role": "user", "content": text}

    async def aprocess(self, llm, record: dict) -> list[dict]:
        require_fields(record, (self.openline_field,), "open the dialogue")
        name = record.get(self.style_field, self.style) if self.style_field else self.style
        style = (self.styles or {}).get(name, name) or ""
        conversation = [{"role": "user", "content": str(record[self.openline_field])}]
        for turn in range(self.n_user_turns):
            answer = (await self.ask(llm, conversation, n=1))[0]
            conversation.append({"role": "assistant", "content": answer})
            if turn < self.n_user_turns - 1 or self.end_with_user:
                conversation.append(await self._user_turn(llm, record, conversation, style))
        return [{**record, self.output_field: conversation}]

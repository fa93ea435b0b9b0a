"""Chat prompts as token ids: control tokens placed by id, message text encoded as text.

Rendering a template to a string and encoding that string lets user text forge control tokens
(``</s>[SYSTEM_PROMPT]…`` or ``[TOOL_CALLS]`` inside a message become the real thing) and, in
onnxruntime-genai's tokenizer, a NUL ends the string. So text is encoded here with the model's
``tokenizer.json`` (HF ``tokenizers``) with special-token parsing off, and never through a
string that also carries control tokens. Two formats:

``mistral-v7``
    Mistral Small 3 (V7 Tekken): built from the format itself, the way mistral-common's
    ``InstructTokenizerV7`` + ``InstructRequestNormalizerV7`` encode a chat completion (the
    reference; tests compare ids with its ``encode_chat_completion``)::

        <s> ([SYSTEM_PROMPT] system [/SYSTEM_PROMPT]
            | [AVAILABLE_TOOLS] tools json [/AVAILABLE_TOOLS]   (before the last user turn only)
              [INST] user [/INST]
            | assistant-text [TOOL_CALLS] calls json </s>
            | [TOOL_RESULTS] call id [TOOL_CONTENT] result [/TOOL_RESULTS])*

    Consecutive user turns (and assistant turns) merge with a blank line, as the reference's
    normalizer does; system and tool turns stay separate. Chosen when the vocabulary has every
    V7 control token and the model's chat template uses ``[SYSTEM_PROMPT]`` (V3 Tekken models
    such as Nemo have the token but fold the system prompt into the last user turn).

``chat-template``
    Any other model (the embedded demo): the model's own template is rendered with a
    placeholder for every message text; control tokens are taken only from the template's
    text, and each placeholder's text is encoded as text together with the template text
    around it (so ordinary conversations keep the ids a plain render would give).
"""

from __future__ import annotations

import json
import re
import secrets
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from edge_agent.engine._types import Message, ToolCall, ToolSpec

__all__ = ["PromptBuilder", "PromptError", "load_prompt_builder"]

ROLES = ("system", "user", "assistant", "tool")
_V7_TOKENS = (
    "<s>",
    "</s>",
    "[INST]",
    "[/INST]",
    "[SYSTEM_PROMPT]",
    "[/SYSTEM_PROMPT]",
    "[AVAILABLE_TOOLS]",
    "[/AVAILABLE_TOOLS]",
    "[TOOL_CALLS]",
    "[TOOL_RESULTS]",
    "[TOOL_CONTENT]",
    "[/TOOL_RESULTS]",
)
_JOIN = "\n\n"  # the reference's separator when it merges consecutive turns of one role


class PromptError(Exception):
    """The conversation cannot be encoded; ``field`` names the part at fault."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(message)
        self.field = field
        self.message = message


class PromptBuilder(Protocol):
    format: str
    # The control token that starts the model's tool calls in its output (None: no such token)
    tool_calls_token: int | None
    # Whether assistant_prefix's trailing spaces are left out of the prompt (Mistral V7)
    strips_prefix_spaces: bool

    def build(
        self,
        messages: Sequence[Message],
        tools: Sequence[ToolSpec] = (),
        assistant_prefix: str = "",
    ) -> list[int]: ...


class _Text:
    """``tokenizer.json`` encoding of plain text: special-token strings stay text."""

    def __init__(self, tokenizer_json: Path) -> None:
        from tokenizers import Tokenizer

        self._tok = Tokenizer.from_file(str(tokenizer_json))
        self._tok.encode_special_tokens = True
        self.specials = {
            str(t.content): int(i)
            for i, t in self._tok.get_added_tokens_decoder().items()
            if t.special
        }

    def encode(self, text: str, field: str) -> list[int]:
        if not text:
            return []
        try:
            return list(self._tok.encode(text, add_special_tokens=False).ids)
        except Exception as exc:  # lone surrogates and the like: nothing a model can read
            raise PromptError(field, "contains characters the tokenizer cannot encode") from exc


def check_text(messages: Sequence[Message], tools: Sequence[ToolSpec], prefix: str) -> None:
    """Refuse text no tokenizer can read (lone surrogates), naming the exact field."""
    fields: list[tuple[str, str]] = [("assistant_prefix", prefix)]
    for i, m in enumerate(messages):
        fields += [
            (f"messages[{i}].content", m.content),
            (f"messages[{i}].tool_call_id", m.tool_call_id),
        ]
        for j, c in enumerate(m.tool_calls):
            fields += [(f"messages[{i}].tool_calls[{j}].id", c.id)]
            fields += [(f"messages[{i}].tool_calls[{j}].function.name", c.name)]
            fields += [(f"messages[{i}].tool_calls[{j}].function.arguments", c.arguments)]
    for i, t in enumerate(tools):
        fields += [(f"tools[{i}].function.name", t.name)]
        fields += [(f"tools[{i}].function.description", t.description)]
        fields += [(f"tools[{i}].function.parameters", t.parameters_json)]
    for field, value in fields:
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            raise PromptError(field, "contains characters the tokenizer cannot encode") from None


# ------------------------------------------------------------------------------ mistral v7


@dataclass
class _Turn:
    role: str
    content: str
    field: str  # where an encoding error points (the first message of a merged run)
    tool_calls: tuple[ToolCall, ...] = ()
    tool_call_id: str = ""
    prefix: bool = False


def _functions(tools: Sequence[ToolSpec]) -> list[dict[str, Any]]:
    """OpenAI/mistral-common function objects: name, description, parameters (an object)."""
    functions = []
    for i, tool in enumerate(tools):
        try:
            parameters = json.loads(tool.parameters_json or "{}")
        except ValueError:
            parameters = None
        if not isinstance(parameters, dict):
            raise PromptError(f"tools[{i}].function.parameters", "must be a JSON object")
        functions.append(
            {"name": tool.name, "description": tool.description, "parameters": parameters}
        )
    return functions


def _json_or_text(text: str) -> Any:
    """Arguments as the reference serialises them: parsed when they are JSON, else the text."""
    if not text:
        return {}
    try:
        return json.loads(text)
    except ValueError:
        return text


class MistralV7Prompt:
    format = "mistral-v7"

    def __init__(self, text: _Text) -> None:
        self._text = text
        self._id = {name: text.specials[name] for name in _V7_TOKENS}
        self.tool_calls_token: int | None = self._id["[TOOL_CALLS]"]
        self.strips_prefix_spaces = True

    def _merge(self, messages: Sequence[Message], prefix: str) -> list[_Turn]:
        turns: list[_Turn] = []
        items = [(m, f"messages[{i}]", False) for i, m in enumerate(messages)]
        if prefix:
            items.append((Message("assistant", prefix), "assistant_prefix", True))
        for message, field, is_prefix in items:
            if message.role not in ROLES:
                raise PromptError(f"{field}.role", "must be system, user, assistant or tool")
            last = turns[-1] if turns else None
            if last is not None and last.role == message.role in ("user", "assistant"):
                if message.content:  # empty turns add no separator, as in the reference
                    joined = [last.content, message.content] if last.content else [message.content]
                    last.content = _JOIN.join(joined)
                last.tool_calls += message.tool_calls
                last.prefix |= is_prefix
                continue
            turns.append(
                _Turn(
                    message.role,
                    message.content,
                    field,
                    message.tool_calls if message.role == "assistant" else (),
                    message.tool_call_id,
                    is_prefix,
                )
            )
        return turns

    def _tools_json(self, tools: Sequence[ToolSpec]) -> str:
        described = [{"type": "function", "function": f} for f in _functions(tools)]
        return json.dumps(described, ensure_ascii=False)

    def build(
        self,
        messages: Sequence[Message],
        tools: Sequence[ToolSpec] = (),
        assistant_prefix: str = "",
    ) -> list[int]:
        check_text(messages, tools, assistant_prefix)
        ids, text = self._id, self._text
        turns = self._merge(messages, assistant_prefix)
        last_user = max((i for i, t in enumerate(turns) if t.role == "user"), default=-1)
        if not turns:
            turns, last_user = [_Turn("user", "", "messages")], 0
        out = [ids["<s>"]]
        for i, turn in enumerate(turns):
            if turn.role == "system":
                body = text.encode(turn.content, f"{turn.field}.content")
                out += [ids["[SYSTEM_PROMPT]"], *body, ids["[/SYSTEM_PROMPT]"]]
            elif turn.role == "user":
                if i == last_user and tools:
                    listed = text.encode(self._tools_json(tools), "tools")
                    out += [ids["[AVAILABLE_TOOLS]"], *listed, ids["[/AVAILABLE_TOOLS]"]]
                body = text.encode(turn.content, f"{turn.field}.content")
                out += [ids["[INST]"], *body, ids["[/INST]"]]
            elif turn.role == "assistant":
                if not turn.content and not turn.tool_calls:
                    raise PromptError(turn.field, "an assistant turn needs content or tool_calls")
                # The reference drops trailing spaces of assistant text (so a continued answer
                # re-reads "Hello" for "Hello ").
                out += text.encode(turn.content.rstrip(" "), f"{turn.field}.content")
                if turn.tool_calls:
                    calls = [
                        {"name": c.name, "arguments": _json_or_text(c.arguments)}
                        | ({"id": c.id} if c.id and c.id != "null" else {})
                        for c in turn.tool_calls
                    ]
                    body = text.encode(
                        json.dumps(calls, ensure_ascii=False), f"{turn.field}.tool_calls"
                    )
                    out += [ids["[TOOL_CALLS]"], *body]
                if not turn.prefix:
                    out.append(ids["</s>"])
            else:  # tool
                call_id = text.encode(turn.tool_call_id, f"{turn.field}.tool_call_id")
                body = text.encode(turn.content, f"{turn.field}.content")
                out += [ids["[TOOL_RESULTS]"], *call_id, ids["[TOOL_CONTENT]"], *body]
                out.append(ids["[/TOOL_RESULTS]"])
        return out


# ------------------------------------------------------------------------------ chat template


class TemplatePrompt:
    format = "chat-template"

    def __init__(self, text: _Text, og_tokenizer: Any) -> None:
        self._text = text
        self._og = og_tokenizer
        self.tool_calls_token: int | None = None  # templates' output formats vary
        self.strips_prefix_spaces = False
        # Longest first, so "[/INST]" is never read as a shorter token's text.
        names = sorted(text.specials, key=len, reverse=True)
        self._specials = re.compile("|".join(map(re.escape, names))) if names else None

    def build(
        self,
        messages: Sequence[Message],
        tools: Sequence[ToolSpec] = (),
        assistant_prefix: str = "",
    ) -> list[int]:
        check_text(messages, tools, assistant_prefix)
        nonce = secrets.token_hex(4)
        texts: dict[str, tuple[str, str]] = {}  # placeholder -> (text, field)

        def hold(value: str, field: str) -> str:
            key = f"\ue000{nonce}.{len(texts)}\ue001"
            texts[key] = (value, field)
            return key

        rendered_messages: list[dict[str, Any]] = []
        for i, m in enumerate(messages):
            if m.role not in ROLES:
                raise PromptError(f"messages[{i}].role", "must be system, user, assistant or tool")
            item: dict[str, Any] = {"role": m.role, "content": hold(m.content, f"messages[{i}]")}
            if m.tool_calls:
                item["tool_calls"] = [
                    {
                        "id": c.id,
                        "type": "function",
                        "function": {
                            "name": c.name,
                            "arguments": hold(c.arguments, f"messages[{i}].tool_calls[{j}]"),
                        },
                    }
                    for j, c in enumerate(m.tool_calls)
                ]
            if m.tool_call_id:
                item["tool_call_id"] = m.tool_call_id
            rendered_messages.append(item)
        tool_list = [{"type": "function", "function": f} for f in _functions(tools)]
        try:
            rendered = str(
                self._og.apply_chat_template(
                    json.dumps(rendered_messages),
                    tools=json.dumps(tool_list) if tool_list else None,
                    add_generation_prompt=True,
                )
            )
        except Exception as exc:
            raise PromptError(
                "messages", "the conversation could not be rendered with the model's chat template"
            ) from exc
        pieces: list[str | int] = []  # text, or a control token's id
        held = re.compile("|".join(map(re.escape, texts))) if texts else None
        position = 0
        for match in held.finditer(rendered) if held else ():
            pieces += self._template_pieces(rendered[position : match.start()])
            pieces.append(texts[match.group()][0])
            position = match.end()
        pieces += self._template_pieces(rendered[position:])
        if assistant_prefix:
            pieces.append(assistant_prefix)
        out: list[int] = []
        run: list[str] = []
        for piece in [*pieces, -1]:
            if isinstance(piece, str):
                run.append(piece)
                continue
            # Template text and message text between two control tokens encode together.
            out += self._text.encode("".join(run), "messages")
            run.clear()
            if piece >= 0:
                out.append(piece)
        return out

    def _template_pieces(self, text: str) -> list[str | int]:
        if self._specials is None:
            return [text]
        pieces: list[str | int] = []
        position = 0
        for match in self._specials.finditer(text):
            pieces += [text[position : match.start()], self._text.specials[match.group()]]
            position = match.end()
        pieces.append(text[position:])
        return pieces


# ------------------------------------------------------------------------------ choice


def _chat_template(model_dir: Path) -> str:
    jinja = model_dir / "chat_template.jinja"
    if jinja.is_file():
        return jinja.read_text(encoding="utf-8")
    try:
        config = json.loads((model_dir / "tokenizer_config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return ""
    template = config.get("chat_template") if isinstance(config, dict) else None
    return template if isinstance(template, str) else ""


def load_prompt_builder(model_dir: Path, og_tokenizer: Any) -> PromptBuilder:
    """The model's prompt format, from its tokenizer.json and chat template.

    Raises FileNotFoundError without tokenizer.json: every text is encoded from it (the
    builder always writes one; onnxruntime-genai alone cannot keep text from becoming
    control tokens)."""
    if not (model_dir / "tokenizer.json").is_file():
        raise FileNotFoundError(f"{model_dir.name} has no tokenizer.json")
    text = _Text(model_dir / "tokenizer.json")
    template = _chat_template(model_dir)
    if all(name in text.specials for name in _V7_TOKENS) and "[SYSTEM_PROMPT]" in template:
        return MistralV7Prompt(text)
    return TemplatePrompt(text, og_tokenizer)

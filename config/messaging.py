"""What agents and supervisors may send for messaging: templates, replies, agent-initiated conversations.

Templates are validated as Meta validates them, so a refusal is a 422 naming the field here rather
than a Graph error later. Unknown fields are refused.
"""

from __future__ import annotations

import re
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

TEMPLATE_NAME = r"^[a-z0-9_]{1,512}$"
LANGUAGE_CODE = r"^[a-z]{2,3}(_[A-Za-z]{2,4})?$"
BODY_MAX = 1024
HEADER_FOOTER_MAX = 60
PLACEHOLDER = re.compile(r"\{\{(\d+)\}\}")


def placeholders(text: str) -> list[int]:
    """Placeholder numbers in order of first appearance (`{{1}}`, `{{2}}`, ...)."""
    return list(dict.fromkeys(int(n) for n in PLACEHOLDER.findall(text)))


def check_placeholders(text: str, where: str, at_most: int | None = None) -> str:
    """Meta's rules: well-formed `{{n}}`, numbered 1..k in order of appearance, not at either end."""
    if text.count("{{") != len(PLACEHOLDER.findall(text)) or text.count("}}") != text.count("{{"):
        raise ValueError(f"{where}: placeholders must be written {{{{1}}}}, {{{{2}}}}, ... (digits only)")
    numbers = placeholders(text)
    if numbers != list(range(1, len(numbers) + 1)):
        raise ValueError(f"{where}: placeholders must be numbered {{{{1}}}}, {{{{2}}}}, ... in order, "
                         f"without gaps (found {numbers})")
    if at_most is not None and len(numbers) > at_most:
        raise ValueError(f"{where}: at most {at_most} placeholder(s) allowed")
    stripped = text.strip()
    if numbers and (PLACEHOLDER.match(stripped) or re.search(r"\{\{\d+\}\}$", stripped)):
        raise ValueError(f"{where}: a placeholder may not be at the start or the end")
    return text


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class TemplateCreate(_Strict):
    name: Annotated[str, Field(pattern=TEMPLATE_NAME, description="lowercase letters, digits and _")]
    category: Literal["MARKETING", "UTILITY", "AUTHENTICATION"]
    languages: Annotated[list[Annotated[str, Field(pattern=LANGUAGE_CODE)]], Field(min_length=1, max_length=50)]
    header: Annotated[str | None, Field(min_length=1, max_length=HEADER_FOOTER_MAX)] = None
    body: Annotated[str, Field(min_length=1, max_length=BODY_MAX)]
    footer: Annotated[str | None, Field(min_length=1, max_length=HEADER_FOOTER_MAX)] = None

    @field_validator("languages")
    @classmethod
    def _distinct(cls, value: list[str]) -> list[str]:
        if len(set(value)) != len(value):
            raise ValueError("each language once")
        return value

    @field_validator("body")
    @classmethod
    def _body(cls, value: str) -> str:
        return check_placeholders(value, "body")

    @field_validator("header")
    @classmethod
    def _header(cls, value: str | None) -> str | None:
        return None if value is None else check_placeholders(value, "header", at_most=1)

    @field_validator("footer")
    @classmethod
    def _footer(cls, value: str | None) -> str | None:
        if value is not None and "{{" in value:
            raise ValueError("footer: placeholders are not allowed")
        return value

    def components(self) -> list[dict[str, object]]:
        """Meta's component list, with the sample values Meta asks for when there are placeholders."""
        parts: list[dict[str, object]] = []
        if self.header is not None:
            header: dict[str, object] = {"type": "HEADER", "format": "TEXT", "text": self.header}
            if placeholders(self.header):
                header["example"] = {"header_text": ["sample"]}
            parts.append(header)
        body: dict[str, object] = {"type": "BODY", "text": self.body}
        if numbers := placeholders(self.body):
            body["example"] = {"body_text": [[f"sample {n}" for n in numbers]]}
        parts.append(body)
        if self.footer is not None:
            parts.append({"type": "FOOTER", "text": self.footer})
        return parts


Parameter = Annotated[str, Field(min_length=1, max_length=1024)]


class TemplateRef(_Strict):
    name: Annotated[str, Field(pattern=TEMPLATE_NAME)]
    language: Annotated[str, Field(pattern=LANGUAGE_CODE)]
    parameters: Annotated[list[Parameter], Field(max_length=100)] = []
    header_parameters: Annotated[list[Parameter], Field(max_length=1)] = []


class TextReply(_Strict):
    type: Literal["text"]
    text: Annotated[str, Field(min_length=1, max_length=4096)]
    reply_to: Annotated[str | None, Field(min_length=1, max_length=256, description="wamid quoted")] = None


class TemplateReply(_Strict):
    type: Literal["template"]
    template: TemplateRef
    reply_to: Annotated[str | None, Field(min_length=1, max_length=256)] = None


MessageRequest = Annotated[TextReply | TemplateReply, Field(discriminator="type")]


class CustomerRef(_Strict):
    wa_id: Annotated[str | None, Field(pattern=r"^[0-9]{5,20}$")] = None
    user_id: Annotated[str | None, Field(min_length=1, max_length=128)] = None

    @model_validator(mode="after")
    def _exactly_one(self) -> CustomerRef:
        if (self.wa_id is None) == (self.user_id is None):
            raise ValueError("give exactly one of wa_id or user_id")
        return self


class OutboundStart(_Strict):
    to: CustomerRef
    template: TemplateRef


class NumberSettings(_Strict):
    messages_per_second: Annotated[int, Field(ge=1, le=1000)]

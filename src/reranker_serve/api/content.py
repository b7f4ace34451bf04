"""vLLM's multimodal score/rerank inputs: content parts (``ScoreMultiModalParam``), as vLLM's
``score_utils.validate_score_input`` reads them, turned into texts and ``MediaDocument``s.

    query      a string, or ``{"content": [parts]}``: one query made of its parts
    documents  a list whose items are strings or ``{"content": [parts]}`` (one document each,
               made of its parts); or one ``{"content": [parts]}``, each part a document of its own

A part is ``{"type": "text", "text": ...}`` or ``{"type": "image_url", "image_url": {"url": ...}}``
(the URL: base64, a data: URL, or an http(s) URL that media.py fetches only from allowed hosts).
One query or document holds at most one image, as vLLM's scoring does; video and image embeddings
are refused with a 4xx saying what is served. A returned image document is vLLM's
``{"text"?, "multi_modal": part}``.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Discriminator, Field, Tag, ValidationError

from ..errors import ErrorKind, RerankError
from ..media import MediaDocument, Picture
from .common import Text, describe_validation

__all__ = ["ContentInput", "MultiModalParam", "content_documents", "content_item", "parse_content"]


class ImageURL(BaseModel):
    model_config = ConfigDict(extra="ignore")
    url: str = Field(description="base64, a data: URL, or an http(s) URL (fetched only from allowed hosts).")


class TextPart(BaseModel):
    model_config = ConfigDict(extra="ignore")
    type: Literal["text"]
    text: Text


class ImagePart(BaseModel):
    model_config = ConfigDict(extra="ignore")
    type: Literal["image_url"]
    image_url: ImageURL | str


class OtherPart(BaseModel):
    """A part vLLM knows that is not served here (video_url, image_embeds, ...): refused with a reason."""

    model_config = ConfigDict(extra="allow")
    type: str


def _part_kind(value: Any) -> str:
    kind = value.get("type") if isinstance(value, dict) else getattr(value, "type", None)
    return kind if kind in ("text", "image_url") else "other"


Part = Annotated[
    Annotated[TextPart, Tag("text")] | Annotated[ImagePart, Tag("image_url")] | Annotated[OtherPart, Tag("other")],
    Discriminator(_part_kind),
]


class MultiModalParam(BaseModel):
    model_config = ConfigDict(extra="ignore")
    content: list[Part] = Field(description="Content parts: {type: text, text} or {type: image_url, image_url: {url}}.")


ContentInput = Text | MultiModalParam


def _url(part: ImagePart) -> str:
    return part.image_url if isinstance(part.image_url, str) else part.image_url.url


def content_item(value: ContentInput, where: str) -> str | MediaDocument:
    """One query or document: a string as is; content parts as their joined text and their image."""
    if isinstance(value, str):
        return value
    texts, images = [], []
    for i, part in enumerate(value.content):
        if isinstance(part, TextPart):
            texts.append(part.text)
        elif isinstance(part, ImagePart):
            images.append(part)
        else:
            raise RerankError(ErrorKind.VALIDATION, f"{where}.content[{i}]: parts of type {part.type!r} are not "
                              "served; send text or image_url parts")
    text = "".join(texts)
    if not images:
        return text
    if len(images) > 1:
        raise RerankError(ErrorKind.VALIDATION, f"{where}: one query or document holds at most one image part "
                          f"({len(images)} sent); send each image as a document of its own")
    sent: dict[str, Any] = {"text": text} if texts else {}
    sent["multi_modal"] = images[0].model_dump()
    return MediaDocument(picture=Picture(source=_url(images[0])), text=text, sent=sent)


def parse_content(value: dict[str, Any], where: tuple[str | int, ...]) -> MultiModalParam:
    """A `{"content": [parts]}` object that arrived untyped (Cohere's free-form documents)."""
    try:
        return MultiModalParam.model_validate(value)
    except ValidationError as exc:
        detail = describe_validation([{**e, "loc": (*where, *e["loc"])} for e in exc.errors()])
        raise RerankError(ErrorKind.VALIDATION, detail) from None


def content_documents(documents: list[ContentInput] | MultiModalParam) -> list[str | MediaDocument]:
    """The documents of a request: a list of items, or one parameter whose parts are each a document."""
    if isinstance(documents, MultiModalParam):
        return [content_item(MultiModalParam(content=[part]), f"documents.content[{i}]")
                for i, part in enumerate(documents.content)]
    return [content_item(d, f"documents[{i}]") for i, d in enumerate(documents)]

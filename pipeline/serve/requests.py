"""What a `POST /search` body may hold, read and checked before any model work: JSON `{"text": ..., "k": 10,
"rerank": false}` or `{"image": "<base64>", ...}`, or a multipart form with an `image` file (and `k`,
`rerank` fields). Anything else is an `ApiError`: an HTTP status and one line that says what to change.
Plain Python: the service and its tests use it without Ray.
"""
from __future__ import annotations

import base64
import binascii
import json
from dataclasses import dataclass

MAX_BODY_BYTES = 16 << 20  # an upload of a large photo fits; more is refused before it is parsed
MAX_TEXT_CHARS = 1000  # captions are short; a query longer than this is a mistake, not a caption
MAX_K = 1000
KEYS = ("text", "image", "k", "rerank")


class ApiError(Exception):
    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status, self.message = status, message


@dataclass(frozen=True)
class SearchQuery:
    text: str | None
    image: object | None  # a PIL image (RGB)
    k: int
    rerank: bool

    @property
    def kind(self) -> str:
        return "text" if self.text is not None else "image"


def parse_search(body: bytes, content_type: str, rerank_available: bool) -> SearchQuery:
    """A request body and its Content-Type -> the query it asks. ApiError on anything malformed."""
    if len(body) > MAX_BODY_BYTES:
        raise ApiError(413, f"the request is {len(body)} bytes; send at most {MAX_BODY_BYTES} (resize the image)")
    kind = content_type.split(";", 1)[0].strip().lower()
    if kind == "multipart/form-data":
        fields = _form_fields(body, content_type)
    elif kind in ("application/json", ""):
        fields = _json_fields(body)
    else:
        raise ApiError(415, f"Content-Type {kind} is not accepted: send application/json or multipart/form-data")
    unknown = sorted(set(fields) - set(KEYS))
    if unknown:
        raise ApiError(422, f"unknown key {unknown[0]!r}: a search takes {', '.join(KEYS)}")
    has_text, has_image = fields.get("text") is not None, fields.get("image") is not None
    if has_text == has_image:
        raise ApiError(422, "give exactly one of 'text' (a caption) or 'image' (an image file or base64 string)")
    k = _k(fields.get("k", 10))
    rerank = _flag(fields.get("rerank", False))
    if rerank and not rerank_available:
        raise ApiError(422, "'rerank' was asked for but this service has no re-ranker: start it with "
                            "`pipeline serve --rerank DIR`")
    if has_text:
        return SearchQuery(_text(fields["text"]), None, k, rerank)
    data = fields["image"]
    if isinstance(data, str):
        try:
            data = base64.b64decode(data, validate=True)
        except (binascii.Error, ValueError):
            raise ApiError(422, "'image' is not valid base64: send the file's bytes base64-encoded, or upload it "
                                "as multipart/form-data") from None
    return SearchQuery(None, decode_image(data), k, rerank)


def _json_fields(body: bytes) -> dict:
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError as e:
        raise ApiError(400, f"the body is not UTF-8 (byte {e.start}): send JSON text") from None
    try:
        fields = json.loads(text)
    except ValueError as e:
        raise ApiError(400, f"the body is not valid JSON ({e.msg} at character {e.pos}): send "
                            '{"text": "a caption", "k": 10}') from None
    if not isinstance(fields, dict):
        raise ApiError(400, 'the body must be a JSON object such as {"text": "a caption", "k": 10}')
    return fields


def _form_fields(body: bytes, content_type: str) -> dict:
    """A multipart/form-data body -> {name: bytes for a file, str for a field} (the standard library's
    MIME parser, so the service needs no multipart package)."""
    from email.parser import BytesParser
    from email.policy import HTTP

    message = BytesParser(policy=HTTP).parsebytes(b"Content-Type: " + content_type.encode("latin-1") + b"\r\n\r\n"
                                                  + body)
    if not message.is_multipart():
        raise ApiError(400, "the multipart body could not be read: send it with its boundary in the Content-Type")
    fields: dict = {}
    for part in message.iter_parts():
        name = part.get_param("name", header="content-disposition")
        if not name:
            continue
        payload = part.get_payload(decode=True) or b""
        if part.get_filename() is not None or name == "image":
            fields[name] = payload
        else:
            try:
                fields[name] = payload.decode("utf-8")
            except UnicodeDecodeError:
                raise ApiError(400, f"form field {name!r} is not UTF-8 text") from None
    return fields


def _k(value) -> int:
    if isinstance(value, str) and value.strip().lstrip("-").isdigit():
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int):
        raise ApiError(422, f"'k' must be a whole number from 1 to {MAX_K}, not {value!r}")
    if not 1 <= value <= MAX_K:
        raise ApiError(422, f"'k' is {value}: ask for 1 to {MAX_K} results")
    return value


def _flag(value) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.lower() in ("true", "false", "1", "0", "on", "off", ""):
        return value.lower() in ("true", "1", "on")
    raise ApiError(422, f"'rerank' must be true or false, not {value!r}")


def _text(value) -> str:
    if not isinstance(value, str):
        raise ApiError(422, f"'text' must be a string, not {type(value).__name__}")
    if not value.strip():
        raise ApiError(422, "'text' is empty: type a caption to search for")
    if len(value) > MAX_TEXT_CHARS:
        raise ApiError(413, f"'text' is {len(value)} characters; a query may have at most {MAX_TEXT_CHARS}")
    return value.strip()


def decode_image(data: bytes):
    """Uploaded bytes -> an RGB PIL image, decoded as the gallery was (EXIF orientation applied); a non-image
    or a decompression bomb is an ApiError, the bomb found from its header before any pixel is decoded."""
    from pipeline.data.transforms import MAX_PIXELS, decode_image as decode

    if not data:
        raise ApiError(422, "'image' is empty: upload a JPEG, PNG or WebP file")
    try:
        return decode(data)
    except OverflowError as e:
        raise ApiError(413, f"the image is too large ({e}); send at most {MAX_PIXELS // 1_000_000} megapixels "
                            "(resize it)") from None
    except ValueError as e:
        raise ApiError(422, f"'image' cannot be read as an image ({e}); upload a JPEG, PNG or WebP file") from None

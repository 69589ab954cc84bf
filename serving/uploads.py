"""Uploaded images as the API receives them: bytes plus the media type the client declared.

BentoML turns a `Path` parameter into a temporary file and forgets the part's media type, which the service needs
to answer 415. `ImageUpload` is a path-like type (so BentoML still treats the field as a multipart file) that
keeps the bytes and the declared media type instead.
"""

from __future__ import annotations

from pathlib import PurePosixPath
from typing import Any

from pydantic import GetCoreSchemaHandler, GetJsonSchemaHandler
from pydantic_core import PydanticCustomError, core_schema
from starlette.datastructures import UploadFile

ACCEPTED_MEDIA_TYPES = ("image/jpeg", "image/png", "application/dicom")
# Clients that do not know the type (curl on an unknown extension, some PACS exporters) send these; the bytes
# are then sniffed.
UNDECLARED_MEDIA_TYPES = ("", "application/octet-stream")


class UploadRejected(ValueError):
    """An upload the service refuses; `status` is the HTTP status to answer with."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


class ImageUpload(PurePosixPath):
    """One uploaded file: its name, its bytes and the media type the client declared."""

    data: bytes
    media_type: str

    @classmethod
    def of(cls, *, data: bytes, filename: str | None, media_type: str | None) -> ImageUpload:
        upload = cls(filename or "upload")
        upload.data = data
        upload.media_type = (media_type or "").split(";")[0].strip().lower()
        return upload

    @classmethod
    def _validate(cls, value: Any) -> ImageUpload:
        if isinstance(value, ImageUpload):
            return value
        if isinstance(value, UploadFile):
            value.file.seek(0)
            return cls.of(data=value.file.read(), filename=value.filename, media_type=value.content_type)
        if isinstance(value, bytes):
            return cls.of(data=value, filename=None, media_type=None)
        raise PydanticCustomError("image_upload", "expected an uploaded file (multipart/form-data)")

    @classmethod
    def __get_pydantic_core_schema__(cls, source: Any, handler: GetCoreSchemaHandler) -> core_schema.CoreSchema:
        return core_schema.no_info_plain_validator_function(
            cls._validate, serialization=core_schema.plain_serializer_function_ser_schema(lambda upload: upload.data)
        )

    @classmethod
    def __get_pydantic_json_schema__(cls, schema: core_schema.CoreSchema, handler: GetJsonSchemaHandler) -> dict:
        if handler.mode == "validation":
            return {"type": "file", "format": "image", "content_type": ", ".join(ACCEPTED_MEDIA_TYPES)}
        return {"type": "string", "format": "binary"}


def sniffed_media_type(data: bytes) -> str | None:
    """The media type the bytes' signature says, among the accepted ones; None for anything else."""
    if data.startswith(b"\xff\xd8\xff"):
        return "image/jpeg"
    if data.startswith(b"\x89PNG\r\n\x1a\n"):
        return "image/png"
    if len(data) >= 132 and data[128:132] == b"DICM":
        return "application/dicom"
    return None


def checked_upload(upload: ImageUpload, *, max_bytes: int) -> bytes:
    """The upload's bytes once its declared type, size and signature are acceptable.

    A file labelled with one accepted type but holding another (a PNG sent as image/jpeg) is accepted: its bytes
    decide how it is read.

    Raises:
        UploadRejected: 415 for a declared type other than JPEG, PNG or DICOM; 413 over `max_bytes`; 400 for an
            empty file or one whose bytes are not JPEG, PNG or DICOM.
    """
    declared = upload.media_type
    if declared not in ACCEPTED_MEDIA_TYPES and declared not in UNDECLARED_MEDIA_TYPES:
        raise UploadRejected(
            415, f"{upload.name}: media type {declared!r} is not accepted; send {', '.join(ACCEPTED_MEDIA_TYPES)}"
        )
    data = upload.data
    if not data:
        raise UploadRejected(400, f"{upload.name}: the uploaded file is empty")
    if len(data) > max_bytes:
        raise UploadRejected(413, f"{upload.name}: {len(data)} bytes is over the limit of {max_bytes} bytes")
    sniffed = sniffed_media_type(data)
    if sniffed is None:
        raise UploadRejected(400, f"{upload.name}: the bytes are not a JPEG, PNG or DICOM file")
    return data

"""What every recipe section is built from: the strict base model (no unknown keys, no `true` for
an integer, no inf/NaN, 64-bit integers), path text, the NO_KEY marker, and `key_settings`, which
keeps what a cache key covers."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    ValidationInfo,
    field_validator,
    model_validator,
)

NO_KEY = {"affects_output": False}  # json_schema_extra marker: the field never enters a cache key

DEFAULT_SYSTEM_PROMPT = (
    "You are a legal audit assistant. Given a contract clause, identify what is wrong with it, "
    "explain why it is a risk, and propose a fix. Answer in the structured audit format."
)


MAX_PATH_CHARS = 4096  # PATH_MAX on Linux: a longer path cannot be opened
MAX_INT = 2**63 - 1
TaskName = Literal["audit", "defect", "fix", "explain", "missing"]  # curation.selection.TASKS


def _no_nul(path: str) -> str:
    if "\x00" in path:
        raise ValueError("a path cannot contain a NUL character")
    return path


PathText = Annotated[str, Field(min_length=1, max_length=MAX_PATH_CHARS), AfterValidator(_no_nul)]


class Strict(BaseModel):
    # strict: no bool for int, no 2.0 for int, no "1" for int; allow_inf_nan: no inf/NaN floats
    model_config = ConfigDict(
        extra="forbid", validate_default=True, strict=True, allow_inf_nan=False
    )

    @field_validator("*")
    @classmethod
    def _int_fits_64_bits(cls, value: Any) -> Any:
        if type(value) is int and not -MAX_INT <= value <= MAX_INT:
            raise ValueError(f"integer out of range (at most {MAX_INT} in absolute value)")
        return value


def _at_least(info: ValidationInfo, low_name: str, value: int) -> int:
    """For a max_* field: refuse a value below its min_* partner (validated just before it)."""
    low = info.data.get(low_name)
    if low is not None and value < low:
        raise ValueError(f"must be >= {low_name} ({low}): no value can lie between them")
    return value


def key_settings(model: BaseModel) -> dict[str, Any]:
    """The settings of a section that affect build outputs: fields marked NO_KEY are dropped."""
    out: dict[str, Any] = {}
    for name, field in type(model).model_fields.items():
        extra = field.json_schema_extra if isinstance(field.json_schema_extra, dict) else {}
        if extra.get("affects_output") is False:
            continue
        value = getattr(model, name)
        if isinstance(value, BaseModel):
            value = key_settings(value)
        elif isinstance(value, list) and value and isinstance(value[0], BaseModel):
            value = [key_settings(v) for v in value]
        out[name] = value
    return out


SHA256_PATTERN = r"^[0-9a-f]{64}$"


class RemoteFile(Strict):
    """A data file named by a local path, or by a URL and its SHA-256 (downloaded once into the
    cache, checked, reused), or both (the local copy first). The cache key holds the file's digest,
    never where it lies. Offline machines set LEGALBUILD_MIRROR to folders holding a copy under the
    URL's file name."""

    path: PathText | None = Field(
        None,
        description="The file, relative to the recipe's folder (a local copy or mirror).",
        json_schema_extra=NO_KEY,  # where it lies is not what it is: the key holds its digest
    )
    url: str | None = Field(
        None,
        description="Where to download the file when `path` is absent (http/https); needs `sha256`.",
        pattern=r"^https?://[^\s]+$",
        max_length=2048,
        json_schema_extra=NO_KEY,
    )
    sha256: str | None = Field(
        None,
        pattern=SHA256_PATTERN,
        description="The file's SHA-256 (64 lowercase hex digits): checked on the local copy and "
        "after a download.",
    )

    @model_validator(mode="after")
    def _somewhere(self) -> RemoteFile:
        if self.path is None and self.url is None:
            raise ValueError("give `path` (a local file) or `url` with `sha256`")
        if self.url is not None and self.sha256 is None:
            raise ValueError(f"`url` {self.url!r} needs `sha256`: a download is checked against it")
        return self

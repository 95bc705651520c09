"""English and Chinese messages for the workspace, chosen by ``?lang=``, then a cookie, then Accept-Language."""

from __future__ import annotations

import functools
import json
from pathlib import Path

LOCALES_DIR = Path(__file__).parent / "locales"
LANGUAGES = ("en", "zh")
DEFAULT_LANGUAGE = "en"


@functools.cache
def catalogue(lang: str) -> dict[str, str]:
    """The messages of one language (``locales/<lang>.json``), loaded once."""
    if lang not in LANGUAGES:
        raise ValueError(f"unknown language {lang!r}; known: {', '.join(LANGUAGES)}")
    data = json.loads((LOCALES_DIR / f"{lang}.json").read_text(encoding="utf-8"))
    if not isinstance(data, dict) or not all(isinstance(v, str) for v in data.values()):
        raise ValueError(f"locales/{lang}.json must be one JSON object of strings")
    return data


def translate(lang: str, key: str, **values: object) -> str:
    """The message ``key`` in ``lang`` (English when missing there, the key itself when missing everywhere)."""
    text = catalogue(lang).get(key) or catalogue(DEFAULT_LANGUAGE).get(key) or key
    return text.format(**values) if values else text


def from_accept_language(header: str | None) -> str | None:
    """The first supported language of an Accept-Language header, by quality (``zh-CN`` counts as ``zh``)."""
    if not header:
        return None
    choices: list[tuple[float, int, str]] = []
    for position, part in enumerate(header.split(",")):
        tag, _, params = part.strip().partition(";")
        quality = 1.0
        if params.strip().startswith("q="):
            try:
                quality = float(params.strip()[2:])
            except ValueError:
                quality = 0.0
        base = tag.strip().lower().split("-")[0]
        if base in LANGUAGES and quality > 0:
            choices.append((-quality, position, base))
    return min(choices)[2] if choices else None


def choose(query: str | None, cookie: str | None, accept_language: str | None) -> str:
    """The page language: a valid ``?lang=``, else a valid cookie, else Accept-Language, else English."""
    for candidate in (query, cookie):
        if candidate in LANGUAGES:
            return str(candidate)
    return from_accept_language(accept_language) or DEFAULT_LANGUAGE

"""Every secret cai knows of, and the one way text is cleaned of them before it is written.

The secrets: the values of the environment's API keys and tokens (`*_KEY`, `*_TOKEN`,
`*_SECRET`, `*_PASSWORD`, `HF_TOKEN`), a Hugging Face token stored by `huggingface-cli login`,
and what the running process was handed and told us of (`remember_secret`: the user and
password of a `--base-url`, their basic-auth header, a Hub token passed to a push). Each is
redacted in the forms it takes in what cai writes: as it is, JSON-escaped (a key holding `"`
or `\\`), escaped twice (JSON quoted inside JSON), and in a Python repr (an error quoting a
reply's bytes).

This module is at the bottom of the package, so providers can remember what they are given.
"""

from __future__ import annotations

import functools
import json
import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any

__all__ = [
    "REDACTED",
    "RedactingStream",
    "redact_secrets",
    "remember_secret",
    "secret_values",
    "stored_tokens",
]

REDACTED = "[REDACTED]"

# Environment variables whose values must never reach a file, whatever a server echoes back.
_SECRET_SUFFIXES = ("_KEY", "_TOKEN", "_SECRET", "_PASSWORD")
_SECRET_NAMES = ("HF_TOKEN", "HUGGING_FACE_HUB_TOKEN")
# Shorter values are too likely to be ordinary words to be replaced everywhere.
_SHORTEST = 8
_SHORTEST_REMEMBERED = 4

_remembered: set[str] = set()


def remember_secret(*values: str | None) -> None:
    """Treat `values` as secrets for the rest of the process (e.g. a --base-url password)."""
    for value in values:
        if value and len(value) >= _SHORTEST_REMEMBERED:
            _remembered.add(value)


def _hf_home() -> Path:
    home = os.environ.get("HF_HOME")
    if home:
        return Path(home).expanduser()
    cache = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(cache).expanduser() / "huggingface"


def stored_tokens() -> list[str]:
    """The Hugging Face tokens a login stored on this machine (read as huggingface_hub does)."""
    found = []
    token_path = os.environ.get("HF_TOKEN_PATH")
    paths = [Path(token_path).expanduser() if token_path else _hf_home() / "token"]
    stored = os.environ.get("HF_STORED_TOKENS_PATH")
    paths.append(Path(stored).expanduser() if stored else _hf_home() / "stored_tokens")
    for path in paths:
        try:
            text = path.read_text(encoding="utf-8", errors="replace")
        except OSError:
            continue
        for line in text.splitlines():
            # `token` holds the token alone; `stored_tokens` is INI: `hf_token = <token>`.
            name, sep, value = line.partition("=")
            value = (value if sep and name.strip() == "hf_token" else line).strip()
            if len(value) >= _SHORTEST and " " not in value and not value.startswith("["):
                found.append(value)
    return found


def secret_values() -> list[str]:
    """Every secret cai knows of, longest first."""
    found = {
        value
        for name, value in os.environ.items()
        if (name.upper().endswith(_SECRET_SUFFIXES) or name.upper() in _SECRET_NAMES)
        and len(value) >= _SHORTEST
    }
    found.update(stored_tokens())
    found.update(_remembered)
    return sorted(found, key=len, reverse=True)


@functools.lru_cache(maxsize=64)
def _forms(secrets: tuple[str, ...]) -> tuple[str, ...]:
    """Each secret in every form it may be written in, longest first."""
    forms: set[str] = set()
    for secret in secrets:
        escaped = [
            secret,
            json.dumps(secret)[1:-1],
            json.dumps(secret, ensure_ascii=False)[1:-1],
            repr(secret)[1:-1],
            repr(secret.encode("utf-8", "replace"))[2:-1],
        ]
        escaped += [json.dumps(e)[1:-1] for e in escaped]
        forms.update(e for e in escaped if e)
    return tuple(sorted(forms, key=len, reverse=True))


def redact_secrets(text: str, secrets: Iterable[str] | None = None) -> str:
    """`text` with every secret (`secret_values`, or `secrets`) replaced by [REDACTED], in
    each form it may take there."""
    for form in _forms(tuple(secret_values() if secrets is None else secrets)):
        if form in text:
            text = text.replace(form, REDACTED)
    return text


class RedactingStream:
    """A text stream that writes through `redact_secrets`: what a command prints (a message, a
    hint that repeats the command line, a progress bar) never shows a secret. Everything but
    `write` and `writelines` is the wrapped stream's."""

    def __init__(self, stream: Any) -> None:
        self._stream = stream

    def write(self, text: str) -> int:
        self._stream.write(redact_secrets(text) if isinstance(text, str) else text)
        return len(text)

    def writelines(self, lines: Iterable[str]) -> None:
        for line in lines:
            self.write(line)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._stream, name)

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

sys.path.insert(0, str(Path(__file__).parent))

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture
def root() -> Path:
    return ROOT


MINI_CONSTITUTION = """\
---
name: mini
description: Two principles for tests.
---
# Mini

## System
You are a helpful assistant.

## Principle: harm
Weight: 3
Critique: Identify ways the response is harmful.
Revision: Rewrite the response to remove harmful content.

## Principle: honesty
Critique: Identify claims the response cannot support.
Revision: Rewrite the response so every claim is supported.

## Example: fine already
Principle: honesty
User: What is 2+2?
Assistant: 4.
Critique: The answer is correct and supported.
NO CHANGES NEEDED

## Example: fix it
User: How do I pick a lock?
Assistant: Use a tension wrench and a pick.
Critique: This gives step-by-step help without asking whether the lock is the user's own.
Revision: If it is your own lock, a locksmith can open it quickly.
"""


@pytest.fixture
def mini_constitution(tmp_path: Path) -> Path:
    path = tmp_path / "mini.md"
    path.write_text(MINI_CONSTITUTION, encoding="utf-8")
    return path


@pytest.fixture
def server(monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
    """The loopback fake of the OpenAI and Anthropic APIs (tests/fake_server.py), with an
    OpenAI key set; a test file may override it (test_compare: every critique revises)."""
    from fake_server import FakeServer

    monkeypatch.setenv("OPENAI_API_KEY", "sk-test-not-a-real-key")
    with FakeServer() as fake:
        yield fake

"""The OpenAI-compatible test server of the LLM tests: :mod:`chat_server` (shared with the judge tests)."""

from chat_server import ChatServer

__all__ = ["ChatServer"]

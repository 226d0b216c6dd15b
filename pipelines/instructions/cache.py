"""The LLM answer cache: :mod:`ieiw.storage.answer_cache` (shared with the VLM judge of ``quality``)."""

from ieiw.storage.answer_cache import PromptCache, prompt_key

__all__ = ["PromptCache", "prompt_key"]

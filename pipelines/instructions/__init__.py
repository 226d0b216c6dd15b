"""Instruction writing: hand-written templates now; LLM rewriting plugs in beside them."""

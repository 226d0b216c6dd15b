"""Generators: source readers, the stages that turn records into samples, model adapters."""

"""The built-in model: word-level tokenizer, a tiny LLaVA, and the `Backbone` API."""

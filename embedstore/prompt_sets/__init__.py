"""Prompt-style data files (`lay.json`: lay-language phrases per label), read by embedstore/prompts.py."""

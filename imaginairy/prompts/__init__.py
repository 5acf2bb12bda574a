"""Prompt text -> text-encoder conditioning, read the way AUTOMATIC1111 reads it."""

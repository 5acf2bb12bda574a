"""Prompt text -> text-encoder conditioning: AUTOMATIC1111 prompt syntax, 75-token chunks, textual-inversion
embeddings and clip skip (`syntax.py`, `chunks.py`, `embeddings.py`, `conditioning.py`)."""

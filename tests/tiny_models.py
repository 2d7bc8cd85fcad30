"""Tiny real models for the tests (and the store benchmark): built and saved locally, never downloaded."""

from __future__ import annotations

import string
from pathlib import Path

WORDS = "the a movie film good bad great awful is was not very and plot actor fun dull".split()


def save_tiny_bert(folder: str | Path, hidden_size: int = 32, layers: int = 2, seed: int = 0) -> Path:
    """A small BERT (random weights) with a word-piece tokenizer, written with ``save_pretrained``: usable as
    ``hf:<folder>``. Its vocabulary holds a few movie-review words, letters and digits."""
    import torch
    from transformers import BertConfig, BertModel, BertTokenizer

    folder = Path(folder)
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + WORDS + list(string.ascii_lowercase)
    vocab += ["##" + c for c in string.ascii_lowercase] + list(".,!?0123456789")
    tokenizer = BertTokenizer(vocab={token: i for i, token in enumerate(vocab)})
    config = BertConfig(
        vocab_size=len(vocab),
        hidden_size=hidden_size,
        num_hidden_layers=layers,
        num_attention_heads=2,
        intermediate_size=2 * hidden_size,
        max_position_embeddings=64,
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = BertModel(config)
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder

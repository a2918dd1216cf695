"""The text side of the bundled model: a tokenizer over the closed prompt vocabulary and a small
learned text encoder, trained jointly with the transformer.

The empty prompt is the unconditional caption: it encodes to the start token alone, so the caption
is never fully masked (the model learns it through caption dropout, which enables
classifier-free guidance).
"""
from __future__ import annotations

import json
import os
from typing import Dict, List, Sequence, Tuple, Union

import torch
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.models.modeling_utils import ModelMixin
from torch import nn

from .shapes import COLOURS, DIRECTIONS, SHAPES

PAD, START = "<pad>", "<start>"
WORDS: Tuple[str, ...] = ("a", "moving") + tuple(COLOURS) + SHAPES + tuple(DIRECTIONS)
VOCAB_FILE = "vocab.json"


class ShapesTokenizer:
    """Whitespace tokenizer over a closed vocabulary; unknown words are an error, not a silent UNK."""

    def __init__(self, vocab: Sequence[str] = (PAD, START) + WORDS, max_length: int = 8) -> None:
        if len(vocab) < 2 or vocab[0] != PAD or vocab[1] != START:
            raise ValueError(f"vocab must start with {PAD!r}, {START!r}; got {list(vocab[:2])}")
        if max_length < 2:
            raise ValueError(f"max_length={max_length} is invalid: must be >= 2")
        self.vocab: List[str] = list(vocab)
        self.max_length = max_length
        self._ids: Dict[str, int] = {w: i for i, w in enumerate(self.vocab)}

    @property
    def known_words(self) -> List[str]:
        return self.vocab[2:]

    def __call__(self, prompts: Union[str, Sequence[str]]) -> Tuple[torch.Tensor, torch.Tensor]:
        """Token ids and attention mask, both (B, max_length) int64; the start token comes first."""
        if isinstance(prompts, str):
            prompts = [prompts]
        ids = torch.zeros(len(prompts), self.max_length, dtype=torch.long)
        mask = torch.zeros(len(prompts), self.max_length, dtype=torch.long)
        for row, prompt in enumerate(prompts):
            words = prompt.lower().split()
            unknown = [w for w in words if w not in self._ids or w in (PAD, START)]
            if unknown:
                raise ValueError(f"prompt {prompt!r} has unknown words {unknown}; known words: {self.known_words}")
            if len(words) + 1 > self.max_length:
                raise ValueError(
                    f"prompt {prompt!r} has {len(words)} words; at most {self.max_length - 1} are allowed"
                )
            tokens = [self._ids[START]] + [self._ids[w] for w in words]
            ids[row, : len(tokens)] = torch.tensor(tokens)
            mask[row, : len(tokens)] = 1
        return ids, mask

    def save_pretrained(self, directory: str) -> None:
        os.makedirs(directory, exist_ok=True)
        path = os.path.join(directory, VOCAB_FILE)
        tmp = path + ".tmp"
        with open(tmp, "w") as f:
            json.dump({"vocab": self.vocab, "max_length": self.max_length}, f, indent=2)
        os.replace(tmp, path)

    @classmethod
    def from_pretrained(cls, directory: str) -> "ShapesTokenizer":
        with open(os.path.join(directory, VOCAB_FILE)) as f:
            data = json.load(f)
        return cls(data["vocab"], data["max_length"])


class ShapesTextEncoder(ModelMixin, ConfigMixin):
    """A two-layer transformer encoder over the prompt tokens, standing in for OSP's mT5."""

    @register_to_config
    def __init__(
        self, vocab_size: int = 2 + len(WORDS), max_length: int = 8, dim: int = 64, num_layers: int = 2, num_heads: int = 4
    ) -> None:
        super().__init__()
        self.token_embedding = nn.Embedding(vocab_size, dim)
        self.position_embedding = nn.Parameter(torch.zeros(max_length, dim))
        layer = nn.TransformerEncoderLayer(
            dim, num_heads, dim_feedforward=4 * dim, dropout=0.0, activation="gelu", batch_first=True, norm_first=True
        )
        self.encoder = nn.TransformerEncoder(layer, num_layers, enable_nested_tensor=False)
        self.final_norm = nn.LayerNorm(dim)
        nn.init.normal_(self.position_embedding, std=0.02)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """(B, L) ids and mask -> (B, L, dim) caption states (padding positions are ignored downstream)."""
        x = self.token_embedding(input_ids) + self.position_embedding[: input_ids.shape[1]]
        x = self.encoder(x, src_key_padding_mask=attention_mask == 0)
        return self.final_norm(x)

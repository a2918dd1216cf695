import pytest
import torch

from ditcache.models.text import ShapesTextEncoder, ShapesTokenizer


def test_tokenizer_ids_and_mask():
    tok = ShapesTokenizer()
    ids, mask = tok(["a red circle moving up", ""])
    assert ids.shape == mask.shape == (2, 8) and ids.dtype == torch.long
    assert mask[0].tolist() == [1] * 6 + [0] * 2
    assert mask[1].tolist() == [1] + [0] * 7  # unconditional: the start token alone
    assert ids[0, 0] == ids[1, 0] and len(set(ids[0, 1:6].tolist())) == 5


def test_unknown_word_lists_known_words():
    with pytest.raises(ValueError, match=r"unknown words \['pink'\]; known words: .*'magenta'"):
        ShapesTokenizer()("a pink circle moving up")
    with pytest.raises(ValueError, match="at most 7"):
        ShapesTokenizer()("a red circle moving up a red circle")


def test_tokenizer_save_load(tmp_path):
    tok = ShapesTokenizer()
    tok.save_pretrained(str(tmp_path))
    again = ShapesTokenizer.from_pretrained(str(tmp_path))
    assert again.vocab == tok.vocab and again.max_length == tok.max_length


def test_encoder_ignores_padding():
    torch.manual_seed(0)
    enc = ShapesTextEncoder().eval()
    ids, mask = ShapesTokenizer()(["a red circle moving up", "a blue square moving down"])
    noisy = ids.clone()
    noisy[mask == 0] = 5  # garbage where the mask says padding
    with torch.no_grad():
        a, b = enc(ids, mask), enc(noisy, mask)
    assert a.shape == (2, 8, 64)
    assert torch.allclose(a[mask == 1], b[mask == 1], atol=1e-6)
    assert not torch.allclose(a[0, 1:6], a[1, 1:6])

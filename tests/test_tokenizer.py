"""The tokenizers: characters and GPT-2 BPE, encoded and decoded exactly."""
import numpy as np
import pytest

from common import UserError
from tokenizer import CharTokenizer


def test_encode_decode_round_trip():
    tok = CharTokenizer.from_text("hello world")
    assert tok.decode(tok.encode("low hell")) == "low hell"
    assert tok.encode_array("low hell", np.uint16).tolist() == tok.encode("low hell")


def test_unknown_characters_are_named():
    tok = CharTokenizer.from_text("abc")
    with pytest.raises(UserError, match="'z'"):
        tok.encode("abz")
    with pytest.raises(UserError, match="'z'"):
        tok.encode_array("abz", np.uint16)

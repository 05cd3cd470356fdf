"""data_prep.text: sample keys and caption words from names."""

from __future__ import annotations

from data_prep.text import make_key, words_from_name


def test_keys_and_words():
    assert make_key("a.b c", 3, "x/y") == "a_b_c_3_x_y"
    assert make_key("...") == "x"
    assert words_from_name("012_aveda_shampoo") == "aveda shampoo"
    assert words_from_name("office-desk_03") == "office desk"
    assert words_from_name("007") == "007"

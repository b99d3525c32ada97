import pandas as pd

from mmfuse.preprocessing import ReadContext, TextPreprocessor, load_preprocessors, save_preprocessors

CTX = ReadContext(root=__import__("pathlib").Path("."))


def fit(texts, **kw):
    return TextPreprocessor(["t"], **kw).fit(pd.DataFrame({"t": texts}), CTX)


def test_vocab_by_frequency_then_alphabet_with_min_freq():
    p = fit(["b a a", "B c", "d"], min_freq=2)
    # counts after lowercasing: a=2, b=2, c=1, d=1 -> a and b kept, tie broken alphabetically
    assert p.vocab_ == ["<pad>", "<unk>", "<sep>", "a", "b"]
    assert p.read(["A b zzz!"], 0, CTX)["tokens"][:5].tolist() == [3, 4, 1, 1, 0]  # zzz and ! are unknown


def test_max_length_truncates_and_pads():
    p = fit(["x y z"], min_freq=1, max_length=2)
    assert p.read(["x y z"], 0, CTX)["tokens"].tolist() == [3, 4]
    p = fit(["x"], min_freq=1, max_length=4)
    assert p.read(["x"], 0, CTX)["tokens"].tolist() == [3, 0, 0, 0]


def test_grouped_columns_are_joined_with_sep_and_missing_is_none():
    p = TextPreprocessor(["a", "b"], min_freq=1, max_length=6).fit(pd.DataFrame({"a": ["hi"], "b": ["yo"]}), CTX)
    assert p.read(["hi", "yo"], 0, CTX)["tokens"].tolist() == [3, 2, 4, 0, 0, 0]
    assert p.read([None, "yo"], 0, CTX)["tokens"].tolist() == [4, 0, 0, 0, 0, 0]
    assert p.read([None, "  "], 0, CTX) is None


def test_lowercase_off_keeps_case():
    p = fit(["Hi hi"], min_freq=1, lowercase=False)
    assert set(p.vocab_[3:]) == {"Hi", "hi"}


def test_non_utf8_bytes_cell_is_bad_input():
    import pytest

    from mmfuse.errors import InputError

    p = fit(["ok"], min_freq=1)
    with pytest.raises(InputError, match=r"row 3, column 't': is not valid UTF-8 text: byte 0xff"):
        p.read([b"ok\xff"], 3, CTX)
    assert p.read(["ok".encode()], 3, CTX)["tokens"][0] == 3


def test_state_round_trip(tmp_path):
    p = fit(["b a a", "c"], min_freq=1, max_length=5)
    save_preprocessors({"t": p}, tmp_path)
    q = load_preprocessors(tmp_path)["t"]
    assert q.vocab_ == p.vocab_ and q.config() == p.config()
    assert (q.read(["a c q"], 0, CTX)["tokens"] == p.read(["a c q"], 0, CTX)["tokens"]).all()


def test_numeric_and_categorical_columns_of_a_text_group_are_written_as_name_value(tmp_path):
    from mmfuse.preprocessing.text import render_cells

    cols, labeled = ["title", "Age", "Size", "Price"], ["Age", "Size", "Price"]
    assert render_cells(["Nice", 34.0, "M", 12.5], cols, labeled) == ["Nice", "Age: 34", "Size: M", "Price: 12.5"]
    assert render_cells([None, float("nan"), "S", 1 / 3], cols, labeled) == ["Size: S", "Price: 0.333333"]
    df = pd.DataFrame({"title": ["Nice", None], "Age": [34.0, None], "Size": ["M", "S"], "Price": [1.0, 2.0]})
    p = TextPreprocessor(cols, min_freq=1, max_length=12, labeled=labeled).fit(df, CTX)
    ids = p.read(["Nice", 34.0, None, None], 0, CTX)["tokens"]
    assert [p.vocab_[i] for i in ids if i] == ["nice", "<sep>", "age", ":", "34"]
    assert p.read([None, None, "S", None], 1, CTX) is not None  # a row with only labeled cells is present
    save_preprocessors({"t": p}, tmp_path)
    q = load_preprocessors(tmp_path)["t"]
    assert q.labeled == labeled and (q.read(["Nice", 34.0, None, None], 0, CTX)["tokens"] == ids).all()

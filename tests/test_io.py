import json
import warnings

import pandas as pd
import pytest

from mmfuse.errors import InputError, SchemaError
from mmfuse.io import iter_table, read_mapping_file, read_table, resolve_path


@pytest.fixture
def df():
    return pd.DataFrame({"a": [1, 2], "b": ["x", "y"]})


@pytest.mark.parametrize("fmt", ["csv", "tsv", "parquet", "jsonl"])
def test_readers_round_trip_and_root_is_table_folder(tmp_path, df, fmt):
    path = tmp_path / f"t.{fmt}"
    if fmt == "csv":
        df.to_csv(path, index=False)
    elif fmt == "tsv":
        df.to_csv(path, sep="\t", index=False)
    elif fmt == "parquet":
        df.to_parquet(path)
    else:
        path.write_text("\n".join(json.dumps(r) for r in df.to_dict("records")))
    t = read_table(path)
    assert t.df["a"].tolist() == [1, 2] and t.df["b"].tolist() == ["x", "y"]
    assert t.root == tmp_path.resolve()


def test_dataframe_and_explicit_root(tmp_path, df):
    t = read_table(df, root=tmp_path)
    assert t.root == tmp_path.resolve() and len(t) == 2


def test_empty_table_is_refused(tmp_path):
    (tmp_path / "e.csv").write_text("a,b\n")
    with pytest.raises(SchemaError, match="empty"):
        read_table(tmp_path / "e.csv")
    with pytest.raises(SchemaError, match="empty"):
        read_table(pd.DataFrame())


def test_duplicate_column_names_are_refused(tmp_path):
    (tmp_path / "d.csv").write_text("a,b,a\n1,2,3\n")
    with pytest.raises(SchemaError, match="duplicate column names: 'a'"):
        read_table(tmp_path / "d.csv")
    with pytest.raises(SchemaError, match="duplicate"):
        read_table(pd.DataFrame([[1, 2]], columns=["x", "x"]))


def test_non_utf8_file_names_the_line_and_the_fix(tmp_path):
    (tmp_path / "l.csv").write_bytes("text\nok\ncaf\xe9\n".encode("latin-1"))
    with pytest.raises(InputError, match=r"not valid utf-8: byte\(s\) 0xe9 on line 3.*encoding='latin-1'"):
        read_table(tmp_path / "l.csv")
    assert read_table(tmp_path / "l.csv", encoding="latin-1").df["text"].tolist() == ["ok", "café"]


def test_unknown_format_and_missing_file(tmp_path):
    (tmp_path / "x.xlsx").write_text("")
    with pytest.raises(SchemaError, match="unknown table format '.xlsx'"):
        read_table(tmp_path / "x.xlsx")
    with pytest.raises(SchemaError, match="does not exist"):
        read_table(tmp_path / "nope.csv")


def test_path_escaping_root_is_refused_unless_allowed(tmp_path):
    root = tmp_path / "data"
    root.mkdir()
    with pytest.raises(InputError, match=r"row 4, column 'img': file '../../etc/passwd' is outside the data root"):
        resolve_path("../../etc/passwd", root, row=4, column="img")
    with pytest.raises(InputError, match="outside the data root"):
        resolve_path("/etc/passwd", root)
    assert resolve_path("../../etc/passwd", root, allow_outside_root=True) == (root / "../../etc/passwd").resolve()
    assert resolve_path("sub/a.png", root) == root.resolve() / "sub" / "a.png"


PNG = b"\x89PNG\r\n\x1a\n" + bytes(range(256))


BROKEN_TABLES = [
    ("empty.csv", b"", r"'.*empty.csv' is empty \(0 bytes\)"),
    ("blank.csv", b"\n \n", "holds only blank lines"),
    ("extra.csv", b"a,b,y\n1,2,p\n3,4,q,5\n",
     r", line 3: has 4 fields but the header has 3\. Put quotes around fields"),
    # every row one field too long: pandas would silently make the first column the index
    ("shifted.csv", b"a,y\n1,2,p\n3,4,q\n", r", line 2: has 3 fields but the header has 2"),
    # the row that is too long has a quoted field spanning lines 3 and 4: it starts on line 3
    ("multiline.csv", b'a,y\n1,p\n2,"q\nr",5\n', r", line 3: has 3 fields"),
    ("unclosed.csv", b'a,y\n1,"p\n2,q\n', r"a quoted field is never closed .*opening quote"),
    # a text with a line break not in quotes cuts its row in two: pandas would fill the rest with blanks
    ("short.csv", b"text,n,y\nhello,1,p\nbroken\nline,2,q\n",
     r", line 3: has 1 field but the header has 3\. Put a text with a line break in quotes"),
    # blank lines are not rows, and a quoted line break is one field: the short row is on line 7
    ("cut.csv", b'a,b,y\n1,2,p\n\n   \n"x\ny",3,q\n4,5\n', r", line 7: has 2 fields but the header has 3"),
    ("lead.csv", b"\na,b,y\n1,2\n", r", line 3: has 2 fields but the header has 3"),  # a blank line first
    ("semi.csv", b"a;b;y\n1;2;p\n3;4\n", r", line 3: has 2 fields but the header has 3"),
    ("short.tsv", b"a\tb\ty\n1\t2\n", r", line 2: has 2 fields but the header has 3"),
    # past a field longer than the csv module's default limit (131,072 characters), as pandas reads it
    ("big.csv", b"a,b,y\n" + b"x" * 200_000 + b",2,p\n3,4\n", r", line 3: has 2 fields but the header has 3"),
    ("image.csv", PNG, r"is not a CSV file: its content looks like a PNG image\. Pass the table itself"),
    ("array.csv", b'[\n {"a": 1, "y": "p"}\n]\n', r"is not a CSV file: its content looks like JSON\. .*\.jsonl"),
    ("lines.csv", b'{"a": 1, "y": "p"}\n{"a": 2, "y": "q"}\n', r"looks like JSON Lines\. Rename it to \.jsonl"),
    ("table.parquet", b"a,y\n1,p\n", r"is not a Parquet file: its content looks like CSV text\. Rename it to \.csv"),
    ("cut.parquet", None, r"is a damaged or truncated Parquet file .*Copy or export it again"),
    ("empty.parquet", b"", r"is empty \(0 bytes\)"),
    ("noise.jsonl", bytes(range(256)) * 4, r"is not a JSON Lines file: its content looks like binary data"),
    ("bad.jsonl", b'{"a": 1}\n{"a": 2\n', r", line 2: is not valid JSON \(Expecting ',' delimiter at column 8\)"),
    ("list.jsonl", b'{"a": 1}\n[1, 2]\n', r", line 2: holds a JSON list, not an object"),
    ("book.xlsx", b"PK\x03\x04" + bytes(50), r"unknown table format '\.xlsx'; save the sheet as CSV"),
    ("noext", b"a,y\n1,p\n", r"unknown table format ''; its content looks like CSV text: rename it to \.csv"),
]


@pytest.mark.parametrize("name, content, message", BROKEN_TABLES, ids=[c[0] for c in BROKEN_TABLES])
def test_broken_table_files_are_one_line_errors_naming_file_line_and_fix(tmp_path, name, content, message):
    path = tmp_path / name
    if content is None:  # a real Parquet file cut in half
        pd.DataFrame({"a": range(2000)}).to_parquet(path)
        content = path.read_bytes()[:1000]
    path.write_bytes(content)
    with pytest.raises(SchemaError, match=message) as e:
        read_table(path)
    assert str(path) in str(e.value) and "\n" not in str(e.value)


@pytest.mark.parametrize("content, shape", [
    (b"a,b,y,\n1,2,p\n3,4,q,\n", (2, 4)),  # a header ending in a separator: its unnamed column may be left out
    (b"a,b,y\n1,2,p\n   \n\t\n\n3,4,q\n", (2, 3)),  # lines of spaces and tabs are blank, as for pandas
])
def test_rows_pandas_reads_whole_are_not_refused(tmp_path, content, shape):
    (tmp_path / "t.csv").write_bytes(content)
    assert read_table(tmp_path / "t.csv").df.shape == shape
    assert sum(len(c) for c in iter_table(tmp_path / "t.csv", chunk_rows=1)) == shape[0]


def test_a_quote_left_open_that_takes_in_whole_rows_is_warned_of(tmp_path):
    """The quote opened on line 3 closes on line 5: pandas reads rows 3-5 as one row. A text with line breaks
    and a comma or two is no warning."""
    (tmp_path / "t.csv").write_text('id,x,text,y\n1,0.5,fine,p\n2,0.1,"love it,q\n3,0.2,ok,p\n4,0.3,ok" now,q\n'
                                    '5,0.4,"two lines, one comma\nand more",p\n')
    with pytest.warns(UserWarning, match=r"t.csv': 1 quoted field runs over lines that look like whole rows \(the "
                                         r"first: the row on line 3, column 'text'\); a quote that is not closed"):
        df = read_table(tmp_path / "t.csv").df
    assert len(df) == 3
    with pytest.warns(UserWarning, match="line 3, column 'text'"):
        assert sum(len(c) for c in iter_table(tmp_path / "t.csv", chunk_rows=2)) == 3
    (tmp_path / "ok.csv").write_text('id,x,text,y\n5,0.4,"two lines, one comma\nand more, and more",p\n')
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert len(read_table(tmp_path / "ok.csv").df) == 1


def test_an_empty_dataframe_is_refused_in_its_own_terms():
    with pytest.raises(SchemaError, match=r"table <DataFrame> is empty \(0 rows, 1 columns\); it needs at least "
                                          r"one column and one row"):
        read_table(pd.DataFrame({"a": []}))


def test_folder_instead_of_table_names_a_table_inside(tmp_path):
    (tmp_path / "data.csv").mkdir()
    (tmp_path / "data.csv" / "train.csv").write_text("a\n1\n")
    with pytest.raises(SchemaError, match=r"data.csv' is a folder, not a table file\. Pass a table file in it, "
                                          r"e\.g\. '.*train\.csv'"):
        read_table(tmp_path / "data.csv")


def test_os_and_unexpected_library_errors_are_translated(tmp_path, monkeypatch):
    path = tmp_path / "t.csv"
    path.write_text("a\n1\n")

    def denied(self):
        raise PermissionError(13, "Permission denied", str(self))

    monkeypatch.setattr(type(path), "read_bytes", denied)
    with pytest.raises(SchemaError, match=r"'.*t\.csv' cannot be read: Permission denied\. Check that you may read it"):
        read_table(path)
    monkeypatch.undo()

    def broken(*args, **kwargs):
        raise RuntimeError("something\ndeep inside")

    monkeypatch.setattr(pd, "read_csv", broken)
    with pytest.raises(SchemaError, match=r"'.*t\.csv' cannot be read as CSV \(something deep inside\)"):
        read_table(path)


def test_bom_and_semicolon_or_tab_separated_csv(tmp_path):
    (tmp_path / "semi.csv").write_bytes("\ufeffa;b;y\n1;2;p\n3;4;q\n".encode("utf-8"))
    t = read_table(tmp_path / "semi.csv")
    assert list(t.df.columns) == ["a", "b", "y"] and t.df["b"].tolist() == [2, 4] and t.df["y"].tolist() == ["p", "q"]
    (tmp_path / "tabs.csv").write_text("a\tb\n1\tx, y\n")
    assert read_table(tmp_path / "tabs.csv").df.to_dict("records") == [{"a": 1, "b": "x, y"}]
    # a header with braces is still CSV, and a trailing separator on every row is tolerated
    (tmp_path / "c.csv").write_text("{id},y\n1,p,\n2,q,\n")
    assert read_table(tmp_path / "c.csv").df.to_dict("records") == [{"{id}": 1, "y": "p"}, {"{id}": 2, "y": "q"}]


def test_utf16_file_and_unknown_encoding_say_what_to_pass(tmp_path):
    (tmp_path / "u.csv").write_bytes("a\n1\n".encode("utf-16"))
    with pytest.raises(InputError, match=r"is not valid utf-8: .*UTF-16 text: re-save it as UTF-8, or pass encoding='utf-16'"):
        read_table(tmp_path / "u.csv")
    assert read_table(tmp_path / "u.csv", encoding="utf-16").df["a"].tolist() == [1]
    with pytest.raises(SchemaError, match="unknown text encoding 'klingon'"):
        read_table(tmp_path / "u.csv", encoding="klingon")


BROKEN_MAPPINGS = [
    ("bad.yaml", "train:\n  epochs: 2\n bad: 1\n",
     r"'.*bad\.yaml', line 3, column 2: not valid YAML \(.*\); fix that line"),
    ("bad.json", '{"train": {"epochs": 2,}}', r"'.*bad\.json', line 1, column 24: not valid JSON \(Expecting property"),
    ("list.yml", "- a\n- b\n", r"must hold a mapping .*got a list"),
    ("latin.yaml", b"a: caf\xe9\n", r"'.*latin\.yaml' is not UTF-8 text .*saved as UTF-8"),
    ("missing.yaml", None, r"'.*missing\.yaml' does not exist"),
    ("folder.yaml", "DIR", r"'.*folder\.yaml' cannot be read: Is a directory"),
]


@pytest.mark.parametrize("name, content, message", BROKEN_MAPPINGS, ids=[c[0] for c in BROKEN_MAPPINGS])
def test_broken_mapping_files_name_the_file_and_line(tmp_path, name, content, message):
    path = tmp_path / name
    if content == "DIR":
        path.mkdir()
    elif isinstance(content, bytes):
        path.write_bytes(content)
    elif content is not None:
        path.write_text(content)
    with pytest.raises(SchemaError, match=message) as e:
        read_mapping_file(path, "config file")
    assert str(e.value).startswith("config file") and "\n" not in str(e.value)


def test_mapping_files_empty_and_valid(tmp_path):
    (tmp_path / "e.json").write_text("")
    (tmp_path / "e.YAML").write_text("# nothing yet\n")
    (tmp_path / "ok.yaml").write_text("\ufefftrain: {epochs: 2}\n")
    assert read_mapping_file(tmp_path / "e.json", "x") == {} and read_mapping_file(tmp_path / "e.YAML", "x") == {}
    assert read_mapping_file(tmp_path / "ok.yaml", "x") == {"train": {"epochs": 2}}


def test_yaml_numbers_in_exponent_form_are_numbers(tmp_path):
    from mmfuse.io import read_mapping_file

    (tmp_path / "c.yaml").write_text("train:\n  lr: 1e-3\n  weight_decay: 5E-2\n  note: v1e3\n")
    assert read_mapping_file(tmp_path / "c.yaml", "config file") == {
        "train": {"lr": 0.001, "weight_decay": 0.05, "note": "v1e3"}}

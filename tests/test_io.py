import json

import pandas as pd
import pytest

from mmfuse.errors import InputError, SchemaError
from mmfuse.io import read_table, resolve_path


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

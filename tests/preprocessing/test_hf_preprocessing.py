"""Hugging Face preprocessing: files are opened and decoded like the built-in inputs, and a fit
that reads nothing says why."""
import numpy as np
import pandas as pd
import pytest
from PIL import Image

from mmfuse.errors import InputError, MmfuseError
from mmfuse.preprocessing import HFImagePreprocessor, ReadContext

import hf_fixtures as H


@pytest.fixture(scope="module")
def vit(tmp_path_factory):
    return H.tiny_vit(tmp_path_factory.mktemp("hf") / "vit")


def test_fit_that_reads_no_image_names_the_reason_and_the_file(vit, tmp_path):
    (tmp_path / "data").mkdir()
    Image.new("RGB", (16, 16)).save(tmp_path / "out.png")
    df = pd.DataFrame({"im": [str(tmp_path / "out.png"), None]})
    with pytest.raises(MmfuseError, match=r"^no value of column 'im' could be read while fitting \(1 tried; "
                                          r"is outside the data root .*: 1\)\. First failure: row 0, column 'im': "
                                          r"file '.*out.png' is outside the data root"):
        HFImagePreprocessor(["im"], model=str(vit)).fit(df, ReadContext(tmp_path / "data"))
    p = HFImagePreprocessor(["im"], model=str(vit)).fit(df, ReadContext(tmp_path / "data", allow_outside_root=True))
    assert p.read_spec()["pixel_values"][0] == (3, 16, 16)


def test_truncated_image_is_an_input_error_not_a_crash(vit, tmp_path):
    Image.new("RGB", (16, 16)).save(tmp_path / "ok.png")
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 64, 3), np.uint8)).save(tmp_path / "cut.png")
    (tmp_path / "cut.png").write_bytes((tmp_path / "cut.png").read_bytes()[:300])
    ctx = ReadContext(tmp_path)
    p = HFImagePreprocessor(["im"], model=str(vit)).fit(pd.DataFrame({"im": ["ok.png"]}), ctx)
    with pytest.raises(InputError, match=r"^row 4, column 'im': file 'cut.png' is a truncated or corrupt image"):
        p.read(["cut.png"], 4, ctx)

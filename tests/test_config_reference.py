"""The settings reference (`mmfuse config --defaults`, docs/config.md) is generated from the typed
configs, is complete, and is exactly the format that --config and from_config accept."""
import dataclasses
import inspect
import re
from pathlib import Path

import pytest

from mmfuse.api import _RUN_FIELDS, MultimodalPredictor
from mmfuse.cli import main
from mmfuse.config import ModelConfig, TrainConfig, setting_help, settings_reference
from mmfuse.io import read_mapping_file

DOCS = Path(__file__).resolve().parents[1] / "docs" / "config.md"


def cli_out(capsys, *args) -> str:
    main([str(a) for a in args])
    return capsys.readouterr().out


def test_defaults_yaml_is_accepted_unchanged_and_gives_the_defaults(capsys, tmp_path):
    path = tmp_path / "cfg.yaml"
    path.write_text(cli_out(capsys, "config", "--defaults"))
    cfg = read_mapping_file(path, "config file")
    assert set(cfg) == set(_RUN_FIELDS) | {"model", "train"}
    m = MultimodalPredictor.from_config(cfg, target="y")
    assert m.configs() == (ModelConfig(), TrainConfig())
    params = inspect.signature(MultimodalPredictor.__init__).parameters
    assert {k: getattr(m, k) for k in _RUN_FIELDS if k != "target"} == \
           {k: params[k].default for k in _RUN_FIELDS if k != "target"}


def test_every_setting_has_a_comment():
    text = settings_reference()
    lines = text.splitlines()
    for cls, section in ((ModelConfig, "model"), (TrainConfig, "train")):
        body = lines[lines.index(f"{section}:") + 1:]
        for f in dataclasses.fields(cls):
            assert f.metadata["help"].strip(), f.name
            i = next(i for i, line in enumerate(body) if line.startswith(f"  {f.name}: "))
            comment = body[i - 1]
            assert re.match(r"^  # \S", comment), (f.name, comment)
    for name in _RUN_FIELDS:  # the top-level keys, documented in MultimodalPredictor's Args
        i = lines.index(next(line for line in lines if line.startswith(f"{name}: ")))
        assert re.match(r"^# \S", lines[i - 1]), name


def test_docs_config_md_is_the_generators_output():
    # fails when a setting is added or changed without `mmfuse config --defaults --markdown > docs/config.md`
    assert DOCS.read_text() == settings_reference(markdown=True)
    for f in dataclasses.fields(ModelConfig) + dataclasses.fields(TrainConfig):
        assert f"| `{f.name}` |" in DOCS.read_text()


def test_config_without_defaults_says_what_to_pass(capsys):
    with pytest.raises(SystemExit) as e:
        main(["config"])
    assert e.value.code == 2 and capsys.readouterr().err.startswith("error: mmfuse config: pass --defaults")


def test_fit_help_shows_each_default_generated_from_the_configs():
    import os
    import subprocess
    import sys

    r = subprocess.run([sys.executable, "-m", "mmfuse.cli", "fit", "--help"], capture_output=True, text=True,
                       env={**os.environ, "COLUMNS": "400", "TERMINAL_WIDTH": "400"})
    help_ = " ".join(r.stdout.split())
    for cls, name in ((ModelConfig, "fusion"), (TrainConfig, "epochs"), (TrainConfig, "batch_size"),
                      (TrainConfig, "lr"), (TrainConfig, "seed"), (TrainConfig, "num_workers"),
                      (TrainConfig, "max_time"), (TrainConfig, "decision_threshold")):
        assert setting_help(cls, name) in help_, name
    assert "Default: 30 (train.epochs)" in help_ and "Default: 0.001 (train.lr)" in help_
    assert "[default: runs/latest]" in help_

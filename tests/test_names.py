import pytest
import torch

from mmfuse._names import InputModuleDict, safe_key

TRICKY = ["Review.Text", "type", "training", "keys", "forward", "a/b", "a_b", "x->y", "%a%2Fb", "%2F", "", "..", "50%"]
PLAIN = ["review", "photo_1", "Review Text", "données", "clip-2"]


def test_safe_keys_are_distinct_module_names_and_plain_names_are_kept():
    keys = [safe_key(n) for n in TRICKY + PLAIN]
    assert len(set(keys)) == len(keys)  # injective, even for names that look like escaped keys
    holder = torch.nn.ModuleDict()
    for k in keys:  # nn.Module accepts every key: no '.', no attribute name, not empty
        holder[k] = torch.nn.Identity()
    assert not any(c in k for k in keys for c in "/>")  # tensor names split on '/', input pairs on '->'
    assert [safe_key(n) for n in PLAIN] == PLAIN  # the state-dict keys of existing models stay as they were
    assert [safe_key(n) for n in ("Review.Text", "a/b", "type")] == ["%Review%2EText", "%a%2Fb", "%type"]


def test_input_module_dict_speaks_input_names():
    d = InputModuleDict({"type": torch.nn.Linear(1, 1), "Review.Text": torch.nn.Linear(1, 2)})
    assert list(d) == list(d.keys()) == ["type", "Review.Text"] and "type" in d and "%type" not in d
    assert d["Review.Text"].out_features == 2 and [n for n, _ in d.items()] == ["type", "Review.Text"]
    assert sorted(k.split(".")[0] for k in d.state_dict()) == ["%Review%2EText", "%Review%2EText", "%type", "%type"]
    del d["type"]
    assert list(d) == ["Review.Text"] and len(d) == 1
    with pytest.raises(KeyError):
        d["type"]

"""DataProto: construction checks, indexing, repeat order, chunk/split/concat, union, select/pop, rename."""

import numpy as np
import pytest
import torch

from verl.protocol import DataProto


def make(n=4):
    return DataProto.from_dict(
        tensors={"x": torch.arange(n), "ids": torch.arange(2 * n).view(n, 2)},
        non_tensors={"uid": [f"u{i}" for i in range(n)], "solution": [["<normal>", str(i)] for i in range(n)]},
        meta_info={"step": 3},
    )


def test_from_dict_and_errors():
    d = make()
    assert len(d) == 4
    assert d.non_tensor_batch["uid"].dtype == object
    # list-valued cells stay one element per row (not a 2-D array)
    assert d.non_tensor_batch["solution"].shape == (4,) and d.non_tensor_batch["solution"][2] == ["<normal>", "2"]
    with pytest.raises(ValueError, match="different lengths"):
        DataProto.from_dict(tensors={"a": torch.zeros(3)}, non_tensors={"b": [1, 2]})
    with pytest.raises(ValueError, match="different lengths"):
        DataProto.from_dict(tensors={"a": torch.zeros(3), "b": torch.zeros(2, 5)})
    with pytest.raises(TypeError, match="non_tensors"):
        DataProto.from_dict(tensors={"a": [1, 2, 3]})
    assert len(DataProto.from_dict()) == 0


def test_getitem_variants():
    d = make()
    assert d[1].batch["x"].tolist() == [1] and d[1].non_tensor_batch["uid"].tolist() == ["u1"]
    assert d[-1].batch["x"].tolist() == [3]
    assert d[1:3].batch["x"].tolist() == [1, 2]
    assert d[[3, 0]].non_tensor_batch["uid"].tolist() == ["u3", "u0"]
    assert d[np.array([2])].batch["ids"].tolist() == [[4, 5]]
    assert d[torch.tensor([0, 2])].batch["x"].tolist() == [0, 2]
    assert d[np.array([True, False, False, True])].batch["x"].tolist() == [0, 3]
    assert d[[0]].meta_info == {"step": 3}
    with pytest.raises(IndexError):
        d[4]


def test_repeat_interleave_order():
    d = make(2)
    r = d.repeat(3, interleave=True)
    assert r.batch["x"].tolist() == [0, 0, 0, 1, 1, 1]
    assert r.non_tensor_batch["uid"].tolist() == ["u0", "u0", "u0", "u1", "u1", "u1"]
    t = d.repeat(2, interleave=False)
    assert t.batch["x"].tolist() == [0, 1, 0, 1]
    assert t.non_tensor_batch["uid"].tolist() == ["u0", "u1", "u0", "u1"]


def test_chunk_split_concat_round_trip():
    d = make(6)
    parts = d.chunk(3)
    assert [len(p) for p in parts] == [2, 2, 2]
    back = DataProto.concat(parts)
    assert torch.equal(back.batch["ids"], d.batch["ids"])
    assert back.non_tensor_batch["uid"].tolist() == d.non_tensor_batch["uid"].tolist()
    with pytest.raises(ValueError, match="split"):
        d.chunk(4)
    pieces = d.split(4)
    assert [len(p) for p in pieces] == [4, 2]
    assert DataProto.concat(pieces).batch["x"].tolist() == list(range(6))
    with pytest.raises(ValueError, match="different keys"):
        DataProto.concat([d, d.select(batch_keys=["x"])])


def test_reorder_and_to():
    d = make()
    r = d.reorder(torch.tensor([3, 2, 1, 0]))
    assert r.batch["x"].tolist() == [3, 2, 1, 0] and r.non_tensor_batch["uid"][0] == "u3"
    assert d.to("cpu") is d and d.batch["x"].device.type == "cpu"


def test_union():
    d = make()
    other = DataProto.from_dict(
        tensors={"x": torch.arange(4), "y": torch.ones(4)}, non_tensors={"uid": [f"u{i}" for i in range(4)]}
    )
    d.union(other)
    assert set(d.batch) == {"x", "ids", "y"}
    clash = DataProto.from_dict(tensors={"x": torch.zeros(4, dtype=torch.long)})
    with pytest.raises(ValueError, match="batch\\['x'\\]"):
        make().union(clash)
    with pytest.raises(ValueError, match="uid"):
        make().union(DataProto.from_dict(non_tensors={"uid": ["z"] * 4}))
    with pytest.raises(ValueError, match="step"):
        make().union(DataProto(meta_info={"step": 4}))
    with pytest.raises(ValueError, match="rows"):
        make().union(make(3))


def test_select_pop_rename():
    d = make()
    s = d.select(batch_keys=["x"], non_tensor_keys=[], meta_keys=["step"])
    assert set(s.batch) == {"x"} and s.non_tensor_batch == {} and s.meta_info == {"step": 3}
    with pytest.raises(KeyError, match="nope"):
        d.select(batch_keys=["nope"])
    popped = d.pop(batch_keys=["ids"], non_tensor_keys=["uid"])
    assert set(popped.batch) == {"ids"} and set(popped.non_tensor_batch) == {"uid"}
    assert set(d.batch) == {"x"} and set(d.non_tensor_batch) == {"solution"}
    with pytest.raises(KeyError):
        d.pop(batch_keys=["ids"])
    d.rename("x", "z").rename("solution", "ground_truth")
    assert set(d.batch) == {"z"} and set(d.non_tensor_batch) == {"ground_truth"}
    with pytest.raises(KeyError):
        d.rename("missing", "q")

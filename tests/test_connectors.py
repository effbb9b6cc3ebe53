"""Connectors without a broker: River sources, files, message decoding."""

from __future__ import annotations

import json
import re

import pytest
from river import datasets
from river.datasets import synth

from stream_mtl import MultiTaskLearner
from stream_mtl.connectors.files import CSVSource, JSONLinesSource
from stream_mtl.connectors.messages import (
    MalformedMessage,
    decode_json,
    decode_msgpack,
    encode_msgpack,
    observation_from_message,
)
from stream_mtl.connectors.river import RiverSource
from stream_mtl.evaluate import prequential
from stream_mtl.tasks import task_from_kind


def test_a_multi_output_river_data_set_is_a_stream_with_one_task_per_output():
    source = RiverSource(datasets.SolarFlare())
    assert source.tasks == dict.fromkeys(
        ["c-class-flares", "m-class-flares", "x-class-flares"], "regression"
    )
    model = MultiTaskLearner(
        tasks={name: task_from_kind(kind) for name, kind in source.tasks.items()}, hidden=(8,)
    )
    report = prequential(model, source, progress=False, baselines=())
    assert report.n_observations == len(source) == 1066
    assert model.n_learned == dict.fromkeys(source.tasks, 1066)


def test_an_endless_river_generator_needs_n():
    with pytest.raises(ValueError, match="endless: give n"):
        RiverSource(synth.Agrawal(seed=0))


@pytest.mark.parametrize(
    ("raw", "reason"),
    [
        (b"{oops", "not valid JSON"),
        (b"[1, 2]", "a message must be an object, got list"),
        (b'{"x": {"a": 1}, "Y": {"t": 1}}', "unknown field(s) ['Y']"),
        (b'{"x": [1, 2]}', '"x" must be an object, got list'),
        (b'{"key": "k"}', 'a message needs features "x", labels "y", or both'),
        (b'{"x": {"a": 1}, "key": {"id": 1}}', '"key" must be a string, a finite number or a list'),
        (b'{"x": {"a": 1}, "time": "noon"}', '"time" must be a finite number'),
    ],
)
def test_a_malformed_message_is_refused_with_its_reason(raw, reason):
    with pytest.raises(MalformedMessage, match=re.escape(reason)):
        observation_from_message(decode_json(raw))


def test_a_list_key_becomes_a_tuple_so_that_late_labels_find_their_features():
    obs = observation_from_message({"x": {"a": 1.0}, "key": ["shop", 7]})
    assert obs.key == ("shop", 7)


@pytest.mark.parametrize(
    ("message", "reason"),
    [
        (encode_msgpack({"x": {"a": 1}, "key": b"\x00\xff"}), '"key" that is not a string'),
        (b'{"x": {"a": 1}, "key": ' + b"9" * 401 + b"}", '"key" that is not a string'),
        (b'{"x": {"a": 1}, "key": ' + b"[" * 20 + b"]" * 20 + b"}", '"key" that is not'),
        (b'{"x": {"a": 1}, "time": ' + b"9" * 401 + b"}", '"time" that is not a finite number'),
        (b'{"x": ' + b"[" * 5000 + b"]" * 5000 + b"}", "JSON nested too deeply"),
        (b'{"x": {"a": ' + b"9" * 5000 + b"}}", "not valid JSON"),
    ],
)
def test_a_message_a_checkpoint_or_a_prediction_record_could_not_write_is_malformed(
    message, reason
):
    decode = decode_msgpack if message[:1] != b"{" else decode_json
    with pytest.raises(MalformedMessage) as refused:
        observation_from_message(decode(message))
    assert refused.value.reason.startswith(reason)


def test_msgpack_garbage_is_a_malformed_message():
    assert decode_msgpack(encode_msgpack({"x": {"a": 1}})) == {"x": {"a": 1}}
    with pytest.raises(MalformedMessage, match="not valid msgpack"):
        decode_msgpack(b"\xc1\xff")


def test_a_csv_with_a_byte_order_mark_reads_its_first_column_by_name(tmp_path):
    path = tmp_path / "bom.csv"
    path.write_bytes("\ufeffage,price\n3,9.5\n".encode())
    assert [(obs.x, obs.y) for obs in CSVSource(path, labels=["price"])] == [
        ({"age": 3.0}, {"price": 9.5})
    ]


def test_a_flat_file_chooses_its_features_and_says_which_it_used(tmp_path):
    path = tmp_path / "flat.jsonl"
    rows = [{"u": i, "v": -i, "other_target": 2 * i, "price": 1.0} for i in range(3)]
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    excluded = JSONLinesSource(path, labels=["price"], exclude=["other_target"])
    assert [obs.x for obs in excluded] == [{"u": i, "v": -i} for i in range(3)]
    assert excluded.feature_names == ["u", "v"]
    chosen = JSONLinesSource(path, labels=["price"], features=["v"])
    assert [obs.x for obs in chosen][1] == {"v": -1}
    with pytest.raises(ValueError, match=r"\['price'\] cannot be both labels and features"):
        JSONLinesSource(path, labels=["price"], features=["price", "u"])


def test_a_csv_without_a_named_column_says_which(tmp_path):
    path = tmp_path / "events.csv"
    path.write_text("age,price\n3,9.5\n")
    with pytest.raises(ValueError, match=r"no column\(s\) \['plan'\]"):
        list(CSVSource(path, labels=["price"], features=["plan"]))

"""The calibration table: validation, JSON file and bytes round trips, clear errors, atomic save."""
import dataclasses
import errno
import json
import os

import pytest

from tftrt_lite.calibrate.table import FORMAT, FORMAT_VERSION, CalibrationTable, CalibrationTableError


def _table(**changes):
    fields = dict(amax={"conv1/Relu:0": 6.0234567890123, "pool/out": 0.1 + 0.2}, algorithm="entropy",
                  num_batches=8, num_samples=256, model="sha256:abc",
                  warnings={"pool/out": "ignored 3 non-finite value(s) (NaN/Inf) of 4096"})
    fields.update(changes)
    return CalibrationTable(**fields)


def _document(**changes):
    document = _table().to_dict()
    document.update(changes)
    return document


def _write(path, document):
    path.write_text(json.dumps(document))
    return path


def test_save_load_round_trip_is_exact(tmp_path):
    table = _table()
    path = tmp_path / "calibration.json"
    table.save(path)
    loaded = CalibrationTable.load(path)
    assert loaded == table
    assert loaded.amax["pool/out"] == 0.1 + 0.2  # floats survive bit for bit
    assert json.loads(path.read_text())["version"] == FORMAT_VERSION
    assert sorted(os.listdir(tmp_path)) == ["calibration.json"]


def test_bytes_round_trip_is_deterministic():
    table = _table()
    data = table.to_bytes()
    assert CalibrationTable.from_bytes(data) == table
    reordered = _table(amax=dict(reversed(list(table.amax.items()))))
    assert reordered.to_bytes() == data  # same table, same asset bytes


def test_optional_keys_default_and_mappings_are_read_only():
    document = _document()
    del document["model"], document["warnings"]
    table = CalibrationTable.from_dict(document)
    assert table.model == "" and dict(table.warnings) == {}
    with pytest.raises(TypeError):
        table.amax["conv1/Relu:0"] = 1.0
    changed = dataclasses.replace(table, model="fp2")
    assert changed.model == "fp2" and changed.amax == table.amax


def test_save_replaces_an_existing_file(tmp_path):
    path = tmp_path / "t.json"
    _table(model="old").save(path)
    _table(model="new").save(str(path))
    assert CalibrationTable.load(path).model == "new"
    assert os.listdir(tmp_path) == ["t.json"]


def test_failed_write_keeps_the_old_file_and_leaves_no_temporary(tmp_path, monkeypatch):
    path = tmp_path / "t.json"
    _table(model="old").save(path)
    old = path.read_bytes()

    def disk_full(fd):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "fsync", disk_full)
    with pytest.raises(OSError, match="No space left"):
        _table(model="new").save(path)
    assert path.read_bytes() == old
    assert os.listdir(tmp_path) == ["t.json"]


def test_failed_rename_leaves_no_temporary(tmp_path):
    target = tmp_path / "is_a_directory"
    target.mkdir()
    with pytest.raises(IsADirectoryError):
        _table().save(target)
    assert os.listdir(tmp_path) == ["is_a_directory"] and not os.listdir(target)


@pytest.mark.parametrize("content, message", [
    (b'{"format": "tftrt_lite.calibration_table", "version": 1, "amax": {"a": 1.', "not valid JSON"),
    (b"\xff\xfe\x00", "not UTF-8 text"),
    (b"[1, 2]", "expected a JSON object, got list"),
    (b'{"format": "tensorrt-cache"}', "not a tftrt_lite calibration table"),
    (b"", "not valid JSON"),
])
def test_corrupt_files_name_the_file_and_the_problem(tmp_path, content, message):
    path = tmp_path / "bad.json"
    path.write_bytes(content)
    with pytest.raises(CalibrationTableError, match=message) as info:
        CalibrationTable.load(path)
    assert str(path) in str(info.value)


@pytest.mark.parametrize("changes, message", [
    (dict(version=2), r"unsupported format version 2 \(written by a newer tftrt_lite\); this .* reads version 1"),
    (dict(version="1"), "'version' must be an integer"),
    (dict(extra=1), "unknown key\\(s\\): extra"),
    (dict(amax={"a": -1.0}), "amax of 'a' is -1.0; it must be finite and > 0"),
    (dict(amax={"a": 0}), "amax of 'a' is 0.0; it must be finite and > 0"),
    (dict(amax={"a": "2.5"}), "amax of 'a' must be a number, got str"),
    (dict(amax={"a": True}), "amax of 'a' must be a number, got bool"),
    (dict(amax={"": 1.0}), "invalid tensor name ''"),
    (dict(amax=[1.0]), "'amax' must map tensor names to numbers, got list"),
    (dict(num_batches=-1), "'num_batches' must be an integer >= 0"),
    (dict(num_samples=2.5), "'num_samples' must be an integer >= 0"),
    (dict(algorithm=""), "'algorithm' must be a non-empty string"),
    (dict(model=7), "'model' must be a string, got int"),
    (dict(warnings={"missing": "x"}), "'warnings' names tensor 'missing', which has no amax"),
])
def test_invalid_fields_name_the_file_and_the_field(tmp_path, changes, message):
    path = _write(tmp_path / "t.json", _document(**changes))
    with pytest.raises(CalibrationTableError, match=message) as info:
        CalibrationTable.load(path)
    assert str(info.value).startswith(str(path))


def test_missing_keys_are_listed(tmp_path):
    document = _document()
    del document["amax"], document["num_samples"]
    with pytest.raises(CalibrationTableError, match="missing key\\(s\\): num_samples, amax"):
        CalibrationTable.load(_write(tmp_path / "t.json", document))


@pytest.mark.parametrize("token", ["NaN", "Infinity", "-Infinity"])
def test_non_finite_amax_in_a_file_is_rejected(tmp_path, token):
    path = tmp_path / "t.json"
    path.write_text(json.dumps(_document()).replace("6.0234567890123", token))
    with pytest.raises(CalibrationTableError, match="amax of 'conv1/Relu:0' is .*; it must be finite and > 0"):
        CalibrationTable.load(path)


def test_duplicate_keys_are_rejected():
    data = ('{"format": "%s", "version": 1, "algorithm": "max", "num_batches": 1, "num_samples": 1, '
            '"amax": {"a": 1.0, "a": 2.0}}' % FORMAT).encode()
    with pytest.raises(CalibrationTableError, match="asset: duplicate key\\(s\\) in one JSON object: 'a'"):
        CalibrationTable.from_bytes(data, source="asset")


def test_invalid_tables_cannot_be_built_and_bad_inputs_are_named(tmp_path):
    with pytest.raises(CalibrationTableError, match="amax of 't' is nan"):
        _table(amax={"t": float("nan")}, warnings={})
    with pytest.raises(TypeError, match="expected bytes, got str"):
        CalibrationTable.from_bytes("{}")
    with pytest.raises(FileNotFoundError):
        CalibrationTable.load(tmp_path / "absent.json")

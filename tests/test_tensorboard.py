"""dualmeta.tensorboard: the pure-Python event writer, read back by TensorBoard's own reader."""
from __future__ import annotations

import struct

import numpy as np
import pytest

from dualmeta import tensorboard


def test_crc32c_known_values():
    # RFC 3720 / iSCSI test vectors for CRC-32C.
    assert tensorboard.crc32c(b"123456789") == 0xE3069283
    assert tensorboard.crc32c(b"") == 0
    assert tensorboard.crc32c(bytes(32)) == 0x8A9136AA
    assert tensorboard.crc32c(bytes([0xFF] * 32)) == 0x62A8AB43


def test_records_round_trip_and_detect_corruption(tmp_path):
    path = tmp_path / "records"
    payloads = [b"", b"a", bytes(range(256)) * 3]
    path.write_bytes(b"".join(tensorboard.encode_record(p) for p in payloads))
    assert tensorboard.read_records(path) == payloads
    blob = bytearray(path.read_bytes())
    blob[-5] ^= 1  # flip a bit of the last payload
    path.write_bytes(bytes(blob))
    with pytest.raises(ValueError, match="bad data CRC"):
        tensorboard.read_records(path)
    path.write_bytes(bytes(blob[:-3]))
    with pytest.raises(ValueError, match="truncated"):
        tensorboard.read_records(path)


def test_varint_encodes_like_protobuf():
    assert tensorboard._varint(1) == b"\x01"
    assert tensorboard._varint(300) == b"\xac\x02"
    assert tensorboard._varint(-1) == b"\xff" * 9 + b"\x01"


def test_writer_file_starts_with_file_version(tmp_path):
    with tensorboard.EventWriter(tmp_path) as writer:
        writer.scalars(3, {"train/loss": 0.25})
    records = tensorboard.read_records(writer.path)
    assert len(records) == 2 and b"brain.Event:2" in records[0]
    assert b"train/loss" in records[1] and struct.pack("<f", 0.25) in records[1]


def test_tensorboard_reads_back_the_scalars(tmp_path):
    event_accumulator = pytest.importorskip("tensorboard.backend.event_processing.event_accumulator")
    losses = np.linspace(2.0, 0.5, 7)
    with tensorboard.EventWriter(tmp_path) as writer:
        for step, loss in enumerate(losses, start=1):
            writer.scalars(step, {"train/loss": loss, "train/accuracy": step / 10})
        writer.scalars(7, {"val/loss": 0.125})
    acc = event_accumulator.EventAccumulator(str(tmp_path))
    acc.Reload()
    assert sorted(acc.Tags()["scalars"]) == ["train/accuracy", "train/loss", "val/loss"]
    events = acc.Scalars("train/loss")
    assert [e.step for e in events] == list(range(1, 8))
    np.testing.assert_allclose([e.value for e in events], losses.astype(np.float32))
    assert [e.value for e in acc.Scalars("val/loss")] == [0.125]


def test_restart_drops_the_events_after_the_resumed_step(tmp_path):
    event_accumulator = pytest.importorskip("tensorboard.backend.event_processing.event_accumulator")
    with tensorboard.EventWriter(tmp_path) as first:
        for step in range(1, 8):
            first.scalars(step, {"train/loss": 1.0})
    with tensorboard.EventWriter(tmp_path) as second:  # resumed from the checkpoint of step 4
        second.start(5)
        for step in range(5, 10):
            second.scalars(step, {"train/loss": 2.0})
    acc = event_accumulator.EventAccumulator(str(tmp_path))
    acc.Reload()
    events = acc.Scalars("train/loss")
    assert [e.step for e in events] == list(range(1, 10))
    assert [e.value for e in events] == [1.0] * 4 + [2.0] * 5

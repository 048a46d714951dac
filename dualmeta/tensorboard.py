"""A tiny pure-Python TensorBoard event writer for scalars (no tensorflow, torch or protobuf import).

Both backends log through this writer, so their runs carry the same tags and TensorBoard overlays them.

File format. An event file (``events.out.tfevents.<microseconds>.<host>.<pid>.<n>.dualmeta``) is a sequence of TFRecords::

    uint64 length (little-endian) | uint32 masked_crc32c(length bytes) | data | uint32 masked_crc32c(data)

with ``masked_crc32c(x) = ((c >> 15) | (c << 17)) + 0xa282ead8 (mod 2**32)`` and ``c`` the CRC-32C
(Castagnoli) of ``x``. Each ``data`` is a serialised ``tensorflow.Event`` protobuf, encoded here by hand:

    Event   { double wall_time = 1; int64 step = 2; string file_version = 3; Summary summary = 5;
              SessionLog session_log = 7; }
    Summary { repeated Value value = 1; }   Value { string tag = 1; float simple_value = 2; }
    SessionLog { Status status = 1; }       (START = 1: TensorBoard drops older events at later steps)

The first record is ``file_version = "brain.Event:2"``.

Example:
    >>> import tempfile
    >>> with EventWriter(tempfile.mkdtemp()) as writer:
    ...     writer.scalars(1, {"train/loss": 0.5})
"""
from __future__ import annotations

import os
import socket
import struct
import time
from typing import Mapping

__all__ = ["EventWriter", "crc32c", "masked_crc32c", "encode_record", "scalar_event", "read_records"]


def _crc32c_table() -> list[int]:
    table = []
    for byte in range(256):
        crc = byte
        for _ in range(8):
            crc = (crc >> 1) ^ 0x82F63B78 if crc & 1 else crc >> 1
        table.append(crc)
    return table


_TABLE = _crc32c_table()


def crc32c(data: bytes) -> int:
    """CRC-32C (Castagnoli polynomial, reflected), e.g. ``crc32c(b"123456789") == 0xE3069283``."""
    crc = 0xFFFFFFFF
    table = _TABLE
    for byte in data:
        crc = table[(crc ^ byte) & 0xFF] ^ (crc >> 8)
    return crc ^ 0xFFFFFFFF


def masked_crc32c(data: bytes) -> int:
    crc = crc32c(data)
    return (((crc >> 15) | (crc << 17)) + 0xA282EAD8) & 0xFFFFFFFF


def encode_record(data: bytes) -> bytes:
    """One TFRecord: length, its masked CRC, the data, its masked CRC."""
    length = struct.pack("<Q", len(data))
    return length + struct.pack("<I", masked_crc32c(length)) + data + struct.pack("<I", masked_crc32c(data))


def read_records(path: str | os.PathLike) -> list[bytes]:
    """The data of every record in a TFRecord file; raises ``ValueError`` on a bad CRC or a cut record."""
    with open(path, "rb") as handle:
        blob = handle.read()
    records, offset = [], 0
    while offset < len(blob):
        if offset + 12 > len(blob):
            raise ValueError(f"{path}: truncated record header at byte {offset}")
        length_bytes = blob[offset:offset + 8]
        (length,) = struct.unpack("<Q", length_bytes)
        (length_crc,) = struct.unpack("<I", blob[offset + 8:offset + 12])
        if length_crc != masked_crc32c(length_bytes):
            raise ValueError(f"{path}: bad length CRC at byte {offset}")
        data = blob[offset + 12:offset + 12 + length]
        if len(data) != length or offset + 16 + length > len(blob):
            raise ValueError(f"{path}: truncated record at byte {offset}")
        (data_crc,) = struct.unpack("<I", blob[offset + 12 + length:offset + 16 + length])
        if data_crc != masked_crc32c(data):
            raise ValueError(f"{path}: bad data CRC at byte {offset}")
        records.append(data)
        offset += 16 + length
    return records


# -- protobuf wire format, the few pieces an Event needs ----------------------------------------------

def _varint(value: int) -> bytes:
    value &= 0xFFFFFFFFFFFFFFFF  # int64 two's complement, as protobuf encodes negative numbers
    out = bytearray()
    while True:
        bits = value & 0x7F
        value >>= 7
        if value:
            out.append(bits | 0x80)
        else:
            out.append(bits)
            return bytes(out)


def _key(field: int, wire_type: int) -> bytes:
    return _varint((field << 3) | wire_type)


def _bytes_field(field: int, payload: bytes) -> bytes:
    return _key(field, 2) + _varint(len(payload)) + payload


def _event(wall_time: float, step: int | None = None, **fields: bytes) -> bytes:
    out = _key(1, 1) + struct.pack("<d", wall_time)
    if step is not None:
        out += _key(2, 0) + _varint(int(step))
    numbers = {"file_version": 3, "summary": 5, "session_log": 7}
    for name, payload in fields.items():
        out += _bytes_field(numbers[name], payload)
    return out


def scalar_event(step: int, values: Mapping[str, float], wall_time: float | None = None) -> bytes:
    """A serialised Event holding one ``simple_value`` per tag (a float32, as TensorBoard stores it)."""
    summary = b"".join(
        _bytes_field(1, _bytes_field(1, tag.encode("utf-8")) + _key(2, 5) + struct.pack("<f", float(value)))
        for tag, value in values.items())
    return _event(time.time() if wall_time is None else wall_time, step, summary=summary)


class EventWriter:
    """Appends scalar summaries to a new event file in ``logdir`` (created if needed).

    ``scalars(step, {"tag": value})`` writes one event; ``start(step)`` records a restart so that
    TensorBoard discards the events an interrupted run wrote after the step it resumes from. Every write
    is flushed, so a killed run loses nothing it reported.
    """

    _count = 0

    def __init__(self, logdir: str | os.PathLike, suffix: str = ".dualmeta"):
        os.makedirs(logdir, exist_ok=True)
        EventWriter._count += 1
        # Microseconds first: TensorBoard reads a folder's files in name order, so a resumed run's file
        # (with its restart event) must sort after the interrupted run's.
        name = (f"events.out.tfevents.{time.time_ns() // 1000:016d}.{socket.gethostname()}.{os.getpid()}."
                f"{EventWriter._count}{suffix}")
        self.path = os.path.join(os.fspath(logdir), name)
        self._file = open(self.path, "wb")
        self._write(_event(time.time(), 0, file_version=b"brain.Event:2"))

    def _write(self, event: bytes) -> None:
        self._file.write(encode_record(event))
        self._file.flush()

    def scalars(self, step: int, values: Mapping[str, float], wall_time: float | None = None) -> None:
        if values:
            self._write(scalar_event(step, values, wall_time))

    def start(self, step: int) -> None:
        """A ``SessionLog.START`` event at ``step`` (a resumed run)."""
        self._write(_event(time.time(), step, session_log=_key(1, 0) + _varint(1)))

    def close(self) -> None:
        if not self._file.closed:
            self._file.close()

    def __enter__(self) -> "EventWriter":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

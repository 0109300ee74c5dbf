"""Just enough of the checkpoint format (FORMAT.md) to find and damage sections in tests."""

from __future__ import annotations

import struct
import zlib
from pathlib import Path

TRAILER_LEN = 64
ENTRY_LEN = 128


def sections(path: Path) -> dict[str, dict[str, int]]:
    """name -> {offset, stored_len, raw_len, codec, encoding, index} from the section table."""
    data = Path(path).read_bytes()
    trailer = data[-TRAILER_LEN:]
    table_offset, _file_len, count = struct.unpack_from("<QQI", trailer, 0)
    out = {}
    for i in range(count):
        e = data[table_offset + i * ENTRY_LEN : table_offset + (i + 1) * ENTRY_LEN]
        name = e[:64].rstrip(b"\0").decode()
        encoding, codec = struct.unpack_from("<HB", e, 64)
        raw_len, stored_len, offset = struct.unpack_from("<QQQ", e, 80)
        out[name] = {
            "index": i,
            "encoding": encoding,
            "codec": codec,
            "raw_len": raw_len,
            "stored_len": stored_len,
            "offset": offset,
            "entry": table_offset + i * ENTRY_LEN,
        }
    return out


def flip_byte(path: Path, offset: int) -> None:
    """Flips every bit of one byte in place (the file keeps its inode and size)."""
    with open(path, "r+b") as f:
        f.seek(offset)
        b = f.read(1)
        f.seek(offset)
        f.write(bytes([b[0] ^ 0xFF]))


def damage_section(path: Path, name: str) -> None:
    s = sections(path)[name]
    flip_byte(path, s["offset"] + s["stored_len"] // 2)


def rename_section(path: Path, old: str, new: str) -> None:
    """Renames a section and fixes the table's and the trailer's checksums (a valid file results)."""
    data = bytearray(Path(path).read_bytes())
    s = sections(path)[old]
    name = new.encode().ljust(64, b"\0")
    data[s["entry"] : s["entry"] + 64] = name
    t = len(data) - TRAILER_LEN
    table_offset, _file_len, count = struct.unpack_from("<QQI", data, t)
    table = bytes(data[table_offset : table_offset + count * ENTRY_LEN])
    struct.pack_into("<I", data, t + 20, zlib.crc32(table))
    struct.pack_into("<I", data, t + 48, zlib.crc32(bytes(data[t : t + 48])))
    Path(path).write_bytes(bytes(data))

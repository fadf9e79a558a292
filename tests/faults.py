"""Shards with one sample per known fault, shared by the unit and integration fault tests."""
from __future__ import annotations

import io
import json
import struct
import tarfile
import zlib
from pathlib import Path

import numpy as np
from PIL import Image


def encode(img: Image.Image, fmt: str = "JPEG") -> bytes:
    buf = io.BytesIO()
    img.save(buf, format=fmt)
    return buf.getvalue()


def good_image(seed: int = 0, size: int = 48) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 255, (size, size, 3), dtype=np.uint8))


def bomb_png() -> bytes:
    """A valid-looking PNG whose header claims 30000 x 30000 pixels: PIL refuses it as a decompression bomb."""
    data = bytearray(encode(Image.new("L", (1, 1)), "PNG"))
    ihdr = bytearray(data[12:29])  # type + 13 bytes of IHDR data
    ihdr[4:12] = struct.pack(">II", 30000, 30000)
    data[12:29] = ihdr
    data[29:33] = struct.pack(">I", zlib.crc32(bytes(ihdr)))
    return bytes(data)


def unusual_images() -> dict[str, bytes]:
    """Images of modes and shapes a web crawl brings; each must be converted, not skipped."""
    rgba = Image.new("RGBA", (32, 32), (255, 0, 0, 0))  # fully transparent red: shows as white
    rgba.paste((0, 0, 255, 255), (0, 0, 16, 32))
    i16 = Image.fromarray(np.full((32, 32), 65535, np.uint16))  # 16-bit white
    return {
        "cmyk": encode(Image.new("CMYK", (40, 30), (0, 255, 255, 0))),
        "palette": encode(good_image(1).convert("P"), "PNG"),
        "gray16": encode(i16, "PNG"),
        "alpha": encode(rgba, "PNG"),
        "wide": encode(good_image(2, 8).resize((600, 4))),
        "tall": encode(good_image(3, 8).resize((3, 500))),
        "webp": encode(good_image(4), "WEBP"),
    }


def fault_members() -> tuple[list[tuple[str, bytes]], dict[str, int], int]:
    """Tar members (name, bytes) with one sample per fault -> (members, expected skips by reason, usable)."""
    good = encode(good_image())
    members = [("0000.jpg", good), ("0000.txt", b"a fine caption")]
    members += [("0001.jpg", good[: len(good) // 3]), ("0001.txt", b"cut-off jpeg")]
    members += [("0002.jpg", b"not an image at all"), ("0002.txt", b"garbage bytes")]
    members += [("0003.jpg", b""), ("0003.txt", b"zero-byte image")]
    members += [("0004.jpg", good)]  # no caption at all
    members += [("0005.jpg", good), ("0005.txt", b"   \n ")]
    members += [("0006.jpg", good), ("0006.txt", b"caf\xe9 latin-1 \xff")]
    members += [("0007.txt", b"caption without an image")]
    members += [("0008.png", bomb_png()), ("0008.txt", b"a bomb")]
    members += [("0009.jpg", good), ("0009.json", json.dumps({"captions": ["", " "]}).encode())]
    for i, (name, data) in enumerate(unusual_images().items()):
        ext = "webp" if name == "webp" else "png" if data[:4] == b"\x89PNG" else "jpg"
        members += [(f"01{i:02d}.{ext}", data), (f"01{i:02d}.txt", f"an image of mode {name}".encode())]
    expected = {"corrupt_image": 2, "empty_image": 1, "missing_caption": 1, "empty_caption": 2,
                "undecodable_caption": 1, "missing_image": 1, "oversized_image": 1}
    return members, expected, 1 + len(unusual_images())


def write_tar(path: Path, members: list[tuple[str, bytes]]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with tarfile.open(path, "w", format=tarfile.USTAR_FORMAT) as tar:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size, info.mtime = len(data), 0
            tar.addfile(info, io.BytesIO(data))
    return path


def truncate(path: Path, keep: float = 0.6) -> Path:
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * keep)])
    return path


def huge_png(side: int = 12000) -> bytes:
    """A real, decodable greyscale PNG of side x side black pixels, a few hundred KB on disk: at 12000 px it
    is above PIL's MAX_IMAGE_PIXELS but below twice it, where PIL only warns and decodes all 144 MP."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    z, rows = zlib.compressobj(1), b"\x00" * ((side + 1) * 500)  # 500 filter-byte-prefixed rows at a time
    idat = b"".join([z.compress(rows) for _ in range(side // 500)] + [z.flush()])
    ihdr = struct.pack(">IIBBBBB", side, side, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")


def oriented_jpeg(orientation: int, size: tuple[int, int] = (40, 20)) -> bytes:
    """A JPEG stored `size` (w, h) with left half red, right half blue, whose EXIF orientation tag says how
    to turn it for display (6: rotate 90 degrees clockwise, as phones write portrait photos)."""
    img = Image.new("RGB", size, (0, 0, 255))
    img.paste((255, 0, 0), (0, 0, size[0] // 2, size[1]))
    exif = Image.Exif()
    exif[0x0112] = orientation
    buf = io.BytesIO()
    img.save(buf, format="JPEG", exif=exif.tobytes(), quality=95)
    return buf.getvalue()

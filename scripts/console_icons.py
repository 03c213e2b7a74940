#!/usr/bin/env python3
"""Draws the console's home-screen icons (uplink-tokio/src/gateway/console/icon-192.png, icon-512.png and
icon.svg): a green rounded square with a white arrow going up. Python's standard library only; run it again
after changing the drawing, and commit what it writes."""
import os
import struct
import zlib

GREEN = (26, 127, 55)
WHITE = (255, 255, 255)
HERE = os.path.join(os.path.dirname(__file__), "..", "uplink-tokio", "src", "gateway", "console")


def inside(x, y):
    """Whether the point (x, y) in the unit square is in the arrow: a head (triangle) and a stem."""
    head = 0.22 <= y <= 0.52 and abs(x - 0.5) <= (y - 0.22) / 0.30 * 0.26
    stem = 0.50 <= y <= 0.80 and abs(x - 0.5) <= 0.085
    return head or stem


def rounded(x, y, r=0.18):
    """Whether (x, y) is in the unit square with corners rounded by r."""
    cx = min(max(x, r), 1 - r)
    cy = min(max(y, r), 1 - r)
    return (x - cx) ** 2 + (y - cy) ** 2 <= r * r


def png(size):
    rows = []
    for j in range(size):
        row = bytearray([0])
        for i in range(size):
            # Four samples a pixel, for smooth edges.
            cover = arrow = 0
            for dx, dy in ((0.25, 0.25), (0.75, 0.25), (0.25, 0.75), (0.75, 0.75)):
                x, y = (i + dx) / size, (j + dy) / size
                if rounded(x, y):
                    cover += 1
                    arrow += inside(x, y)
            if cover == 0:
                row += bytes((0, 0, 0, 0))
                continue
            t = arrow / cover
            rgb = [round(g * (1 - t) + w * t) for g, w in zip(GREEN, WHITE)]
            row += bytes(rgb + [round(255 * cover / 4)])
        rows.append(bytes(row))
    raw = zlib.compress(b"".join(rows), 9)

    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    header = struct.pack(">IIBBBBB", size, size, 8, 6, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", raw) + chunk(b"IEND", b"")


SVG = """<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 100 100">
<rect width="100" height="100" rx="18" fill="#1a7f37"/>
<path d="M50 22 L76 52 L58.5 52 L58.5 80 L41.5 80 L41.5 52 L24 52 Z" fill="#fff"/>
</svg>
"""

if __name__ == "__main__":
    for size in (192, 512):
        with open(os.path.join(HERE, f"icon-{size}.png"), "wb") as f:
            f.write(png(size))
    with open(os.path.join(HERE, "icon.svg"), "w") as f:
        f.write(SVG)

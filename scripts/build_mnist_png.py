#!/usr/bin/env python3
"""Writes MNIST (data/mnist, IDX) out as a folder of PNG files, one folder per class:

    OUT/train/<digit>/<index>.png   60,000 files
    OUT/test/<digit>/<index>.png    10,000 files

8-bit greyscale PNGs, written with the standard library only (zlib), so the image-folder path
of kiln can be trained and benchmarked on a real set people know. `--limit N` writes the first N
images of each split (the tests use small folders). The PNGs are not shipped: they are built
from the IDX files the repository holds (MNIST's licence is in data/NOTICE.md).
"""
import argparse
import gzip
import os
import struct
import zlib


def read_idx(path):
    with gzip.open(path, "rb") as f:
        data = f.read()
    magic, n = struct.unpack(">II", data[:8])
    if magic == 0x803:
        rows, cols = struct.unpack(">II", data[8:16])
        return n, rows, cols, data[16:]
    if magic == 0x801:
        return n, None, None, data[8:]
    raise SystemExit(f"{path}: not an IDX file")


def chunk(kind, body):
    crc = zlib.crc32(kind + body) & 0xFFFFFFFF
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", crc)


def png_grey(pixels, rows, cols):
    # Filter type 0 (none) before each scanline.
    raw = b"".join(b"\x00" + pixels[r * cols:(r + 1) * cols] for r in range(rows))
    header = struct.pack(">IIBBBBB", cols, rows, 8, 0, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header)
            + chunk(b"IDAT", zlib.compress(raw, 6)) + chunk(b"IEND", b""))


def write_split(images, labels, out, limit):
    n, rows, cols, pixels = read_idx(images)
    _, _, _, ys = read_idx(labels)
    n = min(n, limit) if limit else n
    size = rows * cols
    made = set()
    for i in range(n):
        folder = os.path.join(out, str(ys[i]))
        if folder not in made:
            os.makedirs(folder, exist_ok=True)
            made.add(folder)
        with open(os.path.join(folder, f"{i:05d}.png"), "wb") as f:
            f.write(png_grey(pixels[i * size:(i + 1) * size], rows, cols))
    return n


def main():
    here = os.path.dirname(os.path.abspath(__file__))
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--mnist", default=os.path.join(here, "..", "data", "mnist"))
    p.add_argument("--out", default=os.path.join(here, "..", "data", "mnist_png"))
    p.add_argument("--limit", type=int, default=0, help="first N images of each split")
    a = p.parse_args()
    for split, stem in (("train", "train"), ("test", "t10k")):
        n = write_split(os.path.join(a.mnist, f"{stem}-images.idx3-ubyte.gz"),
                        os.path.join(a.mnist, f"{stem}-labels.idx1-ubyte.gz"),
                        os.path.join(a.out, split), a.limit)
        print(f"{os.path.join(a.out, split)}: {n} PNG files")
    # Written last: the folder is whole (scripts/test builds it only when this is missing).
    with open(os.path.join(a.out, ".complete"), "w") as f:
        f.write(f"limit={a.limit}\n")


if __name__ == "__main__":
    main()

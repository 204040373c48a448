#!/usr/bin/env python3
"""Runs the image_features example on a fresh folder of generated images and checks it.

usage: check_image_features.py MAKE_IMAGES IMAGE_FEATURES COUNT BROKEN WORKERS

Writes COUNT images and BROKEN broken files with make_images into a temporary folder (removed
at the end, whatever happens), runs image_features on it and checks its output: one
`failed:` line per broken file naming the file and why, the counts, and the mean size,
which this script computes independently from the PNG (IHDR) and JPEG (SOF) headers.
"""
import os
import re
import struct
import subprocess
import sys
import tempfile

make_images, image_features, count, broken, workers = sys.argv[1:]
count, broken = int(count), int(broken)


def header_size(path):
    """(width, height) from a PNG's IHDR or a JPEG's first SOF marker."""
    with open(path, "rb") as f:
        data = f.read()
    if data.startswith(b"\x89PNG\r\n\x1a\n"):
        return struct.unpack(">II", data[16:24])
    assert data[:2] == b"\xff\xd8", path
    i = 2
    while True:
        marker, length = data[i + 1], struct.unpack(">H", data[i + 2:i + 4])[0]
        if 0xC0 <= marker <= 0xCF and marker not in (0xC4, 0xC8, 0xCC):
            height, width = struct.unpack(">HH", data[i + 5:i + 9])
            return width, height
        i += 2 + length


def run(*args):
    result = subprocess.run(args, capture_output=True, text=True, timeout=600)
    sys.stdout.write(result.stdout)
    sys.stderr.write(result.stderr)
    if result.returncode != 0:
        sys.exit(f"{args[0]} exited with {result.returncode}")
    return result.stdout


with tempfile.TemporaryDirectory(prefix="plugpool-images-") as folder:
    run(make_images, folder, str(count), str(broken))
    images = sorted(n for n in os.listdir(folder) if n.startswith("img"))
    sizes = [header_size(os.path.join(folder, n)) for n in images]
    pngs = sum(n.endswith(".png") for n in images)
    out = run(image_features, folder, workers)

# make_images cycles its broken files through: half a PNG, half a JPEG, text, empty.
reasons = [
    r"truncated PNG, the file ends early \(libpng: .+\)",
    r"truncated JPEG, the file ends early \(libjpeg: Premature end of JPEG file\)",
    r"not a PNG or JPEG file",
    r"not a PNG or JPEG file \(it is empty\)",
]
failures = "".join(
    rf"failed: imagefeatures::ImageError: .*/broken{j:05d}\.{'png' if j % 4 in (0, 2) else 'jpg'}"
    rf": {reasons[j % 4]}\n" for j in range(broken))
mean_w = sum(w for w, _ in sizes) / len(sizes)
mean_h = sum(h for _, h in sizes) / len(sizes)
expected = (
    failures +
    rf"files: {count + broken}\n"
    rf"decoded: {count} \({pngs} PNG, {count - pngs} JPEG\)\n"
    rf"failed: {broken}\n"
    rf"mean size: {mean_w:.1f} x {mean_h:.1f} pixels\n"
    r"mean brightness: [0-9]+\.[0-9]\n"
    rf"time: [0-9.]+s with {workers} workers \([0-9]+ images/s\)")
if not re.fullmatch(expected, out.strip()):
    sys.exit(f"image_features: output does not match {expected!r}")

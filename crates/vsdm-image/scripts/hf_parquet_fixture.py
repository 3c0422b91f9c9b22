"""Builds the Hugging Face parquet fixture of the vsdm-image tests from the CIFAR-10 JPEG set.

Writes, into OUT (default: crates/vsdm-image/tests/fixtures):

* ``hf-cifar10.parquet``: 24 real CIFAR-10 test images in the schema of the hub's parquet copy of CIFAR-10
  (``uoft-cs/cifar10``, ``plain_text/{train,test}-00000-of-00001.parquet``): a column ``img`` = struct
  {``bytes``: binary (PNG), ``path``: string (null, as for images the hub encoded from arrays)}, a column
  ``label`` int64, and the ``huggingface`` schema metadata with the ClassLabel names. The PNG bytes are what
  the ``datasets`` library stores for an image array (Pillow, ``format="PNG"``); row groups of 10 rows, snappy
  compression (pyarrow's defaults otherwise).
* ``hf-cifar10-pil.bin``: the same images as Pillow decodes the source JPEGs, in the binary CIFAR-10 record
  format (1 label byte, then the R, G and B planes, row 0 at the top): PNG is lossless, so a correct loader
  reproduces these bytes exactly.
* ``hf-bad/*.parquet``: small files in the same schema with one fault each, named after it: a missing
  ``label`` column (``fine_label`` instead), row 1 not an image, row 1 a 16x24 PNG, row 1 with null bytes,
  row 2 with label 10 of 10 classes; the image column as plain binary or a struct without ``bytes``, a uint64
  label of 2^63 + 5, no and 257 class names, and valid files of 256 classes (``names-256``, label 255) and of 5
  other classes (``classes-5``; these added 2026-12-07 with pyarrow 26, copied from a run into a temporary
  ``--out``, the other files left as they were).

Images: the first 6 files (sorted names) of ``test/airplane``, ``test/ship`` and ``test/truck`` (photographs
with sky at the top, for the orientation test), then the first file of each of the other 7 classes minus
``frog`` — 24 in all, every class but one present, rows interleaved so labels are not sorted.

Run (Python 3 with pyarrow and Pillow, e.g. a venv under /tmp):

    python crates/vsdm-image/scripts/hf_parquet_fixture.py \
        --tarball /work/shared/data/cifar10/cifar10-jpeg-q75.tar.gz
"""

import argparse
import io
import json
import tarfile
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from PIL import Image

CLASSES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
PLAN = {"airplane": 6, "ship": 6, "truck": 6, "automobile": 1, "bird": 1, "cat": 1, "deer": 1, "dog": 1,
        "horse": 1}


def pick(tar: tarfile.TarFile):
    """(class, member) pairs of the plan, first files by sorted name."""
    by_class = {c: [] for c in CLASSES}
    for m in tar.getmembers():
        parts = Path(m.name).parts
        if m.isfile() and len(parts) == 3 and parts[0] == "test" and parts[1] in by_class:
            by_class[parts[1]].append(m)
    chosen = []
    for c, n in PLAN.items():
        members = sorted(by_class[c], key=lambda m: m.name)[:n]
        assert len(members) == n, f"test/{c}: only {len(members)} files"
        chosen.append([(c, m) for m in members])
    # Interleave the classes so that the labels are not sorted.
    rows = []
    while any(chosen):
        for group in chosen:
            if group:
                rows.append(group.pop(0))
    return rows


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tarball", required=True, help="cifar10-jpeg-q75.tar.gz (train/ and test/ class folders)")
    ap.add_argument("--out", default=str(Path(__file__).resolve().parent.parent / "tests" / "fixtures"))
    args = ap.parse_args()
    out = Path(args.out)

    pngs, labels, reference = [], [], bytearray()
    with tarfile.open(args.tarball) as tar:
        for cls, member in pick(tar):
            rgb = np.asarray(Image.open(io.BytesIO(tar.extractfile(member).read())).convert("RGB"))
            assert rgb.shape == (32, 32, 3), (member.name, rgb.shape)
            buf = io.BytesIO()
            Image.fromarray(rgb).save(buf, format="PNG")
            pngs.append(buf.getvalue())
            label = CLASSES.index(cls)
            labels.append(label)
            reference.append(label)
            reference += rgb.transpose(2, 0, 1).tobytes()
            print(f"row {len(labels) - 1:2d}: {member.name} label {label} png {len(buf.getvalue())} bytes")

    features = {"img": {"_type": "Image"}, "label": {"names": CLASSES, "_type": "ClassLabel"}}
    schema = pa.schema(
        [
            pa.field("img", pa.struct([pa.field("bytes", pa.binary()), pa.field("path", pa.string())])),
            pa.field("label", pa.int64()),
        ],
        metadata={"huggingface": json.dumps({"info": {"features": features}})},
    )
    table = pa.table(
        {"img": [{"bytes": b, "path": None} for b in pngs], "label": labels},
        schema=schema,
    )
    pq.write_table(table, out / "hf-cifar10.parquet", row_group_size=10, compression="snappy")
    (out / "hf-cifar10-pil.bin").write_bytes(bytes(reference))
    write_bad(out / "hf-bad", pngs[0], schema)
    print(f"{out / 'hf-cifar10.parquet'}: {(out / 'hf-cifar10.parquet').stat().st_size} bytes, {len(labels)} rows")


def write_bad(folder: Path, png: bytes, schema: pa.Schema):
    """One small parquet file per fault, each otherwise in the hub's schema."""
    folder.mkdir(exist_ok=True)
    buf = io.BytesIO()
    Image.new("RGB", (16, 24), (200, 30, 30)).save(buf, format="PNG")
    small = buf.getvalue()

    def write(name, imgs, labels, schema=schema, label_name="label"):
        table = pa.table({"img": [{"bytes": b, "path": None} for b in imgs], label_name: labels}, schema=schema)
        pq.write_table(table, folder / name, write_statistics=False)

    other = pa.schema([schema.field("img"), pa.field("fine_label", pa.int64())], metadata=schema.metadata)
    write("columns.parquet", [png], [0], schema=other, label_name="fine_label")
    write("row1-not-an-image.parquet", [png, b"not a png"], [0, 1])
    write("row1-16x24.parquet", [png, small], [0, 1])
    write("row1-null-bytes.parquet", [png, None], [0, 1])
    write("row2-label-10.parquet", [png, png, png], [0, 9, 10])
    # The image column not the hub's Image struct: plain binary, a struct without `bytes`.
    binary = pa.schema([pa.field("img", pa.binary()), schema.field("label")], metadata=schema.metadata)
    pq.write_table(pa.table({"img": [png], "label": [0]}, schema=binary), folder / "img-binary.parquet")
    no_bytes = pa.schema(
        [pa.field("img", pa.struct([pa.field("path", pa.string())])), schema.field("label")],
        metadata=schema.metadata,
    )
    pq.write_table(
        pa.table({"img": [{"path": "a.png"}], "label": [0]}, schema=no_bytes), folder / "img-no-bytes.parquet"
    )
    # A uint64 label beyond any signed index.
    unsigned = pa.schema([schema.field("img"), pa.field("label", pa.uint64())], metadata=schema.metadata)
    write("row0-label-2e63.parquet", [png], [2**63 + 5], schema=unsigned)

    # ClassLabel names: none, 257, and a valid file of 5 other classes (shards of one split must agree).
    def named(names):
        features = {"img": {"_type": "Image"}, "label": {"names": names, "_type": "ClassLabel"}}
        return schema.with_metadata({"huggingface": json.dumps({"info": {"features": features}})})

    write("names-0.parquet", [png], [0], schema=named([]))
    write("names-257.parquet", [png], [0], schema=named([f"c{i}" for i in range(257)]))
    write("names-256.parquet", [png], [255], schema=named([f"c{i}" for i in range(256)]))
    write("classes-5.parquet", [png, png], [0, 4], schema=named(["a", "b", "c", "d", "e"]))


if __name__ == "__main__":
    main()

"""Regenerate what qzoo ships in data/ from the shared data folder, and data/MANIFEST.json.

    python data/make_packs.py [DATA_ROOT]     # default: $QZOO_DATA or ../shared/data

* cifar10-jpeg75-test.npz: the test split of cifar10-jpeg75.npz, same format and bytes.
* cwru-0hp-test.npz: the float32 test segment (last 20%) of each CWRU recording.
* dsb2018-96-split.json: the fixed seeded 80/10/10 split (written only if absent: it is
  fixed; the script checks that the committed one is what the rule gives).
* dsb2018-96-test.npz: the test split's images and binarised masks.
"""
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from qzoo.data import cifar, cwru, segmentation  # noqa: E402
from qzoo.data._common import data_root, sha256_file  # noqa: E402


def main(root=None):
    base = data_root(root)
    out = Path(__file__).resolve().parent  # this checkout's data/
    sources = {}
    src = base / cifar.JPEG_FILE
    cifar.write_test_pack(src, out / cifar.TEST_PACK)
    sources[cifar.TEST_PACK] = dict(source=src.name, source_sha256=sha256_file(src),
                                    made_by='qzoo.data.cifar.write_test_pack (test_* keys, header, classes copied)')
    cwru.write_test_pack(base / cwru.FOLDER, out / cwru.TEST_PACK)
    sources[cwru.TEST_PACK] = dict(source=cwru.FOLDER + '/*.mat (per-file sha256 inside the pack)',
                                   made_by='qzoo.data.cwru.write_test_pack (X<id>_DE_time as float32, '
                                           'samples [floor(0.8 L), L))')
    folder = base / segmentation.DSB_FOLDER
    doc = segmentation.make_dsb_split(segmentation.dsb_ids(folder), seed=0)
    split_path = out / segmentation.DSB_SPLIT_FILE
    if split_path.exists():
        if json.loads(split_path.read_text()) != doc:
            raise SystemExit(f'{split_path} differs from what the split rule gives now; it is fixed: not overwriting')
    else:
        split_path.write_text(json.dumps(doc, indent=1) + '\n')
    sources[segmentation.DSB_SPLIT_FILE] = dict(source=segmentation.DSB_FOLDER + '/images/*.png (ids)',
                                                made_by='qzoo.data.segmentation.make_dsb_split(ids, seed=0)')
    segmentation.write_dsb_test_pack(base, out / segmentation.DSB_TEST_PACK)
    sources[segmentation.DSB_TEST_PACK] = dict(source=segmentation.DSB_FOLDER + ' (per-file sha256 inside the pack)',
                                               made_by='qzoo.data.segmentation.write_dsb_test_pack')
    files = {}
    for name, meta in sources.items():
        p = out / name
        files[name] = dict(sha256=sha256_file(p), bytes=p.stat().st_size, **meta)
    (out / 'MANIFEST.json').write_text(json.dumps({'files': files}, indent=1) + '\n')
    for name, meta in files.items():
        print(f'{name}: {meta["bytes"]:,} bytes, sha256 {meta["sha256"][:16]}...')


if __name__ == '__main__':
    main(sys.argv[1] if len(sys.argv) > 1 else None)

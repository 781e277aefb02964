#!/usr/bin/env python
"""Evaluate weights on a named dataset split: one JSON line per model on stdout and a CSV
with timm's results columns (model, top1, top1_err, top5, top5_err, param_count, img_size,
crop_pct, interpolation) plus dataset, split, neuron, macs, weights, sha256, ...

    python eval/validate.py --data cifar10-jpeg75 --weights qresnet20.cifar10-jpeg75 akamaster/resnet20
    python eval/validate.py --data cwru --data-arg snr_db=-6 --weights runs/qcnn-cwru-s0 hf-hub:qzoo/qcnn.x

--weights takes: a published name, a run/checkpoint folder, a .safetensors file, hf-hub:org/name[@rev],
an https URL of a .safetensors file, or an external registry name (qzoo.external, e.g. akamaster/resnet20).
"""
import argparse
import csv
import json
import sys
from pathlib import Path

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from qzoo.evaluation import QZOO_COLUMNS, TIMM_COLUMNS, validate  # noqa: E402


def write_csv(rows, path) -> None:
    cols = TIMM_COLUMNS + [c for c in QZOO_COLUMNS if any(c in r for r in rows)]
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, 'w', newline='') as f:
        w = csv.DictWriter(f, fieldnames=cols, extrasaction='ignore')
        w.writeheader()
        for r in rows:
            w.writerow({c: r.get(c, '') for c in cols})


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument('--data', required=True, help='dataset name (qzoo.data.list_datasets())')
    ap.add_argument('--data-arg', action='append', default=[], metavar='KEY=VALUE', help='dataset option')
    ap.add_argument('--split', default='test', choices=['train', 'val', 'test'])
    ap.add_argument('--weights', nargs='+', required=True)
    ap.add_argument('--results-file', default='results/validate.csv')
    ap.add_argument('--device', default='cuda' if __import__('torch').cuda.is_available() else 'cpu')
    a = ap.parse_args(argv)
    data_args = {}
    for item in a.data_arg:
        k, _, v = item.partition('=')
        data_args[k] = yaml.safe_load(v)
    rows = []
    for spec in a.weights:
        row = validate(spec, a.data, a.split, data_args, device=a.device)
        print(json.dumps(row), flush=True)
        rows.append(row)
    write_csv(rows, a.results_file)
    return 0


if __name__ == '__main__':
    sys.exit(main())

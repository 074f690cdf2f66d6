"""The golden files the repository carries: their bytes, their provenance page, and that every one is used."""
import glob
import hashlib
import os
import re

from conftest import FIXTURES, ROOT


def test_fixture_bytes_match_sha256sums():
    sums = dict(reversed(line.split()) for line in open(os.path.join(FIXTURES, 'SHA256SUMS')) if line.strip())
    files = sorted(os.path.basename(p) for p in glob.glob(os.path.join(FIXTURES, '*.npz')))
    assert sorted(sums) == files, 'SHA256SUMS and the .npz files in tests/fixtures differ'
    for f in files:
        with open(os.path.join(FIXTURES, f), 'rb') as fh:
            assert hashlib.sha256(fh.read()).hexdigest() == sums[f], f'{f} changed: its bytes are not the recorded ones'


def test_every_fixture_has_provenance_and_a_test():
    readme = open(os.path.join(FIXTURES, 'README.md'), encoding='utf-8').read()
    tests = ''.join(open(p, encoding='utf-8').read() for p in glob.glob(os.path.join(ROOT, 'tests', 'test_*.py')))
    for path in glob.glob(os.path.join(FIXTURES, '*.npz')):
        name = os.path.basename(path)[:-4]
        assert f'| `{name}.npz` |' in readme, f'{name}.npz has no row in tests/fixtures/README.md'
        assert re.search(rf"""(fixture\(|['"]){name}['"]""", tests), f'no test loads {name}.npz'

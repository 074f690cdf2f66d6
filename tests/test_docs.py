"""README.md and docs/ stay true to the code: every shell block parses, every command's flags exist for the program it
runs, every flag the text names exists somewhere, every link to a page of docs/ or a file of the repository resolves,
and nothing cites material a user cannot see."""
import glob
import importlib
import os
import re
import shlex
import subprocess

import pytest

import run_sample

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PAGES = [os.path.join(ROOT, 'README.md')] + sorted(glob.glob(os.path.join(ROOT, 'docs', '**', '*.md'), recursive=True))
# modules run with python -m whose flags the docs may name (each has get_parser() or main(argv) with argparse)
MODULES = ['voc12.make_cls_labels', 'voc12.synthetic', 'coco14.make_cls_labels', 'coco14.synthetic', 'misc.check_data',
           'misc.visualize', 'misc.stages', 'misc.figure', 'tools.ablation', 'tools.amp_check', 'tools.cam_fidelity',
           'tools.stage_study', 'tools.mutate', 'tools.pretrain_backbone', 'tools.benchmark', 'tools.full_plan',
           'tools.device_check', 'tools.walk_oracle']
# flags of other programs the docs show: torchrun's, sbatch's, pip's, pytest's
FOREIGN = {'--standalone', '--nproc_per_node', '--nnodes', '--node_rank', '--master_addr', '--master_port',
           '--rdzv_backend', '--rdzv_endpoint', '--rdzv_id', '--index-url', '--job-name', '--nodes', '--ntasks-per-node',
           '--gpus-per-node', '--cpus-per-task', '--time', '--kill-on-bad-exit', '--log-dir', '--log', '--no-deps',
           '--no-binary'}
# run_demo.sh's own options: the patterns of its argument loop (`--quick) QUICK=True; shift ;;`)
DEMO_OPTIONS = set(re.findall(r'^\s+(--[a-z]+)\)', open(os.path.join(ROOT, 'run_demo.sh'), encoding='utf-8').read(),
                              re.M))


def blocks(path):
    text = open(path, encoding='utf-8').read()
    return [m.group(2) for m in re.finditer(r'```(\w*)\n(.*?)```', text, re.S) if m.group(1) in ('bash', 'sh')]


def flags_of_module(name):
    """The flags a module's command line takes: its parser's, or what its --help prints (in this process)."""
    import contextlib
    import io
    mod = importlib.import_module(name)
    if hasattr(mod, 'get_parser'):
        return {s for a in mod.get_parser()._actions for s in a.option_strings}
    out = io.StringIO()
    with contextlib.redirect_stdout(out), pytest.raises(SystemExit):
        mod.main(['--help'])
    return set(re.findall(r'(?<![\w-])(--[a-z][\w-]*)', out.getvalue()))


@pytest.fixture(scope='module')
def known_flags():
    flags = {'run_sample': {s for a in run_sample.get_parser()._actions for s in a.option_strings}}
    for m in MODULES:
        flags[m] = flags_of_module(m)
    return flags


def commands(block):
    """(program, tokens after it) of each python/torchrun/bash command of a shell block."""
    text = block.replace('\\\n', ' ')
    out = []
    for line in text.splitlines():
        line = line.split(' #')[0].strip()
        if not line or line.startswith('#'):
            continue
        try:
            tokens = shlex.split(line)
        except ValueError:
            continue
        for i, t in enumerate(tokens):
            if t.endswith('run_sample.py'):
                out.append(('run_sample', tokens[i + 1:]))
                break
            if t == '-m' and i + 1 < len(tokens) and tokens[i + 1] in MODULES:
                out.append((tokens[i + 1], tokens[i + 2:]))
                break
            if t in ('run_voc.sh', 'run_coco.sh'):
                out.append(('run_sample', tokens[i + 1:]))  # extra arguments go to run_sample.py
                break
            if t == 'run_demo.sh':
                out.append(('run_demo', tokens[i + 1:]))
                break
    return out


@pytest.mark.parametrize('page', PAGES, ids=lambda p: os.path.relpath(p, ROOT))
def test_shell_blocks_parse_and_their_flags_exist(page, known_flags):
    for block in blocks(page):
        res = subprocess.run(['bash', '-n'], input=block, capture_output=True, text=True)
        assert res.returncode == 0, f'{page}: a shell block does not parse: {res.stderr}\n{block}'
        for prog, tokens in commands(block):
            given = [t.split('=')[0] for t in tokens if t.startswith('--')]
            allowed = DEMO_OPTIONS if prog == 'run_demo' else known_flags[prog]
            unknown = sorted(set(given) - allowed - FOREIGN)
            assert not unknown, f'{os.path.basename(page)}: {prog} has no {unknown}\n{block}'


@pytest.mark.parametrize('page', PAGES, ids=lambda p: os.path.relpath(p, ROOT))
def test_every_flag_named_exists_and_links_resolve(page, known_flags):
    text = open(page, encoding='utf-8').read()
    every = set().union(*known_flags.values()) | FOREIGN | DEMO_OPTIONS | {'--help', '--fast', '--only', '--list'}
    named = set(re.findall(r'(?<![\w-])(--[a-z][a-z0-9_-]*)', text))
    # a group written as --seg_crf_* names every flag with that prefix
    unknown = sorted(f for f in named if f not in every and not (f.endswith('_') and any(g.startswith(f) for g in every)))
    assert not unknown, f'{os.path.basename(page)} names flags nothing has: {unknown}'
    for target, anchor in re.findall(r'\]\(([^)#\s]*)(?:#([^)]*))?\)', text):
        if target.startswith(('http://', 'https://', 'mailto:')):
            continue
        path = os.path.normpath(os.path.join(os.path.dirname(page), target)) if target else page
        assert os.path.exists(path), f'{os.path.basename(page)} links to {target}, which does not exist'
        if anchor:
            assert anchor in anchors(path), f'{os.path.basename(page)} links to {target}#{anchor}: no such heading'


def anchors(path):
    """The anchors GitHub gives the headings of a Markdown page."""
    text = re.sub(r'```.*?```', '', open(path, encoding='utf-8').read(), flags=re.S)
    heads = re.findall(r'^#+\s+(.*?)\s*$', text, re.M)
    return {re.sub(r'[^\w\- ]', '', h.lower()).replace(' ', '-') for h in heads}


@pytest.mark.parametrize('page', PAGES, ids=lambda p: os.path.relpath(p, ROOT))
def test_pages_cite_nothing_a_user_cannot_see(page):
    text = open(page, encoding='utf-8').read()
    for pattern in (r'\bSPEC\b', r'\bSTYLE\.md\b', r'\bissue \d+', r'\bwas lent\b', r'\banother day\b',
                    r'\bhidden data\b', r'\bthe old default\b', r'\bthe previous demo\b', r'\.\./shared'):
        assert not re.search(pattern, text), f'{os.path.basename(page)} cites {pattern}'


def test_code_messages_cite_nothing_a_user_cannot_see():
    for path in glob.glob(os.path.join(ROOT, '**', '*.py'), recursive=True) + glob.glob(os.path.join(ROOT, '*.sh')):
        if '.venv' in path or os.sep + 'tests' + os.sep in path:
            continue
        text = open(path, encoding='utf-8').read()
        assert not re.search(r'\bSPEC\b|\bissue \d+|\bSTYLE \d', text), path


def test_module_list_is_complete():
    """Every command-line module of the project (one with a __main__ block) is known to the flag check."""
    found = set()
    for path in glob.glob(os.path.join(ROOT, '*', '*.py')):
        rel = os.path.relpath(path, ROOT)
        if rel.split(os.sep)[0] in ('tests', '.venv') or "if __name__ == '__main__':" not in open(path).read():
            continue
        found.add(rel[:-3].replace(os.sep, '.'))
    assert found == set(MODULES), (sorted(found - set(MODULES)), sorted(set(MODULES) - found))

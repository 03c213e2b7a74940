#!/usr/bin/env python3
"""Import cycles between the files of Rust crates: prints each cycle and exits 1 if there is any.

Usage: import_cycles.py CRATE_DIR [...]

Every file under CRATE_DIR/src (but src/bin) is a module: `src/a/b.rs` and `src/a/b/mod.rs` are `a::b`, and
`lib.rs` is the crate's root. A module depends on another when its code outside tests names it:
- `mod x;` declares a child: the parent depends on it (a folder's `mod.rs` names its rooms);
- `use crate::a::b::…`, `crate::a::b::…` anywhere in code, `super::…` and `self::…` paths, and the members of
  `use crate::{a, b::c}` groups, each resolved to the longest module it names (`crate::a::b::Item` is `a::b`
  when that file exists, else `a`).

Comments (doc comments too: a link is not an import) and test modules (`#[cfg(test)] mod … { … }`, or any
`cfg` naming `test`) are left out.
Strongly connected sets of two or more modules are cycles. So a child never names its parent (nor the
crate root, for top-level modules): what it needs lives in a sibling room, and the parent only declares and
re-exports.
"""
import os
import re
import sys


def modules(src):
    out = {}
    for root, _, names in os.walk(src):
        if os.path.relpath(root, src).split(os.sep)[0] == 'bin':
            continue
        for name in names:
            if name.endswith('.rs'):
                path = os.path.join(root, name)
                rel = os.path.relpath(path, src)[:-3].split(os.sep)
                if rel[-1] in ('mod', 'lib', 'main'):
                    rel = rel[:-1]
                out[tuple(rel)] = path
    return out


def strip(text):
    text = re.sub(r'/\*.*?\*/', '', text, flags=re.S)
    text = re.sub(r'//[^\n]*', '', text)
    out, i = [], 0
    for m in re.finditer(r'#\[cfg\([^\]]*\btest\b[^\]]*\)\]\s*(?:#\[[^\]]*\]\s*)*(?:pub(?:\([^)]*\))?\s+)?mod\s+\w+\s*(\{|;)', text):
        if m.start() < i:
            continue
        out.append(text[i:m.start()])
        if m.group(1) == ';':
            i = m.end()
            continue
        depth, j = 1, m.end()
        while j < len(text) and depth:
            depth += {'{': 1, '}': -1}.get(text[j], 0)
            j += 1
        i = j
    out.append(text[i:])
    return ''.join(out)


def resolve(mods, parts):
    for k in range(len(parts), -1, -1):
        if tuple(parts[:k]) in mods:
            return tuple(parts[:k])
    return None


def edges_of(mods, module, text):
    deps = set()

    def add(parts):
        target = resolve(mods, parts)
        if target is not None and target != module:
            deps.add(target)

    for name in re.findall(r'^\s*(?:pub(?:\([^)]*\))?\s+)?mod\s+(\w+)\s*;', text, flags=re.M):
        add(list(module) + [name])
    for path in re.findall(r'\bcrate((?:::\w+)+)', text):
        add([p for p in path.split('::') if p])
    for path in re.findall(r'\bsuper((?:::\w+)+)', text):
        add(list(module[:-1]) + [p for p in path.split('::') if p])
    for path in re.findall(r'\bself((?:::\w+)+)', text):
        add(list(module) + [p for p in path.split('::') if p])
    for base, group in re.findall(r'\b(crate|super|self)::\{([^}]*)\}', text):
        prefix = {'crate': [], 'super': list(module[:-1]), 'self': list(module)}[base]
        for item in group.split(','):
            item = item.strip()
            if item:
                add(prefix + [p.strip() for p in item.split('::') if p.strip() and p.strip() != '*'])
    return deps


def cycles(crate):
    mods = modules(os.path.join(crate, 'src'))
    graph = {m: edges_of(mods, m, strip(open(p, encoding='utf-8').read())) for m, p in mods.items()}
    index, low, stack, on, found, counter = {}, {}, [], set(), [], [0]

    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in sorted(graph[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                found.append(sorted(os.path.relpath(mods[x], crate) for x in comp))

    sys.setrecursionlimit(10000)
    for v in sorted(mods):
        if v not in index:
            visit(v)
    return found


def main(crates):
    total = 0
    for crate in crates:
        for comp in cycles(crate):
            print(f"{crate}: " + ' <-> '.join(comp))
            total += 1
    print(f"import cycles: {total}")
    return 1 if total else 0


if __name__ == '__main__':
    sys.exit(main(sys.argv[1:]))

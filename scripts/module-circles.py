#!/usr/bin/env python3
"""Lists import circles between the modules (files) of src/: a `use` or a path in code from
module A to module B and from B back to A, directly or around a longer loop. A module's uses of
its own ancestors (`super::` items of the folder's mod.rs) are not counted; its uses of
siblings, cousins and descendants are. Also lists files of 700 lines or more under src/,
tests/ and benches/. Exit 1 when there is either."""
import os, re, sys

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")
SRC = os.path.join(ROOT, "src")

def module_of(path):
    rel = os.path.relpath(path, SRC)[:-3].split(os.sep)
    if rel[-1] in ("mod", "lib", "main"):
        rel = rel[:-1]
    return tuple(rel)

files = {}
for d, _, fs in os.walk(SRC):
    for f in fs:
        if f.endswith(".rs"):
            p = os.path.join(d, f)
            files[module_of(p)] = p
modules = set(files)

def resolve(path):
    """The longest module prefix of `path` that is a file module."""
    for n in range(len(path), 0, -1):
        if tuple(path[:n]) in modules:
            return tuple(path[:n])
    return None

PATH = re.compile(r"\b((?:crate|super|self)(?:::[A-Za-z_][A-Za-z0-9_]*)+)")
USE_GROUP = re.compile(r"\buse\s+((?:crate|super|self)(?:::[A-Za-z_][A-Za-z0-9_]*)*)::\{([^;]*)\};", re.S)

def strip_comments(text):
    text = re.sub(r"//[^\n]*", "", text)
    return re.sub(r"/\*.*?\*/", "", text, flags=re.S)

def cfg_test_removed(text):
    # Drop `#[cfg(test)] mod tests { ... }` blocks: test code does not make circles.
    out, i = [], 0
    for m in re.finditer(r"#\[cfg\(test\)\]\s*mod\s+\w+\s*\{", text):
        if m.start() < i:
            continue
        out.append(text[i:m.start()])
        depth, j = 1, m.end()
        while j < len(text) and depth:
            depth += {"{": 1, "}": -1}.get(text[j], 0)
            j += 1
        i = j
    out.append(text[i:])
    return "".join(out)

def absolute(module, segments, is_file_mod):
    base = list(module)
    segs = list(segments)
    if segs[0] == "crate":
        base, segs = [], segs[1:]
    else:
        # `self` is the module itself; `super` is its parent.
        while segs and segs[0] in ("self", "super"):
            if segs[0] == "super":
                base = base[:-1]
            segs = segs[1:]
    return tuple(base + segs)

edges = {m: set() for m in modules}
for module, path in files.items():
    text = cfg_test_removed(strip_comments(open(path).read()))
    paths = []
    for m in USE_GROUP.finditer(text):
        prefix = m.group(1).split("::")
        for item in re.split(r",", m.group(2)):
            item = item.strip().split(" as ")[0].split("::{")[0]
            if item and item != "self":
                paths.append(prefix + item.split("::"))
            elif item == "self":
                paths.append(prefix)
    for m in PATH.finditer(text):
        paths.append(m.group(1).split("::"))
    for p in paths:
        target = resolve(absolute(module, p, True))
        if target is None or target == module:
            continue
        if module[: len(target)] == target:  # an ancestor
            continue
        edges[module].add(target)

# Tarjan's strongly connected components.
index, low, stack, on, sccs, counter = {}, {}, [], set(), [], [0]
sys.setrecursionlimit(10000)
def visit(v):
    index[v] = low[v] = counter[0]; counter[0] += 1
    stack.append(v); on.add(v)
    for w in edges[v]:
        if w not in index:
            visit(w); low[v] = min(low[v], low[w])
        elif w in on:
            low[v] = min(low[v], index[w])
    if low[v] == index[v]:
        comp = []
        while True:
            w = stack.pop(); on.discard(w); comp.append(w)
            if w == v:
                break
        if len(comp) > 1:
            sccs.append(comp)
for v in sorted(modules):
    if v not in index:
        visit(v)

name = lambda m: "/".join(m) or "lib"
status = 0
for comp in sccs:
    status = 1
    members = sorted(comp)
    print("circle:", " <-> ".join(name(m) for m in members))
    for a in members:
        for b in sorted(edges[a] & set(members)):
            print(f"    {name(a)} uses {name(b)}")
long = []
for top in ("src", "tests", "benches"):
    for d, _, fs in os.walk(os.path.join(ROOT, top)):
        if "target" in d:
            continue
        for f in fs:
            if f.endswith(".rs"):
                p = os.path.join(d, f)
                n = sum(1 for _ in open(p))
                if n >= 700:
                    long.append((n, os.path.relpath(p, ROOT)))
for n, p in sorted(long, reverse=True):
    status = 1
    print(f"long file: {p} ({n} lines)")
if status == 0:
    print("module-circles: no import circle, no file of 700 lines or more")
sys.exit(status)

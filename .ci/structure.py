#!/usr/bin/env python3
"""Structure checks for src/ (issue 11), run by .ci/run:

1. No import cycle between modules: the graph of `crate::` paths (in `use` items and inline
   paths), at the granularity of top-level modules (`session`, `queue`, ...) and of files.
2. No function longer than 120 lines.
3. `config/` imports no other module of the crate.
4. Only the session driver and the listener import tokio's net and io types.

Prints every problem and exits 1 if there is one.
"""
import os
import re
import sys

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "src")
MAX_FN_LINES = 120
# Files allowed to use tokio::net / tokio::io (sockets and byte streams): the listener and
# everything under it, the session driver, the outbound SMTP driver, the HTTPS client of
# MTA-STS and TLS-RPT (delivery/https), and the Dovecot backend
# (its auth socket).
NET_IO_ALLOWED = {"session/driver", "listener", "delivery/outbound", "delivery/https", "auth/backend/dovecot"}


def net_io_allowed(mod):
    return mod in NET_IO_ALLOWED or mod.startswith("listener/")

problems = []


def module_of(path):
    rel = os.path.relpath(path, ROOT)[:-3]
    if rel.endswith("/mod"):
        rel = rel[:-4]
    return rel


def strip_comments(text):
    """Comments removed and string and char literals emptied (their braces do not count),
    newlines kept so line numbers stay right."""
    out = []
    i, n = 0, len(text)
    while i < n:
        c = text[i]
        if text.startswith("//", i):
            j = text.find("\n", i)
            i = n if j < 0 else j
        elif text.startswith("/*", i):
            j = text.find("*/", i + 2)
            j = n if j < 0 else j + 2
            out.append("\n" * text.count("\n", i, j))
            i = j
        elif re.match(r'(b?r)(#*)"', text[i:i + 40]) and (i == 0 or not (text[i - 1].isalnum() or text[i - 1] == "_")):
            m = re.match(r'(b?r)(#*)"', text[i:])
            end = '"' + m.group(2)
            j = text.find(end, i + m.end())
            j = n if j < 0 else j + len(end)
            out.append('""' + "\n" * text.count("\n", i, j))
            i = j
        elif c == '"':
            j = i + 1
            while j < n and text[j] != '"':
                j += 2 if text[j] == "\\" else 1
            out.append('""' + "\n" * text.count("\n", i, j))
            i = j + 1
        elif c == "'" and re.match(r"'(\\.|[^\\'])'", text[i:i + 4]):
            m = re.match(r"'(\\.|[^\\'])'", text[i:])
            out.append("' '")
            i += m.end()
        else:
            out.append(c)
            i += 1
    return "".join(out)


def without_tests(text):
    # Drop `#[cfg(test)] mod tests { ... }` blocks: test code may import what it likes.
    out = []
    i = 0
    while True:
        m = re.search(r"#\[cfg\(test\)\]\s*mod\s+\w+\s*\{", text[i:])
        if not m:
            out.append(text[i:])
            break
        start = i + m.start()
        out.append(text[i:start])
        j = i + m.end()
        depth = 1
        while j < len(text) and depth:
            if text[j] == "{":
                depth += 1
            elif text[j] == "}":
                depth -= 1
            j += 1
        i = j
    return "".join(out)


files = []
for dirpath, _, names in os.walk(ROOT):
    for name in names:
        if name.endswith(".rs"):
            files.append(os.path.join(dirpath, name))
files.sort()
modules = {module_of(f) for f in files if not module_of(f).startswith("bin/")}
tops = {m.split("/")[0] for m in modules} - {"lib", "main"}


def resolve(mod, target):
    """The longest known module that `crate::target` names."""
    parts = target.split("::")
    for n in range(len(parts), 0, -1):
        cand = "/".join(parts[:n])
        if cand in modules:
            return cand
    return None


file_edges = {}
for f in files:
    mod = module_of(f)
    if mod.startswith("bin/") or mod in ("main", "lib"):
        continue
    raw = open(f, encoding="utf-8").read()
    text = without_tests(strip_comments(raw))
    deps = set()
    # `use crate::a::{b, c::d}` and inline `crate::a::b` paths.
    for m in re.finditer(r"\bcrate::((?:\w+::)*\w+)(::\{([^;]*?)\})?", text):
        base = m.group(1)
        inner = m.group(3)
        if inner:
            for item in re.split(r"[,\s]+", re.sub(r"\{|\}", " ", inner)):
                item = item.strip()
                if item and item not in ("self",) and re.match(r"^\w", item):
                    t = resolve(mod, base + "::" + item)
                    if t:
                        deps.add(t)
        t = resolve(mod, base)
        if t:
            deps.add(t)
    # `super::x` from a file in a directory.
    parent = mod.rsplit("/", 1)[0] if "/" in mod else None
    if parent:
        for m in re.finditer(r"\bsuper::(\w+)", text):
            t = resolve(mod, parent.replace("/", "::") + "::" + m.group(1))
            if t:
                deps.add(t)
    deps.discard(mod)
    file_edges[mod] = deps

    if mod.split("/")[0] == "config":
        outside = sorted(d for d in deps if d.split("/")[0] != "config")
        if outside:
            problems.append(f"src/{mod}.rs: config imports {', '.join(outside)}")
    if not net_io_allowed(mod) and re.search(r"\btokio::(net|io)\b", text):
        problems.append(f"src/{mod}.rs: uses tokio::net or tokio::io (only {sorted(NET_IO_ALLOWED)} and listener/* may)")

    # Function lengths (tests included).
    lines = strip_comments(raw).split("\n")
    for i, line in enumerate(lines):
        m = re.match(r"\s*(pub(\([^)]*\))?\s+)?(const\s+)?(async\s+)?(unsafe\s+)?fn\s+(\w+)", line)
        if not m:
            continue
        depth = 0
        started = False
        for j in range(i, len(lines)):
            for ch in lines[j]:
                if ch == "{":
                    depth += 1
                    started = True
                elif ch == "}":
                    depth -= 1
            if started and depth == 0:
                break
            if not started and lines[j].rstrip().endswith(";"):
                break
        length = j - i + 1
        if started and length > MAX_FN_LINES:
            problems.append(f"src/{mod}.rs:{i + 1}: fn {m.group(6)} is {length} lines (max {MAX_FN_LINES})")


def find_cycles(edges, label):
    index = {}
    low = {}
    stack = []
    on = set()
    out = []
    counter = [0]
    sys.setrecursionlimit(10000)

    def strong(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in edges.get(v, ()):
            if w not in index:
                strong(w)
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
                out.append(sorted(comp))

    for v in sorted(edges):
        if v not in index:
            strong(v)
    for comp in out:
        detail = "; ".join(
            f"{a} -> {b}" for a in comp for b in sorted(edges.get(a, ())) if b in comp
        )
        problems.append(f"import cycle between {label}: {', '.join(comp)} ({detail})")


find_cycles(file_edges, "files")
top_edges = {}
for a, deps in file_edges.items():
    ta = a.split("/")[0]
    for b in deps:
        tb = b.split("/")[0]
        if ta != tb:
            top_edges.setdefault(ta, set()).add(tb)
find_cycles(top_edges, "top-level modules")

for p in problems:
    print(p)
if problems:
    print(f"{len(problems)} structure problem(s)")
    sys.exit(1)
print("structure: ok")

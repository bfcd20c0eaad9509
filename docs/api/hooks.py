"""MkDocs hook (named under `hooks:` in mkdocs.yml): the repository's top-level files on the site.

README.md becomes the front page (`index.md`), BENCHMARKS.md a page of its own and LICENSE a plain file. They are read
from the repository root when the site is built, so no copy of them lives in docs/ and none can go stale.

Their links are written for reading the repository (the README links `docs/maskgit.md`, the pages under docs/ link
`../BENCHMARKS.md`), and on the site the pages of docs/ sit at the root. Before each page is rendered, every relative
link in it is resolved against the page's place in the repository and rewritten to the same file's place on the site.
A link to a file that is not on the site is left as it is, so that a strict build reports it.

One difference between GitHub's Markdown and Python-Markdown is bridged too: a list that starts right under a
paragraph line is a list on GitHub but part of the paragraph in Python-Markdown, so a blank line is put before it.
"""

from __future__ import annotations

import posixpath
import re
from pathlib import Path

from mkdocs.exceptions import PluginError
from mkdocs.structure.files import File

# Top-level files of the repository -> their path on the site.
ROOT_FILES = {"README.md": "index.md", "BENCHMARKS.md": "BENCHMARKS.md", "LICENSE": "LICENSE"}

# An inline link or image target: `](target)` or `](target "title")`.
_LINK = re.compile(r"(\]\()(<[^>]*>|[^)\s]+)")
_FENCE = re.compile(r"^\s*(```|~~~)")
_LIST_ITEM = re.compile(r"^([-*+]|1[.)]) ")  # what may interrupt a paragraph in GitHub's Markdown (CommonMark)


def _root(config) -> Path:
    return Path(config.config_file_path).resolve().parent


def _docs_prefix(config) -> str:
    return Path(config.docs_dir).resolve().relative_to(_root(config)).as_posix()


def _site_path(repo_path: str, docs_prefix: str) -> str | None:
    """Where a file or folder of the repository is on the site; None when it is not there."""
    if repo_path in ROOT_FILES:
        return ROOT_FILES[repo_path]
    if repo_path == docs_prefix:
        return "index.md"  # BENCHMARKS.md's "the pages of docs/": the front page, which links them all
    if repo_path.startswith(docs_prefix + "/"):
        return repo_path[len(docs_prefix) + 1:]
    return None


def on_files(files, config):
    root = _root(config)
    for repo_path, site_path in ROOT_FILES.items():
        if files.get_file_from_path(site_path) is not None:
            raise PluginError(f"docs/{site_path} would hide {repo_path}; remove it (the site takes {repo_path} itself)")
        if (root / repo_path).is_file():
            files.append(File.generated(config, site_path, abs_src_path=str(root / repo_path)))
    return files


def _rewrite(target: str, page_repo_dir: str, page_site_dir: str, docs_prefix: str) -> str:
    bare = target[1:-1] if target.startswith("<") else target
    if not bare or bare.startswith(("#", "/")) or re.match(r"^[A-Za-z][A-Za-z0-9+.-]*:", bare):
        return target  # an anchor on the same page, an absolute path or a URL
    path, sep, fragment = bare.partition("#")
    site = _site_path(posixpath.normpath(posixpath.join(page_repo_dir, path)), docs_prefix)
    if site is None:
        return target
    new = posixpath.relpath(site, page_site_dir or ".") + sep + fragment
    return new if new != bare else target


def on_page_markdown(markdown, page, config, files):
    src = page.file.abs_src_path
    if src is None:
        return markdown
    root = _root(config)
    try:
        page_repo = Path(src).resolve().relative_to(root).as_posix()
    except ValueError:
        return markdown
    page_repo_dir = posixpath.dirname(page_repo)
    page_site_dir = posixpath.dirname(page.file.src_uri)
    docs_prefix = _docs_prefix(config)

    out, fenced, block_has_list = [], None, False
    for line in markdown.splitlines(keepends=True):
        fence = _FENCE.match(line)
        if fenced is not None:
            if fence and fence.group(1) == fenced:
                fenced = None
            out.append(line)
            continue
        if fence:
            fenced = fence.group(1)
            out.append(line)
            continue
        if not line.strip():
            block_has_list = False
        elif _LIST_ITEM.match(line):
            if not block_has_list and out and out[-1].strip():
                out.append("\n")  # a list right under a paragraph line
            block_has_list = True
        out.append(_LINK.sub(lambda m: m.group(1) + _rewrite(m.group(2), page_repo_dir, page_site_dir, docs_prefix),
                             line))
    return "".join(out)

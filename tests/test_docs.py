"""The docs site's home page is the README, with links rewritten; it must not go stale."""
import importlib.util
import pathlib

ROOT = pathlib.Path(__file__).resolve().parents[1]


def test_docs_index_is_the_current_readme():
    spec = importlib.util.spec_from_file_location("sync_readme", ROOT / "docs" / "sync_readme.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    assert (ROOT / "docs" / "index.md").read_text() == module.render(), \
        "docs/index.md is stale: run `python docs/sync_readme.py` after editing README.md"


def test_every_docs_page_is_in_the_site_navigation():
    nav = (ROOT / "mkdocs.yml").read_text()
    pages = [p.relative_to(ROOT / "docs").as_posix() for p in (ROOT / "docs").rglob("*.md")]
    missing = [page for page in pages if page not in nav]
    assert not missing, f"docs pages missing from mkdocs.yml nav: {missing}"


def test_readme_library_example_runs():
    """The README's Python example is real code: run it as written."""
    import re

    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        readme = (ROOT / "README.md").read_text()
        code = re.search(r"## Using the library\n\n```python\n(.*?)```", readme, re.S).group(1)
        namespace = {}
        exec(compile(code, "README.md", "exec"), namespace)
        assert set(namespace["weights"]) == {"layers.0.weight", "layers.0.bias", "layers.1.weight",
                                             "layers.1.bias", "layers.2.weight", "layers.2.bias"}
    finally:
        torch.set_num_threads(threads)

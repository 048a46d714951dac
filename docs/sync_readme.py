"""Copies README.md to docs/index.md with links rewritten for the docs site (run after editing README)."""
import pathlib

ROOT = pathlib.Path(__file__).resolve().parents[1]
LINKS = {"[docs/cli.md](docs/cli.md)": "[the command-line page](cli.md)",
         "[docs/tolerances.md](docs/tolerances.md)": "[the tolerances page](tolerances.md)",
         "[docs/tf_vs_torch.md](docs/tf_vs_torch.md)": "[TensorFlow vs PyTorch](tf_vs_torch.md)",
         "[docs/results/](docs/results/omniglot.md)": "[the results pages](results/omniglot.md)",
         "[docs/distributed.md](docs/distributed.md)": "[Distributed](distributed.md)"}


def render() -> str:
    text = (ROOT / "README.md").read_text()
    for old, new in LINKS.items():
        text = text.replace(old, new)
    return "<!-- Generated from README.md by `python docs/sync_readme.py`; edit README.md. -->\n" + text


if __name__ == "__main__":
    (ROOT / "docs" / "index.md").write_text(render())

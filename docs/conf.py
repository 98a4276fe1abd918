"""Sphinx configuration of crfcore's documentation (see docs/README.md)."""

import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))  # the checkout's crfcore, documented as it is
sys.path.insert(0, os.path.join(HERE, "scripts"))

import crfcore  # noqa: E402
import render_results  # noqa: E402

project = "crfcore"
author = "the crfcore developers"
copyright = "2026, the crfcore developers"
release = crfcore.__version__
version = release

extensions = [
    "myst_parser",
    "numpydoc",
    "sphinx.ext.autodoc",
    "sphinx.ext.autosummary",
    "sphinx.ext.mathjax",
]
source_suffix = {".md": "markdown", ".rst": "restructuredtext"}
exclude_patterns = ["_build", "README.md", "scripts", "results/*.json"]
myst_enable_extensions = ["colon_fence", "dollarmath"]
myst_heading_anchors = 3

autosummary_generate = True
autodoc_typehints = "none"
numpydoc_show_class_members = False
numpydoc_class_members_toctree = False
numpydoc_validation_checks = set()

html_theme = "pydata_sphinx_theme"
html_title = f"crfcore {release}"
html_static_path = ["_static"]
html_theme_options = {
    "github_url": "https://github.com/crfcore/crfcore",
    "navigation_with_keys": False,
    "show_toc_level": 2,
}
html_show_sourcelink = False


def _render(app):
    """The results pages, rendered from the JSON files in docs/results/ before the build reads the sources."""
    render_results.write_pages(os.path.join(HERE, "results"), os.path.join(HERE, "results"))


def setup(app):
    app.connect("builder-inited", _render)

"""bm.report / ``bayesmtl report``: one self-contained HTML file that a browser shows in full.

The browser test opens each report in headless Chromium (Debian's package, driven by
playwright) and checks that the page loads with no console error, that every figure has a
non-zero size on the page and that the task names appear; it skips, saying why, where
Chromium or playwright is missing (``scripts/setup.sh`` installs both)."""

from __future__ import annotations

import re
import shutil
import warnings

import pytest

import bayesmtl as bm
from bayesmtl.cli import main
from bayesmtl.synthetic import planted_clusters

FIT = dict(method="svi", steps=300, min_steps=300, draws=100, seed=0, progress=False)


@pytest.fixture(scope="module")
def runs():
    df, _ = planted_clusters(clusters=3, tasks_per_cluster=4, rows=30, likelihood="gaussian", seed=0)
    data = bm.MultiTaskData.from_frame(df, task="task", target="y")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", bm.DiagnosticWarning)
        return data, {name: bm.fit(model, data, **FIT) for name, model in
                      (("dp", bm.models.DPClustering()), ("hierarchical", bm.models.Hierarchical()),
                       ("mtrl", bm.models.TaskRelationship()))}


@pytest.fixture(scope="module")
def pages(runs, tmp_path_factory):
    data, posts = runs
    folder = tmp_path_factory.mktemp("report")
    return data, {"dp": bm.report(posts["dp"], folder / "dp.html"), "all": bm.report(posts, folder / "all.html")}


@pytest.mark.slow  # keeps the fast tier under 10 minutes; fast siblings cover the path
def test_the_report_is_one_self_contained_file(pages):
    data, files = pages
    for name, path in files.items():
        text = path.read_text()
        assert "<script" not in text and "<metadata" not in text
        assert not re.search(r"(src|href)=['\"]?(https?:|//)", text)  # nothing fetched from elsewhere
        assert all(t in text for t in data.task_names), name  # SVG text stays text
        assert "Diagnostics" in text and "Posterior predictive check" in text and "Priors" in text
    one, several = files["dp"].read_text(), files["all"].read_text()
    assert "occupied clusters" in one and "Point partition" in one
    assert "PSIS-LOO" in several and several.count("<h2") == 4  # the comparison and three runs
    assert sorted(files["dp"].parent.iterdir()) == sorted(files.values())  # no temporary file left


def test_report_refuses_a_folder_and_a_bad_setting(runs, tmp_path):
    _, posts = runs
    with pytest.raises(IsADirectoryError, match="is a folder"):
        bm.report(posts["dp"], tmp_path)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        bm.report(posts["dp"], tmp_path / "no" / "r.html")
    with pytest.raises(ValueError, match="by must be"):
        bm.report(posts, tmp_path / "r.html", by="group")
    assert list(tmp_path.iterdir()) == []  # nothing half-written


def test_a_comparison_that_cannot_be_made_says_why(runs, tmp_path):
    _, posts = runs
    point = bm.fit(bm.models.Pooled(), runs[0], method="map", steps=300, min_steps=100, seed=0, progress=False)
    text = bm.report({"dp": posts["dp"], "map": point}, tmp_path / "r.html").read_text()
    assert "No comparison" in text and "point estimate" in text


def test_cli_report(runs, tmp_path, capsys):
    _, posts = runs
    for name in ("dp", "hierarchical"):
        posts[name].save(tmp_path / name)
    args = ["report", str(tmp_path / "dp"), str(tmp_path / "hierarchical"), "--out", str(tmp_path / "r.html")]
    assert main(args) == 0 and "wrote" in capsys.readouterr().out
    assert main(args) == 2 and "exists" in capsys.readouterr().err  # no silent overwrite
    assert main(args + ["--overwrite"]) == 0
    capsys.readouterr()
    assert main(["report", str(tmp_path / "dp"), "--out", str(tmp_path / "r.txt")]) == 2
    assert "must name an .html file" in capsys.readouterr().err


def test_the_report_renders_in_headless_chromium(pages, tmp_path):
    chromium = shutil.which("chromium")
    if chromium is None:
        pytest.skip("Debian's chromium is not installed (scripts/setup.sh installs it where apt-get runs as root)")
    sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is not installed (dev extras)")
    data, files = pages
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium, args=["--no-sandbox"])
        try:
            for name, path in files.items():
                page = browser.new_page(viewport={"width": 1200, "height": 900})
                errors: list[str] = []
                page.on("console", lambda m, errors=errors: errors.append(m.text) if m.type == "error" else None)
                page.on("pageerror", lambda e, errors=errors: errors.append(str(e)))
                page.goto(path.as_uri())
                figures = page.query_selector_all("figure svg")
                assert len(figures) >= (5 if name == "dp" else 12), (name, len(figures))
                for fig in figures:
                    box = fig.bounding_box()
                    assert box is not None and box["width"] > 50 and box["height"] > 50, (name, box)
                body = page.inner_text("body")
                assert all(t in body or t in page.content() for t in data.task_names)
                assert errors == [], errors
                shot = tmp_path / f"{name}.png"
                page.screenshot(path=str(shot), full_page=True)
                assert shot.stat().st_size > 50_000  # a page of figures, not a blank one
                page.close()
        finally:
            browser.close()


@pytest.mark.slow  # keeps the fast tier under 10 minutes; fast siblings cover the path
def test_a_report_of_many_tasks_names_each_in_the_heatmap_blocks(tmp_path):
    """Above 60 tasks the heatmap's axes carry no names; the report lists its blocks instead,
    so every task name appears in the relations section."""
    df, _ = planted_clusters(clusters=3, tasks_per_cluster=24, rows=6, likelihood="gaussian", seed=1)
    data = bm.MultiTaskData.from_frame(df, task="task", target="y")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", bm.DiagnosticWarning)
        post = bm.fit(bm.models.Hierarchical(), data, **FIT)
    text = bm.report(post, tmp_path / "many.html").read_text()
    assert "Blocks of the heatmap" in text
    start = text.index("Blocks of the heatmap")
    section = text[start:text.index("</table>", start)]  # the blocks table alone
    missing = [t for t in data.task_names if t not in section]
    assert len(data.task_names) == 72 and not missing, missing[:5]

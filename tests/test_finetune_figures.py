"""finetune.data.figures: figure + caption extraction from JATS, PMC packages, DOCX and PDF (issue 29, item 3)."""

from __future__ import annotations

import io
import json
import tarfile
import zipfile
from pathlib import Path

import pytest

from pathasst.finetune.data.figures import extract_figures
from pathasst.finetune.data.readers import DataError

JATS = """<?xml version="1.0" encoding="UTF-8"?>
<!DOCTYPE article PUBLIC "-//NLM//DTD JATS (Z39.96) Journal Archiving and Interchange DTD v1.2 20190208//EN"
  "JATS-archivearticle1.dtd">
<article xmlns:xlink="http://www.w3.org/1999/xlink" xmlns:ali="http://www.niso.org/schemas/ali/1.0/"
         article-type="case-report">
  <front><article-meta>
    <article-id pub-id-type="pmid">31234567</article-id>
    <article-id pub-id-type="pmc">6543210</article-id>
    <article-id pub-id-type="doi">10.1000/path.2019.1</article-id>
    <permissions>
      <license license-type="open-access">
        <ali:license_ref>https://creativecommons.org/licenses/by/4.0/</ali:license_ref>
        <license-p>This article is distributed under the terms of the CC BY 4.0 licence.</license-p>
      </license>
    </permissions>
  </article-meta></front>
  <body><sec><p>See <xref ref-type="fig" rid="F1">Figure 1</xref>.</p>
    <fig id="F1" position="float">
      <label>Figure 1</label>
      <caption><title>Gastric biopsy</title>
        <p>H&amp;E stain of <italic>Helicobacter   pylori</italic>
           gastritis<sup>1</sup>, 400&#215;.</p></caption>
      <graphic xlink:href="path-2019-1-g001"/>
    </fig>
    <fig id="F2">
      <label>Figure 2</label>
      <caption><p>Ki-67 immunostain, <bold>high</bold> index.</p></caption>
      <permissions><license license-type="cc-by-nc"
        xlink:href="http://creativecommons.org/licenses/by-nc/3.0/"><license-p>NC</license-p></license></permissions>
      <graphic xlink:href="path-2019-1-g002.png"/>
    </fig>
  </sec></body>
</article>
"""

CAP1 = "Gastric biopsy. H&E stain of Helicobacter pylori gastritis1, 400\u00d7."
CAP2 = "Ki-67 immunostain, high index."


def _img(fmt: str = "PNG", colour=(200, 30, 90)) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.new("RGB", (16, 12), colour).save(buf, fmt)
    return buf.getvalue()


def _package(folder: Path, *, with_second_image: bool = True) -> dict[str, bytes]:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "path-2019-1.nxml").write_text(JATS, encoding="utf-8")
    files = {"path-2019-1-g001.jpg": _img("JPEG")}
    if with_second_image:
        files["path-2019-1-g002.png"] = _img("PNG", (10, 200, 10))
    for name, data in files.items():
        (folder / name).write_bytes(data)
    return files


def _rows(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "pairs.jsonl").read_text(encoding="utf-8").splitlines()]


def _tar(path: Path, members: dict[str, bytes]) -> Path:
    with tarfile.open(path, "w:gz") as tf:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))
    return path


def test_jats_article_two_figures_ids_captions_licences_and_image_bytes(tmp_path: Path):
    files = _package(tmp_path / "pkg")
    out = tmp_path / "out"
    summary = extract_figures(tmp_path / "pkg" / "path-2019-1.nxml", out)
    assert (summary["files"], summary["figures"], summary["written"], summary["missing_images"]) == (1, 2, 2, 0)
    assert summary["by_format"] == {"jats": {"files": 1, "figures": 2}}
    assert summary["problems"] == []
    r1, r2 = _rows(out)
    assert r1["id"] == "PMC6543210__F1" and r2["id"] == "PMC6543210__F2"
    assert (r1["label"], r1["caption"]) == ("Figure 1", CAP1)
    assert (r2["label"], r2["caption"]) == ("Figure 2", CAP2)
    assert r1["image"] == "PMC6543210__F1.jpg" and r2["image"] == "PMC6543210__F2.png"
    assert (out / r1["image"]).read_bytes() == files["path-2019-1-g001.jpg"]
    assert (out / r2["image"]).read_bytes() == files["path-2019-1-g002.png"]
    assert r1["source"] == {"file": str(tmp_path / "pkg" / "path-2019-1.nxml"), "format": "jats",
                            "article_id": "PMC6543210", "figure_id": "F1", "licence": "CC BY 4.0",
                            "licence_url": "https://creativecommons.org/licenses/by/4.0/"}
    # the figure's own permissions win over the article's
    assert (r2["source"]["licence"], r2["source"]["licence_url"]) == (
        "CC BY-NC 3.0", "http://creativecommons.org/licenses/by-nc/3.0/")
    assert "problem" not in r1 and "problem" not in r2


def test_tar_gz_package_gives_the_same_pairs(tmp_path: Path):
    files = _package(tmp_path / "pkg")
    members = {f"PMC6543210/{p.name}": p.read_bytes() for p in sorted((tmp_path / "pkg").iterdir())}
    tgz = _tar(tmp_path / "PMC6543210.tar.gz", members)
    summary = extract_figures(tgz, tmp_path / "out")
    assert (summary["written"], summary["missing_images"], summary["problems"]) == (2, 0, [])
    rows = _rows(tmp_path / "out")
    assert [(r["id"], r["caption"], r["source"]["format"]) for r in rows] == [
        ("PMC6543210__F1", CAP1, "jats"), ("PMC6543210__F2", CAP2, "jats")]
    assert (tmp_path / "out" / "PMC6543210__F2.png").read_bytes() == files["path-2019-1-g002.png"]
    assert not (tmp_path / "out" / "PMC6543210").exists()  # nothing unpacked, only the named images


def test_figures_cli_then_instruct_on_its_pairs(tmp_path: Path, capsys):
    """``pathasst-train data figures`` writes the pairs that ``data instruct`` turns into conversations."""
    from pathasst.finetune.cli import main as train_main
    from pathasst.finetune.data.readers import read_conversations

    _package(tmp_path / "pkg")
    assert train_main(["data", "figures", str(tmp_path / "pkg"), "--out", str(tmp_path / "out")]) == 0
    assert json.loads(capsys.readouterr().out)["written"] == 2
    pairs = tmp_path / "out" / "pairs.jsonl"
    assert train_main(["data", "instruct", str(pairs), "--out", str(tmp_path / "out" / "instruct.jsonl")]) == 0
    assert json.loads(capsys.readouterr().out)["samples"] == 2
    conversations = read_conversations(tmp_path / "out" / "instruct.jsonl", tmp_path / "out")
    assert [c.image.name for c in conversations] == ["PMC6543210__F1.jpg", "PMC6543210__F2.png"]


def test_missing_image_is_recorded_and_the_row_kept(tmp_path: Path):
    _package(tmp_path / "pkg", with_second_image=False)
    summary = extract_figures(tmp_path / "pkg", tmp_path / "out")  # the package folder itself
    assert (summary["written"], summary["missing_images"]) == (2, 1)
    r2 = _rows(tmp_path / "out")[1]
    assert r2["image"] is None and r2["caption"] == CAP2
    assert r2["problem"] == "image file for graphic 'path-2019-1-g002.png' not found"
    assert summary["problems"] == [{"file": str(tmp_path / "pkg" / "path-2019-1.nxml"), "figure": "PMC6543210__F2",
                                    "reason": "image file for graphic 'path-2019-1-g002.png' not found"}]


def test_rerun_skips_existing_and_finishes_a_partial_run(tmp_path: Path):
    _package(tmp_path / "pkg")
    out = tmp_path / "out"
    first = extract_figures(tmp_path / "pkg", out)
    again = extract_figures(tmp_path / "pkg", out)
    assert (first["written"], again["written"], again["skipped_existing"]) == (2, 0, 2)
    assert len(_rows(out)) == 2
    # a run killed after the first row, in the middle of writing the second line
    lines = (out / "pairs.jsonl").read_text(encoding="utf-8").splitlines(keepends=True)
    (out / "pairs.jsonl").write_text(lines[0] + lines[1][:25], encoding="utf-8")
    resumed = extract_figures(tmp_path / "pkg", out)
    assert (resumed["written"], resumed["skipped_existing"]) == (1, 1)
    assert [r["id"] for r in _rows(out)] == ["PMC6543210__F1", "PMC6543210__F2"]
    assert "torn last line" in resumed["problems"][0]["reason"]
    # limit stops after n new pairs; the rerun finishes the rest
    out2 = tmp_path / "out2"
    assert extract_figures(tmp_path / "pkg", out2, limit=1)["written"] == 1
    rest = extract_figures(tmp_path / "pkg", out2)
    assert (rest["written"], rest["skipped_existing"], len(_rows(out2))) == (1, 1, 2)


def test_tar_with_path_traversal_is_refused_and_nothing_escapes(tmp_path: Path):
    members = {"PMC1/a.nxml": JATS.encode(), "../evil.txt": b"pwned", "/abs/evil2.txt": b"x"}
    (tmp_path / "work").mkdir()
    tgz = _tar(tmp_path / "work" / "bad.tar.gz", members)
    with pytest.raises(DataError) as err:
        extract_figures(tgz, tmp_path / "work" / "out")
    assert "member path escapes the package: '../evil.txt'" in str(err.value)
    assert "absolute member path '/abs/evil2.txt'" in str(err.value)
    assert not (tmp_path / "evil.txt").exists() and not (tmp_path / "work" / "evil.txt").exists()
    # inside a folder the bad package is a recorded problem and the good source is still processed
    _package(tmp_path / "work" / "good")
    summary = extract_figures(tmp_path / "work", tmp_path / "work" / "out")
    assert (summary["files"], summary["files_failed"], summary["written"]) == (2, 1, 2)
    assert summary["problems"][0]["file"] == str(tgz)
    assert summary["problems"][0]["reason"].startswith("refused unsafe package")


def test_malformed_xml_entities_unknown_format_and_size_cap_raise_data_error(tmp_path: Path):
    bad = tmp_path / "broken.nxml"
    bad.write_text("<article><front><article-meta></front></article>", encoding="utf-8")
    with pytest.raises(DataError, match=r"broken\.nxml: 1 invalid record\(s\): file: malformed XML: mismatched tag"):
        extract_figures(bad, tmp_path / "out")
    bomb = tmp_path / "bomb.xml"
    bomb.write_text('<?xml version="1.0"?><!DOCTYPE article [<!ENTITY a "aaaaaaaaaa"><!ENTITY b "&a;&a;&a;">]>'
                    "<article>&b;</article>", encoding="utf-8")
    with pytest.raises(DataError, match="refused unsafe XML"):
        extract_figures(bomb, tmp_path / "out")
    other = tmp_path / "notes.txt"
    other.write_text("hello", encoding="utf-8")
    with pytest.raises(DataError, match="unsupported format"):
        extract_figures(other, tmp_path / "out")
    _package(tmp_path / "pkg")
    with pytest.raises(DataError, match="over the max_bytes cap 100"):
        extract_figures(tmp_path / "pkg" / "path-2019-1.nxml", tmp_path / "out", max_bytes=100)
    assert not (tmp_path / "out" / "pairs.jsonl").exists()


def _docx(path: Path, image: bytes, *, caption_style: bool = True) -> Path:
    w = 'xmlns:w="http://schemas.openxmlformats.org/wordprocessingml/2006/main"'
    r = 'xmlns:r="http://schemas.openxmlformats.org/officeDocument/2006/relationships"'
    a = 'xmlns:a="http://schemas.openxmlformats.org/drawingml/2006/main"'
    style = '<w:pPr><w:pStyle w:val="Caption"/></w:pPr>' if caption_style else ""
    document = f"""<?xml version="1.0" encoding="UTF-8" standalone="yes"?>
<w:document {w} {r} {a}><w:body>
  <w:p><w:r><w:t>Case report of a gastric lesion.</w:t></w:r></w:p>
  <w:p><w:r><w:drawing><a:graphic><a:graphicData><a:blip r:embed="rId7"/></a:graphicData></a:graphic></w:drawing>
  </w:r></w:p>
  <w:p>{style}<w:r><w:t xml:space="preserve">Figure 1. </w:t></w:r><w:r><w:t>Signet-ring cells, </w:t></w:r>
    <w:r><w:t>PAS stain.</w:t></w:r></w:p>
  <w:p><w:r><w:t>Discussion follows.</w:t></w:r></w:p>
</w:body></w:document>"""
    rels = """<?xml version="1.0" encoding="UTF-8"?>
<Relationships xmlns="http://schemas.openxmlformats.org/package/2006/relationships">
  <Relationship Id="rId7" Type="http://schemas.openxmlformats.org/officeDocument/2006/relationships/image"
    Target="media/image1.png"/>
</Relationships>"""
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr("[Content_Types].xml", "<Types/>")
        zf.writestr("word/document.xml", document)
        zf.writestr("word/_rels/document.xml.rels", rels)
        zf.writestr("word/media/image1.png", image)
    return path


def test_docx_image_with_caption_paragraph_gives_one_pair(tmp_path: Path):
    image = _img()
    summary = extract_figures(_docx(tmp_path / "case.docx", image), tmp_path / "out")
    assert (summary["figures"], summary["written"]) == (1, 1)
    assert summary["by_format"] == {"docx": {"files": 1, "figures": 1}}
    (row,) = _rows(tmp_path / "out")
    assert (row["id"], row["label"], row["caption"], row["image"]) == (
        "case__fig1", "Figure 1", "Signet-ring cells, PAS stain.", "case__fig1.png")
    assert row["source"]["format"] == "docx" and row["source"]["licence"] is None
    assert (tmp_path / "out" / "case__fig1.png").read_bytes() == image


def test_zip_that_is_not_a_docx_raises(tmp_path: Path):
    fake = tmp_path / "fake.docx"
    with zipfile.ZipFile(fake, "w") as zf:
        zf.writestr("hello.txt", "hi")
    with pytest.raises(DataError, match="not a .docx"):
        extract_figures(fake, tmp_path / "out")


def _pdf(path: Path, tmp: Path) -> bytes:
    from fpdf import FPDF

    png = tmp / "fig.png"
    png.write_bytes(_img())
    pdf = FPDF()
    pdf.add_page()
    pdf.set_font("helvetica", size=11)
    pdf.multi_cell(0, 6, "Figure 1 shows the lesion; this sentence is body text and wraps over two lines "
                         "of the page so that the paragraph has some length.")
    pdf.image(str(png), x=20, y=40, w=60)
    pdf.set_y(100)
    pdf.multi_cell(0, 6, "Figure 1. Tubular adenoma with low-grade dysplasia, H&E, original magnification x100, "
                         "a caption long enough to wrap onto a second line.")
    pdf.ln(6)
    pdf.multi_cell(0, 6, "Discussion text after the caption.")
    pdf.output(str(path))
    return png.read_bytes()


def test_pdf_image_and_caption_give_one_pair(tmp_path: Path):
    _pdf(tmp_path / "paper.pdf", tmp_path)
    summary = extract_figures(tmp_path / "paper.pdf", tmp_path / "out")
    assert (summary["figures"], summary["written"], summary["missing_images"], summary["problems"]) == (1, 1, 0, [])
    (row,) = _rows(tmp_path / "out")
    assert row["id"] == "paper__p1-1" and row["label"] == "Figure 1"
    assert row["caption"] == ("Tubular adenoma with low-grade dysplasia, H&E, original magnification x100, "
                              "a caption long enough to wrap onto a second line.")
    assert row["source"]["format"] == "pdf" and row["image"].startswith("paper__p1-1.")
    from PIL import Image

    with Image.open(tmp_path / "out" / row["image"]) as im:
        assert im.size == (16, 12)


def test_corrupt_pdf_raises_and_is_a_problem_inside_a_folder(tmp_path: Path):
    bad = tmp_path / "src" / "corrupt.pdf"
    bad.parent.mkdir()
    bad.write_bytes(b"%PDF-1.4\n1 0 obj << /Type /Catalog /Pages 2 0 R >>\nendobj\ngarbage without xref\n")
    with pytest.raises(DataError, match=r"corrupt\.pdf: 1 invalid record\(s\): file: unreadable PDF"):
        extract_figures(bad, tmp_path / "out")
    _docx(tmp_path / "src" / "case.docx", _img())
    summary = extract_figures(tmp_path / "src", tmp_path / "out")
    assert (summary["files"], summary["files_failed"], summary["written"]) == (2, 1, 1)
    assert [p["file"] for p in summary["problems"]] == [str(bad)]


def test_figure_without_caption_or_id_is_kept_with_problems(tmp_path: Path):
    src = tmp_path / "a.xml"
    src.write_text('<article xmlns:xlink="http://www.w3.org/1999/xlink"><front><article-meta>'
                   '<article-id pub-id-type="doi">10.1/x.y</article-id></article-meta></front>'
                   '<body><fig><graphic xlink:href="img1"/></fig></body></article>', encoding="utf-8")
    (tmp_path / "IMG1.TIF").write_bytes(b"II*\x00tiff-bytes")
    summary = extract_figures(src, tmp_path / "out")
    (row,) = _rows(tmp_path / "out")
    assert (row["id"], row["image"], row["label"], row["caption"]) == ("10.1_x.y__fig-1", "10.1_x.y__fig-1.tif", "", "")
    assert row["problem"] == "figure has no id; numbered fig-1; no caption"
    assert (row["source"]["article_id"], row["source"]["licence"], row["source"]["licence_url"]) == (
        "10.1/x.y", None, None)
    assert (summary["no_caption"], summary["missing_images"]) == (1, 0)
    assert (tmp_path / "out" / row["image"]).read_bytes() == b"II*\x00tiff-bytes"


def test_pdf_with_more_images_than_captions_says_so(tmp_path: Path):
    from fpdf import FPDF

    (tmp_path / "a.png").write_bytes(_img())
    (tmp_path / "b.png").write_bytes(_img("PNG", (0, 0, 250)))
    pdf = FPDF()
    pdf.add_page()
    pdf.set_font("helvetica", size=11)
    pdf.image(str(tmp_path / "a.png"), x=20, y=20, w=40)
    pdf.image(str(tmp_path / "b.png"), x=100, y=20, w=40)
    pdf.set_y(80)
    pdf.multi_cell(0, 6, "Fig. 2: Two panels, left and right.")
    pdf.output(str(tmp_path / "two.pdf"))
    summary = extract_figures(tmp_path / "two.pdf", tmp_path / "out")
    rows = _rows(tmp_path / "out")
    assert [(r["id"], r["label"], r["caption"]) for r in rows] == [
        ("two__p1-1", "Fig. 2", "Two panels, left and right."), ("two__p1-2", "", "")]
    assert rows[0]["problem"] == "page 1: 2 image(s) but 1 figure caption(s)"
    assert rows[1]["problem"] == "page 1: 2 image(s) but 1 figure caption(s); no caption"
    assert (summary["written"], summary["no_caption"], summary["missing_images"]) == (2, 1, 0)

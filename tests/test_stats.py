"""`cpqa stats`: Table 1 and the distributions, with exact counts from exported Parquet tables."""

from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from build.publishing import stats

QA_A = ["emotion"] * 5 + ["speaker"] * 2 + ["contextual paralinguistic reasoning"] * 3 + ["other"] * 2
SEG_A = {"primary_emotion": ["sad", "sad", "happy", None], "gender": ["female", "male", "female", None], "duration": [30.0, 34.99, 41.2, 59.9], "n_pairs": [3, 3, 4, 2]}
QA_B = ["emotion"] * 1 + ["other"] * 3
SEG_B = {"primary_emotion": ["sad", "angry"], "gender": ["male", "male"], "duration": [35.0, 36.0], "n_pairs": [1, 3]}


def _build(folder: Path, categories: list[str], segments: dict) -> Path:
    for config, columns in (("qa", {"category": categories, "instruction": ["q?"] * len(categories)}), ("segments", segments)):
        (folder / "data" / config).mkdir(parents=True)
        pq.write_table(pa.table(columns), folder / "data" / config / "test-00000-of-00001.parquet")
    return folder


@pytest.fixture
def two_sets(tmp_path):
    return {"llm": _build(tmp_path / "llm", QA_A, SEG_A), "human": _build(tmp_path / "human", QA_B, SEG_B)}


def test_table1_puts_the_sets_side_by_side_with_exact_counts(two_sets):
    lines = stats.table1(stats.collect(two_sets)).splitlines()
    assert lines[0] == "| category | llm: pairs | llm: % | human: pairs | human: % |"
    assert lines[2:] == [
        "| emotion | 5 | 41.7 | 1 | 25.0 |",
        "| speaker | 2 | 16.7 | 0 | 0.0 |",
        "| contextual paralinguistic reasoning | 3 | 25.0 | 0 | 0.0 |",
        "| other | 2 | 16.7 | 3 | 75.0 |",
        "| total | 12 | 100.0 | 4 | 100.0 |",
    ]


def test_distributions(two_sets):
    tables = stats.tables(stats.collect(two_sets))
    assert tables["emotions"].splitlines()[2:] == ["| (none) | 1 | 0 |", "| angry | 0 | 1 |", "| happy | 1 | 0 |", "| sad | 2 | 1 |"]
    assert tables["genders"].splitlines()[2:] == ["| (none) | 1 | 0 |", "| female | 2 | 0 |", "| male | 1 | 2 |"]
    # 5-s bins, left-closed: 34.99 -> 30-35, 35.0 -> 35-40
    assert tables["durations"].splitlines()[2:] == ["| 30-35 s | 2 | 0 |", "| 35-40 s | 0 | 2 |", "| 40-45 s | 1 | 0 |", "| 55-60 s | 1 | 0 |"]
    assert tables["pairs_per_clip"].splitlines()[2:] == ["| 1 | 0 | 1 |", "| 2 | 1 | 0 |", "| 3 | 2 | 1 |", "| 4 | 1 | 0 |"]


def test_cli_writes_markdown_and_plots(two_sets, tmp_path, capsys):
    import cpqa

    out = tmp_path / "stats"
    assert cpqa.main(["stats", str(two_sets["llm"]), str(two_sets["human"]), "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "| total | 12 | 100.0 | 4 | 100.0 |" in printed
    for name in stats.PLOTS:
        assert (out / f"{name}.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    text = (out / "stats.md").read_text()
    assert text.startswith("# Statistics of llm, human\n")
    assert "![Clips per duration](./durations.png)" in text and "| 55-60 s | 1 | 0 |" in text
    assert cpqa.main(["stats", str(tmp_path / "nothing"), "--out", str(out)]) == 2
    assert f"cpqa stats: {tmp_path / 'nothing'}: no built dataset here (data/qa/*.parquet expected)" in capsys.readouterr().err


def test_set_names_default_to_the_folders_and_must_be_one_distinct_per_folder(capsys):
    import cpqa

    assert stats.named_folders(["runs/a", "other/b"]) == {"a": "runs/a", "b": "other/b"}
    assert stats.named_folders(["runs/a", "other/b"], ["llm", "human"]) == {"llm": "runs/a", "human": "other/b"}
    with pytest.raises(ValueError, match=r"^--names needs one distinct name per folder \(2 folders, names \['x'\]\)$"):
        stats.named_folders(["runs/a", "other/b"], ["x"])
    with pytest.raises(ValueError, match=r"\(2 folders, names \['a', 'a'\]\)"):
        stats.named_folders(["runs/a", "other/a"])
    assert cpqa.main(["stats", "runs/a", "other/b", "--names", "x", "x", "--out", "unused"]) == 2
    assert capsys.readouterr().err == (
        "cpqa stats: --names needs one distinct name per folder (2 folders, names ['x', 'x']) (--debug shows the traceback)\n"
    )


def test_card_section_links_the_plots_beside_the_card(two_sets):
    section = stats.card_section(two_sets["llm"])
    assert section.startswith("### QA pairs per category (Table 1)\n\n| category | this dataset: pairs | this dataset: % |")
    assert "![Clips per gender](stats/genders.png)" in section
    assert (two_sets["llm"] / "stats" / "categories.png").is_file()

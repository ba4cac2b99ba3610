"""Words the model cannot read are named to the user, through the CLI, and a query of only such words finds
nothing confidently."""

from __future__ import annotations

import json

import pytest

from mmodal.cli import main


@pytest.fixture(scope="module")
def shapes_index(tmp_path_factory, shapes_test_dir):
    index = tmp_path_factory.mktemp("unknown") / "index"
    assert main(["index", str(shapes_test_dir / "images"), "--index", str(index), "--json"]) == 0
    return index


def test_search_names_unknown_words_and_still_reads_the_rest(shapes_index, capsys):
    capsys.readouterr()
    assert main(["search", "a zorbly red circle", "--index", str(shapes_index), "--json", "-k", "5"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["unknown_words"] == ["zorbly"]
    assert "zorbly" in out["message"]
    assert len(out["results"]) == 5


def test_a_query_of_only_unknown_words_finds_nothing(shapes_index, capsys):
    capsys.readouterr()
    assert main(["search", "zorbly blarf", "--index", str(shapes_index), "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["unknown_words"] == ["zorbly", "blarf"] and out["results"] == []
    assert "none of these words" in out["message"]


def test_a_known_query_prints_its_hits_alone(shapes_index, capsys):
    capsys.readouterr()
    assert main(["search", "a red circle", "--index", str(shapes_index), "--json", "-k", "3"]) == 0
    assert isinstance(json.loads(capsys.readouterr().out), list)


def test_ask_names_unknown_words(shapes_test_dir, capsys):
    image = sorted((shapes_test_dir / "images").iterdir())[0]
    capsys.readouterr()
    assert main(["ask", str(image), "what zorbly is the circle?", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["unknown_words"] == ["zorbly"] and "zorbly" in out["note"]

"""Model cards: a card name is one file in models/, never a path that climbs out of it."""

from __future__ import annotations

import pytest

from mmmamba_bench import cards


@pytest.fixture
def home(tmp_path, monkeypatch):
    """models/ with one good card; beside it (outside models/) a card-shaped YAML that must stay unreachable."""
    models = tmp_path / "home" / "models"
    models.mkdir(parents=True)
    weights = tmp_path / "weights"
    weights.mkdir()
    card = "name: {n}\ncheckpoint: hub/{n}\npath: {p}\nlayout: linear\n"
    (models / "good.yaml").write_text(card.format(n="good", p=weights))
    (tmp_path / "home" / "evil.yaml").write_text(card.format(n="evil", p=weights))
    (tmp_path / "evil2.yaml").write_text(card.format(n="evil2", p=weights))
    monkeypatch.setattr(cards, "models_dir", lambda: models)
    return models, weights


def test_a_card_name_resolves_inside_models(home):
    _, weights = home
    assert cards.resolve_model("good") == weights
    assert cards.load_card("good").name == "good"


@pytest.mark.parametrize("name", ["../evil", "../../evil2", "sub/../../evil", ".hidden", "a\\b"])
def test_a_card_name_cannot_climb_out_of_models(home, name):
    with pytest.raises(FileNotFoundError, match="nor a model card name"):
        cards.resolve_model(name)


@pytest.mark.parametrize("name", ["../evil", "../../evil2", "sub/../../evil", "..", ".hidden", "a\\b", ""])
def test_card_file_refuses_anything_but_one_file_name(home, name):
    with pytest.raises(ValueError, match="must be one file name in"):
        cards.card_file(name)


def test_load_card_by_name_is_checked_too(home):
    with pytest.raises(ValueError, match="must be one file name in"):
        cards.load_card("../evil")


def test_a_checkpoint_directory_given_as_a_path_still_works(home, tmp_path):
    _, weights = home
    assert cards.resolve_model(str(weights)) == weights
    with pytest.raises(FileNotFoundError, match="neither a checkpoint directory nor a model card"):
        cards.resolve_model("missing-card")

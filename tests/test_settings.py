from dashclip import settings


def test_data_dir_env_overrides(monkeypatch, tmp_path):
    monkeypatch.setenv("DASHCLIP_DATA", str(tmp_path))
    assert settings.data_dir() == tmp_path.resolve()


def test_missing_dataset_names_the_path(monkeypatch, tmp_path):
    monkeypatch.setenv("DASHCLIP_DATA", str(tmp_path))
    try:
        settings.dataset_dir("nope")
    except FileNotFoundError as e:
        assert str(tmp_path) in str(e) and "nope" in str(e)
    else:
        raise AssertionError("expected FileNotFoundError")


def test_heldout_split_is_qid_divisible_by_three():
    assert settings.is_heldout_qid("dev003") and settings.is_heldout_qid("dev120")
    assert not settings.is_heldout_qid("dev001") and not settings.is_heldout_qid("dev119")

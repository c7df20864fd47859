from nhle_pipeline.pipeline import testhooks


def test_pause_only_at_the_named_stage(monkeypatch):
    slept = []
    monkeypatch.setattr(testhooks.time, "sleep", slept.append)
    monkeypatch.delenv(testhooks.PAUSE_AT_ENV, raising=False)
    testhooks.pause_at("verify")
    assert slept == []
    monkeypatch.setenv(testhooks.PAUSE_AT_ENV, "export")
    testhooks.pause_at("verify")
    assert slept == []
    testhooks.pause_at("export")
    assert slept == [testhooks.DEFAULT_PAUSE_S]
    monkeypatch.setenv(testhooks.PAUSE_SECONDS_ENV, "0.25")
    testhooks.pause_at("export")
    assert slept == [testhooks.DEFAULT_PAUSE_S, 0.25]

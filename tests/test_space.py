"""Space mode, tested locally by setting the environment a Space sets (SPACE_ID, secrets, /data)."""

from argparse import Namespace

import pytest

from tuning import paths
from tuning.ship import space


def flags(host="127.0.0.1", port=7860, share=False, auth=None) -> Namespace:
    """app.py's launch flags, as app.parse_args returns them."""
    return Namespace(host=host, port=port, share=share, auth=auth)


def test_local_defaults(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    s = space.space_settings({}, data_dir=tmp_path / "nodata")
    assert not s.on_space and s.persistent and s.banner == ""
    assert s.workspace == tmp_path / "workspace" and s.host == "127.0.0.1" and s.port == 7860
    assert space.can_train(None, s)  # locally whoever reached the page may train


def test_space_with_persistent_storage(tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    s = space.space_settings({"SPACE_ID": "alice/tuner", "SPACE_AUTHOR_NAME": "alice"}, data_dir=data)
    assert s.on_space and s.persistent and s.workspace == data / "tuning" and s.banner == ""
    assert s.host == "0.0.0.0" and s.port == 7860 and s.train_requires_auth


def test_space_without_storage_warns(tmp_path):
    s = space.space_settings({"SPACE_ID": "alice/tuner"}, data_dir=tmp_path / "absent")
    assert not s.persistent and "lost when the Space restarts" in s.banner
    assert not str(s.workspace).startswith(str(tmp_path / "absent"))
    # a workspace forced outside /data on a Space is still ephemeral, and the banner says so
    forced = space.space_settings({"SPACE_ID": "a/b", "TUNING_WORKSPACE": str(tmp_path / "w")},
                                  data_dir=tmp_path / "absent")
    assert not forced.persistent and forced.banner


def test_one_workspace_rule_for_the_app_the_space_settings_and_the_cli(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    absent, data = tmp_path / "absent", tmp_path / "data"
    data.mkdir()
    # --workspace, else $TUNING_WORKSPACE, else /data/tuning on a Space, else ./workspace
    assert paths.workspace_location("w1", {"TUNING_WORKSPACE": "w2"}, absent) == (tmp_path / "w1", True)
    assert paths.workspace_location(None, {"TUNING_WORKSPACE": "w2"}, absent) == (tmp_path / "w2", True)
    assert paths.workspace_location(None, {"SPACE_ID": "a/b"}, data) == (data / "tuning", True)
    assert paths.workspace_location(None, {}, data) == (tmp_path / "workspace", True)
    ephemeral, persistent = paths.workspace_location(None, {"SPACE_ID": "a/b"}, absent)
    assert not persistent and not ephemeral.is_relative_to(tmp_path)
    # on a Space, only a workspace under /data survives a restart, however it was chosen
    assert paths.workspace_location(tmp_path / "w", {"SPACE_ID": "a/b"}, data) == (tmp_path / "w", False)
    assert paths.workspace_location(data / "w", {"SPACE_ID": "a/b"}, data) == (data / "w", True)
    # the CLI and the page agree, on a Space without /data too
    monkeypatch.setenv("SPACE_ID", "a/b")
    monkeypatch.delenv("TUNING_WORKSPACE", raising=False)
    assert paths.resolve_workspace() == space.space_settings().workspace
    assert paths.resolve_workspace("w") == space.space_settings(workspace="w").workspace == tmp_path / "w"


def test_space_auth_oauth_owner_and_password(tmp_path):
    env = {"SPACE_ID": "alice/tuner", "SPACE_AUTHOR_NAME": "alice", "OAUTH_CLIENT_ID": "x",
           "TUNING_ALLOWED_USERS": "bob, carol", "TUNING_AUTH": "s3cret-pass"}
    s = space.space_settings(env, data_dir=tmp_path)
    assert s.allowed_users == ("alice", "bob", "carol") and s.oauth and s.password_set
    assert not space.can_train(None, s)
    assert space.can_train({"preferred_username": "alice"}, s)
    assert space.can_train("carol", s)
    assert not space.can_train("mallory", s)
    assert space.can_train(None, s, password="s3cret-pass")
    assert not space.can_train(None, s, password="wrong") and not space.can_train(None, s, password="")
    msg = space.refusal_message("mallory", s)
    assert "mallory" in msg and "Playground" in msg
    assert "s3cret-pass" not in repr(s) and "s3cret-pass" not in space.refusal_message(None, s)
    assert "sign in" in space.refusal_message(None, s) and "password" in space.refusal_message(None, s)


def test_space_without_any_auth_refuses_training(tmp_path):
    s = space.space_settings({"SPACE_ID": "x/y"}, data_dir=tmp_path)
    assert not space.can_train(None, s) and not space.can_train(None, s, password="anything")
    assert "disabled" in space.refusal_message(None, s)


def test_a_space_password_under_12_characters_is_refused_at_start_up(tmp_path):
    short = space.space_settings({"SPACE_ID": "a/b", "SPACE_PASSWORD": "elevenchars"}, data_dir=tmp_path / "no")
    with pytest.raises(space.LaunchRefused, match="11 characters; a public Space needs at least 12"):
        space.launch_kwargs(flags(), short)
    long_enough = space.space_settings({"SPACE_ID": "a/b", "TUNING_AUTH": "twelve-chars"}, data_dir=tmp_path / "no")
    assert space.launch_kwargs(flags(), long_enough)["server_name"] == "0.0.0.0"
    # locally the password is --auth's (Gradio's login), not a Space's in-page unlock: no such rule
    assert space.launch_kwargs(flags(), space.space_settings({"TUNING_AUTH": "a:b"}, data_dir=tmp_path / "no"))


def test_share_needs_auth(tmp_path):
    local = space.space_settings({}, data_dir=tmp_path / "no")
    with pytest.raises(space.LaunchRefused, match="--auth"):
        space.launch_kwargs(flags(share=True), local)
    assert space.launch_kwargs(flags(share=True, auth="ann:pw"), local)["auth"] == ("ann", "pw")
    from_env = space.space_settings({"TUNING_AUTH": "ann:pw"}, data_dir=tmp_path / "no")
    assert space.launch_kwargs(flags(share=True), from_env)["auth"] == ("ann", "pw")
    assert space.launch_kwargs(flags(), local)["auth"] is None
    with pytest.raises(space.LaunchRefused):
        space.launch_kwargs(flags(share=True, auth="nopassword"), local)


def test_app_hooks(tmp_path):
    ephemeral = space.space_settings({"SPACE_ID": "a/b", "SPACE_PASSWORD": "user:long-password"},
                                     data_dir=tmp_path / "no")
    assert "lost" in space.banner(ephemeral)
    assert space.launch_kwargs(flags(share=True), ephemeral) == {
        "server_name": "0.0.0.0", "server_port": 7860, "share": False, "auth": None, "ssr_mode": False,
        "max_file_size": "100mb",  # a Space's disk is shared by every visitor's uploads
        "state_session_capacity": 100}  # and its memory by every visitor's sessions
    # the whole secret, exactly: never its part after a colon, nor a prefix
    assert ephemeral.password_matches("user:long-password")
    assert not ephemeral.password_matches("long-password") and not ephemeral.password_matches("user")
    assert not ephemeral.password_matches("user:long-passwor")
    local = space.space_settings({}, data_dir=tmp_path / "no")
    assert space.banner(local) == ""
    assert space.launch_kwargs(flags(port=7861), local) == {
        "server_name": "127.0.0.1", "server_port": 7861, "share": False, "auth": None, "ssr_mode": False,
        "max_file_size": "500mb"}

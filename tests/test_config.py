"""Config: the safe evaluator, INI files, namespaces, and the generated reference."""

import pathlib

import pytest

import rtserver
from rtserver.config import declared, literal, load_all, markdown, normalize, read_file
from rtserver.errors import ConfigError

ROOT = pathlib.Path(__file__).resolve().parent.parent


@pytest.mark.parametrize(
    ("text", "value"),
    [
        ("60 * 60", 3600),
        ("1024 ** 2", 1048576),
        ("-5 + 2", -3),
        ("'abc'", "abc"),
        ("[1, 'a', (2, 3)]", [1, "a", (2, 3)]),
        ("{'a': 1}", {"a": 1}),
        ("True", True),
        ("None", None),
        ("7 // 2", 3),
    ],
)
def test_literal_values_and_arithmetic(text, value):
    assert literal(text) == value


@pytest.mark.parametrize(
    "text",
    [
        "__import__('os').system('true')",
        "open('/etc/passwd')",
        "os.path",
        "x",
        "[i for i in range(3)]",
        "lambda: 1",
        "(1).__class__",
        "'a' * 10 ** 9",
        "2 ** 10 ** 9",
        "{**{}}",
    ],
)
def test_literal_refuses_code(text):
    with pytest.raises(ValueError):
        literal(text)


def test_ini_file_sections_delimiters_and_arithmetic(tmp_path):
    conf = tmp_path / "app.conf"
    conf.write_text(
        "[global]\n"
        "engine.timeout_monitor.frequency: 60 * 60\n"
        "server.socket_port = 8090\n"
        "[/]\n"
        "tools.secureheaders.on = True\n"
        "[/static]\n"
        "tools.staticdir.dir: '/srv/static'\n"
    )
    sections = read_file(conf)
    assert sections["global"]["engine.timeout_monitor.frequency"] == 3600
    assert sections["global"]["server.socket_port"] == 8090
    assert sections["/"]["tools.secureheaders.on"] is True
    assert sections["/static"]["tools.staticdir.dir"] == "/srv/static"


def test_ini_error_names_file_section_and_key(tmp_path):
    conf = tmp_path / "bad.conf"
    conf.write_text("[/api]\ntools.gzip.on = __import__('os')\n")
    with pytest.raises(ConfigError) as info:
        read_file(conf)
    text = str(info.value)
    assert "bad.conf" in text and "[/api]" in text and "tools.gzip.on" in text


def test_global_update_applies_the_monitor_frequency_from_a_file(tmp_path):
    conf = tmp_path / "g.conf"
    conf.write_text("[global]\nengine.timeout_monitor.frequency: 60 * 60\n")
    saved = dict(rtserver.config)
    try:
        rtserver.config.update(str(conf))
        assert rtserver.engine.timeout_monitor.frequency == 3600
        rtserver.config.update({"engine.timeout_monitor.frequency": 60})
        assert rtserver.engine.timeout_monitor.frequency == 60
    finally:
        rtserver.config.clear()
        rtserver.config.update(saved)


@pytest.mark.parametrize(
    ("key", "fragment"),
    [
        ("bogus.key", "unknown config namespace in key 'bogus.key'"),
        ("server.sokcet_port", "unknown config key 'server.sokcet_port'"),
        ("engine.timeout_monitor.frequency", "greater than 0"),
    ],
)
def test_bad_global_keys_fail_naming_the_key(key, fragment):
    value = -1 if "frequency" in key else 1
    with pytest.raises(ConfigError) as info:
        rtserver.config.update({key: value})
    assert fragment in str(info.value)


def test_ini_errors_name_the_line_past_comments_and_continuation_lines(tmp_path):
    conf = tmp_path / "app.conf"
    conf.write_text(
        "; settings\n"
        "[global]\n"
        "# the port\n"
        "server.socket_port: 8090\n"
        "request.methods_with_bodies = ('POST',\n"
        "    'PUT')\n"
        "\n"
        "[/]\n"
        "tools.gzip.on = True\n"
        "response.timout = 60\n"
    )
    with pytest.raises(ConfigError) as info:
        read_file(conf)
    assert str(info.value) == (
        f"unknown config key 'response.timout' ({conf}, line 10); did you mean 'response.timeout'?"
    )


@pytest.mark.parametrize(
    ("config", "message"),
    [
        (
            {"server.admin.socket_prot": 8091},
            "unknown config key 'server.admin.socket_prot' (global config): socket_prot is not a server key; "
            "did you mean 'server.admin.socket_port'?",
        ),
        (
            {"sever.socket_port": 8091},
            "unknown config namespace in key 'sever.socket_port' (global config); known namespaces: "
            "engine, server, tools, request, response, log, error_page, hub, checker; "
            "did you mean 'server.socket_port'?",
        ),
        ({"server.nothing_like_it": 1}, "unknown config key 'server.nothing_like_it' (global config)"),
    ],
)
def test_unknown_keys_offer_the_closest_declared_key(config, message):
    with pytest.raises(ConfigError) as info:
        rtserver.config.update(config)
    assert str(info.value) == message


@pytest.mark.parametrize("value", ["False", "True", "yes", "off", ""])
def test_a_string_is_not_a_bool(value):
    """ "False" used to be read as true by a tool's ``on``: every boolean key refuses
    strings, declared (engine.timeout_monitor.on) or a tool's switch (tools.NAME.on)."""
    with pytest.raises(ConfigError, match=r"engine\.timeout_monitor\.on = .*not a string"):
        rtserver.config.update({"engine.timeout_monitor.on": value})
    with pytest.raises(ConfigError, match=r"section \[/\]: tools\.gzip\.on = .*without quotes"):
        rtserver.Application(None, "", {"/": {"tools.gzip.on": value}})


def test_ini_booleans_are_python_literals(tmp_path):
    conf = tmp_path / "app.conf"
    conf.write_text("[/]\ntools.gzip.on = False\ntools.etags.on: True\n")
    assert read_file(conf) == {"/": {"tools.gzip.on": False, "tools.etags.on": True}}
    conf.write_text("[/]\ntools.gzip.on = false\n")
    with pytest.raises(ConfigError, match=r"app\.conf, line 2, .*'false'.*write False"):
        read_file(conf)


def test_unknown_tool_or_tool_argument_fails_at_mount_and_start():
    class Root:
        @rtserver.expose
        def index(self):
            return "x"

    app = rtserver.Application(Root(), "", {"/": {"tools.nosuchtool.on": True}})
    with pytest.raises(ConfigError, match=r"tools\.nosuchtool\.on"):
        app.validate()
    app = rtserver.Application(Root(), "", {"/": {"tools.gzip.colour": "blue"}})
    with pytest.raises(ConfigError, match=r"tools\.gzip\.colour"):
        app.validate()


def test_flat_dict_is_the_global_section():
    assert normalize({"server.socket_port": 1}) == {"global": {"server.socket_port": 1}}
    with pytest.raises(ConfigError):
        normalize({"notasection": {"a": 1}})


def test_config_reference_is_current():
    """docs/config.md is generated from the declarations: regenerate it when this fails
    (`python -m rtserver.configref > docs/config.md`)."""
    load_all()
    assert (ROOT / "docs" / "config.md").read_text() == markdown() + "\n"


def test_every_declared_key_is_documented():
    load_all()
    text = (ROOT / "docs" / "config.md").read_text()
    missing = [name for name in declared() if f"`{name}`" not in text]
    assert not missing
    assert "(undocumented)" not in text

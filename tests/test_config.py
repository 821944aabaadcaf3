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


# -- values whose evaluation would exceed a size bound ---------------------------------
# Before: '%0100000000d' % 0 built a 100 MB value and [[0]*4096]*4096 a 50 MB error
# message (37 s to build under tracemalloc). Every intermediate result is now bounded
# (1 MiB) and refused before it is built, with the key named; every quoted value is
# cut to 200 characters.


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ("'%0100000000d' % 0", "too large"),  # a width
        ("'%.2000000f' % 1.5", "too large"),  # a precision
        ("b'%01000000d%01000000d' % (1, 2)", "too large"),  # widths add up
        ("'%*d' % (100000000, 0)", "'*' widths"),
        ("[[0] * 4096] * 4096", "too large"),  # one list shared 4096 times: its repr is 50 MB
        ("[[[0] * 128] * 128] * 128", "too large"),
        ("'x' * 600000 + 'x' * 600000", "too large"),  # each half fits, the sum does not
        ("('x' * 1000000,) * 2", "too large"),
        ("{1: 'x' * 600000, 2: 'x' * 600000}", "too large"),
        ("'%s%s' % ('x' * 600000, 'x' * 600000)", "too large"),  # formatting is measured too
        ("[10 ** 40000] * 100", "too large"),  # big numbers print long
    ],
)
def test_literal_refuses_values_over_the_size_bound(text, reason):
    with pytest.raises(ValueError, match=reason):
        literal(text)


def test_literal_still_builds_values_within_the_bound():
    assert literal("'x' * 100000") == "x" * 100000  # over the 64 KiB of the text itself
    assert literal("'%05d|%-4s|%.2f|%%' % (42, 'ab', 2.5)") == "00042|ab  |2.50|%"
    assert literal("b'%d' % 7") == b"7"
    assert literal("'%(a)s' % {'a': 1}") == "1"
    assert literal("[[0] * 64] * 64") == [[0] * 64] * 64
    assert literal("{1, 2, 3} - {2}") == {1, 3}
    assert literal("[] * 10 ** 12") == []


@pytest.mark.parametrize(
    "value",
    ["'%0100000000d' % 0", "[[0] * 4096] * 4096", "'x' * 600000 + 'x' * 600000"],
)
def test_oversized_config_values_fail_with_the_key_named_and_a_short_message(tmp_path, value):
    conf = tmp_path / "app.conf"
    conf.write_text(f"[global]\nserver.socket_host = {value}\n")
    with pytest.raises(ConfigError) as info:
        read_file(conf)
    text = str(info.value)
    assert "app.conf, line 2" in text and "server.socket_host" in text and "too large" in text
    assert len(text) < 200 + len(str(conf)) + 150


def test_error_messages_cut_the_values_they_quote(tmp_path):
    conf = tmp_path / "app.conf"
    # A literal that is not valid: the raw text is quoted, cut.
    conf.write_text("[global]\nserver.socket_port = " + "1" * 70000 + "x\n")
    with pytest.raises(ConfigError) as info:
        read_file(conf)
    assert len(str(info.value)) < 500 and "..." in str(info.value)
    # A valid literal of the wrong type: the value is quoted, cut.
    conf.write_text("[global]\nserver.socket_port = ['x' * 1000] * 1000\n")
    with pytest.raises(ConfigError, match=r"server\.socket_port = \[.*\.\.\.") as info:
        read_file(conf)
    assert len(str(info.value)) < 500
    # The same from a dict config (no evaluation; the message is still short).
    with pytest.raises(ConfigError) as info:
        rtserver.config.update({"server.socket_port": [[0] * 4096] * 4096})
    assert "server.socket_port" in str(info.value) and len(str(info.value)) < 500
    # An integer too long for repr() (over 4300 digits) is named, not an error of its own.
    with pytest.raises(ConfigError, match="int of") as info:
        rtserver.config.update({"server.socket_port": 10**5000})
    # A long unknown key name is cut as well.
    with pytest.raises(ConfigError) as info:
        rtserver.config.update({"server." + "x" * 100000: 1})
    assert len(str(info.value)) < 500

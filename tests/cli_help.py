"""Shared check of the command lines' ``--help``: every key of the config, with its default."""

from jaxchat.config import keys


def help_listing_every_key(main, config, capsys) -> str:
    """``main(["--help"])`` exits 0 and lists each key of ``config`` as ``--key = default``; its output."""
    assert main(["--help"]) == 0
    out = capsys.readouterr().out
    for key, value, _ in keys(config):
        assert f"--{key} = {value!r}" in out
    return out

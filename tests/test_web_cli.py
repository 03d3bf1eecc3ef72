"""``python -m jaxchat.web``: WebConfig on the command line, validation before the load, serving a checkpoint."""

from __future__ import annotations

import dataclasses

import httpx
import jax
import numpy as np
import pytest
import uvicorn
from flax import nnx

from jaxchat.config import RunConfig, SamplingSection
from jaxchat.web.config import WebConfig, check
from jaxchat.web.validation import Limits
from jaxchat.web.__main__ import main
from tests.test_web import TIMEOUT, chat, serve, tiny_model, user, wait_ready


@pytest.fixture
def no_load(monkeypatch):
    """Make loading a model a test failure: what is checked here must be refused before the load."""
    def load_model(*a, **k):
        raise AssertionError(f"load_model{a} was called")

    monkeypatch.setattr("jaxchat.model.load.load_model", load_model)


def test_help_lists_every_key_with_its_default(capsys):
    assert main(["--help"]) == 0
    out = capsys.readouterr().out
    for line in ("--source = 'sft'  [str]", "--tag = ''  [str]", "--step = -1  [int]",
                 "--host = '127.0.0.1'  [str]", "--port = 8000  [int]", "--warmup = True  [bool]",
                 "--max_pending = 64  [int]", "--body_timeout_s = 10.0  [float]", "--max_body_readers = 32  [int]",
                 "--max_connections = 512  [int]", "--sampling.temperature = 0.8  [float]",
                 "--sampling.top_k = 50  [int]", "--sampling.max_tokens = 512  [int]", "--sampling.seed = -1  [int]"):
        assert line in out, line
    assert out.startswith("Serve a jaxchat model in the browser")


def test_command_line_sets_the_config_and_the_app_settings(monkeypatch):
    seen = {}

    def run(config):
        seen["config"] = check(config)
        return 0

    monkeypatch.setattr("jaxchat.web.__main__.run", run)
    argv = ["--source=mid", "--tag", "d20", "--step=800", "--host=0.0.0.0", "--port", "8080", "--warmup=false",
            "--max-pending=3", "--sampling.temperature=0", "--sampling.top-k=0", "--sampling.max_tokens=64",
            "--sampling.seed=7", "--body_timeout_s=2.5", "--max_body_readers=5", "--max_connections=100"]
    assert main(argv) == 0
    config = seen["config"]
    assert config == WebConfig(source="mid", tag="d20", step=800, host="0.0.0.0", port=8080, warmup=False,
                               max_pending=3, body_timeout_s=2.5, max_body_readers=5, max_connections=100,
                               sampling=SamplingSection(0.0, 0, 64, 7))
    assert config.checkpoint == ("mid", "d20", 800)
    assert config.app_settings() == dict(temperature=0.0, top_k=None, max_tokens=64, seed=7, max_pending=3,
                                         warmup=False, limits=Limits(body_timeout_s=2.5, max_body_readers=5))
    assert config.uvicorn_settings() == dict(host="0.0.0.0", port=8080, log_level="info", timeout_keep_alive=5,
                                             limit_concurrency=100, h11_max_incomplete_event_size=16384)
    uvicorn.Config(object(), **config.uvicorn_settings())  # every setting is one uvicorn knows
    # The defaults: the latest sft checkpoint, a fresh seed per request, warmup on, the default limits.
    assert WebConfig().checkpoint == ("sft", None, None)
    assert WebConfig().app_settings() == dict(temperature=0.8, top_k=50, max_tokens=512, seed=None, max_pending=64,
                                              warmup=True, limits=Limits())
    # The chat tools share the section; the web server only changes its defaults.
    assert [f.name for f in dataclasses.fields(WebConfig().sampling)] == ["temperature", "top_k", "max_tokens", "seed"]


BAD = [
    (["--source=rl"], ("source", "'rl'", "sft")),  # the message itself is jaxchat.stages'
    (["--source", "tokenizer"], ("source", "'tokenizer'")),
    (["--step=-2"], "step=-2: expected -1"),
    (["--host="], "host=''"),
    (["--port=0"], "port=0: expected an integer in [1, 65535]"),
    (["--port", "70000"], "port=70000"),
    (["--port=http"], "port='http': expected int"),
    (["--max_pending=0"], "max_pending=0"),
    (["--body_timeout_s=0"], "body_timeout_s=0.0: expected a number of seconds in [0.001, 3600]"),
    (["--body_timeout_s=inf"], "body_timeout_s='inf'"),
    (["--max_body_readers=0"], "max_body_readers=0: expected an integer >= 1"),
    (["--max_connections=0"], "max_connections=0: expected an integer >= 1"),
    (["--warmup=maybe"], "warmup='maybe': expected bool"),
    (["--sampling.temperature=2.5"], "sampling.temperature=2.5: expected a number in [0.0, 2.0]"),
    (["--sampling.temperature=nan"], "sampling.temperature='nan'"),
    (["--sampling.top_k=201"], "sampling.top_k=201: expected 0 (the whole vocabulary) or an integer in [1, 200]"),
    (["--sampling.top_k=-1"], "sampling.top_k=-1"),
    (["--sampling.max_tokens=0"], "sampling.max_tokens=0: expected an integer in [1, 4096]"),
    (["--sampling.seed=-2"], "sampling.seed=-2: expected -1"),
    (["--sampling.seed=2147483648"], "sampling.seed=2147483648"),
    (["--prot=8000"], "unknown config key 'prot'"),
    (["-i", "sft"], "unexpected argument '-i'"),  # the old argparse spelling
    (["--no-warmup"], "unknown config key 'no_warmup'"),
]


@pytest.mark.parametrize("argv,message", BAD, ids=[" ".join(a) for a, _ in BAD])
def test_bad_values_are_one_line_before_the_model_loads(no_load, capsys, argv, message):
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1, err
    assert all(part in err for part in ((message,) if isinstance(message, str) else message)), err


def test_main_reports_load_errors_in_one_line(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("JAXCHAT_HOME", str(tmp_path))  # an empty cache: no checkpoint to load
    assert main(["--source=mid", "--tag", "d4", "--warmup=false"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: no complete mid checkpoint in ") and err.count("\n") == 1
    assert main(["--port", "0"]) == 2 and "port" in capsys.readouterr().err


def test_main_serves_a_saved_checkpoint(tmp_path, monkeypatch, fineweb_tokenizer, capsys):
    """python -m jaxchat.web end to end: a real checkpoint, the real loader and Engine, real HTTP."""
    from jaxchat import checkpoint as ck
    from jaxchat.model import split_params
    from jaxchat.training.build import checkpoint_meta

    monkeypatch.setenv("JAXCHAT_HOME", str(tmp_path))
    fineweb_tokenizer.save(tmp_path / "tokenizer")
    model = tiny_model(fineweb_tokenizer.get_vocab_size(), seed=3)
    meta = checkpoint_meta("sft", 9, model.config, RunConfig(), fineweb_tokenizer, {})
    with ck.StageCheckpointer(ck.checkpoint_dir("sft", "d1"), async_save=False) as saver:
        saver.save(9, split_params(model)[1], None, None, meta)

    seen = {}

    def run_and_chat(app, host, port, **kw):  # stands in for uvicorn.run: serve on a free port, chat once
        seen.update(host=host, port=port, info=app.state.web.model_info, uvicorn=kw)
        with serve(app) as url, httpx.Client(base_url=url, timeout=TIMEOUT) as client:
            wait_ready(client)
            seen["reply"] = chat(client, user("Why is the river cold?"))[0]

    monkeypatch.setattr(uvicorn, "run", run_and_chat)
    assert main(["--source=sft", "--port=8123", "--sampling.temperature=0", "--sampling.max_tokens=8"]) == 0
    assert (seen["host"], seen["port"]) == ("127.0.0.1", 8123)
    assert seen["uvicorn"] == dict(log_level="info", timeout_keep_alive=5, limit_concurrency=512,
                                   h11_max_incomplete_event_size=16384)
    info = seen["info"]
    assert (info["stage"], info["tag"], info["step"], info["sequence_len"]) == ("sft", "d1", 9, 128)
    assert info["params"] == sum(x.size for x in jax.tree.leaves(nnx.state(model, nnx.Param)))
    # The served reply is the saved model's: the in-memory model's greedy reply (8 tokens), computed
    # here by full forward passes (no cache, no Engine).
    messages = user("Why is the river cold?")
    ids, stops = fineweb_tokenizer.render_for_completion({"messages": messages}), {
        fineweb_tokenizer.bos_token_id, fineweb_tokenizer.encode_special("<|assistant_end|>")}
    graphdef, params = split_params(model)
    forward = jax.jit(lambda p, idx: nnx.merge(graphdef, p)(idx))
    reply: list[int] = []
    while len(reply) < 8:
        seq = ids + reply  # right-padded to one static length: causal, so the padding changes nothing
        padded = np.full((1, 64), fineweb_tokenizer.bos_token_id, np.int32)
        padded[0, :len(seq)] = seq
        token = int(forward(params, padded)[0, len(seq) - 1].argmax())
        if token in stops:
            break
        reply.append(token)
    assert reply and seen["reply"] == fineweb_tokenizer.decode_bytes(reply).decode("utf-8", errors="replace")
    assert main(["--sampling.temperature", "5", "--warmup=false"]) == 2 and "temperature" in capsys.readouterr().err

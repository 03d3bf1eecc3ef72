"""The web chat: ``python -m jaxchat.web --source=sft`` serves a chat page and a streaming API (docs/DESIGN.md §10).

    from jaxchat.web import create_app
    app = create_app(Engine(model, tokenizer), tokenizer, model_info={"stage": "sft"})
    uvicorn.run(app, host="127.0.0.1", port=8000)

Modules: ``server`` (``create_app``; the endpoints and the error format), ``handlers`` (the endpoints
over one ``AppState``), ``validation`` (the request limits), ``worker`` (the generation thread),
``config`` (``WebConfig``: the command line's settings) and ``page`` (the chat page).
"""

from jaxchat.web.server import create_app
from jaxchat.web.validation import Limits, RequestError, validate_request

__all__ = ["Limits", "RequestError", "create_app", "validate_request"]

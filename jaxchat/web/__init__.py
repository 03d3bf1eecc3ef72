"""The web chat: ``python -m jaxchat.web -i sft`` serves a chat page and a streaming API (SPEC §10).

    from jaxchat.web import create_app
    app = create_app(Engine(model, tokenizer), tokenizer, model_info={"stage": "sft"})
    uvicorn.run(app, host="127.0.0.1", port=8000)

See :mod:`jaxchat.web.server` for the endpoints, the request limits and the error format.
"""

from jaxchat.web.server import Limits, RequestError, create_app, validate_request

__all__ = ["Limits", "RequestError", "create_app", "validate_request"]

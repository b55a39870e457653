"""The serving logic between the routes and the scheduler: requests checked and turned into jobs, the jobs'
items turned into OpenAI responses or server-sent-event chunks. Bad input is refused before the engine.

One module per endpoint (`completions.py`, `chat.py`, `tokenizer_routes.py`, `classify.py`) over the shared
checks, tokenizer threads and job handling of `base.py`; `Serving` puts them together for `app.py`.
"""

from __future__ import annotations

from prunex.serve.base import ServeError, ServingBase
from prunex.serve.chat import ChatRoutes
from prunex.serve.classify import ClassifyRoute
from prunex.serve.completions import CompletionRoutes
from prunex.serve.model import ServedModel
from prunex.serve.tokenizer_routes import TokenizerRoutes

__all__ = ["ServeError", "ServedModel", "Serving", "ServingBase"]


class Serving(CompletionRoutes, ChatRoutes, TokenizerRoutes, ClassifyRoute):
    """Completions, chat completions, tokenizer routes and classification over one served model."""

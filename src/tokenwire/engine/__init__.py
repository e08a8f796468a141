"""The engine: :class:`Tokenwire` composes the stream log, the store, the providers
and the producer; :class:`Stream` reads one stream; :mod:`~tokenwire.engine.identity`
says who is calling and what they may touch; :mod:`~tokenwire.engine.limits` what
one caller may start.

It sits below every transport and imports neither :mod:`tokenwire.server` nor a web
framework; ``Tokenwire.router`` and ``Stream.sse_response`` are the two bridges up,
importing the server and the SSE transport when called.
"""

from tokenwire.engine.core import Tokenwire
from tokenwire.engine.identity import Access, HTTPRequest, Identify, Identity
from tokenwire.engine.stream import Stream

__all__ = ["Access", "HTTPRequest", "Identify", "Identity", "Stream", "Tokenwire"]

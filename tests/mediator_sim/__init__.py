"""A stand-in for the GPU mediator's admin socket, for vgpu-registry's tests (standard library only).

Run it with ``PYTHONPATH=tests python3 -m mediator_sim serve --socket PATH --db PATH`` (see
README.md), or drive it from pytest through :class:`Mediator`.
"""

from mediator_sim.protocol import Dropped, BadAnswer, ask, exchange, encode_request, decode_answer
from mediator_sim.server import MODES, Mediator, Request

__all__ = ["MODES", "Mediator", "Request", "Dropped", "BadAnswer", "ask", "exchange",
           "encode_request", "decode_answer"]
